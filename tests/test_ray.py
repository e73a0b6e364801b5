"""`--engine ray` on a real local Ray instance (2 CPUs, loopback), started and stopped here.

The CLI runs connect to it with --ray-address, as a driver on a cluster node would."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, video_manifest

from echodeploy.client.runs import ray_engine
from echodeploy.client.tritonserver import free_port
from echodeploy.errors import EchodeployError
from echodeploy.samples import synthetic_echo, synthetic_mmode, write_avi, write_mmode_dicom

pytestmark = pytest.mark.ray

try:
    ray = ray_engine.import_ray()
except EchodeployError as missing:
    pytest.skip(str(missing), allow_module_level=True)

CMR = ["--view", "A4C", "--task", "scar,t1", "--target-task", "scar"]


@pytest.fixture(scope="module")
def cluster():
    address = ray_engine.start_local(num_cpus=2, object_store_memory=256 << 20)
    yield address
    ray.shutdown()


def _listening_ports(pid: int) -> set[str]:
    """Local addresses of the TCP sockets process `pid` listens on (from /proc)."""
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
              if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(fields[1].split(":")[0])
    return found


def test_local_instance_listens_on_loopback_only(cluster):
    assert cluster.startswith("127.0.0.1:")
    core = Path(ray.__file__).parent / "core"
    servers = [int(p) for p in os.listdir("/proc") if p.isdigit() and _cmdline(int(p)).startswith(str(core))]
    assert len(servers) >= 2, "the instance's gcs_server and raylet"
    for pid in servers:
        hosts = _listening_ports(pid)
        assert hosts and hosts <= {"0100007F", "0000000000000000FFFF00000100007F"}, _cmdline(pid)[:80]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture(scope="module")
def cmr_data(tmp_path_factory):
    """Good videos and bad rows: too short, corrupt, missing."""
    root = tmp_path_factory.mktemp("ray_cmr")
    rows = []
    for i in range(5):
        write_avi(root / f"v{i}.avi", synthetic_echo(34 + i, seed=i))
        rows.append((f"S{i // 2}", f"v{i}", i % 2))
    write_avi(root / "short.avi", synthetic_echo(12))
    (root / "corrupt.avi").write_bytes(b"RIFF....AVI garbage" * 100)
    rows += [("S9", "short", 1), ("S9", "corrupt", 0), ("S9", "gone", 1)]
    manifest = root / "m.csv"
    pd.DataFrame(rows, columns=["Study_Unique_ID", "Video_Unique_ID", "TARGET"]).to_csv(manifest, index=False)
    return manifest


def _same_table(a: Path, b: Path, numeric: list[str]) -> None:
    left, right = (pd.read_csv(p).drop(columns="decode_s", errors="ignore") for p in (a, b))
    assert left.drop(columns=numeric).equals(right.drop(columns=numeric))
    assert any(np.isfinite(left[column].to_numpy(float)).any() for column in numeric), "only NaN: nothing compared"
    for column in numeric:
        np.testing.assert_allclose(left[column], right[column], atol=1e-6, err_msg=column)


def _journal_keys(out: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (out / "records.jsonl").read_text().splitlines()]


def test_ray_writes_what_the_local_engine_writes_cmr(cluster, cmr_data, repository, tmp_path):
    # one named backend, so that both print the same lines (`auto` says what it measured)
    common = [str(cmr_data), *CMR, "--batch-size", "3", "--repository", str(repository), "--backend", "onnxruntime"]
    local = run_cli("cmr", *common, "--out", str(tmp_path / "local"))
    on_ray = run_cli("cmr", *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", cluster,
                     "--actors", "1")
    assert local.returncode == on_ray.returncode == 1, on_ray.stderr  # finished with row errors
    assert on_ray.stdout == local.stdout.replace(str(tmp_path / "local"), str(tmp_path / "ray"))
    table = pd.read_csv(tmp_path / "ray" / "predictions.csv")
    assert table["status"].tolist() == ["ok"] * 5 + ["too_short", "unreadable", "missing"]
    _same_table(tmp_path / "local" / "predictions.csv", tmp_path / "ray" / "predictions.csv", ["scar_prob", "t1_value"])
    _same_table(tmp_path / "local" / "studies.csv", tmp_path / "ray" / "studies.csv", ["A4C", "all_views"])
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("local", "ray")]
    assert metrics[0]["videos"]["all"]["auc"] == pytest.approx(metrics[1]["videos"]["all"]["auc"], abs=1e-9)
    keys = _journal_keys(tmp_path / "ray")
    assert len(keys) == len(set(keys)) == len(table)


def test_ray_writes_what_the_local_engine_writes_mmode(cluster, mmode_repository, tmp_path):
    data = tmp_path / "study"
    trace, _ = synthetic_mmode(length=1400, heart_rate_bpm=500, seed=3)
    write_mmode_dicom(data / "good.dcm", trace, frame_width=400, step=120)
    (data / "bad.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00garbage" * 40)
    common = [str(data), "--mass", "22", "--repository", str(mmode_repository), "--batch-size", "4"]
    local = run_cli("mmode", *common, "--out", str(tmp_path / "local"))
    on_ray = run_cli("mmode", *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", cluster)
    assert local.returncode == on_ray.returncode == 1, on_ray.stderr
    table = pd.read_csv(tmp_path / "ray" / "features_stats.csv")
    assert table.set_index("file")["status"].to_dict() == {"bad.dcm": "not_video", "good.dcm": "ok"}
    assert table["error"].fillna("").str.len().max() > 5  # the bad file's reason
    numeric = [c for c in table.columns if pd.api.types.is_float_dtype(table[c]) and c != "mass_g"]
    _same_table(tmp_path / "local" / "features_stats.csv", tmp_path / "ray" / "features_stats.csv", numeric)
    figures = [sorted(p.name for p in (tmp_path / d / "figures").iterdir()) for d in ("local", "ray")]
    assert figures[0] == figures[1] and figures[0]  # drawn after inference, into the same --out


def _wait_for_records(journal: Path, count: int, process: subprocess.Popen) -> int:
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= count:
            break
        time.sleep(0.1)
    return len(journal.read_text().splitlines()) if journal.exists() else 0


def test_driver_killed_mid_run_resumes_on_the_other_engine(cluster, repository, tmp_path):
    manifest = video_manifest(tmp_path / "data", 8)
    out = tmp_path / "out"
    args = ["cmr", str(manifest), "--out", str(out), "--view", "A4C", "--task", "scar", "--batch-size", "1",
            "--repository", str(repository)]
    process = subprocess.Popen([sys.executable, "-m", "echodeploy", *args, "--engine", "ray", "--ray-address",
                                cluster, "--ray-block-rows", "1"],  # a row per Ray task: records land one by one
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done_before = _wait_for_records(out / "records.jsonl", 2, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert 2 <= done_before < 8, "the kill should land mid-run"
    done_before = len((out / "records.jsonl").read_text().splitlines())  # a record may land while killing
    result = run_cli(*args)  # resumed by the local engine
    assert result.returncode == 0, result.stderr
    assert f"resuming: {done_before} of 8 rows already done" in result.stderr
    keys = _journal_keys(out)
    assert len(keys) == len(set(keys)) == 8  # 0 lost, 0 duplicated
    assert (pd.read_csv(out / "predictions.csv")["status"] == "ok").all()


def _actor_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and "_InferenceActor" in _cmdline(int(p))]


def test_actor_killed_mid_run_is_restarted_and_every_row_accounted(cluster, repository, tmp_path):
    manifest = video_manifest(tmp_path / "data", 8)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "echodeploy", "cmr", str(manifest), "--out", str(out), "--view", "A4C", "--task",
         "scar", "--batch-size", "1", "--repository", str(repository), "--engine", "ray", "--ray-address", cluster,
         "--ray-block-rows", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    done_before = _wait_for_records(out / "records.jsonl", 1, process)
    actors = _actor_pids()
    assert actors and 1 <= done_before < 8, "an actor should be killed mid-run"
    os.kill(actors[0], signal.SIGKILL)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    assert "rows: 8 ok" in stdout
    keys = _journal_keys(out)
    assert len(keys) == len(set(keys)) == 8
    assert actors[0] not in _actor_pids()


def test_triton_backend_through_ray(cluster, triton, cmr_data, tmp_path):
    common = [str(cmr_data), "--view", "A4C", "--task", "scar", "--backend", "triton", "--url", triton.grpc_url]
    local = run_cli("cmr", *common, "--out", str(tmp_path / "local"))
    on_ray = run_cli("cmr", *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-address", cluster)
    assert local.returncode == on_ray.returncode == 1, on_ray.stderr
    assert (pd.read_csv(tmp_path / "ray" / "predictions.csv")["status"] == "ok").sum() == 5
    _same_table(tmp_path / "local" / "predictions.csv", tmp_path / "ray" / "predictions.csv", ["scar_prob"])


def test_unreachable_cluster_is_one_clear_line(cmr_data, repository, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    result = run_cli("cmr", str(cmr_data), *CMR, "--repository", str(repository), "--out", str(tmp_path / "o"),
                     "--engine", "ray", "--ray-address", address, timeout=120)
    assert result.returncode == 2
    assert f"error: cannot reach the Ray cluster at {address}: Connection refused" in result.stderr

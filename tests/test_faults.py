"""Faults injected into real runs: a tritonserver SIGKILLed mid-run, a client SIGKILLed mid-run,
a full disk under `--out`, an overloaded server, a rejected request, a model not ready or missing.

Every run is the real `echodeploy` entry point against real tritonserver processes on free
loopback ports; the check after each fault is that every input row ends up in the outputs
exactly once, with the same values as an undisturbed run.
"""

import json
import logging
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc
from conftest import run_cli, video_manifest
from google.protobuf import text_format

from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
from echodeploy.backends.triton import TritonBackend
from echodeploy.client.decoding import decode_executor, ordered_results
from echodeploy.client.runs.batching import Batcher
from echodeploy.client.tritonserver import TritonServer
from echodeploy.errors import RequestError
from echodeploy.export.triton.repository import parse_config

VIDEOS = 8


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return video_manifest(tmp_path_factory.mktemp("videos"), VIDEOS)


def _cmr_args(manifest: Path, out: Path, url: str, *extra: str) -> list[str]:
    return ["cmr", str(manifest), "--out", str(out), "--view", "A4C", "--task", "scar", "--batch-size", "1",
            "--workers", "0", "--backend", "triton", "--url", url, *extra]


def _start_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "echodeploy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def _journal(out: Path) -> list[dict]:
    """The intact records of a run's journal (a torn last line is not a record)."""
    records = []
    for line in (out / "records.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pass
    return records


def _wait_for_rows(out: Path, rows: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if (out / "records.jsonl").exists() and len(_journal(out)) >= rows:
            return
        time.sleep(0.1)
    raise AssertionError(f"the run did not reach {rows} rows (exit {process.poll()}): {process.communicate()}")


def _shared_memory_regions(pid: int) -> set[Path]:
    """The client's shared-memory regions in /dev/shm (loopback gRPC sends clips through them)."""
    maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {Path(line.split()[-1]) for line in maps if "/dev/shm/echodeploy_" in line}


def _every_row_once(out: Path, manifest: Path) -> pd.DataFrame:
    """predictions.csv holds every input row once, in order, all ok; the journal each row once."""
    keys = [record["key"] for record in _journal(out)]
    assert len(keys) == len(set(keys)) == VIDEOS, keys
    table = pd.read_csv(out / "predictions.csv")
    assert table["Video_Unique_ID"].tolist() == pd.read_csv(manifest)["Video_Unique_ID"].tolist()
    assert (table["status"] == "ok").all(), table[["status", "error"]]
    return table


def test_server_killed_mid_run_then_client_killed_mid_run(scar_repository, server_env, manifest, tmp_path):
    server = TritonServer(scar_repository, env=server_env).start()
    try:
        out = tmp_path / "out"
        args = _cmr_args(manifest, out, server.grpc_url)

        # The server dies and stays down: the run stops once its retry budget is spent.
        client = _start_cli(*args, "--retry-seconds", "3")
        _wait_for_rows(out, 2, client)
        server.kill()
        _, stderr = client.communicate(timeout=120)
        assert client.returncode == 2, stderr
        assert f"Triton server at {server.grpc_url} still failing after 3 s of retries" in stderr
        assert "rerun to resume" in stderr and "Traceback" not in stderr
        records = _journal(out)
        assert 2 <= len(records) < VIDEOS, "the kill should land mid-run"
        assert {r["status"] for r in records} == {"ok"}, "rows the outage hit must not be journaled as errors"

        # Rerun; the server dies mid-run and comes back within the budget: the run goes on.
        server.start()
        client = _start_cli(*args, "--retry-seconds", "120")
        _wait_for_rows(out, len(records) + 1, client)
        server.kill()
        server.start()
        _, stderr = client.communicate(timeout=300)
        assert client.returncode == 0, stderr
        assert f"resuming: {len(records)} of {VIDEOS} rows already done" in stderr
        # one line for the outage, one when the server is back
        assert re.findall(r"WARNING: Triton server at \S+ (failing|answers again)", stderr) == ["failing", "answers again"]
        recovered = _every_row_once(out, manifest)

        # The client is SIGKILLed mid-run (with its decoding worker); a rerun resumes.
        resumed = tmp_path / "resumed"
        args = _cmr_args(manifest, resumed, server.grpc_url, "--workers", "1")
        client = _start_cli(*args)
        _wait_for_rows(resumed, 2, client)
        regions = _shared_memory_regions(client.pid)
        os.killpg(client.pid, signal.SIGKILL)
        client.communicate()
        for region in regions:  # a SIGKILLed client cannot free them; the server's mappings outlive the names
            region.unlink()
        done = len(_journal(resumed))
        assert done < VIDEOS, "the kill should land mid-run"
        result = run_cli(*args)
        assert result.returncode == 0, result.stderr
        assert f"resuming: {done} of {VIDEOS} rows already done" in result.stderr
        np.testing.assert_allclose(_every_row_once(resumed, manifest)["scar_prob"], recovered["scar_prob"], atol=1e-6)
    finally:
        server.stop()


def _ignore_sigxfsz_and_limit_files(size: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


@pytest.mark.slow
def test_full_disk_stops_cleanly_and_keeps_finished_rows(repository, manifest, tmp_path):
    out = tmp_path / "out"
    first_two = tmp_path / "first_two.csv"
    pd.read_csv(manifest).head(2).to_csv(first_two, index=False)
    common = ["--out", str(out), "--view", "A4C", "--task", "scar", "--workers", "0", "--data-root",
              str(manifest.parent), "--repository", str(repository)]
    assert run_cli("cmr", str(first_two), *common).returncode == 0
    journal = out / "records.jsonl"
    finished = journal.read_bytes()

    # Files cannot grow past the journal's size + 40 bytes: the next row is torn mid-write.
    limited = subprocess.run([sys.executable, "-m", "echodeploy", "cmr", str(manifest), *common],
                             capture_output=True, text=True, timeout=600,
                             preexec_fn=_ignore_sigxfsz_and_limit_files(len(finished) + 40))
    assert limited.returncode == 2, limited.stderr
    assert f"cannot write {out}" in limited.stderr and "File too large" in limited.stderr
    assert "Traceback" not in limited.stderr
    assert journal.read_bytes().startswith(finished) and len(_journal(out)) == 2

    # The disk is full when the CSVs are written: every row is journaled before.
    (out / "predictions.csv.tmp").symlink_to("/dev/full")
    full = run_cli("cmr", str(manifest), *common)
    assert full.returncode == 2, full.stderr
    assert f"cannot write {out / 'predictions.csv.tmp'}: No space left on device" in full.stderr
    assert "Traceback" not in full.stderr and "resuming: 2 of 8 rows already done" in full.stderr
    assert len(_journal(out)) == VIDEOS

    # Space again: nothing is recomputed, nothing lost.
    again = run_cli("cmr", str(manifest), *common)
    assert again.returncode == 0 and "resuming: 8 of 8 rows already done" in again.stderr
    assert len(journal.read_text().splitlines()) == VIDEOS  # the torn line is gone
    table = pd.read_csv(out / "predictions.csv")
    assert (table["status"] == "ok").all() and len(table) == VIDEOS


@pytest.fixture(scope="module")
def queue_limited_server(scar_repository, server_env, tmp_path_factory):
    """A tritonserver whose scar model queues at most one request (more are refused), with
    explicit model control so a test can unload a model."""
    repo = tmp_path_factory.mktemp("queue_limited")
    for name in ("cmr_a4c_scar", "cmr_a4c"):
        (repo / name).mkdir()
        for version in (scar_repository / name).iterdir():
            if version.is_dir():
                (repo / name / version.name).symlink_to(version, target_is_directory=True)
        config = parse_config((scar_repository / name / "config.pbtxt").read_text())
        if name == "cmr_a4c_scar":
            config.dynamic_batching.default_queue_policy.max_queue_size = 1
        (repo / name / "config.pbtxt").write_text(text_format.MessageToString(config))
    server = TritonServer(repo, env=server_env, extra_args=("--model-control-mode=explicit", "--load-model=*"))
    with server:
        yield server


def _clips(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, 16, 112, 112), dtype=np.uint8)


def test_overloaded_server_is_retried_until_every_request_is_served(queue_limited_server, repository, caplog):
    backend = TritonBackend([queue_limited_server.grpc_url], max_in_flight=3)
    clips = _clips(6)
    try:
        with caplog.at_level(logging.WARNING):
            served = backend.infer("cmr_a4c_scar", {"clip": clips})  # 3 requests of 2 at once, queue of 1
    finally:
        backend.close()
    assert "Exceeds maximum queue size" in caplog.text
    expected = OnnxRuntimeBackend(repository, threads=1).infer("cmr_a4c_scar", {"clip": clips})
    np.testing.assert_allclose(served["scar_prob"], expected["scar_prob"], atol=1e-5)


def test_rejected_request_fails_only_its_row(queue_limited_server):
    backend = TritonBackend([queue_limited_server.grpc_url], max_in_flight=1)
    batcher = Batcher(lambda inputs: backend.infer("cmr_a4c_scar", inputs), batch_size=4)
    try:
        done = batcher.add("a", {"clip": _clips(2, seed=1)})
        done += batcher.add("float", {"clip": _clips(1).astype(np.float32)})  # the model takes uint8
        done += batcher.add("b", {"clip": _clips(1, seed=2)})
        done += batcher.flush()
        alone = backend.infer("cmr_a4c_scar", {"clip": _clips(2, seed=1)})
    finally:
        backend.close()
    results = dict(done)
    assert set(results) == {"a", "float", "b"}
    assert isinstance(results["float"], RequestError)
    assert "inference input 'clip' data-type is 'FP32', but model 'cmr_a4c_scar' expects 'UINT8'" in str(results["float"])
    np.testing.assert_array_equal(results["a"]["scar_prob"], alone["scar_prob"])
    assert results["b"]["scar_prob"].shape == (1, 1)


def test_model_not_ready_or_missing_is_named(queue_limited_server, manifest, tmp_path):
    url = queue_limited_server.grpc_url
    missing = run_cli(*_cmr_args(manifest, tmp_path / "a2c", url, "--view", "A2C"))
    assert missing.returncode == 2
    assert f"model cmr_a2c_scar is not in the model repository on the Triton server at {url}" in missing.stderr
    client = tritonclient.grpc.InferenceServerClient(url)
    client.unload_model("cmr_a4c_scar")
    try:
        unloaded = run_cli(*_cmr_args(manifest, tmp_path / "a4c", url))
    finally:
        client.load_model("cmr_a4c_scar")
        client.load_model("cmr_a4c")
    assert unloaded.returncode == 2 and "Traceback" not in unloaded.stderr
    assert "model cmr_a4c_scar is not ready (UN" in unloaded.stderr  # UNLOADING or UNAVAILABLE: unloaded
    assert not (tmp_path / "a4c" / "records.jsonl").exists()


def test_decoding_stays_a_bounded_window_ahead_of_inference():
    drawn = []

    def jobs():
        for i in range(100):
            drawn.append(i)
            yield i, (abs, -i)

    for count, (job, result) in enumerate(ordered_results(decode_executor(0), jobs(), window=5), start=1):
        assert result == job[0] and len(drawn) <= count + 4  # never more than `window` decoded, not consumed

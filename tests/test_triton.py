"""The Triton path against a real tritonserver (nvidia-pytriton, Python backend, CPU)."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_cli

from echodeploy.backends.base import check_model
from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
from echodeploy.backends.triton import TritonBackend
from echodeploy.errors import BackendError, RequestError
from echodeploy.export.triton.repository import (
    exported_models,
    model_config,
    parse_config,
    render_config,
    trt_plan_config,
)
from echodeploy.samples import synthetic_echo, write_avi
from echodeploy.specs import cmr_model


def _clips(batch, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, 16, 112, 112), dtype=np.uint8)


def test_every_config_parses_with_tritons_schema(triton):
    configs = sorted(Path(triton.repository).glob("*/config.pbtxt"))
    assert {c.parent.name for c in configs} == {"cmr_a4c_scar", "cmr_a4c_t1", "cmr_a4c", "mmode_lvid", "mmode_quality"}
    for path in configs:
        config = parse_config(path.read_text())
        assert config.max_batch_size == 4
        if config.platform == "ensemble":
            assert [s.model_name for s in config.ensemble_scheduling.step] == ["cmr_a4c_scar", "cmr_a4c_t1"]
        else:
            assert config.backend == "python" and config.dynamic_batching.preferred_batch_size == [4]
            assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
            warmup = config.model_warmup[0].inputs
            assert set(warmup) == {i.name for i in config.input} and all(w.zero_data for w in warmup.values())
            assert config.version_policy.latest.num_versions == 1
            assert (path.parent / "1" / "model.py").exists()


def test_gpu_target_configs(mmode_repository):
    repository = mmode_repository
    for spec, metadata in exported_models(repository):
        gpu = parse_config(render_config(model_config(spec, metadata, "gpu", 32)))
        assert gpu.backend == "onnxruntime" and gpu.instance_group[0].kind == gpu.instance_group[0].KIND_GPU
        trt = gpu.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        assert trt.parameters["trt_engine_cache_enable"] == "1"
        expected = {"clip": "clip:32x3x16x112x112",
                    "window": "window:32x1x256x256"}[spec.inputs[0].name]
        assert trt.parameters["trt_profile_max_shapes"].startswith(expected)
        plan = parse_config(render_config(trt_plan_config(spec, metadata, 32)))
        assert plan.platform == "tensorrt_plan" and not plan.backend
        assert plan.parameters["echodeploy.task"].string_value == spec.task


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_triton_matches_embedded(triton, repository, protocol):
    url = triton.grpc_url if protocol == "grpc" else triton.http_url
    remote = TritonBackend([url], protocol=protocol)
    local = OnnxRuntimeBackend(repository)
    try:
        for batch in (1, 3, 7):  # 7 > max_batch_size: split into chunks client-side
            clips = _clips(batch, seed=batch)
            via_ensemble = remote.infer("cmr_a4c", {"clip": clips}, ["scar_prob", "t1_value"])
            for task, output in (("scar", "scar_prob"), ("t1", "t1_value")):
                expected = local.infer(f"cmr_a4c_{task}", {"clip": clips})[output]
                direct = remote.infer(f"cmr_a4c_{task}", {"clip": clips})[output]
                assert via_ensemble[output].shape == (batch, 1) and via_ensemble[output].size
                np.testing.assert_allclose(via_ensemble[output], expected, atol=1e-5)
                np.testing.assert_allclose(direct, expected, atol=1e-5)
    finally:
        remote.close()


def test_metadata_is_verified_on_connect(triton):
    backend = TritonBackend([triton.grpc_url])
    info = backend.model_info("cmr_a4c_scar")
    check_model(cmr_model("A4C", "scar"), info)
    assert info.untrained and info.max_batch_size == 4
    with pytest.raises(BackendError, match=r"task 'scar' \(expected 't1'\)"):
        check_model(cmr_model("A4C", "t1"), info)
    with pytest.raises(BackendError, match="model cmr_plax_scar is not in the model repository"):
        backend.model_info("cmr_plax_scar")
    backend.close()


def test_rejected_request_gets_the_servers_reason(triton):
    backend = TritonBackend([triton.grpc_url], shared_memory=False)
    bad = np.zeros((2, 3, 8, 112, 112), np.uint8)
    with pytest.raises(RequestError, match="rejected the request"):
        backend.infer("cmr_a4c_scar", {"clip": bad})
    assert backend.infer("cmr_a4c_scar", {"clip": _clips(2)})["scar_prob"].shape == (2, 1)
    backend.close()


def test_unreachable_server_is_one_clear_line(tmp_path):
    from echodeploy.client.tritonserver import free_port

    result = run_cli("cmr", str(tmp_path), "--out", str(tmp_path / "o"), "--view", "A4C",
                     "--backend", "triton", "--url", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2 and "unreachable" in result.stderr and "Traceback" not in result.stderr


def test_cmr_cli_on_triton_equals_embedded(triton, repository, tmp_path):
    data = tmp_path / "data"
    for i in range(5):
        write_avi(data / f"v{i}.avi", synthetic_echo(34 + i, seed=i))
    (data / "broken.avi").write_bytes(b"junk" * 10)
    common = ["--view", "A4C", "--task", "scar,t1", "--batch-size", "3", "--repository", str(repository)]
    # the Triton cpu target runs ONNX Runtime: compare it with the embedded ONNX Runtime
    embedded = run_cli("cmr", str(data), "--out", str(tmp_path / "e"), *common, "--backend", "onnxruntime")
    served = run_cli("cmr", str(data), "--out", str(tmp_path / "t"), *common, "--backend", "triton",
                     "--url", triton.grpc_url, "--url", triton.grpc_url)  # two URLs: round-robin
    assert embedded.returncode == served.returncode == 1, served.stderr
    a, b = pd.read_csv(tmp_path / "e" / "predictions.csv"), pd.read_csv(tmp_path / "t" / "predictions.csv")
    assert a["status"].tolist() == b["status"].tolist() == ["unreadable"] + ["ok"] * 5
    for column in ("scar_prob", "t1_value"):
        np.testing.assert_allclose(a[column], b[column], atol=1e-5)


def test_server_statistics_cover_the_ensemble_steps(triton):
    backend = TritonBackend([triton.grpc_url])
    backend.infer("cmr_a4c", {"clip": _clips(2)}, ["scar_prob", "t1_value"])
    time.sleep(0.5)  # statistics are updated just after the response
    (stats,) = backend.server_statistics()
    by_name = {m["name"]: m for m in stats["model_stats"]}
    for name in ("cmr_a4c", "cmr_a4c_scar", "cmr_a4c_t1"):
        success = by_name[name]["inference_stats"]["success"]
        assert int(success["count"]) >= 1
    assert int(by_name["cmr_a4c_scar"]["inference_stats"]["compute_infer"]["ns"]) > 0
    backend.close()


@pytest.mark.usefixtures("triton")  # the cpu-target configs `serve` needs; a server test
def test_serve_command_starts_and_stops_cleanly(repository, tmp_path):
    from echodeploy.client.tritonserver import free_port

    grpc, http, metrics = free_port(), free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "echodeploy", "serve", "--repository", str(repository),
         "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics),
         "--server-env", str(ROOT / ".venv-server")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [""]
        deadline = time.time() + 180
        while "ready" not in lines[-1] and time.time() < deadline and process.poll() is None:
            lines.append(process.stdout.readline())
        assert f"grpc 127.0.0.1:{grpc}" in lines[-1], "".join(lines) + process.stdout.read()
        backend = TritonBackend([f"127.0.0.1:{grpc}"])
        assert backend.infer("cmr_a4c_scar", {"clip": _clips(1)})["scar_prob"].shape == (1, 1)
        backend.close()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    assert "stopped" in process.stdout.read()


def test_tensorrt_missing_is_a_clear_error(triton, repository):
    result = run_cli("export", "--untrained", "--view", "A4C", "--task", "scar", "--repository",
                     str(repository), "--target", "gpu", "--tensorrt")
    assert result.returncode == 2 and "TensorRT is not available here" in result.stderr
    assert parse_config((repository / "cmr_a4c_scar" / "config.pbtxt").read_text()).backend == "python"


def test_docker_compose_is_ready_for_gpu_nodes():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    triton = compose["services"]["triton"]
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    release = triton["image"].split(":")[1]
    assert compose["services"]["export"]["image"] == f"nvcr.io/nvidia/tensorrt:{release}"
    devices = triton["deploy"]["resources"]["reservations"]["devices"][0]
    assert devices["capabilities"] == ["gpu"]
    assert "./model_repository:/models:ro" in triton["volumes"]
    assert any(v.startswith("trt_cache:") for v in triton["volumes"])
    assert int(triton["shm_size"].rstrip("gb")) >= 1
    assert all(p.startswith("${TRITON_BIND:-127.0.0.1}:") for p in triton["ports"])
    assert "/v2/health/ready" in " ".join(triton["healthcheck"]["test"])
    assert "--tensorrt" in " ".join(compose["services"]["export"]["command"])


def test_mmode_cli_on_triton_equals_embedded(triton, tmp_path):
    from echodeploy.samples import synthetic_mmode, write_mmode_dicom

    data = tmp_path / "study"
    for i in range(2):
        write_mmode_dicom(data / f"m{i}.dcm", synthetic_mmode(length=1400, seed=i)[0])
    common = ["mmode", str(data), "--mass", "20", "--no-figures", "--repository", str(triton.repository),
              "--batch-size", "3"]
    embedded = run_cli(*common, "--out", str(tmp_path / "e"), "--backend", "onnxruntime")
    served = run_cli(*common, "--out", str(tmp_path / "t"), "--backend", "triton", "--url", triton.grpc_url)
    assert embedded.returncode == served.returncode == 0, served.stderr
    a, b = pd.read_csv(tmp_path / "e" / "features_stats.csv"), pd.read_csv(tmp_path / "t" / "features_stats.csv")
    assert (a["status"] == "ok").all() and a["windows"].tolist() == b["windows"].tolist()
    numeric = a.select_dtypes("number").columns
    np.testing.assert_allclose(a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=1e-5, equal_nan=True)

"""Reduced-precision export, agreement reports and `echodeploy bench` in a tiny configuration."""

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli

from echodeploy.agreement import compare_columns, compare_outputs
from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
from echodeploy.backends.torch import TorchBackend
from echodeploy.benchmarks.bench import measure, torch_module
from echodeploy.export.calibration import calibration_feeds
from echodeploy.export.mmode import mmode_network
from echodeploy.export.precision import comparable_feeds
from echodeploy.repository import model_file
from echodeploy.specs import MMODE_LVID, cmr_model, mmode_model, model_spec

POINT_FIELDS = {"model", "backend", "batch", "concurrency", "throughput", "avg_ms", "p50_ms", "p90_ms", "p95_ms",
                "p99_ms", "windows", "stable", "requests", "latencies_ms", "roofline", "roofline_peak"}
SERVER_FIELDS = {"queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms"}


def test_compare_outputs_flags_what_exceeds_the_thresholds():
    reference = np.linspace(0.1, 0.9, 20)
    close = compare_outputs("binary", reference, reference + 0.01)
    assert close["passed"] and close["mean_abs_diff"] == pytest.approx(0.01) and close["correlation"] > 0.99
    assert not compare_outputs("binary", reference, reference[::-1])["passed"]
    assert not compare_outputs("regression", reference * 1000, reference * 1000 * 1.05)["passed"]
    masks = np.zeros((2, 256, 256), bool)
    flipped = masks.copy()
    flipped[0, :10] = True  # 10 of 512 rows: 98% agreement
    assert compare_outputs("segmentation", masks, masks)["mask_agreement"] == 1.0
    assert not compare_outputs("segmentation", masks, flipped)["passed"]


def test_compare_columns_joins_on_the_key():
    import pandas as pd

    a = pd.DataFrame({"file": ["x", "y"], "hr": [400.0, 500.0]})
    b = pd.DataFrame({"file": ["y", "x"], "hr": [510.0, 400.0]})
    report = compare_columns(a, b, "file", ["hr"])
    assert report["rows"] == 2 and report["hr"]["max_abs_change"] == 10.0


@pytest.mark.slow
def test_untrained_networks_respond_to_their_input(repository):
    """BatchNorm re-estimated on echo-like clips: outputs differ between clips, and torch and
    the exported ONNX file (same seed) agree."""
    spec = cmr_model("A4C", "scar")
    feeds = calibration_feeds(spec, 4, seed=50)
    clips = np.concatenate([f["clip"] for f in feeds])
    torch_out = TorchBackend({spec.name: (spec, torch_module(spec, None, 0))}).infer(spec.name, {"clip": clips})
    onnx_out = OnnxRuntimeBackend(repository).infer(spec.name, {"clip": clips})
    np.testing.assert_allclose(torch_out["scar_prob"], onnx_out["scar_prob"], atol=1e-5)
    assert np.ptp(onnx_out["scar_prob"]) > 1e-3


@pytest.mark.slow
def test_identity_profile_weights_return_the_mask():
    spec = mmode_model(MMODE_LVID)
    module = mmode_network(spec, None, 0)
    (feed,) = comparable_feeds(spec, calibration_feeds(spec, 1))
    with torch.no_grad():
        mask = module(torch.from_numpy(feed["window"]), torch.from_numpy(feed["profile_weights"])).numpy()
        logits = module.net(torch.from_numpy(feed["window"])).numpy()
    assert mask.shape == (1, 256, 256)
    np.testing.assert_array_equal(mask[0], (logits[0, 0] > 0).astype(np.float32))


def test_measure_reports_percentiles_and_stability():
    point = measure(lambda: sum(range(1000)), items_per_request=2, concurrency=2, duration_s=None, requests=5,
                    max_windows=3)
    assert point["requests"] == 15 and point["windows"] == 3 and point["throughput"] > 0
    assert point["p50_ms"] <= point["p90_ms"] <= point["p99_ms"]


@pytest.mark.slow
def test_export_int8_stores_and_prints_agreement(tmp_path):
    result = run_cli("export", "--untrained", "--view", "A4C", "--task", "scar", "--precision", "int8",
                     "-r", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "int8 vs fp32: mean |delta|" in result.stdout
    model = onnx.load(str(model_file(tmp_path, "cmr_a4c_scar")))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["echodeploy.precision"] == "int8"
    agreement = json.loads(meta["echodeploy.agreement"])
    assert agreement["items"] == 8 and "passed" in agreement and agreement["fp32_spread"] > 0
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)


def test_export_refuses_bf16_with_the_alternative(tmp_path):
    result = run_cli("export", "--untrained", "--precision", "bf16", "-r", str(tmp_path))
    assert result.returncode == 2
    assert "torch-bf16" in result.stderr and not list(tmp_path.iterdir())


def test_bench_tiny_configuration(tmp_path, triton):
    """Two points per backend (embedded fp32, torch bf16, a running tritonserver); every field present."""
    out = tmp_path / "bench"
    result = run_cli("bench", "--model", "cmr_a4c_scar", "--backend", "onnxruntime,torch-bf16,triton",
                     "--url", triton.grpc_url, "--batch-size", "1", "--concurrency", "1,2", "--requests", "1",
                     "--max-windows", "3", "--mode", "model", "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "bench.json").read_text())
    assert {"date", "machine", "peaks", "config", "points", "end_to_end", "agreement"} <= set(report)
    assert report["peaks"]["fp32_matmul_gflops"] > 0
    measured = report["peaks_measured"]  # fractions are held to the higher of before and after
    for name, peak in report["peaks"].items():
        assert peak == max(measured["before"][name], measured["after"][name])
    for point in report["points"]:
        peak = report["peaks"][f"{point['roofline_peak']}_matmul_gflops"]
        flops = model_spec(point["model"]).flops_per_item
        assert point["roofline"] == pytest.approx(point["throughput"] * flops / 1e9 / peak)
    assert len(report["points"]) == 6
    for point in report["points"]:
        assert POINT_FIELDS <= set(point), POINT_FIELDS - set(point)
        assert point["throughput"] > 0 and point["requests"] == 3 * point["concurrency"]
    for point in (p for p in report["points"] if p["backend"] == "triton"):
        assert set(point["server"]) == {"cmr_a4c", "cmr_a4c_scar"}  # the ensemble and its step
        assert all(SERVER_FIELDS == set(times) for times in point["server"].values())
        assert point["server"]["cmr_a4c_scar"]["compute_infer_ms"] > 0
    (agreement,) = report["agreement"]
    assert agreement["backend"] == "torch-bf16" and {"mean_abs_diff", "passed"} <= set(agreement)
    markdown = (out / "bench.md").read_text()
    assert "## Model only" in markdown and "## Triton server-side" in markdown and "## Agreement" in markdown
    for plot in ("throughput.png", "p99.png", "latency.png"):
        assert (out / plot).stat().st_size > 1000
    assert "torch-bf16 vs fp32" in result.stdout


def test_fp16_variant_of_the_quality_model(tmp_path):
    """fp16 weights, fp32 inputs and outputs kept, agreement measured against fp32 and passing."""
    from echodeploy.export.precision import export_at_precision

    spec = mmode_model("mmode_quality")
    path = model_file(tmp_path, spec.name)
    report = export_at_precision(mmode_network(spec, None, 0), spec, path, spec.metadata(), "fp16", atol=1e-4)
    assert report.precision == "fp16" and report.agreement["passed"], report.agreement
    assert report.agreement["max_abs_diff"] > 0  # it did change the arithmetic
    model = onnx.load(str(path))
    assert {t.data_type for t in model.graph.initializer} >= {onnx.TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

"""`--backend torch`: bulk runs on PyTorch equal ONNX Runtime's on the same files; padding to
fixed batch shapes, bad requests, reduced-precision agreement, and options it refuses."""

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from echodeploy.backends.torch import TorchBackend, precision_agreement
from echodeploy.errors import BackendError, RequestError
from echodeploy.export.calibration import calibration_feeds
from echodeploy.export.modules import checkpoint_loader, served_module
from echodeploy.export.precision import comparable_feeds
from echodeploy.samples import synthetic_echo, synthetic_mmode, write_avi, write_mmode_dicom
from echodeploy.specs import MASK_PARITY, MMODE_QUALITY, PARITY_ATOL, mmode_model


@pytest.fixture(scope="module")
def echo_manifest(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch_echo")
    for i in range(3):
        write_avi(folder / f"v{i}.avi", synthetic_echo(40, height=112, width=112, seed=30 + i))
    pd.DataFrame({"Study_Unique_ID": ["S0", "S0", "S1"], "Video_Unique_ID": ["v0", "v1", "v2"],
                  "TARGET": [0, 1, 1]}).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


@pytest.mark.slow
def test_cmr_bulk_run_on_torch_equals_onnxruntime(echo_manifest, repository, tmp_path):
    """Same generated videos, the exported ONNX (seed 0) vs torch with the same seeded weights."""
    common = ("cmr", str(echo_manifest), "--view", "A4C", "--task", "scar", "--batch-size", "2", "--workers", "0")
    onnx = run_cli(*common, "--out", str(tmp_path / "onnx"), "--repository", str(repository), "--backend", "onnxruntime")
    assert onnx.returncode == 0, onnx.stderr
    torch_run = run_cli(*common, "--out", str(tmp_path / "torch"), "--backend", "torch", "--untrained")
    assert torch_run.returncode == 0, torch_run.stderr
    a, b = (pd.read_csv(tmp_path / name / "predictions.csv") for name in ("onnx", "torch"))
    assert (a["status"] == "ok").all() and (b["status"] == "ok").all() and b["untrained"].all()
    assert np.ptp(a["scar_prob"]) > 1e-4  # the outputs follow the clip: equality means something
    assert np.abs(a["scar_prob"] - b["scar_prob"]).max() <= PARITY_ATOL


@pytest.mark.slow
def test_mmode_bulk_run_on_torch_equals_onnxruntime(mmode_repository, tmp_path):
    trace, _ = synthetic_mmode(length=900, heart_rate_bpm=480, seed=5)
    write_mmode_dicom(tmp_path / "data" / "mouse.dcm", trace)
    common = ("mmode", str(tmp_path / "data"), "--mass", "22", "--no-figures")
    onnx = run_cli(*common, "--out", str(tmp_path / "onnx"), "--repository", str(mmode_repository),
                   "--backend", "onnxruntime")
    assert onnx.returncode == 0, onnx.stderr
    torch_run = run_cli(*common, "--out", str(tmp_path / "torch"), "--backend", "torch", "--untrained")
    assert torch_run.returncode == 0, torch_run.stderr
    a, b = (pd.read_csv(tmp_path / name / "features_stats.csv") for name in ("onnx", "torch"))
    assert list(a["status"]) == list(b["status"]) == ["ok"]
    numbers = [c for c in a.columns if a[c].dtype.kind in "fi"]
    assert "lvid_d_median_mm" in numbers and "good_windows" in numbers
    np.testing.assert_allclose(b[numbers].to_numpy(float), a[numbers].to_numpy(float), atol=PARITY_ATOL)


def test_both_mmode_models_match_onnxruntime_at_the_output(mmode_repository):
    """Probabilities within 1e-4; masks (identity profile weights) as close as export requires:
    a pixel whose logit is within rounding of 0 may flip between two fp32 implementations."""
    from echodeploy.backends.onnxruntime import OnnxRuntimeBackend

    onnx, torch_backend = OnnxRuntimeBackend(mmode_repository), TorchBackend(loader=checkpoint_loader(None))
    for name, output in (("mmode_quality", "quality_prob"), ("mmode_lvid", "lvid_profile")):
        spec = mmode_model(name)
        feeds = comparable_feeds(spec, calibration_feeds(spec, 2, seed=300))
        feeds = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        got, want = (b.infer(name, feeds, [output])[output] for b in (torch_backend, onnx))
        if name == "mmode_lvid":
            assert got.shape == (2, 256, 256) and ((got > 0.5) == (want > 0.5)).mean() >= MASK_PARITY
        else:
            assert np.abs(got - want).max() <= PARITY_ATOL, name
        assert torch_backend.model_info(name).metadata == onnx.model_info(name).metadata | {
            "echodeploy.exporter": f"torch-{torch.__version__}"}


def test_fixed_batch_shapes_pad_and_drop_the_padding():
    spec = mmode_model(MMODE_QUALITY)
    module, _ = served_module(spec, None)
    feeds = calibration_feeds(spec, 3, seed=7)
    windows = np.concatenate([f["window"] for f in feeds])
    plain = TorchBackend({spec.name: (spec, module)}).infer(spec.name, {"window": windows})["quality_prob"]
    padded = TorchBackend({spec.name: (spec, module)}, fixed_batch=2).infer(spec.name, {"window": windows})
    assert padded["quality_prob"].shape == (3, 1)  # 2 + (1 padded to 2), padding dropped
    np.testing.assert_allclose(padded["quality_prob"], plain, atol=1e-6)
    with pytest.raises(RequestError, match="window must be float32"):
        TorchBackend({spec.name: (spec, module)}).infer(spec.name, {"window": windows.astype(np.uint8)})
    with pytest.raises(BackendError, match="CUDA graphs need --device cuda"):
        TorchBackend({spec.name: (spec, module)}, graph="cuda-graph", fixed_batch=2)


def test_reduced_precision_reports_its_agreement_with_fp32():
    spec = mmode_model(MMODE_QUALITY)
    module, _ = served_module(spec, None)
    bf16 = TorchBackend({spec.name: (spec, module)}, precision="bf16")
    report = precision_agreement(bf16, spec, module, items=4)
    assert report["items"] == 4 and report["max_abs_diff"] > 0 and "passed" in report
    loaded = TorchBackend(loader=checkpoint_loader(None, precision="bf16"), precision="bf16")
    assert '"items": 8' in loaded.model_info(spec.name).metadata["echodeploy.agreement"]


def test_torch_options_are_refused_where_they_do_not_apply(echo_manifest, repository, tmp_path):
    base = ("cmr", str(echo_manifest), "--view", "A4C", "--task", "scar", "--out", str(tmp_path))
    result = run_cli(*base, "--inference-precision", "bf16", "--repository", str(repository))
    assert result.returncode == 2 and "--inference-precision: only with --backend torch" in result.stderr
    result = run_cli(*base, "--backend", "torch")
    assert result.returncode == 2 and "--weights-dir DIR, or --untrained" in result.stderr
    if not torch.cuda.is_available():
        result = run_cli(*base, "--backend", "torch", "--untrained", "--device", "cuda")
        assert result.returncode == 2 and "sees no CUDA GPU" in result.stderr

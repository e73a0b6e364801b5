"""Export the M-mode networks (CardioNet quality, QuickNAT segmentation) into a model repository.

Served graphs keep pixels on the server: the quality model normalises windows itself, and
the segmentation model thresholds its logits and returns per-column mask counts and row
sums (the LVID profile) instead of 256x256 masks.
"""

from __future__ import annotations

import tempfile
import zlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from echodeploy.errors import CheckpointError, ExportError
from echodeploy.export.calibration import calibration_feeds, reestimate_batchnorm
from echodeploy.export.cardionet import CardioNet
from echodeploy.export.checkpoints import load_strict, read_checkpoint
from echodeploy.export.onnx_export import ExportReport, export_metadata, is_current
from echodeploy.export.precision import export_at_precision
from echodeploy.export.quicknat import QuickNAT
from echodeploy.repository import model_file
from echodeploy.specs import MMODE_LVID, MMODE_QUALITY, ModelSpec, mmode_model

QUALITY_CHECKPOINT, SEGMENTATION_CHECKPOINT = "cardionet.pt", "quicknat.pt"
MASK_AGREEMENT = 0.999  # fraction of mask pixels ONNX and torch must agree on
LOGIT_RTOL = 0.05  # logit tolerance relative to the largest logit (max-pool ties move blobs)


class ServedQuality(nn.Module):
    """Grey window 0..255 -> (x/255 - 0.5)/0.5 -> CardioNet -> probability (N, 1)."""

    def __init__(self, net: CardioNet):
        super().__init__()
        self.net = net

    def forward(self, window: Tensor) -> Tensor:
        return self.net((window / 255.0 - 0.5) / 0.5).unsqueeze(1)


class ServedLvidProfile(nn.Module):
    """Grey window 0..255 -> QuickNAT -> mask (sigmoid >= 0.5 rounded, i.e. logit > 0) -> weighted row sums.

    profile[n, k, c] = sum_r weights[n, k, r] * mask[n, r, c]: with the weights of a nearest
    resize to height H, the per-column pixel counts (k=0) and row-index sums (k=1) of the
    resized mask.
    """

    def __init__(self, net: QuickNAT):
        super().__init__()
        self.net = net

    def forward(self, window: Tensor, profile_weights: Tensor) -> Tensor:
        mask = (self.net(window) > 0).to(profile_weights.dtype).squeeze(1)
        with torch.autocast(window.device.type, enabled=False):  # row sums stay exact under bf16 autocast
            return torch.bmm(profile_weights, mask)


def load_cardionet(path: Path, bn_mode: str) -> CardioNet:
    """CardioNet from Echo2Pheno's checkpoint (a plain state dict)."""
    return load_strict(CardioNet(bn_mode), read_checkpoint(path), source=str(path)).eval()


def load_quicknat(path: Path, bn_mode: str) -> QuickNAT:
    """QuickNAT from Echo2Pheno's checkpoint (`{'net_state_dict': ...}`)."""
    checkpoint = read_checkpoint(path)
    if "net_state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: expected a dict with 'net_state_dict', found keys "
                              f"{', '.join(map(str, list(checkpoint)[:6]))}")
    return load_strict(QuickNAT(bn_mode), checkpoint["net_state_dict"], source=str(path)).eval()


BATCHNORM_WINDOWS = 8


def _served(spec: ModelSpec, net: nn.Module) -> nn.Module:
    return (ServedQuality(net) if spec.name == MMODE_QUALITY else ServedLvidProfile(net)).eval()


def seeded_mmode_network(spec: ModelSpec, seed: int) -> nn.Module:
    """Untrained network with reproducible random weights; in bn_mode 'running' its BatchNorm
    statistics are estimated on generated windows ('seed' mode normalises each window itself)."""
    torch.manual_seed(seed + zlib.crc32(spec.name.encode()))
    net = CardioNet(spec.bn_mode) if spec.name == MMODE_QUALITY else QuickNAT(spec.bn_mode)
    if spec.bn_mode == "running":
        reestimate_batchnorm(_served(spec, net), calibration_feeds(spec, BATCHNORM_WINDOWS, seed=seed))
    return net.eval()


def mmode_network(spec: ModelSpec, checkpoint: Path | None, seed: int = 0) -> nn.Module:
    """The served module of `spec` with published weights, or seeded ones without a checkpoint."""
    if checkpoint is None:
        return _served(spec, seeded_mmode_network(spec, seed))
    load = load_cardionet if spec.name == MMODE_QUALITY else load_quicknat
    return _served(spec, load(checkpoint, spec.bn_mode))


def check_segmentation(net: QuickNAT, spec: ModelSpec) -> float:
    """Export the bare network to a scratch file and compare logits and masks with torch.

    Returns the mask agreement; raises when logits differ beyond LOGIT_RTOL of their
    magnitude or fewer than 99.9% of mask pixels agree.
    """
    rng = np.random.default_rng(0)
    windows = rng.uniform(0, 255, size=(3, 1, 256, 256)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "quicknat.onnx"
        torch.onnx.export(net, (torch.from_numpy(windows[:1]),), str(path), input_names=["window"],
                          output_names=["logits"], dynamic_axes={"window": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"window": windows})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(windows)).numpy()
    agreement = float(((got > 0) == (ref > 0)).mean())
    diff, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    if agreement < MASK_AGREEMENT or diff > LOGIT_RTOL * scale:
        raise ExportError(f"{spec.name}: ONNX logits differ from torch by {diff:.3g} (scale {scale:.3g}), "
                          f"mask agreement {agreement:.4%} (< {MASK_AGREEMENT:.1%} fails)")
    return agreement


def export_mmode_models(repository: Path, weights_dir: Path | None = None, bn_mode: str = "seed",
                        seed: int = 0, force: bool = False, precision: str = "fp32",
                        calibration: Path | None = None) -> list[tuple[ModelSpec, ExportReport | None, bool]]:
    """Export both M-mode models: checkpoints from `weights_dir` (cardionet.pt, quicknat.pt) or seeded weights.

    `precision` other than fp32 converts the parity-checked fp32 export (see `export.precision`).
    """
    results = []
    for name, filename in ((MMODE_QUALITY, QUALITY_CHECKPOINT), (MMODE_LVID, SEGMENTATION_CHECKPOINT)):
        spec = mmode_model(name, bn_mode)
        checkpoint = Path(weights_dir) / filename if weights_dir is not None else None
        if checkpoint is not None and not checkpoint.is_file():
            raise CheckpointError(f"no {filename} in {weights_dir} (needed for {name})")
        metadata = export_metadata(spec, checkpoint, seed, precision)
        path = model_file(repository, name)
        if not force and is_current(path, metadata):
            results.append((spec, None, checkpoint is None))
            continue
        module = mmode_network(spec, checkpoint, seed)
        if name == MMODE_QUALITY:
            report = export_at_precision(module, spec, path, metadata, precision, calibration, atol=1e-4)
        else:
            agreement = check_segmentation(module.net, spec)
            # the profile sums many thresholded pixels: allow the 0.1% of pixels that may flip
            report = export_at_precision(module, spec, path, metadata, precision, calibration,
                                         atol=(1 - MASK_AGREEMENT) * 256 * 256)
            report.max_abs_diff["mask_agreement"] = agreement
        results.append((spec, report, checkpoint is None))
    return results

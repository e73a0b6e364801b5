"""Export the M-mode networks (CardioNet quality, QuickNAT segmentation) into a model repository.

Served graphs keep pixels on the server: the quality model normalises windows itself, and
the segmentation model thresholds its logits and returns per-column mask counts and row
sums (the LVID profile) instead of 256x256 masks.
"""

from __future__ import annotations

import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from echodeploy.errors import CheckpointError, ExportError
from echodeploy.export.calibration import calibration_feeds, reestimate_batchnorm
from echodeploy.export.cardionet import CardioNet
from echodeploy.export.checkpoints import load_strict, read_checkpoint
from echodeploy.export.onnx_export import ExportReport, export_metadata, is_current
from echodeploy.export.precision import Precisions, export_at_precision, precision_of
from echodeploy.export.quicknat import QuickNAT
from echodeploy.export.served import ServedLvidProfile, ServedQuality
from echodeploy.repository import model_file
from echodeploy.specs import (
    MASK_PARITY,
    MMODE_LVID,
    MMODE_QUALITY,
    MMODE_WINDOW,
    PARITY_ATOL,
    WINDOW,
    ModelSpec,
    mmode_model,
)

LOGIT_RTOL = 0.05  # logit tolerance relative to the largest logit (max-pool ties move blobs)


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


@dataclass(frozen=True)
class MModeNetwork:
    """What differs per M-mode model; adding a model is one entry in `MMODE_NETWORKS`."""

    checkpoint: str  # file name in --weights-dir
    build: Callable[[str], nn.Module]  # bn_mode -> network with random weights
    load: Callable[[Path, str], nn.Module]  # (checkpoint, bn_mode) -> network with published weights
    served: Callable[[nn.Module], nn.Module]  # network -> the module the ONNX file holds
    atol: float  # largest |ONNX - torch| of the served outputs accepted at export
    check: Callable[[nn.Module, ModelSpec], float] | None = None  # extra parity check of the bare network


def check_segmentation(net: QuickNAT, spec: ModelSpec) -> float:
    """Export the bare network to a scratch file and compare logits and masks with torch.

    Returns the mask agreement; raises when logits differ beyond LOGIT_RTOL of their
    magnitude or fewer than 99.9% of mask pixels agree.
    """
    rng = np.random.default_rng(0)
    windows = rng.uniform(0, 255, size=(3, 1, MMODE_WINDOW, MMODE_WINDOW)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "quicknat.onnx"
        torch.onnx.export(net, (torch.from_numpy(windows[:1]),), str(path), input_names=[WINDOW],
                          output_names=["logits"], dynamic_axes={WINDOW: {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {WINDOW: windows})[0]
    with torch.no_grad():
        ref = net(torch.from_numpy(windows)).numpy()
    agreement = float(((got > 0) == (ref > 0)).mean())
    diff, scale = float(np.abs(got - ref).max()), float(np.abs(ref).max())
    if agreement < MASK_PARITY or diff > LOGIT_RTOL * scale:
        raise ExportError(f"{spec.name}: ONNX logits differ from torch by {diff:.3g} (scale {scale:.3g}), "
                          f"mask agreement {agreement:.4%} (< {MASK_PARITY:.1%} fails)")
    return agreement


MMODE_NETWORKS = {
    MMODE_QUALITY: MModeNetwork(checkpoint="cardionet.pt", build=CardioNet, load=load_cardionet,
                                served=ServedQuality, atol=PARITY_ATOL),
    # the profile sums many thresholded pixels: allow the 0.1% of pixels that may flip
    MMODE_LVID: MModeNetwork(checkpoint="quicknat.pt", build=QuickNAT, load=load_quicknat,
                             served=ServedLvidProfile, atol=(1 - MASK_PARITY) * MMODE_WINDOW**2,
                             check=check_segmentation),
}


def seeded_mmode_network(spec: ModelSpec, seed: int) -> nn.Module:
    """Untrained network with reproducible random weights; in bn_mode 'running' its BatchNorm
    statistics are estimated on generated windows ('seed' mode normalises each window itself)."""
    network = MMODE_NETWORKS[spec.name]
    torch.manual_seed(seed + zlib.crc32(spec.name.encode()))
    net = network.build(spec.bn_mode)
    if spec.bn_mode == "running":
        reestimate_batchnorm(network.served(net).eval(), calibration_feeds(spec, BATCHNORM_WINDOWS, seed=seed))
    return net.eval()


def mmode_network(spec: ModelSpec, checkpoint: Path | None, seed: int = 0) -> nn.Module:
    """The served module of `spec` with published weights, or seeded ones without a checkpoint."""
    network = MMODE_NETWORKS[spec.name]
    net = seeded_mmode_network(spec, seed) if checkpoint is None else network.load(checkpoint, spec.bn_mode)
    return network.served(net).eval()


def export_mmode_models(repository: Path, weights_dir: Path | None = None, bn_mode: str = "seed",
                        seed: int = 0, force: bool = False, precision: str | Precisions = "fp32",
                        calibration: Path | None = None) -> list[tuple[ModelSpec, ExportReport | None, bool]]:
    """Export both M-mode models: checkpoints from `weights_dir` (cardionet.pt, quicknat.pt) or seeded weights.

    `precision` (one, or per model) other than fp32 converts the parity-checked fp32 export
    (see `export.precision`).
    """
    results = []
    for name, network in MMODE_NETWORKS.items():
        spec = mmode_model(name, bn_mode)
        checkpoint = Path(weights_dir) / network.checkpoint if weights_dir is not None else None
        if checkpoint is not None and not checkpoint.is_file():
            raise CheckpointError(f"no {network.checkpoint} in {weights_dir} (needed for {name})")
        chosen = precision_of(precision, name)
        metadata = export_metadata(spec, checkpoint, seed, chosen)
        path = model_file(repository, name)
        if not force and is_current(path, metadata):
            results.append((spec, None, checkpoint is None))
            continue
        module = mmode_network(spec, checkpoint, seed)
        agreement = network.check(module.net, spec) if network.check else None
        report = export_at_precision(module, spec, path, metadata, chosen, calibration, atol=network.atol)
        if agreement is not None:
            report.max_abs_diff["mask_agreement"] = agreement
        results.append((spec, report, checkpoint is None))
    return results

"""Export the CMR-from-echo networks (one R(2+1)D-18 per view x task) into a model repository."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from echodeploy.errors import CheckpointError
from echodeploy.export.calibration import calibration_feeds, reestimate_batchnorm
from echodeploy.export.checkpoints import load_strict, read_checkpoint, strip_prefix
from echodeploy.export.onnx_export import ExportReport, export_metadata, is_current
from echodeploy.export.precision import Precisions, export_at_precision, precision_of
from echodeploy.export.r2plus1d import R2Plus1D18
from echodeploy.export.served import ServedClipModel
from echodeploy.repository import model_file
from echodeploy.specs import TASKS, VIEWS, ModelSpec, cmr_model

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "m."  # cardiac_mri saves the network as attribute `m` of a wrapper


def find_checkpoints(weights_dir: Path) -> dict[tuple[str, str], Path]:
    """Map `<VIEW>_<stem>.pt` files (published names, any case) to (view, task)."""
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        raise CheckpointError(f"{weights_dir}: weights directory not found")
    by_name = {
        f"{view}_{task.checkpoint_stem}.pt".lower(): (view, name)
        for view in VIEWS
        for name, task in TASKS.items()
    }
    found, unknown = {}, []
    for path in sorted(weights_dir.iterdir()):
        key = by_name.get(path.name.lower())
        if key:
            found[key] = path
        elif path.suffix in (".pt", ".pth"):
            unknown.append(path.name)
    if unknown:
        log.warning("ignoring weights with unknown names: %s (expected e.g. %s)",
                    ", ".join(unknown), ", ".join(sorted(by_name)[:3]))
    return found


def load_cmr_network(path: Path) -> R2Plus1D18:
    """R(2+1)D-18 with weights from a cardiac_mri checkpoint (flat, `m.`-prefixed keys)."""
    state = strip_prefix(read_checkpoint(path), CHECKPOINT_PREFIX)
    return load_strict(R2Plus1D18(num_classes=1), state, source=str(path)).eval()


BATCHNORM_CLIPS = 8


def seeded_network(spec: ModelSpec, seed: int) -> R2Plus1D18:
    """Untrained network with reproducible random weights (distinct per model name), its
    BatchNorm statistics estimated on generated echo clips so that outputs follow the input."""
    torch.manual_seed(seed + zlib.crc32(spec.name.encode()))
    net = R2Plus1D18(num_classes=1)
    reestimate_batchnorm(ServedClipModel(net, spec.kind), calibration_feeds(spec, BATCHNORM_CLIPS, seed=seed))
    return net


def cmr_network(spec: ModelSpec, checkpoint: Path | None, seed: int = 0) -> ServedClipModel:
    """The served module (uint8 clip in) with published weights, or seeded ones without a checkpoint."""
    net = load_cmr_network(checkpoint) if checkpoint else seeded_network(spec, seed)
    return ServedClipModel(net, spec.kind).eval()


@dataclass(frozen=True)
class CmrExport:
    spec: ModelSpec
    report: ExportReport | None  # None when an identical export was already there
    untrained: bool


def export_cmr_models(
    repository: Path,
    views=VIEWS,
    tasks=("wma", "scar"),
    weights_dir: Path | None = None,
    seed: int = 0,
    force: bool = False,
    precision: str | Precisions = "fp32",
    calibration: Path | None = None,
) -> list[CmrExport]:
    """Export each requested view x task: real weights when found, else seeded random ones.

    With a weights directory, a missing checkpoint is an error; without one, every model
    is untrained and its metadata says so. `precision` (one, or per model) other than fp32 converts the
    parity-checked fp32 export (see `export.precision`).
    """
    checkpoints = find_checkpoints(weights_dir) if weights_dir is not None else {}
    results = []
    for view in views:
        for task in tasks:
            spec = cmr_model(view, task)
            ckpt = checkpoints.get((view, task))
            if weights_dir is not None and ckpt is None:
                raise CheckpointError(
                    f"no checkpoint for {view} {task} in {weights_dir} "
                    f"(expected {view}_{TASKS[task].checkpoint_stem}.pt)"
                )
            chosen = precision_of(precision, spec.name)
            metadata = export_metadata(spec, ckpt, seed, chosen)
            path = model_file(repository, spec.name)
            if not force and is_current(path, metadata):
                results.append(CmrExport(spec=spec, report=None, untrained=ckpt is None))
                continue
            report = export_at_precision(cmr_network(spec, ckpt, seed), spec, path, metadata, chosen, calibration)
            results.append(CmrExport(spec=spec, report=report, untrained=ckpt is None))
    return results

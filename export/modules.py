"""The served torch module of any model spec, from the user's published checkpoints or seeded
weights: what export writes as ONNX, and what the torch backend runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import nn

from echodeploy.errors import CheckpointError
from echodeploy.specs import MMODE_LVID, MMODE_QUALITY, ModelSpec, mmode_model, model_spec


def served_module(spec: ModelSpec, weights_dir: Path | None, seed: int = 0) -> tuple[nn.Module, Path | None]:
    """The served module of `spec` (what export writes as ONNX) and its checkpoint: the user's
    published checkpoint from `weights_dir`, or seeded weights (the same as `export --untrained
    --seed`) without one."""
    if spec.family == "cmr":
        from echodeploy.export.cmr import cmr_network, find_checkpoints

        checkpoint = find_checkpoints(weights_dir).get((spec.view, spec.task)) if weights_dir else None
        if weights_dir and checkpoint is None:
            raise CheckpointError(f"no checkpoint for {spec.name} in {weights_dir}")
        return cmr_network(spec, checkpoint, seed), checkpoint
    from echodeploy.export.mmode import MMODE_NETWORKS, mmode_network

    checkpoint = None
    if weights_dir:
        checkpoint = Path(weights_dir) / MMODE_NETWORKS[spec.name].checkpoint
        if not checkpoint.is_file():
            raise CheckpointError(f"no {checkpoint.name} in {weights_dir} (needed for {spec.name})")
    return mmode_network(spec, checkpoint, seed), checkpoint


def checkpoint_loader(weights_dir: Path | None, seed: int = 0, bn_mode: str = "seed",
                      precision: str = "fp32") -> Callable[[str], tuple[ModelSpec, nn.Module, dict[str, str]]]:
    """Load models by served name on first use, declaring the metadata export would write."""
    from echodeploy.export.onnx_export import export_metadata

    def load(name: str):
        spec = mmode_model(name, bn_mode) if name in (MMODE_QUALITY, MMODE_LVID) else model_spec(name)
        module, checkpoint = served_module(spec, weights_dir, seed)
        return spec, module, export_metadata(spec, checkpoint, seed, precision)

    return load

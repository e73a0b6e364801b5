"""Checkpoint loading: `weights_only=True` always, strict key and shape checks, clear errors."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch
from torch import nn

from echodeploy.errors import CheckpointError

_SHOWN = 6  # keys listed per kind of mismatch


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint without executing pickled code (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({first_line})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    return obj


def _listing(keys) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def load_strict(model: nn.Module, state_dict: dict, source: str) -> nn.Module:
    """Load `state_dict` into `model`, refusing missing, unexpected or mis-shaped entries."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and (not torch.is_tensor(state_dict[k]) or state_dict[k].shape != v.shape)
    ]
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)
    return model


def strip_prefix(state_dict: dict, prefix: str) -> dict:
    """Remove `prefix` from keys when every key carries it (cardiac_mri saves `m.`-prefixed keys)."""
    if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict

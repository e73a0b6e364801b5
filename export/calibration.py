"""Example inputs for calibration: INT8 ranges, BatchNorm statistics of untrained networks,
and agreement checks between precisions.

Taken from the user's files (echo videos / cine DICOMs for CMR models, M-mode DICOMs for
M-mode models) or generated echo-like ones; always in the served model's input format,
one item per feed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from echodeploy.errors import EchodeployError, InputError
from echodeploy.preprocessing.clips import DICOM_SUFFIXES, VIDEO_SUFFIXES, load_clips
from echodeploy.preprocessing.mmode import profile_weights, read_mmode, segmentation_windows
from echodeploy.preprocessing.video import make_clips
from echodeploy.samples import synthetic_echo, synthetic_mmode
from echodeploy.specs import CLIP, PROFILE_WEIGHTS, WINDOW, ModelSpec

Feed = dict[str, np.ndarray]


def calibration_feeds(spec: ModelSpec, count: int, source: Path | None = None, seed: int = 0) -> list[Feed]:
    """`count` single-item feeds for `spec`: from the files under `source`, else generated.

    Generated items use seeds from `seed` on, so disjoint seeds give disjoint sets
    (calibrate on one, check agreement on another).
    """
    items = _file_items(spec, count, Path(source)) if source else _generated_items(spec, count, seed)
    if spec.family == "cmr":
        return [{CLIP: item[None]} for item in items]
    feeds = [{WINDOW: item[None]} for item in items]
    if spec.kind == "segmentation":
        weights = profile_weights(spec.inputs[0].shape[-1])[None]
        for feed in feeds:
            feed[PROFILE_WEIGHTS] = weights
    return feeds


def _generated_items(spec: ModelSpec, count: int, seed: int) -> list[np.ndarray]:
    if spec.family == "cmr":
        clip = spec.clip
        return [make_clips(synthetic_echo(clip.window, seed=seed + i, heart_rate_bpm=60 + 5 * (i % 10)), clip)[0]
                for i in range(count)]
    items: list[np.ndarray] = []
    i = 0
    while len(items) < count:
        trace, _ = synthetic_mmode(length=1200, heart_rate_bpm=380 + 20 * (i % 10),
                                   lvid_d_px=80 + i % 20, seed=seed + i)
        items += list(segmentation_windows(trace))
        i += 1
    return items[:count]


def _file_items(spec: ModelSpec, count: int, source: Path) -> list[np.ndarray]:
    """Clips or windows from the files of a folder (or one file), skipping unreadable ones."""
    suffixes = VIDEO_SUFFIXES | DICOM_SUFFIXES if spec.family == "cmr" else DICOM_SUFFIXES
    files = [source] if source.is_file() else sorted(
        p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    items: list[np.ndarray] = []
    for path in files:
        if len(items) >= count:
            break
        try:
            if spec.family == "cmr":
                items += list(load_clips(path, spec.clip)[0])
            else:
                items += list(segmentation_windows(read_mmode(path).trace))
        except InputError:
            continue
    if not items:
        raise EchodeployError(f"{source}: no readable {'videos' if spec.family == 'cmr' else 'M-mode DICOMs'} "
                              "to calibrate on")
    return items[:count]


def reestimate_batchnorm(module: nn.Module, feeds: list[Feed], batch_size: int = 4) -> None:
    """Replace every BatchNorm's running statistics by their average over `feeds`.

    Seeded random networks keep BN's initial statistics (mean 0, variance 1), which makes
    their outputs almost independent of the input; with statistics of echo-like inputs
    they respond to them, so precision comparisons mean something.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches
    module.train()
    with torch.no_grad():
        for start in range(0, len(feeds), batch_size):
            chunk = feeds[start:start + batch_size]
            module(*(torch.from_numpy(np.concatenate([f[name] for f in chunk])) for name in chunk[0]))
    for norm in norms:
        norm.momentum = 0.1
    module.eval()

"""File -> model-ready clips: picks the reader by content, then cuts the clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from echodeploy.errors import InputError
from echodeploy.preprocessing.dicom_cine import read_dicom_cine
from echodeploy.preprocessing.video import Cine, ClipMode, make_clips, read_video, resample_fps
from echodeploy.specs import ClipSpec

VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".m4v", ".mkv", ".wmv"}
DICOM_SUFFIXES = {".dcm", ".dicom", ""}


def is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def read_cine(path: Path, max_frames: int | None = None) -> Cine:
    """Decode a video or cine DICOM; missing, empty and non-video files raise `InputError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except (OSError, ValueError) as exc:  # absent, no permission, name too long, NUL in the name
        raise InputError(f"file not found or not accessible: {path} ({getattr(exc, 'strerror', None) or exc})",
                         "missing") from exc
    if not path.is_file():
        raise InputError(f"not a regular file: {path}", "missing")
    if size == 0:
        raise InputError("empty file (0 bytes)", "unreadable")
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES or (suffix not in VIDEO_SUFFIXES and is_dicom(path)):
        return read_dicom_cine(path)
    if suffix in VIDEO_SUFFIXES:
        return read_video(path, max_frames)
    raise InputError(f"not a video or DICOM file ({suffix})", "not_video")


def load_clips(path: Path, clip: ClipSpec, mode: ClipMode = "first",
               fps: float | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Clips (K, 3, T, H, W) uint8 from one file, plus reader notes.

    With `fps`, frames are first resampled to that rate using the file's own frame rate.
    """
    decode_all = mode == "all" or fps is not None
    cine = read_cine(path, max_frames=None if decode_all else clip.window)
    frames, notes = cine.frames, cine.notes
    if fps is not None:
        if cine.fps is None:
            raise InputError("--fps given but the file states no frame rate", "error")
        frames = resample_fps(frames, cine.fps, fps)
    return make_clips(frames, clip, mode), notes

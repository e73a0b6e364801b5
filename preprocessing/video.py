"""Echo video reading and the cardiac_mri clip: numpy and OpenCV only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple, get_args

import cv2
import numpy as np

from echodeploy.errors import InputError
from echodeploy.specs import ClipSpec

ClipMode = Literal["first", "all"]  # the seed's clip, or every clip start (test-time augmentation)
CLIP_MODES: tuple[str, ...] = get_args(ClipMode)
MAX_DECODED_BYTES = 4 * 2**30  # memory sanity limit: an input whose arrays would take more is refused


class Cine(NamedTuple):
    """Decoded frames (T, H, W, 3) uint8 BGR, frame rate if known, and reader notes."""

    frames: np.ndarray
    fps: float | None
    notes: tuple[str, ...] = ()


def check_frames(frames: np.ndarray) -> None:
    if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
            and frames.shape[-1] == 3):
        got = f"{frames.dtype} {frames.shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"expected (T,H,W,3) uint8 frames, got {got}")


def check_size(nbytes: int, what: str = "decoded frames") -> None:
    """Refuse an input whose `what` would take more than `MAX_DECODED_BYTES`, before allocating it."""
    if nbytes > MAX_DECODED_BYTES:
        raise InputError(f"{what} would take {nbytes / 2**30:.3g} GiB, above the "
                         f"{MAX_DECODED_BYTES / 2**30:.3g} GiB limit", "too_large")


def plausible_fps(value) -> float | None:
    """A frame rate from a header as float, or None when it is missing, unparseable or absurd."""
    try:
        fps = float(value)
    except (TypeError, ValueError):
        return None
    return fps if 0.1 <= fps <= 10_000 else None


def read_video(path: Path, max_frames: int | None = None) -> Cine:
    """Decode up to `max_frames` frames of an AVI/MP4 exactly as OpenCV delivers them (BGR)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise InputError("cannot open as a video (unsupported or corrupt container)", "unreadable")
        fps = plausible_fps(capture.get(cv2.CAP_PROP_FPS))
        frames, nbytes = [], 0
        while max_frames is None or len(frames) < max_frames:
            ok, frame = capture.read()
            if not ok:
                break
            frames.append(frame if frame.ndim == 3 else cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
            nbytes += frames[-1].nbytes
            check_size(nbytes)
    finally:
        capture.release()
    if not frames:
        raise InputError("no decodable frames", "unreadable")
    if len({f.shape for f in frames}) > 1:
        raise InputError("frame size changes within the video (corrupt stream)", "unreadable")
    return Cine(np.stack(frames), fps)


def resample_fps(frames: np.ndarray, fps_in: float, fps_out: float) -> np.ndarray:
    """Nearest-in-time frames at `fps_out` (frame-time aware clips from variable-rate sources)."""
    check_frames(frames)
    if fps_in <= 0 or fps_out <= 0:
        raise ValueError(f"frame rates must be positive, got {fps_in} -> {fps_out}")
    count = int(np.floor((len(frames) - 1) * fps_out / fps_in)) + 1
    index = np.minimum(np.round(np.arange(count) * fps_in / fps_out).astype(int), len(frames) - 1)
    return frames[index]


def center_crop_square(frames: np.ndarray) -> np.ndarray:
    """Centred crop to a 1:1 aspect ratio (the clip's output aspect)."""
    check_frames(frames)
    _, h, w, _ = frames.shape
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return frames[:, y0:y0 + side, x0:x0 + side]


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of every frame to size x size."""
    check_frames(frames)
    if frames.shape[1:3] == (size, size):
        return frames.copy()
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_CUBIC) for f in frames])


def clip_starts(n_frames: int, clip: ClipSpec, mode: ClipMode = "first") -> list[int]:
    """First frame of each clip: the seed's single clip at 0, or every possible start."""
    if n_frames < clip.window:
        raise InputError(f"{n_frames} frames, a clip needs {clip.window}", "too_short")
    return [0] if mode == "first" else list(range(n_frames - clip.window + 1))


def make_clips(frames: np.ndarray, clip: ClipSpec, mode: ClipMode = "first") -> np.ndarray:
    """Clips (K, 3, T, H, W) uint8 from video frames (T, H, W, 3) uint8 BGR."""
    check_frames(frames)
    starts = np.asarray(clip_starts(len(frames), clip, mode))
    index = starts[:, None] + np.arange(clip.frames) * clip.stride  # (K, T) source frames
    needed = np.unique(index)
    prepared = resize_frames(center_crop_square(frames[needed]), clip.size)
    clips = prepared[np.searchsorted(needed, index)]  # (K, T, H, W, C)
    return np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3))

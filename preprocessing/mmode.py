"""M-mode DICOM reading and trace stitching (Echo2Pheno Module I facts): numpy and pydicom only.

A mouse M-mode DICOM holds many RGB frames that overlap in time. The calibrated M-mode
region of (0018,6011) is cut out of each frame, frames are stitched into one long trace,
and the trace is converted to grayscale with the seed's weights. Region bounds are read as
DICOM defines them (inclusive) or, when only that stitches, as the published tool read its
scanner's files (`[min:max]`, max one past the last column and row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom

from echodeploy.errors import InputError
from echodeploy.preprocessing.dicom_cine import decode_frames, read_dataset
from echodeploy.preprocessing.video import check_size
from echodeploy.specs import MMODE_WINDOW

REGION_MMODE = 2  # RegionSpatialFormat of an M-mode region
SEED_REGION_INDEX = 2  # the seed hard-codes the third region
UNIT_SECONDS, UNIT_CM = 4, 3  # PhysicalUnits{X,Y}Direction codes
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140])  # R, G, B
# plausible calibration (typical mouse: 0.00083 s/px, 0.0115 mm/px); outside, features would be nonsense
MIN_SECONDS_PER_PX, MAX_SECONDS_PER_PX = 1e-6, 1.0
MIN_MM_PER_PX, MAX_MM_PER_PX = 1e-4, 10.0


@dataclass(frozen=True)
class MModeTrace:
    """Stitched grayscale trace (H, L) float64 and its calibration."""

    trace: np.ndarray
    seconds_per_px: float
    mm_per_px: float
    notes: tuple[str, ...] = ()


def mmode_region(ds: pydicom.Dataset, shape: tuple[int, int]) -> tuple[tuple[int, int, int, int], float, float, list[str]]:
    """((x0, y0, x1, y1) inclusive, s/px, mm/px, notes) of the calibrated M-mode region."""
    regions = list(ds.get("SequenceOfUltrasoundRegions", []))
    if not regions:
        raise InputError("no Sequence of Ultrasound Regions (0018,6011): the M-mode trace is not calibrated",
                         "no_calibration")
    notes = []
    mmode = [r for r in regions if r.get("RegionSpatialFormat") == REGION_MMODE]
    if mmode:
        region = mmode[0]
    elif len(regions) > SEED_REGION_INDEX:
        region = regions[SEED_REGION_INDEX]
        notes.append(f"no region with RegionSpatialFormat 2 (M-mode); used region {SEED_REGION_INDEX} as the seed does")
    else:
        raise InputError(f"no M-mode region (RegionSpatialFormat 2) among {len(regions)} ultrasound regions",
                         "no_calibration")
    units = (region.get("PhysicalUnitsXDirection"), region.get("PhysicalUnitsYDirection"))
    if units != (UNIT_SECONDS, UNIT_CM):
        raise InputError(f"M-mode region units are {units}, expected (4 seconds, 3 cm) for x and y",
                         "wrong_units")
    try:
        bounds = tuple(int(region[k].value) for k in ("RegionLocationMinX0", "RegionLocationMinY0",
                                                        "RegionLocationMaxX1", "RegionLocationMaxY1"))
        seconds_per_px = float(region.PhysicalDeltaX)
        mm_per_px = abs(float(region.PhysicalDeltaY)) * 10
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        raise InputError(f"M-mode region lacks bounds or calibration ({exc})", "no_calibration") from exc
    x0, y0, x1, y1 = bounds
    height, width = shape
    if not (0 <= x0 < x1 < width and 0 <= y0 < y1 < height):
        raise InputError(f"M-mode region bounds {bounds} (inclusive) fall outside the {width}x{height} image",
                         "bad_region")
    if not (MIN_SECONDS_PER_PX <= seconds_per_px <= MAX_SECONDS_PER_PX and MIN_MM_PER_PX <= mm_per_px <= MAX_MM_PER_PX):
        raise InputError(f"M-mode calibration {seconds_per_px} s/px, {mm_per_px} mm/px is not plausible (expected "
                         f"{MIN_SECONDS_PER_PX}..{MAX_SECONDS_PER_PX} s/px, {MIN_MM_PER_PX}..{MAX_MM_PER_PX} mm/px)",
                         "no_calibration")
    return bounds, seconds_per_px, mm_per_px, notes


def _column_hashes(frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One 64-bit fingerprint per column of an (H, W, C) uint8 frame (wrapping arithmetic)."""
    flat = frame.reshape(frame.shape[0], frame.shape[1], -1).transpose(1, 0, 2).reshape(frame.shape[1], -1)
    return flat.astype(np.uint64) @ weights


@dataclass(frozen=True)
class FrameOverlaps:
    """Per frame after the first: the column where the previous frame's right half reappears
    in it (None: nowhere); `moving` counts the frame pairs that differ at all."""

    offsets: tuple[int | None, ...]
    moving: int

    @property
    def missing(self) -> list[int]:
        """Frames whose overlap with the previous frame was not found."""
        return [index + 1 for index, offset in enumerate(self.offsets) if offset is None]


def find_overlaps(frames: np.ndarray) -> FrameOverlaps:
    """Where the right half of each frame reappears in the next (first offset 0..W/2).

    Columns are compared by 64-bit fingerprints, each frame hashed once, so a frame pair costs
    O(H*W) plus O(W) per candidate offset; candidates are confirmed with an exact comparison.
    Identical frames get offset W - W/2: they add nothing.
    """
    width = frames.shape[2]
    half = width // 2
    weights = np.random.default_rng(0).integers(1, 2**63, size=frames[0, :, 0].size, dtype=np.uint64)
    offsets, moving = [], 0
    previous = _column_hashes(frames[0], weights)
    for index in range(1, len(frames)):
        current, following = frames[index - 1], frames[index]
        found = _column_hashes(following, weights)
        if np.array_equal(current, following):
            offsets.append(width - half)
        else:
            moving += 1
            wanted = previous[width - half:]
            offsets.append(next((int(offset) for offset in np.flatnonzero(found[: width - half + 1] == wanted[0])
                                 if np.array_equal(found[offset:offset + half], wanted)
                                 and np.array_equal(following[:, offset:offset + half], current[:, width - half:])),
                                None))
        previous = found
    return FrameOverlaps(tuple(offsets), moving)


def stitch_frames(frames: np.ndarray, overlaps: FrameOverlaps | None = None) -> tuple[np.ndarray, list[str]]:
    """Join overlapping (T, H, W, C) frames into one (H, L, C) trace; notes for frames without overlap.

    A rare frame without overlap is appended whole (noted); when most frame pairs that differ
    have none, the frames do not scroll as one trace and stitching them would repeat or
    misplace the signal: InputError `no_overlap`.
    """
    overlaps = find_overlaps(frames) if overlaps is None else overlaps
    missing = overlaps.missing
    if 2 * len(missing) > overlaps.moving:
        raise InputError(f"{len(missing)} of {overlaps.moving} changing frame pairs share no exact overlap "
                         "(the right half of a frame is not found in the next): these frames do not scroll as one "
                         "M-mode trace, and joining them whole would repeat or misplace beats", "no_overlap")
    half = frames.shape[2] // 2
    pieces = [frames[0]] + [following if offset is None else following[:, offset + half:]
                            for following, offset in zip(frames[1:], overlaps.offsets)]
    notes = [f"frame {index} does not overlap frame {index - 1}; appended whole" for index in missing]
    return np.concatenate(pieces, axis=1), notes


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """0.2989 R + 0.5870 G + 0.1140 B as float64."""
    return rgb.astype(np.float64) @ GRAY_WEIGHTS


def region_crops(bounds: tuple[int, int, int, int], frames: np.ndarray) -> list[tuple[tuple[slice, slice], str]]:
    """(rows, columns) to crop, and how the bounds were read, in order of preference.

    DICOM's inclusive bounds first; then the published tool's `[min:max]` (max one past the last
    column and row); then the inclusive crop without its edge rows and columns that are the
    same in every frame (a border that does not scroll with the trace).
    """
    x0, y0, x1, y1 = bounds
    crops = [((slice(y0, y1 + 1), slice(x0, x1 + 1)), "inclusive")]
    if x1 - x0 >= 2:
        crops.append(((slice(y0, y1), slice(x0, x1)), "one past the last column and row (the published tool's [min:max])"))
    region = frames[:, y0:y1 + 1, x0:x1 + 1]
    top, bottom, left, right = (int((edge == edge[:1]).all()) for edge in
                                (region[:, :1], region[:, -1:], region[:, :, :1], region[:, :, -1:]))
    if top + bottom + left + right and x1 - x0 + 1 - left - right >= 2 and y1 - y0 + 1 - top - bottom >= 1:
        crops.append(((slice(y0 + top, y1 + 1 - bottom), slice(x0 + left, x1 + 1 - right)),
                      f"inclusive without the edges that do not scroll (top {top}, bottom {bottom}, left {left}, "
                      f"right {right})"))
    return crops


def stitch_region(frames: np.ndarray, bounds: tuple[int, int, int, int]) -> tuple[np.ndarray, list[str]]:
    """Stitched (H, L, C) M-mode region, cropped the first way (`region_crops`) whose frames all
    overlap, else the way with the fewest frames that do not; notes say which way was used."""
    tried = []
    for crop, reading in region_crops(bounds, frames):
        tried.append((crop, reading, find_overlaps(frames[(slice(None), *crop)])))
        if not tried[-1][2].missing:
            break
    crop, reading, overlaps = min(tried, key=lambda t: len(t[2].missing))
    try:
        trace, notes = stitch_frames(frames[(slice(None), *crop)], overlaps)
    except InputError as exc:
        raise InputError(f"{exc} (region bounds read as: {'; '.join(t[1] for t in tried)})", exc.status) from exc
    if crop != tried[0][0]:
        inclusive = tried[0][2]
        notes.insert(0, f"region bounds read as {reading}: with DICOM's inclusive bounds {len(inclusive.missing)} "
                        f"of {inclusive.moving} changing frame pairs did not overlap")
    return trace, notes


def read_mmode(path: Path) -> MModeTrace:
    """Calibrated, stitched grayscale M-mode trace of one DICOM file."""
    ds = read_dataset(Path(path))
    pixels = decode_frames(ds)
    if pixels.ndim != 4 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
        raise InputError(f"expected 8-bit RGB frames, got {pixels.dtype} {pixels.shape}", "unreadable")
    bounds, seconds_per_px, mm_per_px, notes = mmode_region(ds, pixels.shape[1:3])
    trace, stitch_notes = stitch_region(pixels, bounds)
    return MModeTrace(trace=to_gray(trace), seconds_per_px=seconds_per_px, mm_per_px=mm_per_px,
                      notes=tuple(notes + stitch_notes))


# --- network windows ------------------------------------------------------------------


def _resize(window: np.ndarray) -> np.ndarray:
    return cv2.resize(window.astype(np.float32), (MMODE_WINDOW, MMODE_WINDOW), interpolation=cv2.INTER_CUBIC)


def segmentation_windows(trace: np.ndarray) -> np.ndarray:
    """(n, 1, 256, 256) float32 grey 0..255: n = L // H + 1 square windows, the last one the final H columns."""
    height, length = trace.shape
    if length < height:
        raise InputError(f"trace of {length} columns is shorter than its height {height}", "too_short")
    count = length // height + 1
    check_size(count * MMODE_WINDOW * MMODE_WINDOW * 4, f"{count} segmentation windows ({height} x {length} trace)")
    starts = [i * height for i in range(count - 1)] + [length - height]
    return np.stack([_resize(trace[:, s:s + height]) for s in starts])[:, None]


def nearest_source(size: int) -> np.ndarray:
    """Row (or column) of a 256-wide mask that OpenCV's nearest resize to `size` reads for each output index."""
    return np.minimum((np.arange(size) * (MMODE_WINDOW / size)).astype(np.int64), MMODE_WINDOW - 1)


def profile_weights(height: int) -> np.ndarray:
    """(2, 256) float32: per 256-grid mask row, how many rows of the H x H mask it becomes,
    and the sum of their row indices. With them the served model returns per-column pixel
    counts and row-index sums of the resized mask without sending the mask."""
    source = nearest_source(height)
    counts = np.bincount(source, minlength=MMODE_WINDOW)
    row_sums = np.bincount(source, weights=np.arange(height), minlength=MMODE_WINDOW)
    return np.stack([counts, row_sums]).astype(np.float32)


def stitch_profiles(profiles: np.ndarray, height: int, length: int) -> np.ndarray:
    """(n, 2, 256) per-window column counts / row sums -> (2, L) along the whole trace."""
    columns = profiles[:, :, nearest_source(height)]  # (n, 2, H)
    last_new = length - (len(profiles) - 1) * height
    parts = [*columns[:-1], columns[-1][:, height - last_new:]] if last_new else list(columns[:-1])
    return np.concatenate(parts, axis=1)


def quality_crop(height: int, body_mass_g: float) -> int:
    """Quality window side: a fraction of the trace height that grows with body mass."""
    for limit, ratio in ((15, 0.5), (25, 0.6), (35, 0.75), (45, 0.9)):
        if body_mass_g < limit:
            return int(height * ratio)
    return height


def quality_windows(trace: np.ndarray, counts: np.ndarray, row_sums: np.ndarray,
                    crop: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(m, 1, 256, 256) float32 grey windows crop wide, centred on the LV, and their column spans.

    Windows tile the trace (the last one is the final `crop` columns); each is centred
    vertically on the mean row of the mask pixels in its columns (the whole trace's mean
    when it has none), kept inside the image.
    """
    height, length = trace.shape
    count = length // crop + 1
    spans = [(i * crop, (i + 1) * crop) for i in range(count - 1)] + [(length - crop, length)]
    total = counts.sum()
    overall = row_sums.sum() / total if total else height / 2
    windows = []
    for start, end in spans:
        pixels = counts[start:end].sum()
        centre = row_sums[start:end].sum() / pixels if pixels else overall
        top = int(min(max(centre - crop / 2, 0), height - crop))
        windows.append(_resize(trace[top:top + crop, start:end]))
    return np.stack(windows)[:, None], spans

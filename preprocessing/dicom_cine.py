"""Echo cine DICOM -> frames as the video path delivers them: (T, H, W, 3) uint8 BGR.

Handles compressed transfer syntaxes (JPEG, RLE via pylibjpeg), YBR and palette colour,
monochrome; crops to the 2D ultrasound region from (0018,6011) when its bounds are valid,
otherwise to the moving sector (with a note); blanks ECG traces and burnt-in text that
lie outside the sector. Nothing from the header other than geometry and timing is kept.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.pixels import apply_color_lut
from pydicom.sequence import Sequence

from echodeploy.errors import InputError
from echodeploy.preprocessing.video import Cine, check_size, plausible_fps

REGION_2D = 1  # RegionSpatialFormat of a 2D (B-mode) region
MOTION_THRESHOLD = 2.0  # grey levels of temporal std that count as "moving"
LIT_THRESHOLD = 3  # grey level above which a pixel carries signal
MIN_SECTOR_FRACTION = 0.05  # a sector smaller than this part of the image is not trusted
# the header elements the readers use (pixel module, timing; regions are converted item by item)
USED_KEYWORDS = ("NumberOfFrames", "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                 "PhotometricInterpretation", "FrameTime", "CineRate", "RecommendedDisplayFrameRate")
# what pydicom raises on malformed files (lengths, VRs, values, truncation)
PARSE_ERRORS = (InvalidDicomError, BytesLengthException, EOFError, OSError, ValueError, TypeError, KeyError,
                IndexError, OverflowError, NotImplementedError, struct.error)


def read_dicom_cine(path: Path) -> Cine:
    """Decode a multi-frame echo DICOM into BGR frames cropped to the imaging sector."""
    ds = read_dataset(path)
    frames = to_bgr_uint8(decode_frames(ds), ds)
    bounds = ultrasound_region(ds, frames.shape[1:3])
    notes = []
    if bounds is None:
        notes.append("no valid 2D ultrasound region in (0018,6011); cropped to the moving sector")
    else:
        x0, y0, x1, y1 = bounds
        frames = frames[:, y0:y1 + 1, x0:x1 + 1]
    sector = sector_mask(frames)
    if sector is None:
        notes.append("no clear imaging sector found; frames kept whole")
    else:
        frames = frames * sector[None, :, :, None]
        if bounds is None:
            ys, xs = np.nonzero(sector)
            frames = frames[:, ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    return Cine(np.ascontiguousarray(frames), frame_rate(ds), tuple(notes))


def read_dataset(path: Path) -> pydicom.Dataset:
    """Parse a DICOM file and the header elements the readers use, so a malformed one fails here.

    No other element is ever converted: a malformed or identifying one (a patient's name, a
    free-text weight) neither fails the read nor reaches a message. The file is parsed from
    memory: a corrupt length field then cannot make the parser reserve a buffer of that
    length (up to 4 GiB) before it finds the file shorter.
    """
    check_size(Path(path).stat().st_size, "the file")
    try:
        ds = pydicom.dcmread(io.BytesIO(Path(path).read_bytes()))
        ds.file_meta.get("TransferSyntaxUID")
        for keyword in USED_KEYWORDS:
            ds.get(keyword)
        if not isinstance(ds.get("SequenceOfUltrasoundRegions", Sequence()), Sequence):
            del ds.SequenceOfUltrasoundRegions  # a corrupt VR: treated as no regions
        for region in ds.get("SequenceOfUltrasoundRegions", []):
            for _ in region:
                pass
    except PARSE_ERRORS as exc:
        raise InputError(f"not a readable DICOM file ({type(exc).__name__}: {exc})", "unreadable") from exc
    if "PixelData" not in ds:
        raise InputError("DICOM has no pixel data", "not_video")
    return ds


def header_int(ds: pydicom.Dataset, keyword: str, default: int) -> int:
    """An integer header value; `default` when absent or empty; an unparseable one raises `InputError`."""
    try:
        value = ds.get(keyword)
        return default if value is None or value == "" else int(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InputError(f"invalid {keyword} in the DICOM header ({exc})", "unreadable") from exc


def decode_frames(ds: pydicom.Dataset) -> np.ndarray:
    """Pixel data of a multi-frame dataset; single-frame, oversized and undecodable data raise `InputError`."""
    frames = header_int(ds, "NumberOfFrames", 1)
    if frames < 2:
        raise InputError("single-frame DICOM, not a cine loop", "not_video")
    bytes_per_sample = -(-header_int(ds, "BitsAllocated", 8) // 8)
    check_size(frames * header_int(ds, "Rows", 0) * header_int(ds, "Columns", 0)
                       * header_int(ds, "SamplesPerPixel", 1) * bytes_per_sample)
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    try:
        return ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean "cannot decode"
        name = getattr(syntax, "name", syntax)
        raise InputError(f"cannot decode pixel data ({name}): {exc}", "unreadable") from exc


def to_bgr_uint8(pixels: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """(T, H, W[, C]) pixels in the dataset's photometric interpretation -> (T, H, W, 3) BGR uint8."""
    interpretation = str(ds.get("PhotometricInterpretation", "")).upper()
    if interpretation == "PALETTE COLOR":
        try:
            pixels = apply_color_lut(pixels, ds)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            raise InputError(f"palette colour image without a usable lookup table ({exc})", "unreadable") from exc
        depth = 16 if pixels.dtype == np.uint16 and pixels.max() > 255 else 8
    else:
        depth = header_int(ds, "BitsStored", 8)
    if pixels.dtype != np.uint8:
        pixels = (pixels.astype(np.float32) * (255.0 / (2**depth - 1))).clip(0, 255).astype(np.uint8)
    if pixels.ndim == 3:  # monochrome
        if interpretation == "MONOCHROME1":
            pixels = 255 - pixels
        return np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise InputError(f"unsupported pixel layout {pixels.shape} ({interpretation or 'no'} colour model)",
                         "unreadable")
    # pydicom hands YBR as RGB (its default colour conversion); RGB -> BGR like OpenCV's AVIs
    return np.ascontiguousarray(pixels[..., ::-1])


def ultrasound_region(ds: pydicom.Dataset, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Largest 2D region whose inclusive bounds lie inside an image of `shape` (H, W)."""
    height, width = shape
    best, best_area = None, 0
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        if region.get("RegionSpatialFormat") != REGION_2D:
            continue
        try:
            x0, y0 = int(region.RegionLocationMinX0), int(region.RegionLocationMinY0)
            x1, y1 = int(region.RegionLocationMaxX1), int(region.RegionLocationMaxY1)
        except (AttributeError, TypeError, ValueError):
            continue
        if 0 <= x0 < x1 < width and 0 <= y0 < y1 < height:
            area = (x1 - x0 + 1) * (y1 - y0 + 1)
            if area > best_area:
                best, best_area = (x0, y0, x1, y1), area
    return best


def sector_mask(frames: np.ndarray) -> np.ndarray | None:
    """uint8 0/1 mask of the imaging sector, or None when no clear sector is found.

    The sector is the lit area (signal in most frames) that holds the most moving pixels,
    filled to its convex hull. Burnt-in text and overlays are lit but still; thin ECG or
    respiratory traces are removed by a morphological opening first.
    """
    step = max(1, len(frames) // 32)
    gray = frames[::step].astype(np.float32).mean(axis=-1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    lit = cv2.morphologyEx((np.median(gray, axis=0) > LIT_THRESHOLD).astype(np.uint8), cv2.MORPH_OPEN, kernel)
    moving = (gray.std(axis=0) > MOTION_THRESHOLD) & (lit > 0)
    count, labels = cv2.connectedComponents(lit, connectivity=8)
    if count < 2:
        return None
    motion_per_label = np.bincount(labels[moving], minlength=count)
    motion_per_label[0] = 0
    best = int(np.argmax(motion_per_label))
    if motion_per_label[best] < MIN_SECTOR_FRACTION * lit.size:
        return None
    mask = np.zeros_like(lit)
    cv2.fillConvexPoly(mask, cv2.convexHull(cv2.findNonZero((labels == best).astype(np.uint8))), 1)
    return mask


def frame_rate(ds: pydicom.Dataset) -> float | None:
    """Frames per second from Frame Time (ms), Cine Rate or Recommended Display Frame Rate."""
    frame_time = plausible_fps(ds.get("FrameTime"))
    if frame_time is not None:
        return plausible_fps(1000.0 / frame_time)
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        fps = plausible_fps(ds.get(keyword))
        if fps is not None:
            return fps
    return None

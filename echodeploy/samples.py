"""Synthetic echo files for the demo, the tests and the benchmarks.

Echo-like cine loops (a fan-shaped sector with speckle and a beating cavity, burnt-in
text and an ECG trace outside the sector), written as AVI or as cine DICOM in several
transfer syntaxes and colour models. Nothing here is patient data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)


def synthetic_echo(n_frames: int = 40, height: int = 120, width: int = 160, seed: int = 0,
                   heart_rate_bpm: float = 75, fps: float = 50) -> np.ndarray:
    """(T, H, W, 3) uint8 BGR frames of an apical-view-like loop."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    apex = (width / 2, 4.0)
    angle = np.degrees(np.arctan2(xx - apex[0], yy - apex[1]))
    radius = np.hypot(xx - apex[0], yy - apex[1])
    sector = (np.abs(angle) < 35) & (radius < height * 0.92)
    speckle = rng.gamma(2.0, 40.0, size=(height, width)).astype(np.float32)
    cavity_x, cavity_y = width / 2 + rng.uniform(-6, 6), height * 0.5
    frames = np.zeros((n_frames, height, width, 3), np.uint8)
    for t in range(n_frames):
        phase = np.sin(2 * np.pi * heart_rate_bpm / 60 * t / fps)
        rx, ry = width * (0.12 + 0.03 * phase), height * (0.22 + 0.04 * phase)
        cavity = ((xx - cavity_x) / rx) ** 2 + ((yy - cavity_y) / ry) ** 2 < 1
        noise = rng.normal(1.0, 0.15, size=(height, width)).astype(np.float32)
        gray = np.where(sector & ~cavity, speckle * noise, 6 * noise * sector).clip(0, 255).astype(np.uint8)
        frame = np.repeat(gray[..., None], 3, axis=-1)
        cv2.putText(frame, "ECHO 1.5MHz", (2, 10), cv2.FONT_HERSHEY_PLAIN, 0.7, (255, 255, 255), 1)
        ecg_y = (height - 6 + 4 * np.sin(np.linspace(0, 6, width) + t / 3)).astype(int)
        frame[ecg_y.clip(0, height - 1), np.arange(width)] = (0, 255, 0)
        frames[t] = frame
    return frames


def write_avi(path: Path, frames: np.ndarray, fps: float = 50) -> Path:
    """Write BGR frames as an MJPG AVI (readable by every OpenCV build)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def _ultrasound_multiframe(frames: np.ndarray, patient: dict[str, str] | None) -> pydicom.Dataset:
    """Dataset skeleton of an 8-bit Ultrasound Multi-frame image (no pixel data yet)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    for keyword, value in (patient or {}).items():
        setattr(ds, keyword, value)
    ds.NumberOfFrames = len(frames)
    ds.Rows, ds.Columns = frames.shape[1:3]
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    return ds


def write_dicom_cine(path: Path, frames: np.ndarray, fps: float = 50, encoding: str = "raw",
                     region: tuple[int, int, int, int] | None = None,
                     patient: dict[str, str] | None = None) -> Path:
    """Write BGR frames as an Ultrasound Multi-frame DICOM.

    encoding: 'raw' (RGB, explicit little endian), 'rle' (RGB, RLE lossless),
    'jpeg' (YBR_FULL_422, JPEG baseline) or 'palette' (8-bit palette colour, grey LUT).
    region: inclusive (x0, y0, x1, y1) of a 2D region in (0018,6011), or None for no sequence.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.ascontiguousarray(frames[..., ::-1])
    ds = _ultrasound_multiframe(frames, patient)
    meta = ds.file_meta
    ds.FrameTime = f"{1000.0 / fps:.4f}"
    if region is not None:
        item = pydicom.Dataset()
        item.RegionSpatialFormat, item.RegionDataType = 1, 1
        (item.RegionLocationMinX0, item.RegionLocationMinY0,
         item.RegionLocationMaxX1, item.RegionLocationMaxY1) = region
        ds.SequenceOfUltrasoundRegions = [item]
    if encoding == "palette":
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "PALETTE COLOR"
        lut = (np.arange(256, dtype=np.uint16) * 257).tobytes()
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{colour}PaletteColorLookupTableData", lut)
        ds.PixelData = np.ascontiguousarray(rgb.mean(axis=-1).astype(np.uint8)).tobytes()
    else:
        ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
        ds.PhotometricInterpretation = "RGB"
        ds.PixelData = rgb.tobytes()
        if encoding == "rle":
            ds.compress(RLELossless, encoding_plugin="pydicom")
        elif encoding == "jpeg":
            ds.PixelData = encapsulate([cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                                        for f in frames])
            ds["PixelData"].VR = "OB"
            ds.PhotometricInterpretation = "YBR_FULL_422"
            meta.TransferSyntaxUID = JPEGBaseline8Bit
        elif encoding != "raw":
            raise ValueError(f"unknown encoding {encoding!r}")
    ds.save_as(path, enforce_file_format=True)
    return path


def write_demo_study(folder: Path, studies: int = 6, videos_per_study: int = 2, seed: int = 0) -> Path:
    """A4C AVIs of several studies and a manifest in the cardiac_mri format; returns its path."""
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = ["Study_Unique_ID,Video_Unique_ID,frames,TARGET"]
    for s in range(studies):
        target = int(rng.integers(0, 2))
        for v in range(videos_per_study):
            video_id = f"S{s:03d}_V{v}"
            n_frames = int(rng.integers(36, 60))
            frames = synthetic_echo(n_frames, seed=seed * 1000 + s * 10 + v,
                                    heart_rate_bpm=float(rng.uniform(55, 110)))
            write_avi(folder / f"{video_id}.avi", frames)
            rows.append(f"S{s:03d},{video_id},{n_frames},{target}")
    manifest = folder / "A4C_Scar_Binary.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def synthetic_mmode(length: int = 2400, height: int = 200, heart_rate_bpm: float = 500,
                    seconds_per_px: float = 0.00083334, lvid_d_px: int = 90, lvid_s_px: int = 60,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(trace (H, L) uint8, LV mask (H, L) bool): a beating LV cavity between two bright walls.

    The cavity diameter swings between `lvid_d_px` (diastole) and `lvid_s_px` (systole) at
    `heart_rate_bpm`; diastoles fall at t = k * 60 / bpm.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(length) * seconds_per_px
    phase = np.cos(2 * np.pi * heart_rate_bpm / 60 * t)
    diameter = np.round(lvid_s_px + (lvid_d_px - lvid_s_px) * (phase + 1) / 2).astype(int)
    centre = height // 2
    top = centre - diameter // 2
    rows = np.arange(height)[:, None]
    mask = (rows >= top) & (rows < top + diameter)
    wall = (rows >= top - 25) & (rows < top + diameter + 25) & ~mask
    trace = np.where(mask, 25, np.where(wall, 190, 70)).astype(np.float32)
    trace += rng.normal(0, 12, size=trace.shape)
    return trace.clip(0, 255).astype(np.uint8), mask


def write_mmode_dicom(path: Path, trace: np.ndarray, frame_width: int = 400, step: int = 120,
                      seconds_per_px: float = 0.00083334, mm_per_px: float = 0.011525974,
                      region_format: int = 2, units: tuple[int, int] = (4, 3), with_regions: bool = True,
                      repeat_frame: int | None = None, patient: dict[str, str] | None = None,
                      bounds: str = "inclusive") -> Path:
    """Ultrasound Multi-frame RGB DICOM whose frames scroll over `trace` by `step` columns.

    Each frame shows the M-mode region (0018,6011 item 2, RegionSpatialFormat `region_format`)
    below a 40-row header band, like a scanner's screen; `repeat_frame` duplicates a frame.
    `bounds`: the region's max X/Y as DICOM defines them ('inclusive': the last trace column
    and row) or 'one_past' them, as the published Echo2Pheno tool reads them (`[min:max]`).
    """
    if bounds not in ("inclusive", "one_past"):
        raise ValueError(f"bounds must be 'inclusive' or 'one_past', got {bounds!r}")
    past = int(bounds == "one_past")
    height, length = trace.shape
    starts = list(range(0, length - frame_width + 1, step))
    if repeat_frame is not None:
        starts.insert(repeat_frame, starts[repeat_frame])
    header, margin = 40, 10
    frames = np.zeros((len(starts), header + height + margin, frame_width + 2 * margin, 3), np.uint8)
    frames[:, :header, :, 1] = 90  # a green header band outside the region
    for i, start in enumerate(starts):
        frames[i, header:header + height, margin:margin + frame_width] = trace[:, start:start + frame_width, None]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = _ultrasound_multiframe(frames, patient)
    ds.SamplesPerPixel, ds.PlanarConfiguration, ds.PhotometricInterpretation = 3, 0, "RGB"
    if with_regions:
        regions = []
        for fmt, box in ((1, (0, 0, frames.shape[2] - 1, header - 1)), (0, (0, 0, 5, 5)),
                         (region_format, (margin, header, margin + frame_width - 1 + past,
                                          header + height - 1 + past))):
            item = pydicom.Dataset()
            item.RegionSpatialFormat, item.RegionDataType = fmt, 1
            (item.RegionLocationMinX0, item.RegionLocationMinY0,
             item.RegionLocationMaxX1, item.RegionLocationMaxY1) = box
            item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
            item.PhysicalDeltaX, item.PhysicalDeltaY = seconds_per_px, mm_per_px / 10
            regions.append(item)
        ds.SequenceOfUltrasoundRegions = regions
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_demo_mmode_study(folder: Path, mice: int = 2, seed: int = 0) -> Path:
    """A folder of synthetic mouse M-mode DICOMs at different heart rates; returns the folder."""
    folder = Path(folder)
    for i in range(mice):
        trace, _ = synthetic_mmode(length=2400, heart_rate_bpm=420 + 60 * i, seed=seed + i)
        write_mmode_dicom(folder / f"mouse{i + 1}.dcm", trace)
    return folder

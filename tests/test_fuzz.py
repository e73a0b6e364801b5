"""Fuzzed inputs: every mutated file or manifest ends in a result or an `InputError` /
`EchodeployError` with a readable message; never another exception, a hang or runaway memory.

Seeds are real files written by `echodeploy.samples` (cine DICOMs in every encoding, AVI,
MP4, an M-mode DICOM, a manifest); cases mutate their bytes (flips, truncation, inserted
or overwritten junk) or their DICOM header fields (through pydicom, values invalid on
purpose). CI runs the `ci` profile (a few dozen cases per reader); `HYPOTHESIS_PROFILE=long`
runs thousands (see docs/RELIABILITY.md).
"""

from __future__ import annotations

import faulthandler
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pydicom.config import disable_value_validation
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from echodeploy.client.runs.inputs import read_inputs
from echodeploy.errors import EchodeployError, InputError
from echodeploy.preprocessing import video
from echodeploy.preprocessing.clips import load_clips
from echodeploy.preprocessing.mmode import read_mmode, segmentation_windows
from echodeploy.samples import synthetic_echo, synthetic_mmode, write_avi, write_dicom_cine, write_mmode_dicom
from echodeploy.specs import ClipSpec

COMMON = dict(database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=40, deadline=20_000, derandomize=True, **COMMON)
settings.register_profile("long", max_examples=1500, deadline=20_000, **COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CASE_SECONDS = 60  # a case still running after this is a hang: the process dumps stacks and exits
DECODE_LIMIT = 64 * 2**20  # the readers' decoded-size limit during fuzzing
MEMORY_BOUND = 4 * DECODE_LIMIT  # peak numpy/Python allocation allowed per case
CLIP = ClipSpec()

pytestmark = pytest.mark.filterwarnings("ignore")  # mutated headers make pydicom warn a lot


@pytest.fixture(scope="module", autouse=True)
def small_decode_limit():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(video, "MAX_DECODED_BYTES", DECODE_LIMIT)
        yield


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, Path]:
    """Small real files of every kind the readers take."""
    root = tmp_path_factory.mktemp("seeds")
    frames = synthetic_echo(34, height=48, width=64, seed=4)
    files = {f"cine_{e}": write_dicom_cine(root / f"cine_{e}.dcm", frames, encoding=e, region=(4, 2, 59, 40))
             for e in ("raw", "rle", "jpeg", "palette")}
    files["avi"] = write_avi(root / "v.avi", frames)
    files["mp4"] = write_mp4(root / "v.mp4", frames)
    trace, _ = synthetic_mmode(length=480, height=64, seed=2)
    files["mmode"] = write_mmode_dicom(root / "m.dcm", trace, frame_width=128, step=48)
    return files


def write_mp4(path: Path, frames: np.ndarray) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, frames.shape[2:0:-1])
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def outcome(read) -> str:
    """'ok' or the InputError's status; any other exception, a hang or runaway memory fails."""
    faulthandler.dump_traceback_later(CASE_SECONDS, exit=True)
    tracemalloc.start()
    try:
        read()
        status = "ok"
    except InputError as exc:
        assert len(str(exc)) > 10 and "\n" not in str(exc).strip(), repr(str(exc))
        status = exc.status
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        faulthandler.cancel_dump_traceback_later()
    assert peak < MEMORY_BOUND, f"peak allocation {peak / 2**20:.0f} MiB"
    if currently_in_test_context():
        event(f"outcome: {status}")  # case statistics: pytest --hypothesis-show-statistics
    return status


# --- mutations --------------------------------------------------------------------------
HEADER_BYTES = 2048  # half the byte mutations land here, where the DICOM/AVI/MP4 headers are


@st.composite
def byte_mutations(draw, size: int) -> list[tuple]:
    position = st.one_of(st.integers(0, min(size, HEADER_BYTES) - 1), st.integers(0, size - 1))
    one = st.one_of(
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("overwrite"), position, st.binary(min_size=1, max_size=64)),
    )
    return draw(st.lists(one, min_size=1, max_size=4))


def mutate_bytes(data: bytes, mutations: list[tuple]) -> bytes:
    data = bytearray(data)
    for kind, position, *payload in mutations:
        position = min(position, max(len(data) - 1, 0))
        if kind == "flip" and data:
            data[position] ^= payload[0]
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = payload[0]
        elif kind == "overwrite":
            data[position:position + len(payload[0])] = payload[0]
    return bytes(data)


SHORTS = st.one_of(st.integers(0, 300), st.just(65535))  # US fields
SIZES = st.one_of(SHORTS, st.sampled_from([2**31 - 1, 2**32 - 1]))  # UL fields
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e-320, 1e300]))
TEXT = st.text(max_size=20)
HEADER_FIELDS = {
    "Rows": SHORTS, "Columns": SHORTS,
    "NumberOfFrames": st.one_of(st.integers(-3, 10**12).map(str), TEXT, st.sampled_from(["1e9", "NaN", ""])),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64, 255]),
    "BitsStored": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64, 255]),
    "HighBit": st.integers(0, 255),
    "SamplesPerPixel": st.sampled_from([0, 1, 2, 3, 4, 255]),
    "PlanarConfiguration": st.integers(0, 3),
    "PixelRepresentation": st.integers(0, 3),
    "PhotometricInterpretation": st.one_of(st.sampled_from([
        "MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR", "YBR_RCT", ""]), TEXT),
    "FrameTime": st.one_of(NUMBERS.map(str), TEXT),
    "CineRate": st.integers(-5, 10**6).map(str),
}
REGION_FIELDS = {
    "RegionSpatialFormat": st.integers(0, 6),
    "RegionLocationMinX0": SIZES, "RegionLocationMinY0": SIZES,
    "RegionLocationMaxX1": SIZES, "RegionLocationMaxY1": SIZES,
    "PhysicalUnitsXDirection": st.integers(0, 9), "PhysicalUnitsYDirection": st.integers(0, 9),
    "PhysicalDeltaX": NUMBERS, "PhysicalDeltaY": NUMBERS,
}


@st.composite
def header_mutations(draw) -> list[tuple]:
    one = st.one_of(
        st.sampled_from(sorted(HEADER_FIELDS)).flatmap(lambda k: st.tuples(st.just("set"), st.just(k), HEADER_FIELDS[k])),
        st.sampled_from(sorted(REGION_FIELDS)).flatmap(
            lambda k: st.tuples(st.just("region"), st.just(k), REGION_FIELDS[k], st.integers(0, 2))),
        st.tuples(st.just("delete"), st.sampled_from(sorted(HEADER_FIELDS) + ["SequenceOfUltrasoundRegions", "PixelData"])),
        st.tuples(st.just("pixels"), st.floats(0, 2)),  # keep this fraction of the pixel data bytes
    )
    return draw(st.lists(one, min_size=1, max_size=3))


def set_field(ds: pydicom.Dataset, keyword: str, value) -> None:
    """Set a header field; text goes in as raw bytes, so values invalid for the VR reach the file."""
    if isinstance(value, str):
        tag = tag_for_keyword(keyword)
        raw = value.encode("utf-8", "replace")
        raw += b" " * (len(raw) % 2)
        ds[tag] = RawDataElement(Tag(tag), dictionary_VR(tag), len(raw), raw, 0, False, True)
    else:
        setattr(ds, keyword, value)


def mutate_header(source: Path, target: Path, mutations: list[tuple]) -> None:
    """Apply header mutations with pydicom; values it cannot even write are rejected."""
    ds = pydicom.dcmread(source)
    try:
        with disable_value_validation():
            for kind, field, *value in mutations:
                if kind == "set":
                    set_field(ds, field, value[0])
                elif kind == "region":
                    regions = ds.get("SequenceOfUltrasoundRegions")
                    if regions:
                        set_field(regions[value[1] % len(regions)], field, value[0])
                elif kind == "delete" and field in ds:
                    delattr(ds, field)
                elif kind == "pixels" and "PixelData" in ds and not ds.file_meta.TransferSyntaxUID.is_compressed:
                    data = ds.PixelData
                    keep = int(len(data) * field)
                    ds.PixelData = data[:keep] if keep <= len(data) else data + bytes(keep - len(data))
            ds.save_as(target)
    except Exception:  # noqa: BLE001 - pydicom refuses to write this value: not a reader case
        reject()


# --- readers ----------------------------------------------------------------------------
CINES = ["cine_raw", "cine_rle", "cine_jpeg", "cine_palette"]


def read_clips(path: Path, fps: float | None):
    clips, _ = load_clips(path, CLIP, "first", fps)
    assert clips.dtype == np.uint8 and clips.shape[1:] == (3, 16, 112, 112)


@given(seed=st.sampled_from(CINES), mutations=header_mutations(), fps=st.sampled_from([None, 25.0]))
def test_cine_dicom_header_fuzz(seeds, tmp_path_factory, seed, mutations, fps):
    path = tmp_path_factory.getbasetemp() / "fuzz_header.dcm"
    mutate_header(seeds[seed], path, mutations)
    outcome(lambda: read_clips(path, fps))


@given(seed=st.sampled_from(CINES), data=st.data())
def test_cine_dicom_byte_fuzz(seeds, tmp_path_factory, seed, data):
    original = seeds[seed].read_bytes()
    path = tmp_path_factory.getbasetemp() / "fuzz_bytes.dcm"
    path.write_bytes(mutate_bytes(original, data.draw(byte_mutations(len(original)))))
    outcome(lambda: read_clips(path, None))


@given(seed=st.sampled_from(["avi", "mp4"]), data=st.data(), fps=st.sampled_from([None, 25.0]))
def test_video_byte_fuzz(seeds, tmp_path_factory, seed, data, fps):
    original = seeds[seed].read_bytes()
    path = tmp_path_factory.getbasetemp() / f"fuzz.{seed}"
    path.write_bytes(mutate_bytes(original, data.draw(byte_mutations(len(original)))))
    outcome(lambda: read_clips(path, fps))


def read_mmode_windows(path: Path):
    trace = read_mmode(path)
    assert np.isfinite(trace.trace).all() and trace.seconds_per_px > 0 and trace.mm_per_px > 0
    segmentation_windows(trace.trace)


@given(mutations=header_mutations())
def test_mmode_header_fuzz(seeds, tmp_path_factory, mutations):
    path = tmp_path_factory.getbasetemp() / "fuzz_mmode_header.dcm"
    mutate_header(seeds["mmode"], path, mutations)
    outcome(lambda: read_mmode_windows(path))


@given(data=st.data())
def test_mmode_byte_fuzz(seeds, tmp_path_factory, data):
    original = seeds["mmode"].read_bytes()
    path = tmp_path_factory.getbasetemp() / "fuzz_mmode_bytes.dcm"
    path.write_bytes(mutate_bytes(original, data.draw(byte_mutations(len(original)))))
    outcome(lambda: read_mmode_windows(path))


# --- manifests --------------------------------------------------------------------------
COLUMNS = ["Study_Unique_ID", "Video_Unique_ID", "frames", "TARGET", "filename", "path", "view", "x"]
CELLS = st.one_of(
    st.sampled_from(["", "A4C", "a2c", "PLAX", "v.avi", "../../etc/passwd", "/etc/passwd", "NaN", "1e308",
                     "-0", "nan", '"quoted, comma"', "a\0b", "x" * 5000, "ü€", "\ufeff"]),
    st.text(max_size=30),
)


@st.composite
def manifests(draw) -> bytes:
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=0, max_size=6))
    if draw(st.booleans()):  # half the cases have the columns a manifest needs
        header = ["Study_Unique_ID", "Video_Unique_ID", *header]
    rows = draw(st.lists(st.lists(CELLS, min_size=0, max_size=len(header) + 1), max_size=6))
    separator = draw(st.sampled_from([",", ";", "\t"]))
    text = "\n".join(separator.join(row) for row in [header, *rows])
    encoded = text.encode(draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"])), errors="replace")
    if draw(st.integers(0, 3)) == 0:
        encoded = mutate_bytes(encoded, draw(byte_mutations(max(len(encoded), 1))))
    return encoded


@given(content=manifests(), view=st.sampled_from([None, "A4C", "A4C"]))
def test_manifest_fuzz(seeds, tmp_path_factory, content, view):
    path = tmp_path_factory.getbasetemp() / "fuzz_manifest.csv"
    path.write_bytes(content)
    faulthandler.dump_traceback_later(CASE_SECONDS, exit=True)
    try:
        rows = read_inputs(path, view)
    except EchodeployError as exc:
        assert len(str(exc)) > 10
        event("outcome: error")
        return
    finally:
        faulthandler.cancel_dump_traceback_later()
    event("outcome: ok")
    assert {"path", "view"} <= set(rows.columns)
    assert all(p is None or isinstance(p, str) for p in rows["path"])


# --- regressions: one case per failure class the fuzzer found ------------------------------
def test_header_claiming_a_billion_frames_is_refused_before_decoding(seeds, tmp_path):
    ds = pydicom.dcmread(seeds["cine_rle"])
    ds.NumberOfFrames = 10**9
    ds.save_as(tmp_path / "huge.dcm")
    assert outcome(lambda: load_clips(tmp_path / "huge.dcm", CLIP)) == "too_large"


def test_corrupt_length_field_does_not_reserve_gigabytes(seeds, tmp_path):
    data = bytearray(seeds["mmode"].read_bytes())
    data[152] ^= 1  # (0002,0001) length 2 -> 3: every later length is read from the wrong bytes
    (tmp_path / "m.dcm").write_bytes(bytes(data))
    assert outcome(lambda: read_mmode_windows(tmp_path / "m.dcm")) in ("unreadable", "not_video")


@pytest.mark.parametrize("keyword,value,status", [
    ("PhotometricInterpretation", "PALETTE COLOR", "unreadable"),  # no lookup table
    ("BitsStored", 0, "unreadable"),
    ("NumberOfFrames", "abc", "unreadable"),
    ("FrameTime", "nan", "ok"),  # no usable frame rate is not an error unless --fps needs one
])
def test_invalid_header_values(seeds, tmp_path, keyword, value, status):
    mutate_header(seeds["cine_raw"], tmp_path / "c.dcm", [("set", keyword, value)])
    assert outcome(lambda: read_clips(tmp_path / "c.dcm", None)) == status


def test_mmode_calibration_must_be_plausible(seeds, tmp_path):
    mutate_header(seeds["mmode"], tmp_path / "m.dcm", [("region", "PhysicalDeltaX", 1e-320, 2)])
    assert outcome(lambda: read_mmode_windows(tmp_path / "m.dcm")) == "no_calibration"


def test_manifest_names_too_long_or_with_nul_are_rows_not_crashes(tmp_path):
    (tmp_path / "m.csv").write_text("Video_Unique_ID\n" + "x" * 5000 + "\na\0b\n")
    rows = read_inputs(tmp_path / "m.csv", "A4C")
    assert len(rows) == 2
    for path in rows["path"]:
        assert outcome(lambda: load_clips(Path(path), CLIP)) == "missing"

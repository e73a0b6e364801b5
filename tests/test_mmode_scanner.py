"""M-mode files as scanners write them: both region-bound conventions, odd and even widths,
frames that do not overlap, and agreement with the published tool's stitching."""

import numpy as np
import pandas as pd
import pydicom
import pytest
from conftest import run_cli

from echodeploy.errors import InputError
from echodeploy.preprocessing.mmode import read_mmode, stitch_frames
from echodeploy.samples import synthetic_mmode, write_mmode_dicom

GRAY = np.array([0.2989, 0.5870, 0.1140])


def published_trace(path) -> tuple[np.ndarray, int]:
    """(trace, frames appended whole) as the published Echo2Pheno tool reads a file (SPEC section 2):
    region item 2 sliced [min:max], grey = 0.2989 R + 0.5870 G + 0.1140 B; start with frame 0;
    for each next frame, find where the right half of the current frame reappears exactly in the
    next one (sliding 0..W/2) and append what follows it; identical frames add nothing; no
    overlap found: append the whole frame. Its halves are W - W//2 and W//2 wide, so the search
    can only succeed when W is even."""
    ds = pydicom.dcmread(path)
    region = ds.SequenceOfUltrasoundRegions[2]
    frames = ds.pixel_array[:, region.RegionLocationMinY0:region.RegionLocationMaxY1,
                            region.RegionLocationMinX0:region.RegionLocationMaxX1] @ GRAY
    width = frames.shape[2]
    pieces, whole = [frames[0]], 0
    for current, following in zip(frames[:-1], frames[1:]):
        if np.array_equal(current, following):
            continue
        right = current[:, width // 2:]
        for shift in range(width // 2 + 1):
            if np.array_equal(following[:, shift:shift + width // 2], right):
                pieces.append(following[:, shift + width // 2:])
                break
        else:
            pieces.append(following)
            whole += 1
    return np.concatenate(pieces, axis=1), whole


@pytest.fixture(scope="module")
def trace():
    return synthetic_mmode(length=3300, height=64, seed=3)[0]


def covered(width: int, step: int, length: int = 3300) -> int:
    return (len(range(0, length - width + 1, step)) - 1) * step + width


@pytest.mark.parametrize("bounds", ["inclusive", "one_past"])
@pytest.mark.parametrize("width,step", [(600, 300), (601, 300), (400, 150), (257, 128)])
def test_both_bound_conventions_stitch_exactly_and_agree_with_the_published_tool(trace, tmp_path, bounds,
                                                                                 width, step):
    path = write_mmode_dicom(tmp_path / "m.dcm", trace, frame_width=width, step=step, bounds=bounds)
    ours = read_mmode(path)
    length = covered(width, step)  # 600/300 one past: 3,300 columns, not the 6,010 of frames appended whole
    pairs = len(range(0, 3300 - width + 1, step)) - 1
    np.testing.assert_allclose(ours.trace, trace[:, :length] * GRAY.sum(), atol=1e-9)
    if bounds == "inclusive":
        assert ours.notes == ()
    else:
        assert ours.notes == (f"region bounds read as one past the last column and row (the published tool's "
                              f"[min:max]): with DICOM's inclusive bounds {pairs} of {pairs} changing frame "
                              "pairs did not overlap",)
    reference, whole = published_trace(path)
    published_width = width - (bounds == "inclusive")  # [min:max] of inclusive bounds drops a column and a row
    if published_width % 2:  # its search fails on every pair: all frames appended whole, beats repeated
        assert whole == pairs
        assert reference.shape[1] > ours.trace.shape[1]
    else:  # where it works, it reads what we read (less the last row and column of inclusive bounds)
        assert whole == 0
        np.testing.assert_array_equal(reference, ours.trace[:reference.shape[0], :reference.shape[1]])
        assert ours.trace.shape[1] - reference.shape[1] == ours.trace.shape[0] - reference.shape[0] == \
            (bounds == "inclusive")


def test_frames_that_do_not_overlap_get_a_status_of_their_own(trace, tmp_path):
    path = write_mmode_dicom(tmp_path / "m.dcm", trace, frame_width=400, step=250)  # right half never reappears
    with pytest.raises(InputError, match=r"11 of 11 changing frame pairs share no exact overlap") as info:
        read_mmode(path)
    assert info.value.status == "no_overlap" and "inclusive; one past" in str(info.value)


def test_most_pairs_failing_is_no_overlap_a_rare_failure_is_appended_and_noted():
    rng = np.random.default_rng(0)
    long = rng.integers(0, 255, (20, 200, 3), dtype=np.uint8)
    frames = np.stack([long[:, s:s + 40] for s in range(0, 161, 10)])  # 17 frames, 16 pairs
    frames[8] = rng.integers(0, 255, (20, 40, 3), dtype=np.uint8)  # frames 8 and 9 lose their overlap
    stitched, notes = stitch_frames(frames)
    assert notes == ["frame 8 does not overlap frame 7; appended whole", "frame 9 does not overlap frame 8; appended whole"]
    assert stitched.shape[1] == 200 + 40 - 10 + 40 - 10  # two whole frames instead of two 10-column steps
    frames[2:11] = rng.integers(0, 255, (9, 20, 40, 3), dtype=np.uint8)  # 10 of 16 pairs fail
    with pytest.raises(InputError, match="10 of 16") as info:
        stitch_frames(frames)
    assert info.value.status == "no_overlap"


def test_rare_failure_in_a_one_past_file_keeps_the_one_past_crop(trace, tmp_path):
    path = write_mmode_dicom(tmp_path / "m.dcm", trace, frame_width=400, step=150, bounds="one_past")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    pixels[5, 40:104, 10:410] = np.random.default_rng(1).integers(0, 255, (64, 400, 1), dtype=np.uint8)
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "rare.dcm")
    notes = read_mmode(tmp_path / "rare.dcm").notes
    assert notes[0].startswith("region bounds read as one past") and "19 of 19" in notes[0]
    assert notes[1:] == ("frame 5 does not overlap frame 4; appended whole",
                         "frame 6 does not overlap frame 5; appended whole")


def test_a_static_edge_row_that_breaks_the_overlap_is_trimmed(trace, tmp_path):
    path = write_mmode_dicom(tmp_path / "m.dcm", trace, frame_width=400, step=150)
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.copy()
    scale = np.where(np.random.default_rng(2).random(400) < 0.2, 255, 80)
    pixels[:, 40, 10:410] = scale[:, None]  # a time scale drawn on the region's top row, not scrolling
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "ticks.dcm")
    result = read_mmode(tmp_path / "ticks.dcm")
    np.testing.assert_allclose(result.trace, trace[1:, :covered(400, 150)] * GRAY.sum(), atol=1e-9)
    assert result.notes[0].startswith("region bounds read as inclusive without the edges that do not scroll "
                                      "(top 1, bottom 0, left 0, right 0)")


@pytest.mark.slow
def test_bulk_run_gives_no_overlap_files_their_status(mmode_repository, tmp_path):
    data = tmp_path / "study"
    short = synthetic_mmode(length=1200, height=64, seed=4)[0]
    write_mmode_dicom(data / "one_past.dcm", short, frame_width=200, step=90, bounds="one_past")
    write_mmode_dicom(data / "disjoint.dcm", short, frame_width=200, step=150)
    out = tmp_path / "out"
    result = run_cli("mmode", str(data), "--mass", "20", "--out", str(out), "--repository", str(mmode_repository),
                     "--no-figures")
    assert result.returncode == 1, result.stderr  # finished, with a file error
    stats = pd.read_csv(out / "features_stats.csv").set_index("file")
    assert stats["status"].to_dict() == {"disjoint.dcm": "no_overlap", "one_past.dcm": "ok"}
    assert "share no exact overlap" in stats.loc["disjoint.dcm", "error"]
    assert stats.loc["one_past.dcm", "notes"].startswith("region bounds read as one past")
    assert stats.loc["one_past.dcm", "duration_s"] == pytest.approx(covered(200, 90, 1200) * 0.00083334, abs=1e-4)

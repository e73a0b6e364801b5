import cv2
import numpy as np
import pytest
from pydicom import examples

from echodeploy.errors import InputError
from echodeploy.preprocessing.clips import load_clips, read_cine
from echodeploy.preprocessing.dicom_cine import read_dicom_cine, ultrasound_region
from echodeploy.preprocessing.video import make_clips, resample_fps
from echodeploy.samples import synthetic_echo, write_avi, write_dicom_cine
from echodeploy.specs import ClipSpec

CLIP = ClipSpec()


def _decode_all(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return np.stack(frames)
        frames.append(frame)


def test_seed_clip_from_avi_matches_an_independent_reference(tmp_path):
    path = write_avi(tmp_path / "v.avi", synthetic_echo(45, height=120, width=160, seed=3))
    clips, notes = load_clips(path, CLIP)
    decoded = _decode_all(path)  # as OpenCV decodes it: BGR
    reference = np.stack([
        cv2.resize(decoded[i][:, 20:140], (112, 112), interpolation=cv2.INTER_CUBIC)
        for i in range(0, 32, 2)
    ]).transpose(3, 0, 1, 2)
    assert clips.shape == (1, 3, 16, 112, 112) and clips.dtype == np.uint8
    np.testing.assert_array_equal(clips[0], reference)
    assert notes == ()


def test_channels_stay_in_opencv_bgr_order(tmp_path):
    frames = np.zeros((32, 112, 112, 3), np.uint8)
    frames[..., 2] = 200  # red in BGR
    clip = make_clips(frames, CLIP)[0]
    assert clip[2].min() == 200 and clip[0].max() == 0


def test_frame_indices_are_every_second_of_the_first_32():
    frames = np.zeros((40, 112, 112, 3), np.uint8)
    for i in range(40):
        frames[i] = i
    clip = make_clips(frames, CLIP)[0]
    assert clip[0, :, 0, 0].tolist() == list(range(0, 32, 2))


def test_all_clip_starts():
    frames = np.arange(40, dtype=np.uint8)[:, None, None, None] * np.ones((1, 112, 112, 3), np.uint8)
    clips = make_clips(frames, CLIP, mode="all")
    assert clips.shape[0] == 40 - 32 + 1
    assert clips[5, 0, :, 0, 0].tolist() == list(range(5, 37, 2))


def test_short_video_is_too_short(tmp_path):
    path = write_avi(tmp_path / "short.avi", synthetic_echo(20))
    with pytest.raises(InputError) as info:
        load_clips(path, CLIP)
    assert info.value.status == "too_short"


@pytest.mark.parametrize("content,status", [(b"", "unreadable"), (b"not a video" * 50, "unreadable")])
def test_broken_videos(tmp_path, content, status):
    path = tmp_path / "broken.avi"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        read_cine(path)
    assert info.value.status == status


def test_non_video_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InputError) as info:
        read_cine(tmp_path / "notes.txt")
    assert info.value.status == "not_video"


def test_resample_honours_frame_time():
    frames = np.arange(60, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    out = resample_fps(frames, fps_in=60, fps_out=30)
    assert out[:, 0, 0, 0].tolist() == list(range(0, 60, 2))


def test_pydicom_ybr_jpeg_example():
    cine = read_dicom_cine(examples.get_path("ybr_color"))
    assert cine.frames.dtype == np.uint8 and cine.frames.shape[0] == 30 and cine.frames.shape[-1] == 3
    assert cine.fps == pytest.approx(30, rel=1e-3)
    # its region sequence points outside the 320x240 image, so the sector fallback is used
    assert "no valid 2D ultrasound region" in cine.notes[0]
    height, width = cine.frames.shape[1:3]
    assert 100 < height < 240 and 100 < width < 320  # text columns and toolbar cropped away
    clips, _ = load_clips(examples.get_path("ybr_color"), ClipSpec(frames=8, stride=2))
    assert clips.shape == (1, 3, 8, 112, 112)


@pytest.mark.parametrize("encoding,tolerance", [("raw", 0), ("rle", 0), ("jpeg", 6), ("palette", 1)])
def test_written_dicom_cines_decode_to_the_region(tmp_path, encoding, tolerance):
    frames = synthetic_echo(36, height=120, width=160, seed=1)
    region = (20, 4, 139, 100)  # inclusive bounds; above the ECG trace
    path = write_dicom_cine(tmp_path / f"{encoding}.dcm", frames, fps=40, encoding=encoding, region=region)
    cine = read_dicom_cine(path)
    expected = frames[:, 4:101, 20:140]
    if encoding == "palette":
        expected = np.repeat(frames[:, 4:101, 20:140, ::-1].mean(-1).astype(np.uint8)[..., None], 3, -1)
    assert cine.frames.shape == expected.shape and cine.notes == ()
    assert cine.fps == pytest.approx(40)
    inside = cine.frames.sum(-1) > 0  # pixels kept inside the sector
    assert inside.mean() > 0.3
    assert np.abs(cine.frames.astype(int) - expected.astype(int))[inside].mean() <= tolerance


def test_ecg_and_text_outside_the_sector_are_blanked(tmp_path):
    frames = synthetic_echo(36, height=120, width=160, seed=2)
    cine = read_dicom_cine(write_dicom_cine(tmp_path / "c.dcm", frames))
    def green_pixels(f):
        return int(((f[..., 1] > 200) & (f[..., 0] < 50)).sum())

    assert green_pixels(cine.frames) < 0.3 * green_pixels(frames)  # the ECG trace is mostly gone
    assert cine.frames[:, :12, :40].max() < 50  # the burnt-in text in the corner is gone


def test_region_bounds_outside_the_image_are_ignored(tmp_path):
    path = write_dicom_cine(tmp_path / "c.dcm", synthetic_echo(34), region=(0, 0, 400, 300))
    cine = read_dicom_cine(path)
    assert "no valid 2D ultrasound region" in cine.notes[0]


def test_region_choice_is_the_largest_valid_2d_region():
    import pydicom

    ds = pydicom.Dataset()
    regions = []
    for fmt, bounds in [(1, (0, 0, 50, 50)), (1, (10, 10, 150, 110)), (2, (0, 0, 159, 119)), (1, (0, 0, 170, 100))]:
        item = pydicom.Dataset()
        item.RegionSpatialFormat = fmt
        (item.RegionLocationMinX0, item.RegionLocationMinY0,
         item.RegionLocationMaxX1, item.RegionLocationMaxY1) = bounds
        regions.append(item)
    ds.SequenceOfUltrasoundRegions = regions
    assert ultrasound_region(ds, (120, 160)) == (10, 10, 150, 110)


def test_single_frame_and_non_image_dicoms(tmp_path):
    single = write_dicom_cine(tmp_path / "one.dcm", synthetic_echo(1))
    import pydicom

    ds = pydicom.dcmread(single)
    ds.NumberOfFrames = 1
    ds.save_as(single)
    with pytest.raises(InputError, match="single-frame") as info:
        read_dicom_cine(single)
    assert info.value.status == "not_video"
    del ds.PixelData
    ds.save_as(tmp_path / "nopixels.dcm")
    with pytest.raises(InputError, match="no pixel data"):
        read_dicom_cine(tmp_path / "nopixels.dcm")


def test_truncated_dicom_is_unreadable(tmp_path):
    path = write_dicom_cine(tmp_path / "c.dcm", synthetic_echo(34))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError) as info:
        read_cine(path)
    assert info.value.status == "unreadable"

"""M-mode: DICOM reading, stitching, windows, features, networks, export and the CLI."""

import json

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from conftest import fixture_keys, run_cli

from echodeploy.client.results.mmode_features import (
    beat_stats,
    beat_table,
    good_columns,
    min_peak_distance,
    teichholz_volume_ul,
)
from echodeploy.errors import CheckpointError, InputError
from echodeploy.export.cardionet import CardioNet
from echodeploy.export.mmode import load_cardionet, load_quicknat
from echodeploy.export.quicknat import QuickNAT
from echodeploy.preprocessing.mmode import (
    nearest_source,
    profile_weights,
    quality_crop,
    quality_windows,
    read_mmode,
    segmentation_windows,
    stitch_frames,
    stitch_profiles,
)
from echodeploy.samples import synthetic_mmode, write_mmode_dicom

S_PER_PX, MM_PER_PX = 0.00083334, 0.011525974


@pytest.fixture(scope="module")
def mouse():
    trace, mask = synthetic_mmode(length=2400, heart_rate_bpm=500, seed=1)
    return trace, mask


def test_stitching_recovers_the_trace_exactly(mouse, tmp_path):
    trace, _ = mouse
    path = write_mmode_dicom(tmp_path / "m.dcm", trace, frame_width=400, step=120, repeat_frame=3)
    result = read_mmode(path)
    covered = (len(range(0, 2400 - 400 + 1, 120)) - 1) * 120 + 400
    assert result.trace.shape == (200, covered)  # the repeated frame added nothing
    expected = trace[:, :covered].astype(np.float64) * (0.2989 + 0.5870 + 0.1140)
    np.testing.assert_allclose(result.trace, expected, atol=1e-9)
    assert result.seconds_per_px == pytest.approx(S_PER_PX) and result.mm_per_px == pytest.approx(MM_PER_PX)
    assert result.notes == ()


def test_frame_without_overlap_is_appended_whole():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 20, 40, 3), dtype=np.uint8)
    frames[1] = np.concatenate([frames[0][:, 10:], rng.integers(0, 255, (20, 10, 3), dtype=np.uint8)], axis=1)
    stitched, notes = stitch_frames(frames)
    assert stitched.shape[1] == 40 + 10 + 40
    np.testing.assert_array_equal(stitched[:, 40:50], frames[1][:, 30:])
    assert notes == ["frame 2 does not overlap frame 1; appended whole"]


def test_overlap_search_scales_to_wide_frames():
    rng = np.random.default_rng(1)
    long = rng.integers(0, 255, (64, 12000, 3), dtype=np.uint8)
    frames = np.stack([long[:, s:s + 4000] for s in (0, 3, 2000)])
    stitched, notes = stitch_frames(frames)  # O(W) per pair: this is instant; O(W^2) would take minutes
    np.testing.assert_array_equal(stitched, long[:, :6000])
    assert notes == []


@pytest.mark.parametrize("change,status,message", [
    ({"with_regions": False}, "no_calibration", "no Sequence of Ultrasound Regions"),
    ({"units": (3, 3)}, "wrong_units", "expected (4 seconds, 3 cm)"),
])
def test_bad_calibration_is_named(mouse, tmp_path, change, status, message):
    path = write_mmode_dicom(tmp_path / "m.dcm", mouse[0], **change)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        read_mmode(path)
    assert info.value.status == status


def test_seed_region_index_fallback_and_missing_mmode_region(mouse, tmp_path):
    path = write_mmode_dicom(tmp_path / "m.dcm", mouse[0], region_format=1)
    assert "used region 2 as the seed does" in read_mmode(path).notes[0]
    ds = pydicom.dcmread(path)
    ds.SequenceOfUltrasoundRegions = list(ds.SequenceOfUltrasoundRegions)[:2]
    ds.save_as(tmp_path / "two.dcm")
    with pytest.raises(InputError, match="no M-mode region"):
        read_mmode(tmp_path / "two.dcm")


def test_bounds_outside_the_image_single_frame_and_undecodable(mouse, tmp_path):
    path = write_mmode_dicom(tmp_path / "m.dcm", mouse[0])
    ds = pydicom.dcmread(path)
    ds.SequenceOfUltrasoundRegions[2].RegionLocationMaxX1 = ds.Columns  # inclusive bound one past the edge
    ds.save_as(tmp_path / "bounds.dcm")
    with pytest.raises(InputError, match="fall outside") as info:
        read_mmode(tmp_path / "bounds.dcm")
    assert info.value.status == "bad_region"
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 1
    ds.PixelData = ds.PixelData[: ds.Rows * ds.Columns * 3]
    ds.save_as(tmp_path / "single.dcm")
    with pytest.raises(InputError, match="single-frame"):
        read_mmode(tmp_path / "single.dcm")
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(tmp_path / "cut.dcm")
    with pytest.raises(InputError, match="cannot decode pixel data") as info:
        read_mmode(tmp_path / "cut.dcm")
    assert info.value.status == "unreadable"


def test_profile_weights_reproduce_the_nearest_resized_mask_exactly():
    rng = np.random.default_rng(0)
    mask = (rng.random((256, 256)) > 0.6).astype(np.float32)
    for height in (150, 200, 256, 333):
        resized = cv2.resize(mask, (height, height), interpolation=cv2.INTER_NEAREST)
        profile = profile_weights(height) @ mask  # what the served model computes, per window
        counts, row_sums = profile[:, nearest_source(height)]
        np.testing.assert_array_equal(counts, resized.sum(0))
        np.testing.assert_array_equal(row_sums, (resized * np.arange(height)[:, None]).sum(0))


def test_segmentation_windows_and_stitched_profiles():
    trace = np.random.default_rng(0).uniform(0, 255, (100, 350))
    windows = segmentation_windows(trace)
    assert windows.shape == (4, 1, 256, 256) and windows.dtype == np.float32  # 350 // 100 + 1
    profiles = np.stack([np.stack([np.full(256, i), np.zeros(256)]) for i in range(4)]).astype(np.float32)
    counts, _ = stitch_profiles(profiles, height=100, length=350)
    assert counts.shape == (350,)
    assert counts[:300].tolist() == [0] * 100 + [1] * 100 + [2] * 100 and set(counts[300:]) == {3}


def test_quality_crop_by_body_mass():
    assert [quality_crop(200, m) for m in (10, 20, 30, 40, 50)] == [100, 120, 150, 180, 200]


def test_quality_windows_are_centred_on_the_lv(mouse):
    trace, mask = mouse
    counts, rows = mask.sum(0).astype(float), (mask * np.arange(200)[:, None]).sum(0).astype(float)
    windows, spans = quality_windows(trace.astype(float), counts, rows, crop=100)
    assert len(spans) == 2400 // 100 + 1 and spans[-1] == (2300, 2400)
    # the LV band (rows ~55-145) sits in the middle of every window: dark centre, brighter edges
    centre, edge = windows[:, 0, 110:146, :].mean(), windows[:, 0, :20, :].mean()
    assert centre < 40 < edge


def test_features_from_ground_truth_mask(mouse):
    _, mask = mouse
    lvid_mm = mask.sum(0) * MM_PER_PX
    beats = beat_table(lvid_mm, S_PER_PX, np.ones(len(lvid_mm), bool))
    stats = beat_stats(beats)
    assert abs(stats["lvid_d_median_mm"] - 90 * MM_PER_PX) <= MM_PER_PX
    assert abs(stats["lvid_s_median_mm"] - 60 * MM_PER_PX) <= MM_PER_PX
    assert stats["heart_rate_median_bpm"] == pytest.approx(500, rel=0.01)
    assert stats["lv_vol_d_median_ul"] == pytest.approx(teichholz_volume_ul(stats["lvid_d_median_mm"]), rel=1e-6)
    assert min_peak_distance(S_PER_PX) == 85


def test_quality_gating_keeps_only_good_beats(mouse):
    _, mask = mouse
    lvid_mm = mask.sum(0) * MM_PER_PX
    spans = [(s, s + 600) for s in range(0, 2400, 600)] + [(1800, 2400)]
    good = good_columns(2400, spans, np.array([True, False, True, False, True]))
    assert good[:600].all() and not good[600:1200].any() and not good[1800:].any()
    beats = beat_table(lvid_mm, S_PER_PX, good)
    times = beats["lvid_d_time_s"].dropna() / S_PER_PX
    assert len(times) and all(good[int(round(t))] for t in times)
    assert not any(600 <= t < 1200 for t in times)


def _random_state(net, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {k: (torch.rand(v.shape, generator=generator) + 0.5 if v.is_floating_point() else v)
            for k, v in net.state_dict().items()}


@pytest.mark.parametrize("name,net", [("cardionet", CardioNet), ("quicknat", QuickNAT)])
def test_networks_match_published_layout(name, net):
    fixture = fixture_keys(name)
    model = net()
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert got == fixture["keys"]
    assert sum(p.numel() for p in model.parameters()) == fixture["params"]


def test_checkpoint_formats(tmp_path):
    torch.save(_random_state(CardioNet()), tmp_path / "cardionet.pt")
    torch.save({"net_state_dict": _random_state(QuickNAT()), "epoch": 3}, tmp_path / "quicknat.pt")
    assert load_cardionet(tmp_path / "cardionet.pt", "seed").bn_mode == "seed"
    assert not load_quicknat(tmp_path / "quicknat.pt", "running").training
    torch.save(_random_state(QuickNAT()), tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="expected a dict with 'net_state_dict'"):
        load_quicknat(tmp_path / "plain.pt", "seed")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_cardionet(tmp_path / "quicknat.pt", "seed")


@pytest.mark.slow
def test_seed_bn_mode_is_per_window_whatever_the_batch():
    torch.manual_seed(0)
    net = QuickNAT("seed").eval()
    windows = torch.rand(3, 1, 256, 256) * 255
    with torch.no_grad():
        together = net(windows)
        alone = torch.cat([net(w[None]) for w in windows])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bn_mode", ["seed", "running"])
@pytest.mark.slow
def test_onnx_export_parity_both_nets(tmp_path, bn_mode):
    from echodeploy.export.mmode import export_mmode_models

    results = export_mmode_models(tmp_path, bn_mode=bn_mode)
    quality, lvid = (report for _, report, _ in results)
    assert quality.max_abs_diff["quality_prob"] <= 1e-4
    assert lvid.max_abs_diff["mask_agreement"] >= 0.999
    meta = json.dumps([r.path.name for r in (quality, lvid)])
    assert "model.onnx" in meta


@pytest.mark.slow
def test_mmode_cli_end_to_end(mmode_repository, tmp_path):
    data = tmp_path / "study"
    for i, bpm in enumerate((450, 520)):
        write_mmode_dicom(data / f"mouse{i}.dcm", synthetic_mmode(length=1800, heart_rate_bpm=bpm, seed=i)[0],
                          patient={"PatientName": "Mouse^Secret", "PatientID": "ID-999"})
    write_mmode_dicom(data / "uncalibrated.dcm", synthetic_mmode(length=1200)[0], with_regions=False)
    (data / "garbage.dcm").write_bytes(b"\0" * 50)
    pd.DataFrame({"file": ["mouse0.dcm", "mouse1", "uncalibrated.dcm"], "mass_g": [12, 30, 22]}).to_csv(
        tmp_path / "mass.csv", index=False)
    out = tmp_path / "out"
    result = run_cli("mmode", str(data), "--mass-csv", str(tmp_path / "mass.csv"), "--out", str(out),
                     "--repository", str(mmode_repository), "--batch-size", "5")
    assert result.returncode == 1, result.stderr  # finished with file errors
    stats = pd.read_csv(out / "features_stats.csv")
    assert stats["file"].tolist() == ["garbage.dcm", "mouse0.dcm", "mouse1.dcm", "uncalibrated.dcm"]
    assert stats["status"].tolist() == ["error", "ok", "ok", "no_calibration"]
    assert "no body mass" in stats.loc[0, "error"]  # garbage.dcm is not in the mass CSV
    length = (len(range(0, 1800 - 400 + 1, 120)) - 1) * 120 + 400  # stitched trace
    assert stats.loc[1:2, "windows"].tolist() == [length // 100 + 1, length // 150 + 1]  # crop by body mass
    assert stats["untrained"].all()
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert figures == sorted(f"mouse{i}_{k}.png" for i in (0, 1) for k in ("quality", "mask", "lvid", "heart_rate"))
    for path in [*out.iterdir(), *(out / "figures").iterdir()]:
        if path.suffix in (".csv", ".jsonl"):
            assert "Secret" not in path.read_text() and "ID-999" not in path.read_text()
    assert "Secret" not in result.stdout + result.stderr
    again = run_cli("mmode", str(data), "--mass-csv", str(tmp_path / "mass.csv"), "--out", str(out),
                    "--repository", str(mmode_repository), "--write", "all", "--no-figures")
    assert "resuming: 4 of 4 files already done" in again.stderr
    beats = pd.read_csv(out / "features_all.csv")
    assert set(beats["file"]) == set(stats["file"])
    assert {"lvid_d_mm", "lvid_d_time_s", "lvid_s_mm", "heart_rate_bpm"} <= set(beats.columns)

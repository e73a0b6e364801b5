"""`echodeploy cmr` end to end through the real entry point, on real files."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import assert_outputs_close, run_cli, video_manifest

from echodeploy.samples import synthetic_echo, write_avi, write_dicom_cine

GOOD = ["S1_a", "S1_b", "S2_a", "S3_dcm"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A manifest with good videos and every kind of bad row."""
    root = tmp_path_factory.mktemp("data")
    for i, name in enumerate(GOOD[:3]):
        write_avi(root / f"{name}.avi", synthetic_echo(36 + i, seed=i))
    write_dicom_cine(root / "S3_dcm.dcm", synthetic_echo(40, seed=9), encoding="rle",
                     patient={"PatientName": "Doe^Jane", "PatientID": "MRN-12345"})
    write_avi(root / "short.avi", synthetic_echo(12))
    (root / "corrupt.avi").write_bytes(b"RIFF....AVI garbage" * 100)
    (root / "empty.avi").write_bytes(b"")
    (root / "readme.txt").write_text("not a video")
    rows = [
        ("S1", "S1_a", 1), ("S1", "S1_b", 1), ("S2", "S2_a", 0), ("S3", "S3_dcm.dcm", 0),
        ("S4", "short", 1), ("S4", "corrupt", 0), ("S5", "empty", 1), ("S5", "gone", 0),
        ("S6", "readme.txt", 1),
    ]
    manifest = root / "manifest.csv"
    pd.DataFrame(rows, columns=["Study_Unique_ID", "Video_Unique_ID", "TARGET"]).assign(frames=40).to_csv(
        manifest, index=False)
    return manifest


@pytest.mark.slow
def test_bulk_run_accounts_for_every_row(dataset, repository, tmp_path):
    out = tmp_path / "out"
    result = run_cli("cmr", str(dataset), "--out", str(out), "--view", "A4C", "--task", "scar,t1",
                     "--target-task", "scar", "--batch-size", "3", "--repository", str(repository))
    assert result.returncode == 1, result.stderr  # finished, with item errors
    table = pd.read_csv(out / "predictions.csv")
    assert table["Video_Unique_ID"].tolist() == [
        "S1_a", "S1_b", "S2_a", "S3_dcm.dcm", "short", "corrupt", "empty", "gone", "readme.txt"]
    assert table["status"].tolist() == [
        "ok", "ok", "ok", "ok", "too_short", "unreadable", "unreadable", "missing", "not_video"]
    assert table.loc[table.status != "ok", "error"].str.len().min() > 5  # a readable reason each
    ok = table[table.status == "ok"]
    assert ok["scar_prob"].between(0, 1).all() and ok["t1_value"].notna().all()
    assert ok["untrained"].all()
    assert table.loc[table.status != "ok", "scar_prob"].isna().all()
    assert "UNTRAINED" in result.stderr
    studies = pd.read_csv(out / "studies.csv")
    s1 = studies[(studies.Study_Unique_ID == "S1") & (studies.task == "scar")].iloc[0]
    assert s1["n_videos"] == 2
    assert s1["A4C"] == pytest.approx(ok.loc[ok.Study_Unique_ID == "S1", "scar_prob"].mean())
    assert s1["all_views"] == pytest.approx(s1["A4C"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "scar" and metrics["videos"]["all"]["n"] == 4 and metrics["untrained"]
    # no patient identifiers from DICOM headers leak into outputs or logs
    for text in [result.stdout, result.stderr, *(p.read_text() for p in out.iterdir() if p.is_file())]:
        assert "Doe" not in text and "MRN-12345" not in text


@pytest.mark.slow
def test_batching_does_not_change_results(dataset, repository, tmp_path):
    tables = []
    for batch, workers in (("1", "0"), ("4", "2")):
        out = tmp_path / f"b{batch}"
        result = run_cli("cmr", str(dataset), "--out", str(out), "--view", "A4C", "--task", "scar",
                         "--batch-size", batch, "--workers", workers, "--repository", str(repository))
        assert result.returncode == 1, result.stderr  # finished, with the dataset's bad rows
        tables.append(pd.read_csv(out / "predictions.csv"))
    assert (tables[0]["status"] == "ok").sum() == len(GOOD)
    assert_outputs_close(tables[0], tables[1], ["scar_prob"], atol=1e-6)


@pytest.mark.slow
def test_folder_input_and_all_clips(repository, tmp_path):
    folder = tmp_path / "study_A"
    write_avi(folder / "one.avi", synthetic_echo(34, seed=1))
    write_avi(folder / "two.avi", synthetic_echo(40, seed=2))
    out = tmp_path / "out"
    result = run_cli("cmr", str(folder), "--out", str(out), "--view", "a4c", "--task", "scar",
                     "--clips", "all", "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "predictions.csv")
    assert table["clips"].tolist() == [3, 9]  # every start position: frames - 32 + 1


@pytest.mark.slow
def test_clear_errors_for_bad_arguments(dataset, repository, tmp_path):
    result = run_cli("cmr", str(dataset), "--out", str(tmp_path), "--repository", str(repository))
    assert result.returncode == 2 and "no view column" in result.stderr
    result = run_cli("cmr", str(dataset), "--out", str(tmp_path), "--view", "A4C", "--task", "lvef",
                     "--repository", str(repository))
    assert result.returncode == 2 and "unknown task 'lvef'" in result.stderr
    result = run_cli("cmr", str(dataset), "--out", str(tmp_path), "--view", "PLAX", "--task", "scar",
                     "--repository", str(repository))
    assert result.returncode == 2 and "model cmr_plax_scar not found" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_resume_after_kill_loses_and_duplicates_nothing(repository, tmp_path):
    manifest = video_manifest(tmp_path / "data", 8)
    names = pd.read_csv(manifest)["Video_Unique_ID"].tolist()
    out = tmp_path / "out"
    args = [sys.executable, "-m", "echodeploy", "cmr", str(manifest), "--out", str(out), "--view", "A4C",
            "--task", "scar", "--batch-size", "1", "--repository", str(repository)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = out / "records.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 3):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = len(journal.read_text().splitlines())
    assert 3 <= done_before < len(names), "the kill should land mid-run"
    result = run_cli(*args[3:])
    assert result.returncode == 0, result.stderr
    assert f"resuming: {done_before} of 8 rows already done" in result.stderr
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert len(records) == len(names)  # each row computed exactly once across both runs
    table = pd.read_csv(out / "predictions.csv")
    assert table["Video_Unique_ID"].tolist() == names and (table.status == "ok").all()


@pytest.mark.slow
def test_changed_input_is_recomputed(repository, tmp_path):
    data = tmp_path / "d"
    write_avi(data / "a.avi", synthetic_echo(34, seed=1))
    args = ("cmr", str(data), "--out", str(tmp_path / "o"), "--view", "A4C", "--task", "scar",
            "--repository", str(repository))
    first = run_cli(*args)
    assert first.returncode == 0
    write_avi(data / "a.avi", synthetic_echo(34, seed=2))
    second = run_cli(*args)
    assert "resuming" not in second.stderr
    assert len((tmp_path / "o" / "records.jsonl").read_text().splitlines()) == 2

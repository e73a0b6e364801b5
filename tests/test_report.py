"""report.html opened in a real headless Chromium (Debian's, through Playwright): every section present,
no console errors, nothing fetched, and the numbers on the page equal the run's own files; run records
(run.json) of finished, interrupted-and-resumed, merged and untrained runs."""

import json
import re
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest

from echodeploy.analysis.pheno import PhenoOptions, run_pheno
from echodeploy.analysis.study_model import apply_study_model, fit_study_model, save_study_model
from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
from echodeploy.benchmarks.browser import chromium, open_page
from echodeploy.client.results import report
from echodeploy.client.results.report import build_report
from echodeploy.client.runs.cmr import CmrOptions, CmrPipeline, run_cmr
from echodeploy.client.runs.inputs import read_inputs
from echodeploy.client.runs.mmode import MModeOptions, read_mmode_inputs, run_mmode
from echodeploy.client.runs.record import read_record, redact, redact_command, run_context
from echodeploy.client.runs.runner import run_bulk
from echodeploy.client.runs.shards import Shard, merge_shards, run_shard
from echodeploy.samples import synthetic_echo, synthetic_mmode, write_avi, write_mmode_dicom

COMMAND = ["echodeploy", "cmr", "m.csv", "--view", "A4C", "--url", "https://user:hunter2@pacs:443"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium; a missing browser fails the tests (make test installs it), never skips them."""
    with chromium() as browser:
        yield browser


def show(browser, path):
    """The page at `path`, after checking that it loaded without console errors or requests."""
    page, problems = open_page(browser, path)
    assert problems == [], problems
    return page


def value(page, key):
    """The exact value behind a figure the page states (its data-value)."""
    return page.get_attribute(f'[data-key="{key}"]', "data-value")


def text(page, key):
    return page.inner_text(f'[data-key="{key}"]')


def assert_not_blank(page):
    """A screenshot with content: many colours and the page's dark text on its light background."""
    shot = cv2.imdecode(np.frombuffer(page.screenshot(full_page=True), np.uint8), cv2.IMREAD_COLOR)
    assert shot.shape[0] > 600 and shot.std() > 20
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50
    pdf = page.pdf(format="A4")  # printable: a PDF of several pages
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", pdf)) >= 2


def statuses(page) -> dict[str, int]:
    cells = page.query_selector_all("#accounting [data-status]")
    return {c.get_attribute("data-status"): int(c.inner_text().replace(",", "")) for c in cells}


class Interrupting:
    """The backend, raising KeyboardInterrupt (Ctrl-C) at its `after`-th inference call."""

    def __init__(self, backend, after: int):
        self.backend, self.name, self.after, self.calls = backend, backend.name, after, 0

    def model_info(self, model):
        return self.backend.model_info(model)

    def has_model(self, model):
        return self.backend.has_model(model)

    def infer(self, model, inputs, outputs=None):
        self.calls += 1
        if self.calls >= self.after:
            raise KeyboardInterrupt
        return self.backend.infer(model, inputs, outputs)

    def close(self):
        pass


def manifest(root, rows):
    """Generated A4C videos and a manifest (study, video, TARGET); `rows` may name files written badly."""
    root.mkdir(parents=True, exist_ok=True)
    for i, (_, video, _) in enumerate(rows):
        if not video.startswith("bad"):
            write_avi(root / f"{video}.avi", synthetic_echo(34, seed=i))
    path = root / "m.csv"
    pd.DataFrame(rows, columns=["Study_Unique_ID", "Video_Unique_ID", "TARGET"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def cmr_run(repository, tmp_path_factory):
    """A finished cmr run (scar with TARGET, t1) on good videos and corrupt, short, missing and non-video rows."""
    root = tmp_path_factory.mktemp("cmr")
    rows = [("S1", "v0", 1), ("S1", "v1", 1), ("S2", "v2", 0), ("S2", "v3", 0), ("S3", "v4", 1), ("S3", "v5", 0),
            ("S4", "v6", 0), ("S4", "bad_corrupt", 1), ("S5", "bad_short", 0), ("S5", "bad_missing", 1),
            ("S6", "bad_text.txt", 0)]
    path = manifest(root / "data", rows)
    (root / "data" / "bad_corrupt.avi").write_bytes(b"RIFF....AVI garbage" * 100)
    write_avi(root / "data" / "bad_short.avi", synthetic_echo(10))
    (root / "data" / "bad_text.txt").write_text("not a video")
    backend = OnnxRuntimeBackend(repository)
    with run_context(command=COMMAND, backend_choice="backend: onnxruntime (chosen by the test)"):
        run_cmr(read_inputs(path, "A4C"), backend, root / "out", CmrOptions(tasks=("scar", "t1"), target_task="scar",
                                                                             workers=0, batch_size=3))
    return root / "out"


def test_run_record_says_what_ran_without_credentials(cmr_run):
    record = read_record(cmr_run)
    assert record["pipeline"] == "cmr" and record["engine"] == "local" and record["backend"] == "onnxruntime"
    assert record["command"][:-1] == COMMAND[:-1] and record["command"][-1] == "https://***@pacs:443"
    assert "hunter2" not in (cmr_run / "run.json").read_text()
    assert record["models"]["cmr_a4c_scar"]["untrained"] is True
    assert set(record["models"]) == {"cmr_a4c_scar", "cmr_a4c_t1"}
    assert {"checkpoint_sha256", "precision", "random_seed"} <= set(record["models"]["cmr_a4c_scar"])
    [session] = record["sessions"]
    assert session["outcome"] == "finished" and session["rows_done_before"] == 0
    assert session["rows_processed"] == session["rows_done"] == record["rows"] == 11
    assert session["counts"] == pd.read_csv(cmr_run / "predictions.csv")["status"].value_counts().to_dict()
    assert record["rows_per_s"] == pytest.approx(11 / record["seconds"], rel=1e-3)
    assert redact({"url": "grpc://a:b@h:1", "settings": {"api_key": "k", "token": None}, "n": 3}) == {
        "url": "grpc://***@h:1", "settings": {"api_key": "***", "token": None}, "n": 3}
    assert redact_command(["x", "--password", "p", "--token=t", "--tokens-per-s", "3"]) == [
        "x", "--password", "***", "--token=***", "--tokens-per-s", "***"]


def test_cmr_report_shows_the_runs_own_numbers(cmr_run, browser, tmp_path):
    page = show(browser, build_report(cmr_run))
    for section in ("header", "untrained", "accounting", "distributions", "evaluation", "studies"):
        assert page.is_visible(f"#{section}"), section
    assert "cmr_a4c_scar" in page.inner_text("#untrained") and "cmr_a4c_t1" in page.inner_text("#untrained")
    assert "https://***@pacs:443" in page.inner_text("#header") and "chosen by the test" in page.inner_text("#header")
    predictions = pd.read_csv(cmr_run / "predictions.csv")
    assert statuses(page) == predictions["status"].value_counts().to_dict()
    assert int(text(page, "failed")) == (predictions["status"] != "ok").sum() == 4
    failed = page.inner_text("#accounting")
    for reason in predictions.loc[predictions["status"] != "ok", "error"]:
        assert reason in failed

    metrics = json.loads((cmr_run / "metrics.json").read_text())
    for scope, m in (("all", metrics["videos"]["all"]), ("studies", metrics["studies"])):
        key = f"scar-{scope}"
        assert float(value(page, f"{key}-auc")) == m["auc"] and text(page, f"{key}-auc") == f"{m['auc']:.3f}"
        assert [float(value(page, f"{key}-auc_ci_{end}")) for end in ("low", "high")] == m["auc_ci95"]
        assert float(value(page, f"{key}-threshold")) == m["youden_threshold"]
        tp, fn, fp, tn = (int(value(page, f"{key}-{c}")) for c in ("tp", "fn", "fp", "tn"))
        assert (tp + fn, tp + fn + fp + tn) == (m["n_positive"], m["n"])
        assert tp / (tp + fn) == pytest.approx(m["sensitivity"]) and tn / (tn + fp) == pytest.approx(m["specificity"])
    assert page.locator("#evaluation svg").count() == 4  # ROC and reliability, videos and studies
    assert page.locator("#distributions svg").count() == 2  # scar_prob and t1_value

    studies = pd.read_csv(cmr_run / "studies.csv")
    rows = page.locator("#studies-table tbody tr")
    assert rows.count() == len(studies)
    page.click("#studies-table th:nth-child(5)")  # all_views, ascending
    shown = [float(v) for v in page.eval_on_selector_all("#studies-table tbody tr td:nth-child(5)",
                                                         "cells => cells.map(c => c.dataset.v)")]
    assert shown == sorted(studies["all_views"])
    page.fill('input[data-filter="studies-table"]', "S3")
    assert page.locator("#studies-table tbody tr:visible").count() == 2  # S3's scar and t1 rows
    assert_not_blank(page)


def test_interrupted_then_resumed_run(repository, browser, tmp_path):
    path = manifest(tmp_path / "data", [(f"S{i // 2}", f"v{i}", i % 2) for i in range(6)])
    inputs, options = read_inputs(path, "A4C"), CmrOptions(tasks=("scar",), workers=0, batch_size=1)
    backend = OnnxRuntimeBackend(repository)
    with pytest.raises(KeyboardInterrupt):
        run_cmr(inputs, Interrupting(backend, after=3), tmp_path / "out", options)
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    pending = int((predictions["status"] == "pending").sum())
    assert pending == 4  # two rows finished before Ctrl-C
    [session] = read_record(tmp_path / "out")["sessions"]
    assert session["outcome"] == "interrupted" and session["rows_done"] == 2 and session["end"]

    page = show(browser, build_report(tmp_path / "out"))
    assert int(text(page, "pending")) == pending and statuses(page) == {"ok": 2, "pending": 4}
    assert text(page, "outcome-1") == "interrupted" and text(page, "sessions") == "1"
    assert not page.locator('[data-key="failed"]').count()  # pending rows are not failures

    run_cmr(inputs, backend, tmp_path / "out", options)
    record = read_record(tmp_path / "out")
    assert [s["outcome"] for s in record["sessions"]] == ["interrupted", "finished"]
    assert [s["rows_done_before"] for s in record["sessions"]] == [0, 2]
    assert record["rows_processed"] == 6
    page = show(browser, build_report(tmp_path / "out"))
    assert text(page, "sessions") == "2" and text(page, "outcome-2") == "finished"
    assert statuses(page) == {"ok": 6} and not page.locator('[data-key="pending"]').count()
    assert float(value(page, "rows_per_s")) == record["rows_per_s"]


def test_a_killed_run_keeps_its_start(repository, tmp_path):
    """A session that never closed (the process was killed) is shown as such."""
    path = manifest(tmp_path / "data", [("S0", "v0", 1)])
    run_cmr(read_inputs(path, "A4C"), OnnxRuntimeBackend(repository), tmp_path / "out", CmrOptions(tasks=("scar",)))
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    record["sessions"][0].update(end=None, outcome="running")
    (tmp_path / "out" / "run.json").write_text(json.dumps(record))
    assert '<span data-key="outcome-1">no end recorded (killed' in build_report(tmp_path / "out").read_text()


def test_trained_runs_get_no_banner(cmr_run, browser, tmp_path):
    """The banner follows the files: the same run, its files saying the weights were real, has none."""
    folder = tmp_path / "trained"
    shutil.copytree(cmr_run, folder)
    record = read_record(folder)
    for entry in record["models"].values():
        entry.update(untrained=False, checkpoint_sha256="ab" * 32)
    (folder / "run.json").write_text(json.dumps(record))
    predictions = pd.read_csv(folder / "predictions.csv").assign(untrained=False)
    predictions.to_csv(folder / "predictions.csv", index=False)
    page = show(browser, build_report(folder))
    assert not page.locator("#untrained").count()
    assert "ab" * 32 in page.inner_text("#header")


def test_merged_shards_report_every_shard(repository, browser, tmp_path):
    path = manifest(tmp_path / "data", [(f"S{i}", f"v{i}", i % 2) for i in range(5)] + [("S9", "bad_gone", 1)])
    pipeline = CmrPipeline(read_inputs(path, "A4C"), CmrOptions(tasks=("scar",), workers=0))
    backend = OnnxRuntimeBackend(repository)
    folders = [tmp_path / f"shard{k}" for k in (1, 2)]
    for k, folder in zip((1, 2), folders):
        run_shard(pipeline, Shard(k, 2), backend, folder, lambda part, f=folder: run_bulk(part, backend, f, 0))
    merge_shards(folders, tmp_path / "merged")
    record = read_record(tmp_path / "merged")
    assert sorted(s["shard"] for s in record["sessions"]) == ["1/2", "2/2"] and record["rows"] == 6
    page = show(browser, build_report(tmp_path / "merged"))
    assert "merged" in page.inner_text("h1") and "2 shards" in page.inner_text("#header")
    assert text(page, "sessions") == "2"
    assert statuses(page) == pd.read_csv(tmp_path / "merged" / "predictions.csv")["status"].value_counts().to_dict()
    assert statuses(page) == {"ok": 5, "missing": 1}


def test_mmode_report_figures_beats_and_files(mmode_repository, browser, tmp_path, monkeypatch):
    data = tmp_path / "study"
    for i in range(3):
        write_mmode_dicom(data / f"m{i}.dcm", synthetic_mmode(length=800, heart_rate_bpm=420 + 60 * i, seed=i)[0])
    write_mmode_dicom(data / "uncalibrated.dcm", synthetic_mmode(length=800)[0], with_regions=False)
    (data / "garbage.dcm").write_bytes(b"\0" * 50)
    out = tmp_path / "out"
    run_mmode(read_mmode_inputs(data, mass_g=22), OnnxRuntimeBackend(mmode_repository), out, MModeOptions())
    monkeypatch.setattr(report, "FIGURE_FILES", 2)  # two files' figures embedded, the third linked
    page = show(browser, build_report(out))
    for section in ("header", "untrained", "accounting", "beats", "figures", "files"):
        assert page.is_visible(f"#{section}"), section
    stats = pd.read_csv(out / "features_stats.csv")
    assert statuses(page) == stats["status"].value_counts().to_dict()
    assert (stats["status"] == "ok").sum() == 3 and stats.set_index("file").at["uncalibrated.dcm", "status"] == "no_calibration"
    assert int(value(page, "lvid_d_mm-n")) == stats["good_beats"].sum()
    assert page.locator("#figures img").count() == 4 and int(text(page, "figures-linked")) == 1
    rows = page.locator("#files-table tbody tr")
    assert rows.count() == len(stats)
    windows = page.eval_on_selector_all("#files-table tbody tr td:nth-child(4)", "cells => cells.map(c => c.dataset.v)")
    assert [float(w) if w else np.nan for w in windows] == pytest.approx(stats["windows"].tolist(), nan_ok=True)
    links = page.eval_on_selector_all("#files-table a", "links => links.map(a => a.getAttribute('href'))")
    assert all((out / link).is_file() for link in links) and len(links) == 3 * 4
    assert_not_blank(page)


@pytest.fixture
def pheno_output(tmp_path):
    """`echodeploy pheno` on a generated per-beat table in the published layout (12 mice, one unknown)."""
    rng = np.random.default_rng(0)
    beats, mice = [], []
    for number in range(12):
        sex, genotype = "fm"[number // 6], ("control", "mutant")[number % 2]
        mouse, shift = f"M{number}", 0.5 * (number % 2)
        mice.append({"mouse_id": mouse, "sex": sex, "genotype": genotype,
                     "LVIDd_manual": rng.normal(3.5 + shift, 0.2), "LVIDs_manual": rng.normal(2.0 + shift, 0.2)})
        for beat in range(5):
            d = rng.normal(3.5 + shift, 0.15)
            beats.append({"mouse_id": mouse, "file": f"{mouse}.dcm", "LVIDd_auto": d, "LVIDd_auto_time": beat / 10,
                          "LVIDs_auto": d * 0.6, "LVIDs_auto_time": beat / 10 + 0.04,
                          "heart_rate_auto": rng.normal(500, 30), "heart_rate_auto_time": beat / 10,
                          "LVIDd_auto_quality_label": 0.9, "LVIDd_auto_quality_flag": "high" if beat else "low",
                          "LVIDs_auto_quality_label": 0.9, "LVIDs_auto_quality_flag": "high"})
    beats.append({**beats[0], "mouse_id": "unknown", "file": "unknown.dcm"})
    pd.DataFrame(beats).to_csv(tmp_path / "beats.csv", index=False)
    pd.DataFrame(mice).to_csv(tmp_path / "mice.csv", index=False)
    run_pheno([tmp_path / "beats.csv"], tmp_path / "mice.csv", tmp_path / "pheno", PhenoOptions())
    return tmp_path / "pheno"


def test_pheno_report_p_and_q_values(pheno_output, browser):
    page = show(browser, build_report(pheno_output))
    for section in ("header", "accounting", "p-values", "mice", "tests", "agreement", "comparison"):
        assert page.is_visible(f"#{section}"), section
    p_values = pd.read_csv(pheno_output / "p_values.csv", index_col=0)
    compared = 0
    for quantity, row in p_values.iterrows():
        for column in [c for c in p_values.columns if not c.endswith(" q")]:
            for shown, expected in ((value(page, f"p|{quantity}|{column}"), row[column]),
                                    (value(page, f"q|{quantity}|{column}"), row[f"{column} q"])):
                assert (shown == "nan" and np.isnan(expected)) or float(shown) == expected
                compared += not np.isnan(expected)
    assert compared > 20
    assert int(text(page, "excluded")) == len(pd.read_csv(pheno_output / "excluded.csv"))
    assert page.locator("#comparison img").count() == len(list((pheno_output / "figures").glob("*.png")))
    assert not page.locator("#untrained").count()


def generated_run(folder, studies=40, seed=0):
    """A cmr output folder with TARGET over three views, as test_study_model makes them."""
    from test_study_model import generated_predictions, view_models, write_run

    return write_run(folder, generated_predictions(studies, seed=seed), view_models())


def test_study_model_pages(browser, tmp_path, monkeypatch):
    model = fit_study_model([generated_run(tmp_path / "train")], "scar")
    save_study_model(model, tmp_path / "scar_study.json")
    page = show(browser, build_report(tmp_path / "scar_study.json"))
    full = next(s for s in model["submodels"] if s["views"] == ["A4C", "A2C", "PLAX"])
    assert float(value(page, "A4C+A2C+PLAX-A4C-estimate")) == full["coefficients"]["A4C"]["estimate"]
    assert float(value(page, "study_model-auc")) == model["cross_validation"]["study_model"]["auc"]
    assert int(value(page, "training-studies")) == model["training"]["studies"]

    run = generated_run(tmp_path / "new", studies=30, seed=1)
    metrics = apply_study_model(run, tmp_path / "scar_study.json")
    monkeypatch.setattr(report, "TABLE_ROWS", 7)
    page = show(browser, build_report(run))
    assert "no run record" in page.inner_text("#header")
    assert float(value(page, "study_model-auc")) == metrics["study_model"]["study_model"]["auc"]
    assert float(value(page, "mean_of_views-auc")) == metrics["study_model"]["mean_of_views"]["auc"]
    assert page.locator("#studies-table tbody tr").count() == 7
    assert text(page, "studies-table-shown") == "first 7 of 30 rows shown; all in studies.csv"
    assert "scar_study_prob" in page.inner_text("#studies-table thead")

"""Study models: a GLM over per-view outputs, fitted on generated runs whose TARGET follows known view weights,
and applied through `echodeploy cmr --study-model` on real videos and models."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from typer.testing import CliRunner

from echodeploy.analysis.study_model import apply_study_model, fit_study_model, save_study_model
from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
from echodeploy.cli import app
from echodeploy.client.runs.cmr import VIEW_MODELS_FILE, studies_table, view_model_ids
from echodeploy.errors import EchodeployError
from echodeploy.samples import synthetic_echo, write_avi
from echodeploy.specs import TASKS, cmr_model

WEIGHTS = {"A4C": 1.2, "A2C": -0.6, "PLAX": 0.3}
INTERCEPT = -0.4


def view_models(task="scar", sha="ab" * 32, precision="fp32", views=tuple(WEIGHTS)):
    return {cmr_model(v, task).name: {"view": v, "task": task, "checkpoint_sha256": sha, "precision": precision,
                                      "untrained": "false", "random_seed": ""} for v in views}


def generated_predictions(n_studies, weights=WEIGHTS, intercept=INTERCEPT, seed=0, task="scar", missing=None):
    """Per-video outputs of generated studies: 1-3 videos per view with logits around a per-study level;
    TARGET ~ Bernoulli(sigmoid(intercept + sum of weight x the view's mean video logit)) (binary tasks)
    or that linear predictor plus noise (regression, on the mean values). `missing(study)` names the
    views whose videos are then left out (the label still came from all of them)."""
    rng = np.random.default_rng(seed)
    binary = TASKS[task].kind == "binary"
    rows = []
    for s in range(n_studies):
        videos = {v: rng.normal(0, 1.5) + rng.normal(0, 0.5, rng.integers(1, 4)) for v in weights}
        linear = intercept + sum(w * videos[v].mean() for v, w in weights.items())
        target = int(rng.random() < 1 / (1 + np.exp(-linear))) if binary else linear + rng.normal(0, 0.5)
        for view in set(weights) - set(missing(s) if missing else ()):
            for i, value in enumerate(videos[view]):
                rows.append({"Study_Unique_ID": f"S{s:04d}", "Video_Unique_ID": f"S{s:04d}_{view}_{i}", "view": view,
                             "TARGET": target, "status": "ok", "error": "", "untrained": False,
                             TASKS[task].output: 1 / (1 + np.exp(-value)) if binary else value})
    return pd.DataFrame(rows)


def write_run(folder, predictions, ids, task="scar"):
    """A run folder as `echodeploy cmr` leaves it: predictions, studies, metrics (when TARGET) and view models."""
    folder.mkdir(parents=True)
    predictions.to_csv(folder / "predictions.csv", index=False)
    studies_table(predictions, (task,)).to_csv(folder / "studies.csv", index=False)
    if "TARGET" in predictions:
        (folder / "metrics.json").write_text(json.dumps({"task": task, "kind": TASKS[task].kind}))
    (folder / VIEW_MODELS_FILE).write_text(json.dumps(ids))
    return folder


def some_views_missing(study):
    return {0: (), 1: ("PLAX",), 2: ("A2C", "PLAX"), 3: ("A4C",)}[study % 8 if study % 8 < 4 else 0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A model fitted on 600 generated studies, a quarter of them missing one or two views."""
    run = write_run(tmp_path_factory.mktemp("train") / "run",
                    generated_predictions(600, missing=some_views_missing), view_models())
    return fit_study_model([run], "scar"), run


def test_coefficients_recover_the_view_weights(fitted):
    model, _ = fitted
    full = next(s for s in model["submodels"] if s["views"] == ["A4C", "A2C", "PLAX"])
    for term, truth in {"intercept": INTERCEPT, **WEIGHTS}.items():
        low, high = full["coefficients"][term]["ci95"]
        assert low < truth < high, (term, truth, low, high)
        assert high - low < 0.8  # tight enough that a swapped or dropped weight falls outside
    assert full["coefficients"]["A4C"]["p"] < 1e-6
    assert full["n"] == 600 - 3 * 75  # studies 1, 2 and 3 of every 8 lack a view
    training = model["training"]
    assert training["studies"] == 600 and training["positive"] + training["negative"] == 600
    assert training["by_views"] == {"A4C+A2C+PLAX": 375, "A4C+A2C": 75, "A4C": 75, "A2C+PLAX": 75}
    assert model["view_models"] == view_models()


def test_cross_validated_auc_beats_the_mean_of_views(fitted):
    """A2C's signal is inverted and PLAX's weak: averaging the views blurs what the GLM separates."""
    cv = fitted[0]["cross_validation"]
    assert cv["folds"] == 5 and cv["scored"] == 600 and cv["unscored"] == 0
    model_auc, views_auc = cv["study_model"]["auc"], cv["mean_of_views"]["auc"]
    assert model_auc > views_auc + 0.1, (model_auc, views_auc)
    assert cv["auc_difference"]["ci95"][0] > 0
    assert cv["study_model"]["auc_ci95"][0] < model_auc < cv["study_model"]["auc_ci95"][1]
    assert cv["study_model"]["brier"] < cv["mean_of_views"]["brier"]
    assert sum(b["n"] for b in cv["study_model"]["reliability"]) == 600


def test_views_carrying_the_same_signal_gain_nothing(tmp_path):
    """Control: equal weights on views of equal spread make the mean of views as good as the GLM."""
    run = write_run(tmp_path / "run", generated_predictions(400, weights={"A4C": 0.8, "A2C": 0.8}, seed=3),
                    view_models(views=("A4C", "A2C")))
    cv = fit_study_model([run], "scar")["cross_validation"]
    assert abs(cv["auc_difference"]["estimate"]) < 0.03
    assert cv["auc_difference"]["ci95"][0] < 0 < cv["auc_difference"]["ci95"][1]


def test_missing_view_studies_are_scored_and_say_by_which_views(fitted, tmp_path):
    model, _ = fitted
    path = tmp_path / "scar_study.json"
    save_study_model(model, path)
    new = generated_predictions(40, seed=7, missing=some_views_missing)
    new = new[~((new["Study_Unique_ID"] == "S0008") & (new["view"] != "PLAX"))]  # S0008: PLAX alone
    run = write_run(tmp_path / "new", new, view_models())
    result = run_cli("study-model", "apply", str(run), "--model", str(path))
    assert result.returncode == 0, result.stderr
    studies = pd.read_csv(run / "studies.csv").set_index("Study_Unique_ID")
    assert len(studies) == 40  # every study keeps its row
    expected_views = new.groupby("Study_Unique_ID")["view"].agg(
        lambda v: "+".join(x for x in WEIGHTS if x in set(v)))
    pd.testing.assert_series_equal(studies["scar_study_views"], expected_views, check_names=False)
    assert studies["scar_study_prob"].between(0, 1).all()
    # a study is scored by the sub-model of its own views, from the mean logit of its videos
    plax_only = next(s for s in model["submodels"] if s["views"] == ["PLAX"])["coefficients"]
    probs = new.loc[new["Study_Unique_ID"] == "S0008", "scar_prob"]
    linear = plax_only["intercept"]["estimate"] + plax_only["PLAX"]["estimate"] * np.log(probs / (1 - probs)).mean()
    assert studies.loc["S0008", "scar_study_prob"] == pytest.approx(1 / (1 + np.exp(-linear)))
    metrics = json.loads((run / "metrics.json").read_text())["study_model"]
    assert metrics["studies"] == metrics["scored"] == 40 and metrics["unscored"] == 0
    assert metrics["by_views"]["PLAX"] == 1 and sum(metrics["by_views"].values()) == 40
    assert metrics["study_model"]["n"] == 40 and "auc_ci95" in metrics["study_model"]
    assert "study model: 40 of 40 studies scored" in result.stdout


def test_a_study_without_any_of_the_models_views_is_reported_unscored(tmp_path):
    train = write_run(tmp_path / "train", generated_predictions(200, weights={"A4C": 1.0, "A2C": 0.5}),
                      view_models(views=("A4C", "A2C")))
    path = tmp_path / "model.json"
    save_study_model(fit_study_model([train], "scar"), path)
    new = generated_predictions(12, seed=5)
    new = new[(new["view"] != "PLAX") | (new["Study_Unique_ID"] == "S0003")]
    new = new[(new["Study_Unique_ID"] != "S0003") | (new["view"] == "PLAX")]  # S0003: PLAX videos only
    run = write_run(tmp_path / "new", new, view_models())
    metrics = apply_study_model(run, path)["study_model"]
    assert (metrics["studies"], metrics["scored"], metrics["unscored"]) == (12, 11, 1)
    studies = pd.read_csv(run / "studies.csv", keep_default_na=False).set_index("Study_Unique_ID")
    assert studies.loc["S0003", "scar_study_prob"] == "" and studies.loc["S0003", "scar_study_views"] == ""
    assert studies.drop(index="S0003")["scar_study_views"].eq("A4C+A2C").all()


def test_applying_leaves_unusable_targets_out_of_the_metrics(fitted, tmp_path):
    """A run's bad TARGETs are warned about, never a failed output step: those studies are scored, not evaluated."""
    path = tmp_path / "scar_study.json"
    save_study_model(fitted[0], path)
    new = generated_predictions(20, seed=4)
    new["TARGET"] = new["TARGET"].astype(float)
    new.loc[new["Study_Unique_ID"] == "S0001", "TARGET"] = 2
    new.loc[new["Video_Unique_ID"] == "S0002_A4C_0", "TARGET"] = 1 - new.loc[new["Video_Unique_ID"] == "S0002_A4C_0",
                                                                            "TARGET"]
    run = write_run(tmp_path / "run", new, view_models())
    metrics = apply_study_model(run, path)["study_model"]
    assert metrics["scored"] == 20 and metrics["study_model"]["n"] == 18


def test_regression_tasks_get_a_linear_model(tmp_path):
    run = write_run(tmp_path / "run", generated_predictions(300, weights={"A4C": 2.0, "A2C": -1.0}, intercept=5.0,
                                                           task="t1"),
                    view_models("t1", views=("A4C", "A2C")), task="t1")
    model = fit_study_model([run], "t1")
    full = model["submodels"][0]
    assert model["model"].startswith("linear") and full["views"] == ["A4C", "A2C"]
    for term, truth in {"intercept": 5.0, "A4C": 2.0, "A2C": -1.0}.items():
        low, high = full["coefficients"][term]["ci95"]
        assert low < truth < high and high - low < 0.5
    cv = model["cross_validation"]
    assert cv["study_model"]["rmse"] < cv["mean_of_views"]["rmse"]


def test_a_model_fitted_on_other_view_models_is_refused(fitted, tmp_path):
    path = tmp_path / "scar_study.json"
    save_study_model(fitted[0], path)
    other = write_run(tmp_path / "other", generated_predictions(20, seed=1), view_models(sha="cd" * 32))
    result = run_cli("study-model", "apply", str(other), "--model", str(path))
    assert result.returncode == 2
    assert f"cmr_a4c_scar checkpoint_sha256 '{'cd' * 32}' in run {other}, '{'ab' * 32}' in the study model" \
        in result.stderr
    assert "Traceback" not in result.stderr and "scar_study_prob" not in (other / "studies.csv").read_text()
    int8 = write_run(tmp_path / "int8", generated_predictions(20, seed=1), view_models(precision="int8"))
    with pytest.raises(EchodeployError, match="cmr_a2c_scar precision 'int8' in run .*, 'fp32' in the study model"):
        apply_study_model(int8, path)


def _one_class(predictions):
    return predictions.assign(TARGET=1)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.drop(columns="TARGET"), "its predictions have no TARGET column"),
    (_one_class, "every one of the 30 studies has TARGET 1: a logistic model needs studies of both classes"),
    (lambda p: p[p["Study_Unique_ID"] == "S0000"], "1 study with a TARGET and an ok video: a study model needs "
                                                   "at least 4"),
    (lambda p: p.assign(TARGET=np.where(p["Study_Unique_ID"] == "S0001", 2, p["TARGET"])),
     "TARGET must be 0 or 1 for binary task scar, found 2"),
])
def test_bad_runs_get_one_clear_line(tmp_path, change, message):
    run = write_run(tmp_path / "run", change(generated_predictions(30, seed=2)), view_models())
    result = CliRunner().invoke(app, ["study-model", "fit", str(run), "--task", "scar", "--out",
                                      str(tmp_path / "m.json")])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr
    assert not (tmp_path / "m.json").exists()


@pytest.mark.slow
def test_cmr_applies_a_study_model_and_still_resumes(repository, tmp_path):
    """Real videos and models: `cmr --study-model` scores each study from its videos' outputs, a rerun
    resumes without recomputing, and a model fitted on other view models is refused before any inference."""
    ids = view_model_ids(OnnxRuntimeBackend(repository), ["A4C"], ["scar"])  # the repository's real identity
    train = write_run(tmp_path / "train", generated_predictions(200, weights={"A4C": 1.0}), ids)
    path = tmp_path / "scar_study.json"
    result = CliRunner().invoke(app, ["study-model", "fit", str(train), "--task", "scar", "--out", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "| A4C |" in result.stdout and "mean of views: AUC" in result.stdout
    assert (tmp_path / "scar_study.md").read_text().strip() in result.stdout
    assert (tmp_path / "scar_study_reliability.png").read_bytes()[:4] == b"\x89PNG"
    data = tmp_path / "data"
    rows = []
    for i in range(3):  # S0: two videos, S1: one
        write_avi(data / f"v{i}.avi", synthetic_echo(34, seed=i))
        rows.append({"Study_Unique_ID": f"S{i // 2}", "Video_Unique_ID": f"v{i}", "TARGET": i // 2})
    pd.DataFrame(rows).to_csv(data / "m.csv", index=False)
    out = tmp_path / "out"
    args = ("cmr", str(data / "m.csv"), "--out", str(out), "--view", "A4C", "--task", "scar",
            "--repository", str(repository), "--study-model", str(path))
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    predictions = pd.read_csv(out / "predictions.csv")
    studies = pd.read_csv(out / "studies.csv")
    coefficients = json.loads(path.read_text())["submodels"][0]["coefficients"]
    for study, videos in predictions.groupby("Study_Unique_ID"):
        linear = coefficients["intercept"]["estimate"] + coefficients["A4C"]["estimate"] * np.log(
            videos["scar_prob"] / (1 - videos["scar_prob"])).mean()
        row = studies[studies["Study_Unique_ID"] == study].iloc[0]
        assert row["scar_study_prob"] == pytest.approx(1 / (1 + np.exp(-linear)), rel=1e-6)
        assert row["scar_study_views"] == "A4C"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["study_model"]["scored"] == 2 and metrics["studies"]["n"] == 2
    assert "study model: 2 of 2 studies scored" in first.stdout

    again = run_cli(*args)
    assert again.returncode == 0 and "resuming: 3 of 3 rows already done" in again.stderr
    assert len((out / "records.jsonl").read_text().splitlines()) == 3
    pd.testing.assert_frame_equal(pd.read_csv(out / "studies.csv"), studies)

    int8 = json.loads(path.read_text())
    int8["view_models"]["cmr_a4c_scar"]["precision"] = "int8"
    (tmp_path / "int8.json").write_text(json.dumps(int8))
    refused = run_cli(*args[:3], str(tmp_path / "refused"), *args[4:-1], str(tmp_path / "int8.json"))
    assert refused.returncode == 2
    assert "cmr_a4c_scar precision 'fp32' in the served models, 'int8' in the study model" in refused.stderr
    assert not (tmp_path / "refused" / "records.jsonl").exists()

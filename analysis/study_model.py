"""Study-level CMR predictions as the paper made them: a GLM over the views' outputs.

A study's predictors are, per view, the mean logit of its videos' probabilities (binary
tasks; the mean value for regression tasks). A logistic GLM (a linear one for regression),
fitted with statsmodels, combines them into one prediction per study and reports what R's
`glm` reports: coefficients, standard errors, 95% confidence intervals, p-values.

Missing views: a sub-model is fitted for every subset of the views, on the studies that have
at least those views. A study is scored by the sub-model of exactly its views or, where that
one could not be fitted, by the fitted sub-model of the largest subset of its views; its row
names the views that scored it, and a study no sub-model can score is counted with the reason.

A model records the view models it was fitted on (name, checkpoint sha256, precision, seed of
untrained weights); a run made with other view models is refused, naming the difference.
"""

from __future__ import annotations

import itertools
import json
import logging
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm
from sklearn.model_selection import KFold, StratifiedKFold
from statsmodels.tools.sm_exceptions import ConvergenceWarning, PerfectSeparationError, PerfectSeparationWarning

from echodeploy.client.results.metrics import binary_metrics, rank_auc, regression_metrics, reliability_bins, roc_auc
from echodeploy.client.runs.cmr import IDENTITY, VIEW_MODELS_FILE
from echodeploy.client.runs.inputs import STUDY, TARGET, VIDEO, read_table, target_values
from echodeploy.client.runs.journal import write_atomic, write_csv_atomic
from echodeploy.errors import EchodeployError
from echodeploy.specs import TASKS, VIEWS, cmr_model

log = logging.getLogger(__name__)

FORMAT = "echodeploy-study-model/1"
PROBABILITY_FLOOR = 1e-6  # probabilities are clipped to [floor, 1 - floor] before the logit
MIN_PER_CLASS = 2
N_BOOTSTRAP = 1000


# --- the view models a run used -------------------------------------------------------------

def check_study_model(study_model: Path, view_models: dict[str, dict], tasks) -> None:
    """Refuse a study model for a task the run does not predict, or fitted on other view models than
    the served ones (`view_models`, as `view_model_ids` gives them): checked before any inference."""
    model = load_study_model(study_model)
    if model["task"] not in tasks:
        raise EchodeployError(f"study model {study_model} is for {model['task']}, which this run does not "
                              f"predict (tasks: {', '.join(tasks)})")
    check_view_models(model, study_model, view_models, "the served models")


def check_view_models(model: dict, model_path: Path, found: dict[str, dict], where: str) -> None:
    """Refuse `found` view models that differ from those `model` was fitted on, or share none of its views."""
    shared = [name for name in model["view_models"] if name in found]
    if not shared:
        raise EchodeployError(f"study model {model_path} uses {', '.join(model['view_models'])}; "
                              f"{where} include none of them")
    differences = [
        f"{name} {key} {found[name].get(key, '')!r} in {where}, {model['view_models'][name].get(key, '')!r} "
        f"in the study model"
        for name in shared for key in IDENTITY
        if found[name].get(key, "") != model["view_models"][name].get(key, "")
    ]
    if differences:
        raise EchodeployError(f"study model {model_path} was fitted on other view models: " + "; ".join(differences))


# --- runs in, one row per study out -----------------------------------------------------------

def read_run(run_dir: Path, task: str) -> tuple[pd.DataFrame, dict[str, dict]]:
    """A finished cmr run's predictions and the view models of `task` it used."""
    run_dir = Path(run_dir)
    path = run_dir / "predictions.csv"
    if not path.is_file():
        raise EchodeployError(f"{run_dir}: no predictions.csv (not an `echodeploy cmr` output folder)")
    predictions = read_table(path, {STUDY: str, VIDEO: str})
    output = TASKS[task].output
    missing = [c for c in (STUDY, "view", "status", output) if c not in predictions.columns]
    if missing:
        raise EchodeployError(f"{path}: no {', '.join(missing)} column: not a cmr run that predicted {task}")
    predictions[STUDY] = predictions[STUDY].fillna("")
    ids_path = run_dir / VIEW_MODELS_FILE
    if not ids_path.is_file():
        raise EchodeployError(f"{run_dir}: no {VIEW_MODELS_FILE} (made before runs recorded their view models): "
                              "rerun the same `echodeploy cmr` command on it; finished rows are not recomputed")
    ids = read_json(ids_path)
    return predictions, {name: entry for name, entry in ids.items() if entry.get("task") == task}


def study_table(predictions: pd.DataFrame, task: str, views, strict: bool = True) -> pd.DataFrame:
    """Per study with an ok video of `views`: each view's mean logit (binary) or mean value, the
    views it has ('A4C+PLAX'), the mean of its view-mean outputs (as studies.csv's all_views) and TARGET
    (unusable TARGETs are errors if `strict`, else left out)."""
    spec = TASKS[task]
    ok = predictions[(predictions["status"] == "ok") & predictions["view"].isin(views)]
    ok = ok[np.isfinite(ok[spec.output].astype(float))]
    if ok.empty:
        return pd.DataFrame(columns=[*views, "views", "mean_of_views", TARGET], index=pd.Index([], name=STUDY))
    output = ok[spec.output].astype(float)
    feature = _logit(output) if spec.kind == "binary" else output
    per_view = ok.assign(feature=feature).groupby([STUDY, "view"])
    table = per_view["feature"].mean().unstack("view").reindex(columns=list(views))
    table["views"] = [_views_name(v for v in views if pd.notna(row[v])) for _, row in table.iterrows()]
    table["mean_of_views"] = per_view[spec.output].mean().groupby(STUDY).mean()
    if TARGET in predictions.columns:
        table[TARGET] = _study_targets(predictions, task, strict).reindex(table.index)
    return table


def _logit(p: pd.Series) -> pd.Series:
    p = p.clip(PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return np.log(p / (1 - p))


def _views_name(views) -> str:
    return "+".join(views)


def _study_targets(predictions: pd.DataFrame, task: str, strict: bool) -> pd.Series:
    """TARGET per study. A binary TARGET other than 0/1, or a study whose rows disagree, is an error
    if `strict`; otherwise it is left out (NaN) with a warning."""
    target = predictions.assign(target=target_values(predictions[TARGET])).dropna(subset=["target"])
    if TASKS[task].kind == "binary" and not target["target"].isin([0, 1]).all():
        bad = target.loc[~target["target"].isin([0, 1]), "target"]
        if strict:
            raise EchodeployError(f"TARGET must be 0 or 1 for binary task {task}, found {bad.iloc[0]:g}")
        log.warning("TARGET: %d values other than 0/1 are left out of the study metrics", len(bad))
        target = target.drop(index=bad.index)
    values = target.groupby(STUDY)["target"]
    conflicting = values.nunique() > 1
    if conflicting.any():
        study = conflicting.idxmax()
        message = (f"{conflicting.sum()} studies have rows with different TARGET values (e.g. {study!r}: "
                   f"{', '.join(f'{v:g}' for v in sorted(values.get_group(study).unique()))})")
        if strict:
            raise EchodeployError(message)
        log.warning("%s; they are left out of the study metrics", message)
    return values.first().where(~conflicting)


def combine_runs(run_dirs, task: str) -> tuple[pd.DataFrame, dict[str, dict]]:
    """The predictions of several runs with TARGET for `task`, and the view models they share."""
    frames, view_models, source = [], {}, {}
    for run_dir in run_dirs:
        predictions, ids = read_run(run_dir, task)
        if TARGET not in predictions.columns:
            raise EchodeployError(f"{run_dir}: its predictions have no TARGET column: fitting needs the label "
                                  "of each study (a TARGET column in the cmr manifest)")
        metrics_path = Path(run_dir) / "metrics.json"
        target_task = read_json(metrics_path).get("task") if metrics_path.is_file() else None
        if target_task != task:
            raise EchodeployError(f"{run_dir}: its TARGET is for {target_task or 'no task'} "
                                  f"({'metrics.json says so' if target_task else 'several tasks ran without --target-task'})"
                                  f", not {task}")
        for name, entry in ids.items():
            if name in view_models and entry != view_models[name]:
                key = next((k for k in IDENTITY if entry.get(k) != view_models[name].get(k)), "view")
                raise EchodeployError(f"runs {source[name]} and {run_dir} used different {name} ({key} "
                                      f"{view_models[name].get(key)!r} vs {entry.get(key)!r})")
            view_models.setdefault(name, entry)
            source.setdefault(name, run_dir)
        frames.append(predictions)
    return pd.concat(frames, ignore_index=True), view_models


# --- fitting and scoring ----------------------------------------------------------------------

def _fit_glm(y: np.ndarray, x: np.ndarray, kind: str):
    """statsmodels GLM: binomial/logit (z tests, as R), or gaussian (t tests, as R)."""
    family = sm.families.Binomial() if kind == "binary" else sm.families.Gaussian()
    design = np.column_stack([np.ones(len(x)), x])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise EchodeployError("the views' values are collinear")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfectSeparationWarning)
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            return sm.GLM(y, design, family=family).fit(use_t=kind != "binary")
        except (PerfectSeparationWarning, PerfectSeparationError) as exc:
            raise EchodeployError("the views separate the classes perfectly: coefficients are not estimable") from exc
        except ConvergenceWarning as exc:
            raise EchodeployError("the fit did not converge") from exc


def fit_submodel(table: pd.DataFrame, views: tuple[str, ...], kind: str) -> dict:
    """The GLM of TARGET on `views` over the studies that have all of them, or why there is none."""
    rows = table.dropna(subset=list(views))
    y = rows[TARGET].to_numpy(float)
    entry = {"views": list(views), "n": len(rows)}
    if kind == "binary":
        entry["n_positive"] = int(y.sum())
        smaller = min(entry["n_positive"], len(y) - entry["n_positive"])
        if smaller < MIN_PER_CLASS:
            return {**entry, "skipped": f"{smaller} studies of the smaller class (needs {MIN_PER_CLASS})"}
    if len(rows) < len(views) + 2 + (kind != "binary"):
        return {**entry, "skipped": f"{len(rows)} studies for {len(views) + 1} coefficients"}
    try:
        result = _fit_glm(y, rows[list(views)].to_numpy(float), kind)
    except EchodeployError as exc:
        return {**entry, "skipped": str(exc)}
    low, high = result.conf_int(0.05).T
    terms = ("intercept", *views)
    entry["coefficients"] = {
        term: {"estimate": float(result.params[i]), "se": float(result.bse[i]),
               "ci95": [float(low[i]), float(high[i])], "p": float(result.pvalues[i])}
        for i, term in enumerate(terms)}
    entry.update(deviance=float(result.deviance), null_deviance=float(result.null_deviance), aic=float(result.aic))
    return entry


def fit_submodels(table: pd.DataFrame, views: tuple[str, ...], kind: str) -> list[dict]:
    """A sub-model for every non-empty subset of `views`, largest first."""
    subsets = [s for size in range(len(views), 0, -1) for s in itertools.combinations(views, size)]
    return [fit_submodel(table, subset, kind) for subset in subsets]


def score(submodels: list[dict], table: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per study: the study-level prediction and the views of the sub-model that made it ('' = none could)."""
    fitted = [s for s in submodels if "coefficients" in s]
    values, used = [], []
    for _, row in table.iterrows():
        present = {v for v in VIEWS if v in row.index and pd.notna(row[v])}
        candidates = [s for s in fitted if set(s["views"]) <= present]
        if not candidates:
            values.append(np.nan)
            used.append("")
            continue
        best = max(candidates, key=lambda s: (len(s["views"]), s["n"]))
        c = best["coefficients"]
        linear = c["intercept"]["estimate"] + sum(c[v]["estimate"] * row[v] for v in best["views"])
        values.append(1 / (1 + np.exp(-linear)) if kind == "binary" else linear)
        used.append(_views_name(best["views"]))
    return pd.DataFrame({"prediction": values, "views_used": used}, index=table.index)


def evaluate_scores(y, predicted, mean_of_views, kind: str) -> dict:
    """Study-model and mean-of-views metrics on the same studies; for binary tasks also the
    paired bootstrap AUC difference, Brier scores and reliability bins."""
    y, predicted, mean_of_views = (np.asarray(a, dtype=float) for a in (y, predicted, mean_of_views))
    if kind != "binary":
        return {"study_model": regression_metrics(y, predicted), "mean_of_views": regression_metrics(y, mean_of_views)}
    result = {"study_model": binary_metrics(y, predicted, N_BOOTSTRAP), "mean_of_views": binary_metrics(
        y, mean_of_views, N_BOOTSTRAP)}
    result["auc_difference"] = _paired_auc_difference(y, predicted, mean_of_views)
    for name, p in (("study_model", predicted), ("mean_of_views", mean_of_views)):
        result[name]["brier"] = float(np.mean((p - y) ** 2)) if len(y) else float("nan")
        result[name]["reliability"] = reliability_bins(y, p)
    return result


def _paired_auc_difference(y, a, b, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """AUC(a) - AUC(b) with a 95% CI from resampling the same studies for both."""
    estimate = roc_auc(y, a) - roc_auc(y, b)
    if np.isnan(estimate):
        return {"estimate": estimate}
    samples = np.random.default_rng(seed).integers(0, len(y), size=(n_bootstrap, len(y)))
    diffs = np.array([rank_auc(y[s], a[s]) - rank_auc(y[s], b[s]) for s in samples])
    diffs = diffs[~np.isnan(diffs)]
    return {"estimate": float(estimate), "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}


def cross_validate(table: pd.DataFrame, views: tuple[str, ...], kind: str, folds: int, seed: int) -> dict:
    """k-fold (stratified for binary tasks) out-of-fold study predictions, evaluated beside the mean of views."""
    y = table[TARGET].to_numpy(float)
    if kind == "binary":
        splits = min(folds, int(min(y.sum(), len(y) - y.sum())))
        splitter = StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed)
    else:
        splits = min(folds, len(y))
        splitter = KFold(n_splits=splits, shuffle=True, random_state=seed)
    scored = pd.DataFrame({"prediction": np.nan, "views_used": ""}, index=table.index)
    for train, test in splitter.split(np.zeros(len(y)), y):
        submodels = fit_submodels(table.iloc[train], views, kind)
        scored.iloc[test] = score(submodels, table.iloc[test], kind).to_numpy()
    scored["prediction"] = scored["prediction"].astype(float)
    ok = scored["prediction"].notna().to_numpy()
    result = {"folds": splits, "seed": seed, "scored": int(ok.sum()),
              "unscored": int((~ok).sum()), "by_views": _counts(scored.loc[ok, "views_used"])}
    result.update(evaluate_scores(y[ok], scored["prediction"][ok], table["mean_of_views"][ok], kind))
    return result


def _counts(views_used: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in views_used.value_counts().items()}


def fit_study_model(run_dirs, task: str, folds: int = 5, seed: int = 0) -> dict:
    """The study model of `task` fitted on finished cmr runs with TARGET, with its cross-validation."""
    spec = TASKS[task]
    predictions, view_models = combine_runs(run_dirs, task)
    views = tuple(v for v in VIEWS if cmr_model(v, task).name in view_models and (predictions["view"] == v).any())
    table = study_table(predictions, task, views)
    labelled = table[table[TARGET].notna()]
    _check_trainable(labelled, spec.kind, folds)
    submodels = fit_submodels(labelled, views, spec.kind)
    if not any("coefficients" in s for s in submodels):
        raise EchodeployError("no sub-model could be fitted: " + "; ".join(
            f"{_views_name(s['views'])}: {s['skipped']}" for s in submodels))
    in_sample = score(submodels, labelled, spec.kind)
    y = labelled[TARGET]
    training = {"studies": len(labelled), "without_target": int(table[TARGET].isna().sum()),
                "by_views": _counts(labelled["views"])}
    if spec.kind == "binary":
        training.update(positive=int(y.sum()), negative=int(len(y) - y.sum()), prevalence=float(y.mean()))
    return {
        "format": FORMAT,
        "task": task,
        "kind": spec.kind,
        "model": "logistic GLM (binomial, logit link)" if spec.kind == "binary" else "linear GLM (gaussian)",
        "predictors": "the per-view mean logit of the study's videos" if spec.kind == "binary"
                      else "the per-view mean value of the study's videos",
        "views": list(views),
        "view_models": {name: view_models[name] for name in (cmr_model(v, task).name for v in views)},
        "runs": [str(Path(r).resolve()) for r in run_dirs],
        "training": training,
        "submodels": submodels,
        "unscored_in_training": int(in_sample["prediction"].isna().sum()),
        "cross_validation": cross_validate(labelled, views, spec.kind, folds, seed),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _check_trainable(labelled: pd.DataFrame, kind: str, folds: int) -> None:
    if len(labelled) < 2 * MIN_PER_CLASS:
        raise EchodeployError(f"{len(labelled)} {'study' if len(labelled) == 1 else 'studies'} with a TARGET and an ok "
                              f"video: a study model needs at least {2 * MIN_PER_CLASS}")
    if folds < 2:
        raise EchodeployError(f"--folds must be at least 2, got {folds}")
    if kind == "binary":
        counts = labelled[TARGET].value_counts()
        if len(counts) < 2:
            raise EchodeployError(f"every one of the {len(labelled)} studies has TARGET {counts.index[0]:g}: "
                                  "a logistic model needs studies of both classes")
        if counts.min() < MIN_PER_CLASS:
            raise EchodeployError(f"only {counts.min()} study has TARGET {counts.idxmin():g}: a model and its "
                                  f"cross-validation need at least {MIN_PER_CLASS} of each class")


# --- files ------------------------------------------------------------------------------------

def save_study_model(model: dict, path: Path) -> None:
    text = json.dumps(model, indent=2)
    write_atomic(Path(path), lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> dict:
    """A JSON object from a file, or one readable error."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise EchodeployError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise EchodeployError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise EchodeployError(f"{path}: not a JSON object")
    return data


def load_study_model(path: Path) -> dict:
    model = read_json(path)
    if model.get("format") != FORMAT:
        raise EchodeployError(f"{path}: not a study model (expected format {FORMAT}; "
                              "make one with `echodeploy study-model fit`)")
    return model


def study_column(task: str) -> str:
    """studies.csv column of the study model's prediction: <task>_study_prob (binary) or _study_value."""
    return TASKS[task].output.replace(f"{task}_", f"{task}_study_", 1)


def apply_study_model(run_dir: Path, model_path: Path) -> dict:
    """Add the study model's prediction (and the views that made it) to a run's studies.csv, and its
    metrics to metrics.json when the run's TARGET is for the model's task; returns the run's metrics."""
    run_dir = Path(run_dir)
    model = load_study_model(model_path)
    task, kind = model["task"], model["kind"]
    predictions, ids = read_run(run_dir, task)
    check_view_models(model, model_path, ids, f"run {run_dir}")
    table = study_table(predictions, task, tuple(model["views"]), strict=False)
    scored = score(model["submodels"], table, kind)
    studies = read_table(run_dir / "studies.csv", {STUDY: str})
    studies[STUDY] = studies[STUDY].fillna("")
    rows = studies["task"] == task
    column = study_column(task)
    studies[column] = studies[STUDY].map(scored["prediction"]).where(rows)
    studies[f"{task}_study_views"] = studies[STUDY].map(scored["views_used"]).where(rows).fillna("")
    write_csv_atomic(studies, run_dir / "studies.csv")
    metrics_path = run_dir / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.is_file() else {}
    if metrics.get("task") != task:
        return metrics
    studies_scored = scored["prediction"].notna()
    ok = studies_scored & table[TARGET].notna()
    study_metrics = {"model": str(model_path), "column": column, "studies": int(studies.loc[rows, STUDY].nunique()),
                     "scored": int(studies_scored.sum()), "by_views": _counts(scored.loc[studies_scored, "views_used"])}
    study_metrics["unscored"] = study_metrics["studies"] - study_metrics["scored"]
    study_metrics.update(evaluate_scores(table.loc[ok, TARGET], scored.loc[ok, "prediction"],
                                         table.loc[ok, "mean_of_views"], kind))
    metrics["study_model"] = study_metrics
    text = json.dumps(metrics, indent=2)
    write_atomic(metrics_path, lambda tmp: tmp.write_text(text))
    return metrics

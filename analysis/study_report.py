"""The study model's report: coefficients, cross-validated AUC beside the mean of views, calibration."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from echodeploy.client.runs.journal import write_atomic  # noqa: E402


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"


def _view_model_line(name: str, entry: dict) -> str:
    weights = (f"checkpoint sha256 {entry['checkpoint_sha256'][:12]}" if entry.get("checkpoint_sha256")
               else f"UNTRAINED (seed {entry.get('random_seed', '?')})")
    return f"- {name}: {weights}, {entry.get('precision') or 'fp32'}"


def _coefficients(submodel: dict) -> list[str]:
    title = f"### Views {'+'.join(submodel['views'])}: {submodel['n']} studies"
    if "n_positive" in submodel:
        title += f", {submodel['n_positive']} positive"
    if "skipped" in submodel:
        return [title, "", f"Not fitted: {submodel['skipped']}.", ""]
    lines = [title, "", "| term | estimate | SE | 95% CI | p |", "|---|---|---|---|---|"]
    for term, c in submodel["coefficients"].items():
        low, high = c["ci95"]
        lines.append(f"| {term} | {_number(c['estimate'])} | {_number(c['se'])} | "
                     f"{_number(low)} to {_number(high)} | {_number(c['p'])} |")
    return [*lines, "", f"Deviance {submodel['deviance']:.1f} (null {submodel['null_deviance']:.1f}), "
                        f"AIC {submodel['aic']:.1f}.", ""]


def comparison_lines(evaluation: dict, kind: str) -> list[str]:
    """Study model vs mean of views on the same studies (AUC, Brier) or, for regression, errors."""
    model, views = evaluation["study_model"], evaluation["mean_of_views"]
    if kind != "binary":
        return [f"- {label}: MAE {_number(m['mae'])}, RMSE {_number(m['rmse'])}, r {m['pearson_r']:.3f}, n={m['n']}"
                for label, m in (("study model", model), ("mean of views", views)) if m.get("n")]
    lines = []
    for label, m in (("study model", model), ("mean of views", views)):
        ci = m.get("auc_ci95", [float("nan")] * 2)
        lines.append(f"- {label}: AUC {m['auc']:.3f} (95% CI {ci[0]:.3f}-{ci[1]:.3f}), Brier {m['brier']:.3f}, "
                     f"n={m['n']} ({m['n_positive']} positive)")
    difference = evaluation["auc_difference"]
    if "ci95" in difference:
        lines.append(f"- difference: AUC {difference['estimate']:+.3f} (paired bootstrap 95% CI "
                     f"{difference['ci95'][0]:+.3f} to {difference['ci95'][1]:+.3f})")
    return lines


def report_text(model: dict, plot: Path | None = None) -> str:
    """Markdown report of a fitted study model."""
    training, cv = model["training"], model["cross_validation"]
    balance = (f", {training['positive']} positive / {training['negative']} negative "
               f"(prevalence {training['prevalence']:.2f})" if "positive" in training else "")
    lines = [f"# Study model: {model['task']}", "",
             f"{model['model']} over {model['predictors']}; views {', '.join(model['views'])}.", "",
             f"Training: {training['studies']} studies{balance}; by views present: "
             + ", ".join(f"{k} {v}" for k, v in training["by_views"].items())
             + (f"; {training['without_target']} studies without TARGET left out" if training["without_target"] else "")
             + ".", "", "View models:", *(_view_model_line(n, e) for n, e in model["view_models"].items()), "",
             "## Coefficients", ""]
    for submodel in model["submodels"]:
        lines += _coefficients(submodel)
    lines += [f"## {cv['folds']}-fold cross-validation (study level, seed {cv['seed']})", "",
              f"{cv['scored']} studies scored out of fold ({', '.join(f'{k} {v}' for k, v in cv['by_views'].items())})"
              + (f"; {cv['unscored']} could not be scored (no sub-model fitted for their views)" if cv["unscored"]
                 else "") + ".", "", *comparison_lines(cv, model["kind"]), ""]
    if model["kind"] == "binary":
        lines += ["Bootstrap CIs resample the studies' out-of-fold predictions (the folds are not refitted).", ""]
        if plot is not None:
            lines += [f"Reliability plot: {plot.name}", ""]
    return "\n".join(lines)


def draw_reliability(path: Path, evaluation: dict, title: str) -> Path:
    """Observed fraction against mean predicted probability per equal-count bin, study model and mean of views."""
    figure, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for name, label in (("study_model", "study model"), ("mean_of_views", "mean of views")):
        bins = evaluation[name]["reliability"]
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o",
                label=f"{label} (Brier {evaluation[name]['brier']:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed fraction positive",
           title=title)
    ax.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    write_atomic(Path(path), lambda tmp: figure.savefig(tmp, dpi=100, format="png"))
    plt.close(figure)
    return Path(path)


def write_report(model: dict, model_path: Path) -> tuple[Path, str]:
    """Report (and, for binary tasks, the reliability plot) beside the model file: (report path, its text)."""
    model_path = Path(model_path)
    plot = None
    if model["kind"] == "binary":
        plot = draw_reliability(model_path.with_name(model_path.stem + "_reliability.png"),
                                model["cross_validation"], f"{model['task']}: out-of-fold study predictions")
    text = report_text(model, plot)
    report = model_path.with_suffix(".md")
    write_atomic(report, lambda tmp: tmp.write_text(text))
    return report, text

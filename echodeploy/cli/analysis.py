"""Analyses of finished runs: `study-model fit|apply` and `pheno`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from echodeploy.cli.app import app, command
from echodeploy.errors import EXIT_ITEM_ERRORS
from echodeploy.specs import TASKS, parse_names

study_app = typer.Typer(no_args_is_help=True, help="Study-level predictions: a GLM over the views' outputs.")
app.add_typer(study_app, name="study-model")


@command("fit", deprecated={"--seed": "--fold-seed"}, group=study_app)
def study_model_fit(
    runs: Annotated[list[Path], typer.Argument(help="Finished `echodeploy cmr` output folders with TARGET.")],
    task: Annotated[str, typer.Option(help=f"Task to model ({', '.join(TASKS)}).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model JSON to write; the report goes beside it.")],
    folds: Annotated[int, typer.Option(help="Cross-validation folds (stratified by TARGET for binary tasks).")] = 5,
    fold_seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
):
    """Fit a study model (logistic GLM over per-view mean logits; linear for regression tasks) on cmr runs."""
    from echodeploy.analysis.study_model import fit_study_model, save_study_model
    from echodeploy.analysis.study_report import write_report

    model = fit_study_model(runs, parse_names("task", task, TASKS, ())[0], folds, fold_seed)
    save_study_model(model, out)
    report, text = write_report(model, out)
    typer.echo(text)
    typer.echo(f"wrote {out} and {report}" + (f" and {out.with_name(out.stem + '_reliability.png')}"
                                              if model["kind"] == "binary" else ""))


@command("apply", group=study_app)
def study_model_apply(
    run: Annotated[Path, typer.Argument(help="A finished `echodeploy cmr` output folder.")],
    model: Annotated[Path, typer.Option(help="Study model JSON from `echodeploy study-model fit`.")],
):
    """Add a study model's predictions to a run's studies.csv (and its metrics to metrics.json with TARGET)."""
    from echodeploy.analysis.study_model import apply_study_model, load_study_model, study_column

    task = load_study_model(model)["task"]
    metrics = apply_study_model(run, model)
    typer.echo(f"wrote {study_column(task)} to {run / 'studies.csv'}")
    if "study_model" in metrics:
        print_study_metrics(metrics["study_model"], metrics["kind"])
        typer.echo(f"wrote {run / 'metrics.json'}")


def print_study_metrics(metrics: dict, kind: str) -> None:
    from echodeploy.analysis.study_report import comparison_lines

    typer.echo(f"study model: {metrics['scored']} of {metrics['studies']} studies scored ("
               + ", ".join(f"{views} {n}" for views, n in metrics["by_views"].items()) + ")")
    for line in comparison_lines(metrics, kind):
        typer.echo(f"  {line}")


@command()
def pheno(
    beat_tables: Annotated[list[Path], typer.Argument(
        help="Per-beat tables: features_all.csv of `echodeploy mmode --write all` or the published "
             "Echo2Pheno tool's (mouse_id, file, LVIDd_auto, ..., LVIDs_auto_quality_flag).")],
    mice: Annotated[Path, typer.Option(help="Mice table: mouse_id, sex (f/m), genotype; optional strain, type, "
                                            "bw, LVIDd_manual, LVIDs_manual, EF_manual, FS_manual.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    files: Annotated[Optional[Path], typer.Option(
        help="Table file,mouse_id for per-beat tables without a mouse_id column (one mouse may have several files).")]
        = None,
    control: Annotated[str, typer.Option(help="Genotype label of the control mice.")] = "control",
    mutant: Annotated[str, typer.Option(help="Genotype label of the mutant mice.")] = "mutant",
    min_mice: Annotated[int, typer.Option(help="Mice per group below which a p-value is left empty.")] = 2,
    figures: Annotated[bool, typer.Option(help="Draw the figures (PNG).")] = True,
):
    """Mutant vs control per sex (Echo2Pheno Module II): beat filter, EF/FS, per-mouse means, Mann-Whitney U."""
    from echodeploy.analysis.pheno import PhenoOptions, run_pheno

    options = PhenoOptions(control=control, mutant=mutant, min_mice=min_mice, figures=figures)
    result = run_pheno(beat_tables, mice, out, options, files)
    for line in result.lines:
        typer.echo(line, err=True)
    counts = result.number_of_mice
    typer.echo("mice with values (control/mutant): " + ", ".join(
        f"{sex} automatic {counts.at[sex, 'auto con']}/{counts.at[sex, 'auto mut']}, manual "
        f"{counts.at[sex, 'man con']}/{counts.at[sex, 'man mut']}" for sex in ("f", "m")))
    typer.echo("p-values (two-sided Mann-Whitney U; q: Benjamini-Hochberg over the table):")
    typer.echo(result.p_values.iloc[:, :6].rename_axis(None).round(4).to_string(na_rep="-"))
    typer.echo(f"wrote p_values.csv, tests.csv, number_of_mice.csv, mice.csv, excluded.csv, agreement.csv"
               f"{' and figures' if result.figures else ''} in {out}")
    if (result.excluded["level"] != "beat").any():
        raise typer.Exit(EXIT_ITEM_ERRORS)

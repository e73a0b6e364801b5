"""Bulk runs: `cmr`, `mmode`, `merge` and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from echodeploy.cli.app import command
from echodeploy.cli.export import export_cmr, export_mmode, write_triton
from echodeploy.cli.options import (
    BnMode,
    BnModeName,
    Out,
    ReadAhead,
    Repository,
    Tasks,
    View,
    Workers,
    bulk_run,
    choices,
)
from echodeploy.client.runs.mmode import WRITE_MODES
from echodeploy.errors import EXIT_INTERRUPTED, EXIT_ITEM_ERRORS
from echodeploy.preprocessing.video import CLIP_MODES
from echodeploy.repository import DEFAULT_REPOSITORY
from echodeploy.specs import PUBLISHED_TASKS, TASKS, parse_names
from echodeploy.wiring import BackendSettings, CmrRun, EngineSettings, MModeRun, merge_runs, run_job

ClipMode = choices("ClipMode", CLIP_MODES)
WriteMode = choices("WriteMode", WRITE_MODES)


@command(deprecated={"--tasks": "--task", "--precision": "--inference-precision"})
@bulk_run(ray_rows=10)
def cmr(
    source: Annotated[Path, typer.Argument(help="Manifest CSV (Study_Unique_ID, Video_Unique_ID, "
                                           "frames, TARGET; or a filename column) or a folder.")],
    out: Out,
    view: Annotated[Optional[View], typer.Option(
        case_sensitive=False, help="View of rows without a 'view' column.")] = None,
    tasks: Tasks = None,
    data_root: Annotated[Optional[Path], typer.Option(
        help="Folder the manifest's file names are relative to (default: the manifest's folder).")] = None,
    allow_outside_root: Annotated[bool, typer.Option(
        help="Read manifest paths outside the data root ('..', absolute paths elsewhere); "
             "by default such rows are refused with status outside_root.")] = False,
    clips: Annotated[ClipMode, typer.Option(
        case_sensitive=False, help="'first' (the seed's clip) or 'all' (average every start).")] = ClipMode("first"),
    fps: Annotated[Optional[float], typer.Option(help="Resample frames to this rate before cutting clips.")] = None,
    target_task: Annotated[Optional[str], typer.Option(help="Task the TARGET column refers to.")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Clips per inference request (clips of many videos are batched together; the seed used 10).")] = 10,
    workers: Workers = 1,
    read_ahead: ReadAhead = 10,
    study_model: Annotated[Optional[Path], typer.Option(
        help="Study model JSON (`echodeploy study-model fit`): adds <task>_study_prob to studies.csv.")] = None,
    *,
    backend: BackendSettings,
    engine: EngineSettings,
):
    """Predict CMR findings for every video of a manifest or folder."""
    from echodeploy.client.runs.cmr import CmrOptions

    options = CmrOptions(
        tasks=parse_names("task", tasks, TASKS, PUBLISHED_TASKS), clips=clips.value, batch_size=batch_size,
        workers=workers, read_ahead=read_ahead, fps=fps, study_model=study_model,
        target_task=parse_names("task", target_task, TASKS, ())[0] if target_task else None)
    run = CmrRun(source=source, out=out, view=view.value if view else None, data_root=data_root,
                 allow_outside_root=allow_outside_root, options=options)
    finish(lambda: run_job(run, backend, engine, say=typer.echo), out)


@command(deprecated={"--precision": "--inference-precision"})
@bulk_run(ray_rows=2)
def mmode(
    source: Annotated[Path, typer.Argument(help="An M-mode DICOM file or a folder of them (a study).")],
    out: Out,
    mass: Annotated[Optional[float], typer.Option(help="Body mass in grams, for every file.")] = None,
    mass_csv: Annotated[Optional[Path], typer.Option(help="CSV with columns file,mass_g.")] = None,
    write: Annotated[WriteMode, typer.Option(
        case_sensitive=False, help="'stats' (a row per file) or 'all' (a row per good beat).")] = WriteMode("stats"),
    all_beats: Annotated[bool, typer.Option(
        help="With --write all: every detected beat, low-quality events with their values (flag 'low'), "
             "so `echodeploy pheno` can report each beat it leaves out.")] = False,
    figures: Annotated[bool, typer.Option(help="Draw the per-file figures (PNG).")] = True,
    max_bpm: Annotated[Optional[float], typer.Option(
        help="Highest plausible heart rate; sets the minimum beat spacing (default: the seed's 85 px at "
             "0.00083334 s/px, 847 bpm).")] = None,
    bn_mode: BnMode = BnModeName("seed"),
    batch_size: Annotated[int, typer.Option(help="Windows per inference request.")] = 8,
    workers: Annotated[int, typer.Option(
        help="Reader processes (0: read in the main process; reading is ~1% of the time).")] = 0,
    read_ahead: ReadAhead = 2,
    *,
    backend: BackendSettings,
    engine: EngineSettings,
):
    """LVID in diastole/systole, LV volume and heart rate from mouse M-mode DICOMs (good-quality beats)."""
    from echodeploy.client.runs.mmode import MModeOptions

    options = MModeOptions(write=write.value, figures=figures, batch_size=batch_size, workers=workers,
                           read_ahead=read_ahead, bn_mode=bn_mode.value, all_beats=all_beats,
                           **({"max_bpm": max_bpm} if max_bpm is not None else {}))
    run = MModeRun(source=source, out=out, mass_g=mass, mass_csv=mass_csv, options=options)
    finish(lambda: run_job(run, backend, engine, say=typer.echo), out)


@command()
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Every shard folder of the run (the --out of each --shard K/N).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the merged outputs (not a shard folder).")],
):
    """Join the folders of a sharded run (`--shard K/N`) into the files one unsharded run writes."""
    finish(lambda: merge_runs(shards, out), out)


@command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo output folder.")] = Path("echodeploy_demo"),
    repository: Repository = DEFAULT_REPOSITORY,
    workers: Workers = 1,
):
    """Run both pipelines end to end on generated data with the embedded backend (no server)."""
    from echodeploy.client.runs.cmr import CmrOptions
    from echodeploy.client.runs.mmode import MModeOptions
    from echodeploy.samples import write_demo_mmode_study, write_demo_study

    backend = BackendSettings(name="onnxruntime", repository=repository)
    typer.secho("== CMR from echo: 12 generated A4C videos, untrained scar model ==", bold=True)
    manifest = write_demo_study(out / "data")
    typer.echo(f"wrote demo videos and manifest {manifest}")
    tasks = ("scar",)
    export_cmr(repository, ("A4C",), tasks, None, 0, False)
    export_mmode(repository, None, "seed", 0, False)
    write_triton(repository, "cpu", 8, 1, False)  # ready for `echodeploy serve`
    demo_step(CmrRun(source=manifest, out=out / "cmr", view="A4C", options=CmrOptions(tasks=tasks, workers=workers)),
              backend)
    typer.secho("== M-mode phenotyping: 2 generated mouse M-mode DICOMs, untrained models ==", bold=True)
    folder = write_demo_mmode_study(out / "mmode_data")
    demo_step(MModeRun(source=folder, out=out / "mmode", mass_g=22, options=MModeOptions()), backend)
    typer.secho("demo outputs come from UNTRAINED models: see README 'Real weights'", fg="yellow", err=True)


def demo_step(run: CmrRun | MModeRun, backend: BackendSettings) -> None:
    """One demo run; row errors do not stop the demo."""
    try:
        finish(lambda: run_job(run, backend), run.out)
    except typer.Exit as done:
        if done.exit_code != EXIT_ITEM_ERRORS:
            raise


def finish(run, out: Path) -> None:
    """Run a bulk job (`run()` -> RunSummary), print its summary, exit with its code."""
    try:
        summary = run()
    except KeyboardInterrupt:
        typer.secho(f"interrupted: finished results are kept in {out}; rerun the same command to resume",
                    fg="yellow", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    print_summary(summary)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def print_summary(summary) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    typer.echo(f"{summary.counted}: {counts}")
    for path in summary.written:
        if path.exists():
            typer.echo(f"wrote {path}")
    if summary.metrics:
        videos = summary.metrics["videos"]["all"]
        if "auc" in videos:
            ci = videos.get("auc_ci95", [float("nan")] * 2)
            typer.echo(f"{summary.metrics['task']}: video AUC {videos['auc']:.3f} "
                       f"(95% CI {ci[0]:.3f}-{ci[1]:.3f}), n={videos['n']}")
        elif "mae" in videos:
            typer.echo(f"{summary.metrics['task']}: MAE {videos['mae']:.3g}, RMSE {videos['rmse']:.3g}, "
                       f"r {videos['pearson_r']:.3f}, n={videos['n']}")
    if "study_model" in summary.metrics:
        from echodeploy.cli.analysis import print_study_metrics

        print_study_metrics(summary.metrics["study_model"], summary.metrics["kind"])
    if summary.untrained:
        typer.secho("WARNING: outputs come from UNTRAINED models (seeded random weights): they are not "
                    "predictions. Export real weights with `echodeploy export --weights-dir DIR`.",
                    fg="yellow", err=True)

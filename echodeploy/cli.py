"""The `echodeploy` command line.

Exit codes: 0 all rows ok; 1 the run finished but some rows have errors (see their
status); 2 the run failed (bad arguments, missing model, unreachable server); 130 interrupted.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from echodeploy.errors import EchodeployError
from echodeploy.repository import DEFAULT_REPOSITORY
from echodeploy.specs import PUBLISHED_TASKS, TASKS, VIEWS, parse_names

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Serve echocardiography models (CMR-from-echo, M-mode) on ONNX Runtime or Triton.")
log = logging.getLogger("echodeploy")

EXIT_ITEM_ERRORS, EXIT_FAILED, EXIT_INTERRUPTED = 1, 2, 130

# Options shared by several commands, declared once.
Repository = Annotated[Path, typer.Option("--repository", "-r", envvar="ECHODEPLOY_REPOSITORY",
                                          help="Model repository folder.")]
Views = Annotated[Optional[str], typer.Option(help=f"Comma-separated views ({', '.join(VIEWS)}) or 'all'.")]
Tasks = Annotated[Optional[str], typer.Option(
    help=f"Comma-separated tasks ({', '.join(TASKS)}) or 'all'. Default: {', '.join(PUBLISHED_TASKS)}.")]
Seed = Annotated[int, typer.Option(help="Seed of the random weights used when no checkpoint is given.")]
BatchSize = Annotated[int, typer.Option(help="Clips per inference request (the seed used 10).")]
Workers = Annotated[int, typer.Option(help="Decoding worker processes (0: decode in the main process).")]


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)


def _fail(message: str, code: int = EXIT_FAILED):
    typer.secho(f"error: {message}", fg="red", err=True)
    raise typer.Exit(code)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False):
    _setup_logging(verbose)


@app.command()
def export(
    weights_dir: Annotated[Optional[Path], typer.Option(
        help="Folder of published checkpoints (A4C_Scar.pt, A2C_WallMotoion.pt, ...).")] = None,
    untrained: Annotated[bool, typer.Option(
        help="Export seeded random weights (demo, tests): outputs are not predictions.")] = False,
    views: Views = None,
    tasks: Tasks = None,
    repository: Repository = DEFAULT_REPOSITORY,
    seed: Seed = 0,
    force: Annotated[bool, typer.Option(help="Re-export even if an identical model exists.")] = False,
):
    """Export R(2+1)D-18 models to ONNX in the model repository, parity-checked against torch."""
    try:
        if (weights_dir is None) == (not untrained):
            raise EchodeployError("pass --weights-dir DIR, or --untrained for seeded random weights")
        _export(repository, parse_names("view", views, VIEWS, VIEWS),
                parse_names("task", tasks, TASKS, PUBLISHED_TASKS), weights_dir, seed, force)
    except EchodeployError as exc:
        _fail(str(exc))


def _export(repository: Path, views, tasks, weights_dir, seed: int, force: bool) -> None:
    from echodeploy.export.cmr import export_cmr_models

    for result in export_cmr_models(repository, views, tasks, weights_dir, seed, force):
        where = result.report.path if result.report else "unchanged"
        diff = (f"max |onnx - torch| = {max(result.report.max_abs_diff.values()):.2e}"
                if result.report else "already exported")
        flag = "  [UNTRAINED: seeded random weights]" if result.untrained else ""
        typer.echo(f"{result.spec.name}: {diff} ({where}){flag}")


@app.command()
def cmr(
    source: Annotated[Path, typer.Argument(help="Manifest CSV (Study_Unique_ID, Video_Unique_ID, "
                                           "frames, TARGET; or a filename column) or a folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (rerun with the same one to resume).")],
    view: Annotated[Optional[str], typer.Option(
        help="View of rows without a 'view' column (A4C, A2C, PLAX).")] = None,
    tasks: Tasks = None,
    data_root: Annotated[Optional[Path], typer.Option(
        help="Folder the manifest's file names are relative to (default: the manifest's folder).")] = None,
    clips: Annotated[str, typer.Option(help="'first' (the seed's clip) or 'all' (average every start).")] = "first",
    fps: Annotated[Optional[float], typer.Option(help="Resample frames to this rate before cutting clips.")] = None,
    target_task: Annotated[Optional[str], typer.Option(help="Task the TARGET column refers to.")] = None,
    batch_size: BatchSize = 10,
    workers: Workers = 1,
    repository: Repository = DEFAULT_REPOSITORY,
):
    """Predict CMR findings for every video of a manifest or folder."""
    from echodeploy.client.backends import OnnxRuntimeBackend
    from echodeploy.client.cmr import CmrOptions
    from echodeploy.client.inputs import read_inputs

    try:
        options = CmrOptions(
            tasks=parse_names("task", tasks, TASKS, PUBLISHED_TASKS), clips=clips, batch_size=batch_size,
            workers=workers, fps=fps,
            target_task=parse_names("task", target_task, TASKS, ())[0] if target_task else None,
        )
        if view:
            parse_names("view", view, VIEWS, ())
        inputs = read_inputs(source, view, data_root)
        backend = OnnxRuntimeBackend(repository)
        _run_cmr(inputs, backend, out, options)
    except EchodeployError as exc:
        _fail(str(exc))


def _run_cmr(inputs, backend, out: Path, options) -> None:
    from echodeploy.client.cmr import run_cmr

    try:
        summary = run_cmr(inputs, backend, out, options)
    except KeyboardInterrupt:
        typer.secho(f"interrupted: finished rows are kept in {out}; rerun the same command to resume",
                    fg="yellow", err=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    _print_summary(summary)
    if not summary.all_ok:
        raise typer.Exit(EXIT_ITEM_ERRORS)


def _print_summary(summary) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    typer.echo(f"rows: {counts}")
    for name in ("predictions.csv", "studies.csv", "metrics.json"):
        if (summary.out_dir / name).exists():
            typer.echo(f"wrote {summary.out_dir / name}")
    if summary.metrics:
        videos = summary.metrics["videos"]["all"]
        if "auc" in videos:
            ci = videos.get("auc_ci95", [float("nan")] * 2)
            typer.echo(f"{summary.metrics['task']}: video AUC {videos['auc']:.3f} "
                       f"(95% CI {ci[0]:.3f}-{ci[1]:.3f}), n={videos['n']}")
        elif "mae" in videos:
            typer.echo(f"{summary.metrics['task']}: MAE {videos['mae']:.3g}, RMSE {videos['rmse']:.3g}, "
                       f"r {videos['pearson_r']:.3f}, n={videos['n']}")
    if summary.untrained_models:
        typer.secho("WARNING: outputs come from UNTRAINED models (seeded random weights): they are not "
                    "predictions. Export real weights with `echodeploy export --weights-dir DIR`.",
                    fg="yellow", err=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo output folder.")] = Path("echodeploy_demo"),
    repository: Repository = DEFAULT_REPOSITORY,
    workers: Workers = 1,
):
    """Run the CMR pipeline end to end on generated echo videos with the embedded backend."""
    from echodeploy.client.backends import OnnxRuntimeBackend
    from echodeploy.client.cmr import CmrOptions
    from echodeploy.client.inputs import read_inputs
    from echodeploy.samples import write_demo_study

    try:
        manifest = write_demo_study(out / "data")
        typer.echo(f"wrote demo videos and manifest {manifest}")
        tasks = ("scar",)
        _export(repository, ("A4C",), tasks, None, 0, False)
        inputs = read_inputs(manifest, "A4C")
        _run_cmr(inputs, OnnxRuntimeBackend(repository), out / "cmr",
                 CmrOptions(tasks=tasks, workers=workers))
    except EchodeployError as exc:
        _fail(str(exc))

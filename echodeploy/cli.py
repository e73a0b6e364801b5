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

from echodeploy.client.tritonserver import DEFAULT_SERVER_ENV
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
BackendName = Annotated[str, typer.Option("--backend", help=(
    "'auto' (the fastest installed embedded backend matching ONNX Runtime, said in the first line), "
    "'onnxruntime', 'openvino' (embedded; the openvino extra), 'triton', or 'torch' (PyTorch in this "
    "process, CPU or GPU)."))]
Urls = Annotated[Optional[list[str]], typer.Option(
    "--url", envvar="ECHODEPLOY_TRITON_URL",
    help="Triton server HOST:PORT (repeat to spread requests over several servers).")]
Protocol = Annotated[str, typer.Option(help="Triton protocol: grpc or http.")]
MaxInFlight = Annotated[int, typer.Option(help="Triton requests in flight at once.")]
RetrySeconds = Annotated[float, typer.Option(
    help="How long to retry a Triton server that is down, restarting or overloaded before the run stops.")]
BnMode = Annotated[str, typer.Option(
    help="M-mode BatchNorm: 'seed' (per-window statistics, what the published tool ran) or 'running'.")]
TorchWeights = Annotated[Optional[Path], typer.Option(
    "--weights-dir", help="--backend torch: folder of published checkpoints (as for export).")]
TorchUntrained = Annotated[bool, typer.Option(
    "--untrained", help="--backend torch: seeded random weights, the same as `export --untrained --seed`.")]
TorchDevice = Annotated[Optional[str], typer.Option(help="--backend torch: 'cpu' (default) or 'cuda' ('cuda:N').")]
TorchPrecision = Annotated[Optional[str], typer.Option(
    help="--backend torch: fp32 (default), bf16 or fp16 (autocast, channels-last).")]
TorchGraph = Annotated[Optional[str], typer.Option(
    help="--backend torch: 'eager' (default), 'cuda-graph' (CUDA: one graph per batch shape) or 'compile' "
         "(torch.compile); the latter two pad every batch to --batch-size.")]
EngineName = Annotated[str, typer.Option(
    "--engine", help="'local' (this process, decoding in --workers processes) or 'ray' (a Ray Data pipeline: "
                     "decode tasks and inference actors on a Ray cluster; needs `pip install echodeploy[ray]`).")]
RayAddress = Annotated[Optional[str], typer.Option(
    "--ray-address", envvar="RAY_ADDRESS",
    help="--engine ray: the cluster (HOST:PORT, or 'auto' on a cluster node); default: a local instance on loopback.")]
Actors = Annotated[int, typer.Option(
    help="--engine ray: inference actors, each with its own backend (ONNX Runtime session or Triton client).")]
ShardOption = Annotated[Optional[str], typer.Option(
    "--shard", help="Run shard K of N (K/N) of the inputs, into an --out of its own; `echodeploy merge` joins them.")]
ServerEnv = Annotated[Path, typer.Option(envvar="ECHODEPLOY_SERVER_ENV",
                                         help="Virtual environment of the local tritonserver (numpy 1.x).")]
StudyModel = Annotated[Optional[Path], typer.Option(
    help="Study model JSON (`echodeploy study-model fit`): adds <task>_study_prob to studies.csv.")]


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
    target: Annotated[str, typer.Option(
        help="Triton configs: 'cpu' (Python backend on ONNX Runtime, portable), 'gpu' "
             "(ONNX Runtime backend with TensorRT FP16, for NGC tritonserver), 'openvino' "
             "(NGC tritonserver's OpenVINO backend, for CPU nodes) or 'gpu-torch' "
             "(Python backend running the torch models on the GPU, CPU if none; any tritonserver).")] = "cpu",
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size of every model.")] = 8,
    instances: Annotated[int, typer.Option(help="Triton instances per model.")] = 1,
    tensorrt: Annotated[bool, typer.Option(help="Also build TensorRT plans (needs trtexec; gpu target).")] = False,
    families: Annotated[str, typer.Option(
        help="Model families: 'cmr' (R(2+1)D-18 per view x task), 'mmode' (CardioNet + QuickNAT "
             "from cardionet.pt / quicknat.pt) or 'cmr,mmode'.")] = "cmr",
    bn_mode: BnMode = "seed",
    precision: Annotated[str, typer.Option(
        help="fp32; fp16 (GPU); int8 (static QDQ quantisation, CPUs with VNNI / TensorRT); or per model, "
             "e.g. 'mmode_lvid=int8,mmode_quality=fp32' (a plain value is the default of the others). "
             "Reduced precisions print and store an agreement report against fp32.")] = "fp32",
    calibration: Annotated[Optional[Path], typer.Option(
        help="Videos / DICOMs (CMR) or M-mode DICOMs to calibrate int8 on and check agreement "
             "(default: generated echo-like inputs).")] = None,
):
    """Export CMR (R(2+1)D-18) and M-mode models to ONNX, parity-checked against torch, with Triton configs."""
    try:
        if (weights_dir is None) == (not untrained):
            raise EchodeployError("pass --weights-dir DIR, or --untrained for seeded random weights")
        if target not in ("cpu", "gpu", "openvino", "gpu-torch"):
            raise EchodeployError(f"--target must be cpu, gpu, openvino or gpu-torch, got {target!r}")
        if tensorrt and target != "gpu":
            raise EchodeployError("--tensorrt builds plans for the gpu target: add --target gpu")
        if tensorrt:
            from echodeploy.export.triton.tensorrt import require_tensorrt

            require_tensorrt()  # before anything is written
        from echodeploy.export.precision import parse_precisions

        precisions = parse_precisions(precision)
        chosen = parse_names("family", families, ("cmr", "mmode"), ("cmr",))
        if "cmr" in chosen:
            _export(repository, parse_names("view", views, VIEWS, VIEWS),
                    parse_names("task", tasks, TASKS, PUBLISHED_TASKS), weights_dir, seed, force,
                    precisions, calibration)
        if "mmode" in chosen:
            _export_mmode(repository, weights_dir, bn_mode, seed, force, precisions, calibration)
        _write_triton(repository, target, max_batch_size, instances, tensorrt, weights_dir, seed)
    except EchodeployError as exc:
        _fail(str(exc))


def _write_triton(repository: Path, target: str, max_batch_size: int, instances: int, tensorrt: bool,
                  weights_dir: Path | None = None, seed: int = 0) -> None:
    from echodeploy.export.triton.repository import write_triton_repository

    names = write_triton_repository(repository, target, max_batch_size, instances, weights_dir, seed)
    typer.echo(f"Triton {target} repository: {', '.join(names)} in {repository}")
    if tensorrt:
        from echodeploy.export.triton.tensorrt import build_plans

        typer.echo(f"TensorRT plans: {', '.join(build_plans(repository, max_batch_size))}")


def _report(name: str, report, untrained: bool) -> None:
    where = report.path if report else "unchanged"
    diff = (", ".join(f"{k} {v:.3g}" for k, v in report.max_abs_diff.items()) if report else "already exported")
    flag = "  [UNTRAINED: seeded random weights]" if untrained else ""
    typer.echo(f"{name}: max |onnx - torch| {diff} ({where}){flag}")
    if report and report.agreement:
        from echodeploy.agreement import summary as agreement_summary

        line = f"  {report.precision} vs fp32: {agreement_summary(report.agreement)}"
        typer.secho(line, fg=None if report.agreement["passed"] else "red", bold=not report.agreement["passed"])


def _export_mmode(repository: Path, weights_dir, bn_mode: str, seed: int, force: bool, precision="fp32",
                  calibration: Path | None = None) -> None:
    from echodeploy.export.mmode import export_mmode_models

    for spec, report, untrained in export_mmode_models(repository, weights_dir, bn_mode, seed, force,
                                                       precision, calibration):
        _report(spec.name, report, untrained)


def _export(repository: Path, views, tasks, weights_dir, seed: int, force: bool, precision="fp32",
            calibration: Path | None = None) -> None:
    from echodeploy.export.cmr import export_cmr_models

    for result in export_cmr_models(repository, views, tasks, weights_dir, seed, force, precision, calibration):
        _report(result.spec.name, result.report, result.untrained)


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
    allow_outside_root: Annotated[bool, typer.Option(
        help="Read manifest paths outside the data root ('..', absolute paths elsewhere); "
             "by default such rows are refused with status outside_root.")] = False,
    clips: Annotated[str, typer.Option(help="'first' (the seed's clip) or 'all' (average every start).")] = "first",
    fps: Annotated[Optional[float], typer.Option(help="Resample frames to this rate before cutting clips.")] = None,
    target_task: Annotated[Optional[str], typer.Option(help="Task the TARGET column refers to.")] = None,
    batch_size: BatchSize = 10,
    workers: Workers = 1,
    repository: Repository = DEFAULT_REPOSITORY,
    backend: BackendName = "auto",
    url: Urls = None,
    protocol: Protocol = "grpc",
    max_in_flight: MaxInFlight = 4,
    retry_seconds: RetrySeconds = 60,
    study_model: StudyModel = None,
    weights_dir: TorchWeights = None,
    untrained: TorchUntrained = False,
    seed: Seed = 0,
    device: TorchDevice = None,
    precision: TorchPrecision = None,
    graph: TorchGraph = None,
    engine_name: EngineName = "local",
    ray_address: RayAddress = None,
    actors: Actors = 1,
    shard: ShardOption = None,
):
    """Predict CMR findings for every video of a manifest or folder."""
    from echodeploy.client.runs.cmr import CmrOptions, CmrPipeline, view_model_ids
    from echodeploy.client.runs.inputs import read_inputs
    from echodeploy.specs import cmr_model

    try:
        options = CmrOptions(
            tasks=parse_names("task", tasks, TASKS, PUBLISHED_TASKS), clips=clips, batch_size=batch_size,
            workers=workers, fps=fps,
            target_task=parse_names("task", target_task, TASKS, ())[0] if target_task else None,
            study_model=study_model,
        )
        if view:
            parse_names("view", view, VIEWS, ())
        settings = torch_options(backend, weights_dir, untrained, seed, device, precision, graph, batch_size)
        inputs = read_inputs(source, view, data_root, allow_outside_root)
        views = [v for v in inputs["view"].dropna().unique() if v in VIEWS][:1]
        probe = [cmr_model(v, task) for v in views for task in options.tasks]
        backend_args = (backend, repository, url, protocol, max_in_flight, retry_seconds, settings, probe)
        run = _bulk_engine(engine_name, ray_address, workers, actors, shard, out, backend_args)
        engine = make_backend(*backend_args)
        pipeline = CmrPipeline(inputs, options)
        if study_model is not None:
            from echodeploy.analysis.study_model import check_study_model

            check_study_model(study_model, view_model_ids(engine, pipeline.views, options.tasks), options.tasks)
        _run_bulk(lambda b: _with_study_model(run(pipeline, b)), engine, out)
    except EchodeployError as exc:
        _fail(str(exc))


def torch_options(backend: str, weights_dir: Path | None, untrained: bool, seed: int, device: str | None,
                  precision: str | None, graph: str | None, batch_size: int, bn_mode: str = "seed") -> dict | None:
    """Settings of `--backend torch` (None for other backends, which refuse torch-only options)."""
    if backend != "torch":
        given = [option for option, value in (("--weights-dir", weights_dir), ("--untrained", untrained),
                                              ("--device", device), ("--precision", precision), ("--graph", graph))
                 if value]
        if given:
            raise EchodeployError(f"{', '.join(given)}: only with --backend torch (other backends read "
                                  "the exported models of --repository)")
        return None
    if (weights_dir is None) == (not untrained):
        raise EchodeployError("--backend torch: pass --weights-dir DIR, or --untrained for seeded random weights")
    device = device or "cpu"
    fixed = device != "cpu" or (graph or "eager") != "eager"  # fixed shapes: graphs and compiled kernels replay
    return {"weights_dir": weights_dir, "seed": seed, "bn_mode": bn_mode, "device": device,
            "precision": precision or "fp32", "graph": graph or "eager", "fixed_batch": batch_size if fixed else 0}


def make_backend(name: str, repository: Path, urls, protocol: str, max_in_flight: int, retry_seconds: float = 60,
                 torch: dict | None = None, probe=()):
    """An embedded backend (by name, or 'auto': the fastest installed one matching ONNX Runtime on
    the `probe` specs, announced on the first line), a Triton client for the given servers, or
    PyTorch in this process (`torch`: the settings from `torch_options`)."""
    from echodeploy.backends.embedded import EMBEDDED, default_embedded, open_embedded

    if name == "torch":
        if torch is None:
            raise EchodeployError("--backend torch runs `cmr` and `mmode` only")
        from echodeploy.backends.torch import TorchBackend
        from echodeploy.export.modules import checkpoint_loader

        loader = checkpoint_loader(torch["weights_dir"], torch["seed"], torch["bn_mode"], torch["precision"])
        return TorchBackend(precision=torch["precision"], untrained=torch["weights_dir"] is None,
                            device=torch["device"], graph=torch["graph"], fixed_batch=torch["fixed_batch"],
                            loader=loader)

    if name == "auto":
        choice = default_embedded(repository, list(probe))
        typer.echo(choice.line)
        return choice.backend
    if name in EMBEDDED:
        return open_embedded(name, repository)
    if name == "triton":
        if not urls:
            raise EchodeployError("--backend triton needs --url HOST:PORT (start one with `echodeploy serve`)")
        from echodeploy.backends.triton import TritonBackend

        return TritonBackend(urls, protocol=protocol, max_in_flight=max_in_flight, retry_seconds=retry_seconds)
    raise EchodeployError(f"unknown backend {name!r}; known: auto, {', '.join(EMBEDDED)}, triton, torch")


def _bulk_engine(name: str, ray_address: str | None, workers: int, actors: int, shard: str | None, out: Path,
                 backend_args: tuple):
    """`run(pipeline, backend) -> RunSummary` on the chosen engine, for the whole input or one shard;
    checked before any input is read."""
    from echodeploy.client.runs.runner import run_bulk

    if name == "local":
        def run(pipeline, backend):
            return run_bulk(pipeline, backend, out, workers)
    elif name == "ray":
        import functools

        from echodeploy.client.runs.ray_engine import RayOptions, import_ray, run_ray

        import_ray()
        options = RayOptions(address=ray_address, workers=max(workers, 1), actors=actors)
        factory = functools.partial(make_backend, *backend_args)  # each actor builds its own backend

        def run(pipeline, backend):
            return run_ray(pipeline, backend, factory, out, options)
    else:
        raise EchodeployError(f"unknown engine {name!r}; known: local, ray")
    if shard is None:
        return run
    from echodeploy.client.runs.shards import parse_shard, run_shard

    part = parse_shard(shard)
    return lambda pipeline, backend: run_shard(pipeline, part, backend, out, lambda p: run(p, backend))


def _with_study_model(summary):
    """A finished cmr run's (or merge's) summary with its study model, if it has one, applied to its outputs."""
    study_model = getattr(summary.options, "study_model", None)
    if study_model is None:
        return summary
    from dataclasses import replace

    from echodeploy.analysis.study_model import apply_study_model

    return replace(summary, metrics=apply_study_model(summary.out_dir, study_model))


def _run_bulk(run, backend, out: Path) -> None:
    """Run a bulk job (`run(backend)` -> RunSummary), print its summary, exit with its code."""
    try:
        summary = run(backend)
    except KeyboardInterrupt:
        typer.secho(f"interrupted: finished results are kept in {out}; rerun the same command to resume",
                    fg="yellow", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        backend.close()
    _print_summary(summary)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _print_summary(summary) -> None:
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
        _print_study_metrics(summary.metrics["study_model"], summary.metrics["kind"])
    if summary.untrained:
        typer.secho("WARNING: outputs come from UNTRAINED models (seeded random weights): they are not "
                    "predictions. Export real weights with `echodeploy export --weights-dir DIR`.",
                    fg="yellow", err=True)


def _print_study_metrics(metrics: dict, kind: str) -> None:
    from echodeploy.analysis.study_report import comparison_lines

    typer.echo(f"study model: {metrics['scored']} of {metrics['studies']} studies scored ("
               + ", ".join(f"{views} {n}" for views, n in metrics["by_views"].items()) + ")")
    for line in comparison_lines(metrics, kind):
        typer.echo(f"  {line}")


study_app = typer.Typer(no_args_is_help=True, help="Study-level predictions: a GLM over the views' outputs.")
app.add_typer(study_app, name="study-model")


@study_app.command("fit")
def study_model_fit(
    runs: Annotated[list[Path], typer.Argument(help="Finished `echodeploy cmr` output folders with TARGET.")],
    task: Annotated[str, typer.Option(help=f"Task to model ({', '.join(TASKS)}).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model JSON to write; the report goes beside it.")],
    folds: Annotated[int, typer.Option(help="Cross-validation folds (stratified by TARGET for binary tasks).")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the fold assignment.")] = 0,
):
    """Fit a study model (logistic GLM over per-view mean logits; linear for regression tasks) on cmr runs."""
    from echodeploy.analysis.study_model import fit_study_model, save_study_model
    from echodeploy.analysis.study_report import write_report

    try:
        model = fit_study_model(runs, parse_names("task", task, TASKS, ())[0], folds, seed)
        save_study_model(model, out)
        report, text = write_report(model, out)
    except EchodeployError as exc:
        _fail(str(exc))
    typer.echo(text)
    typer.echo(f"wrote {out} and {report}" + (f" and {out.with_name(out.stem + '_reliability.png')}"
                                              if model["kind"] == "binary" else ""))


@study_app.command("apply")
def study_model_apply(
    run: Annotated[Path, typer.Argument(help="A finished `echodeploy cmr` output folder.")],
    model: Annotated[Path, typer.Option(help="Study model JSON from `echodeploy study-model fit`.")],
):
    """Add a study model's predictions to a run's studies.csv (and its metrics to metrics.json with TARGET)."""
    from echodeploy.analysis.study_model import apply_study_model, load_study_model, study_column

    try:
        task = load_study_model(model)["task"]
        metrics = apply_study_model(run, model)
    except EchodeployError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {study_column(task)} to {run / 'studies.csv'}")
    if "study_model" in metrics:
        _print_study_metrics(metrics["study_model"], metrics["kind"])
        typer.echo(f"wrote {run / 'metrics.json'}")


@app.command()
def mmode(
    source: Annotated[Path, typer.Argument(help="An M-mode DICOM file or a folder of them (a study).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (rerun with the same one to resume).")],
    mass: Annotated[Optional[float], typer.Option(help="Body mass in grams, for every file.")] = None,
    mass_csv: Annotated[Optional[Path], typer.Option(help="CSV with columns file,mass_g.")] = None,
    write: Annotated[str, typer.Option(help="'stats' (a row per file) or 'all' (a row per good beat).")] = "stats",
    all_beats: Annotated[bool, typer.Option(
        help="With --write all: every detected beat, low-quality events with their values (flag 'low'), "
             "so `echodeploy pheno` can report each beat it leaves out.")] = False,
    figures: Annotated[bool, typer.Option(help="Draw the per-file figures (PNG).")] = True,
    max_bpm: Annotated[float, typer.Option(
        help="Highest plausible heart rate; sets the minimum beat spacing (default = the seed's 85 px).")] = 0,
    bn_mode: BnMode = "seed",
    batch_size: Annotated[int, typer.Option(help="Windows per inference request.")] = 8,
    workers: Annotated[int, typer.Option(
        help="Reader processes (0: read in the main process; reading is ~1% of the time).")] = 0,
    repository: Repository = DEFAULT_REPOSITORY,
    backend: BackendName = "auto",
    url: Urls = None,
    protocol: Protocol = "grpc",
    max_in_flight: MaxInFlight = 4,
    retry_seconds: RetrySeconds = 60,
    weights_dir: TorchWeights = None,
    untrained: TorchUntrained = False,
    seed: Seed = 0,
    device: TorchDevice = None,
    precision: TorchPrecision = None,
    graph: TorchGraph = None,
    engine_name: EngineName = "local",
    ray_address: RayAddress = None,
    actors: Actors = 1,
    shard: ShardOption = None,
):
    """LVID in diastole/systole, LV volume and heart rate from mouse M-mode DICOMs (good-quality beats)."""
    from echodeploy.client.results.mmode_features import DEFAULT_MAX_BPM
    from echodeploy.client.runs.mmode import MModeOptions, MModePipeline, read_mmode_inputs
    from echodeploy.specs import MMODE_LVID, MMODE_QUALITY, mmode_model

    try:
        options = MModeOptions(write=write, figures=figures, batch_size=batch_size, workers=workers,
                               max_bpm=max_bpm or DEFAULT_MAX_BPM, bn_mode=bn_mode, all_beats=all_beats)
        settings = torch_options(backend, weights_dir, untrained, seed, device, precision, graph, batch_size, bn_mode)
        inputs = read_mmode_inputs(source, mass, mass_csv)
        probe = [mmode_model(name, bn_mode) for name in (MMODE_LVID, MMODE_QUALITY)]
        backend_args = (backend, repository, url, protocol, max_in_flight, retry_seconds, settings, probe)
        run = _bulk_engine(engine_name, ray_address, workers, actors, shard, out, backend_args)
        engine = make_backend(*backend_args)
        _run_bulk(lambda b: run(MModePipeline(inputs, options, out), b), engine, out)
    except EchodeployError as exc:
        _fail(str(exc))


@app.command()
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

    try:
        options = PhenoOptions(control=control, mutant=mutant, min_mice=min_mice, figures=figures)
        result = run_pheno(beat_tables, mice, out, options, files)
    except EchodeployError as exc:
        _fail(str(exc))
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


@app.command()
def merge(
    shards: Annotated[list[Path], typer.Argument(help="Every shard folder of the run (the --out of each --shard K/N).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the merged outputs (not a shard folder).")],
):
    """Join the folders of a sharded run (`--shard K/N`) into the files one unsharded run writes."""
    from echodeploy.client.runs.shards import merge_shards

    try:
        summary = _with_study_model(merge_shards(shards, out))
    except EchodeployError as exc:
        _fail(str(exc))
    _print_summary(summary)
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Demo output folder.")] = Path("echodeploy_demo"),
    repository: Repository = DEFAULT_REPOSITORY,
    workers: Workers = 1,
):
    """Run both pipelines end to end on generated data with the embedded backend (no server)."""
    from echodeploy.client.runs.cmr import CmrOptions, run_cmr
    from echodeploy.client.runs.inputs import read_inputs
    from echodeploy.client.runs.mmode import MModeOptions, read_mmode_inputs, run_mmode
    from echodeploy.samples import write_demo_mmode_study, write_demo_study

    try:
        typer.secho("== CMR from echo: 12 generated A4C videos, untrained scar model ==", bold=True)
        manifest = write_demo_study(out / "data")
        typer.echo(f"wrote demo videos and manifest {manifest}")
        tasks = ("scar",)
        _export(repository, ("A4C",), tasks, None, 0, False)
        _export_mmode(repository, None, "seed", 0, False)
        _write_triton(repository, "cpu", 8, 1, False)  # ready for `echodeploy serve`
        _demo_run(lambda b: run_cmr(read_inputs(manifest, "A4C"), b, out / "cmr", CmrOptions(tasks=tasks, workers=workers)),
                  repository, out / "cmr")

        typer.secho("== M-mode phenotyping: 2 generated mouse M-mode DICOMs, untrained models ==", bold=True)
        folder = write_demo_mmode_study(out / "mmode_data")
        _demo_run(lambda b: run_mmode(read_mmode_inputs(folder, mass_g=22), b, out / "mmode", MModeOptions()),
                  repository, out / "mmode")
        typer.secho("demo outputs come from UNTRAINED models: see README 'Real weights'", fg="yellow", err=True)
    except EchodeployError as exc:
        _fail(str(exc))


def _demo_run(run, repository: Path, out: Path) -> None:
    """One demo step on the embedded backend; row errors do not stop the demo."""
    try:
        _run_bulk(run, make_backend("onnxruntime", repository, None, "grpc", 1), out)
    except typer.Exit as done:
        if done.exit_code != EXIT_ITEM_ERRORS:
            raise


@app.command()
def serve(
    repository: Repository = DEFAULT_REPOSITORY,
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless you mean to expose it).")] = "127.0.0.1",
    http_port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.")] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Metrics port.")] = 8002,
    server_env: ServerEnv = DEFAULT_SERVER_ENV,
    setup: Annotated[bool, typer.Option(help="Create the server environment if missing.")] = True,
):
    """Serve a cpu- or gpu-torch-target repository with a local tritonserver until Ctrl-C."""
    import time

    from echodeploy.client.tritonserver import TritonServer, ensure_server_env, has_torch

    try:
        if not (repository / "TARGET").exists():
            raise EchodeployError(f"{repository} has no Triton configs: run `echodeploy export ... --target cpu`")
        torch_models = (repository / "TARGET").read_text().strip() == "gpu-torch"
        if setup:
            ensure_server_env(server_env, torch=torch_models)
        elif torch_models and not has_torch(server_env):
            raise EchodeployError(f"{repository} is a gpu-torch repository and {server_env} has no torch: "
                                  "drop --no-setup, or install torch there")
        server = TritonServer(repository, env=server_env, host=host, http_port=http_port,
                              grpc_port=grpc_port, metrics_port=metrics_port)
        with server:
            typer.echo(f"tritonserver ready: grpc {server.grpc_url}  http http://{server.http_url}  "
                       f"metrics http://{host}:{server.metrics_port}/metrics  (Ctrl-C stops)")
            typer.echo(f"use it: echodeploy cmr MANIFEST --backend triton --url {server.grpc_url} --out DIR")
            while server.running:
                time.sleep(0.5)
            raise EchodeployError(f"tritonserver stopped unexpectedly:\n{server.log_tail()}")
    except KeyboardInterrupt:
        typer.echo("stopped")
    except EchodeployError as exc:
        _fail(str(exc))


def _numbers(option: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise EchodeployError(f"{option} takes positive integers separated by commas, got {text!r}")
    return values


@app.command()
def bench(
    models: Annotated[str, typer.Option(
        help="Comma-separated models: cmr_<view>_<task> (e.g. cmr_a4c_scar), mmode_lvid, mmode_quality.")]
        = "cmr_a4c_scar",
    backends: Annotated[str, typer.Option(
        help="Comma-separated: torch (the seeds' way: fp32 eager at their batch size), torch-bf16, "
             "onnxruntime, onnxruntime-int8, onnxruntime-fp16 (GPU), openvino, openvino-int8 (the openvino "
             "extra), triton.")]
        = "torch,onnxruntime,onnxruntime-int8,torch-bf16",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated items per request.")] = "1,4",
    concurrency: Annotated[str, typer.Option(help="Comma-separated numbers of concurrent clients.")] = "1,2",
    duration: Annotated[Optional[float], typer.Option(help="Seconds per measurement window.")] = 5.0,
    requests: Annotated[Optional[int], typer.Option(
        help="Requests per measurement window (instead of --duration).")] = None,
    modes: Annotated[str, typer.Option(
        help="'model' (tensors in memory), 'e2e' (files -> results, decoding included) or both.")] = "model,e2e",
    e2e_files: Annotated[int, typer.Option(help="Generated files per end-to-end run (without --data).")] = 8,
    data: Annotated[Optional[Path], typer.Option(
        help="Files for the end-to-end runs: a CMR manifest/folder (its view is the first model's), "
             "or a folder of M-mode DICOMs.")] = None,
    weights_dir: Annotated[Optional[Path], typer.Option(
        help="Published checkpoints (default: seeded random weights with re-estimated BatchNorm).")] = None,
    calibration: Annotated[Optional[Path], typer.Option(help="Files to calibrate int8 on.")] = None,
    url: Urls = None,
    server_env: ServerEnv = DEFAULT_SERVER_ENV,
    stability: Annotated[float, typer.Option(help="Windows must agree within this fraction.")] = 0.10,
    max_windows: Annotated[int, typer.Option(help="Give up on stability after this many windows.")] = 6,
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("bench_output"),
):
    """Latency and throughput per backend, batch size and concurrency (like perf_analyzer), roofline
    fractions, and reduced-precision agreement; writes bench.json, bench.md and plots."""
    from echodeploy.benchmarks.bench import BACKENDS, BenchConfig, run_bench
    from echodeploy.benchmarks.report import console

    try:
        if requests is not None:
            duration = None
        config = BenchConfig(
            models=tuple(m.strip().lower() for m in models.split(",") if m.strip()),
            backends=parse_names("backend", backends, BACKENDS, ()),
            batch_sizes=_numbers("--batch-sizes", batch_sizes), concurrency=_numbers("--concurrency", concurrency),
            duration_s=duration, requests=requests, modes=parse_names("mode", modes, ("model", "e2e"), ()),
            e2e_items=e2e_files, data=data, weights_dir=weights_dir, calibration=calibration, urls=url or [],
            server_env=server_env, stability=stability, max_windows=max_windows)
        result = run_bench(config, out, progress=lambda line: typer.echo(line, err=True))
    except EchodeployError as exc:
        _fail(str(exc))
    typer.echo(console(result))
    typer.echo(f"report: {out / 'bench.md'}, {out / 'bench.json'}, plots {out}/*.png")


@app.command("gpu-bench")
def gpu_bench(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (gpu.json, gpu.md).")] = Path("gpu_bench"),
    device: Annotated[str, typer.Option(help="'auto' (cuda when torch sees a GPU), 'cuda', 'cuda:N' or 'cpu'.")]
        = "auto",
    models: Annotated[str, typer.Option(help="Comma-separated: cmr_a4c_scar, mmode_lvid, mmode_quality.")]
        = "cmr_a4c_scar,mmode_lvid,mmode_quality",
    weights_dir: Annotated[Optional[Path], typer.Option(
        help="Published checkpoints (default: seeded random weights, as export --untrained).")] = None,
    budget: Annotated[Optional[float], typer.Option(
        help="Seconds after which remaining points are skipped (default 450 on a GPU, 300 on a CPU).")] = None,
):
    """The torch GPU path measured in one folder: matmul peaks, seed path vs bf16/fp16 channels-last with
    and without CUDA graphs / compile over batch 1..256, roofline, memory, agreement, files/s vs decode
    workers. On a CPU: a reduced form, and the list of what it cannot produce."""
    import torch

    from echodeploy.benchmarks.gpu import GpuBenchConfig, reduced_config, run_gpu_bench

    try:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        names = tuple(m.strip().lower() for m in models.split(",") if m.strip())
        config = reduced_config(names) if device == "cpu" else GpuBenchConfig(device=device, models=names)
        if weights_dir is not None:
            config.weights_dir = weights_dir
        if budget is not None:
            config.budget_s = budget
        command = "echodeploy gpu-bench " + " ".join(sys.argv[2:])
        result = run_gpu_bench(config, out, command, progress=lambda line: typer.echo(line, err=True))
    except EchodeployError as exc:
        _fail(str(exc))
    for line in result["targets"] + [f"not produced on a CPU: {line}" for line in result["not_produced"]]:
        typer.echo(line)
    typer.echo(f"report: {out / 'gpu.md'}, {out / 'gpu.json'} ({result['seconds']:.0f} s)")


@app.command()
def profile(
    model: Annotated[str, typer.Option(help="cmr_<view>_<task>, mmode_lvid or mmode_quality.")] = "mmode_lvid",
    backends: Annotated[str, typer.Option(help="Comma-separated: onnxruntime, openvino.")] = "onnxruntime,openvino",
    batch_size: Annotated[int, typer.Option(help="Items per request.")] = 4,
    runs: Annotated[int, typer.Option(help="Profiled requests (after one warm-up).")] = 2,
    top: Annotated[int, typer.Option(help="Operator types listed.")] = 12,
    repository: Repository = DEFAULT_REPOSITORY,
):
    """Where an exported model's time goes per operator type (ONNX Runtime profiler, OpenVINO perf counters)."""
    from echodeploy.benchmarks.profile import PROFILERS, profile_model, profile_text
    from echodeploy.specs import model_spec

    try:
        spec = model_spec(model.strip().lower())
        for name in parse_names("backend", backends, tuple(PROFILERS), ()):
            typer.echo(profile_text(profile_model(repository, spec, name, batch_size, runs), top))
    except EchodeployError as exc:
        _fail(str(exc))

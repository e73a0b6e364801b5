"""Measurements: `bench`, `gpu-bench` and `profile`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from echodeploy.cli.app import command
from echodeploy.cli.options import Device, Repository, ServerEnv, Urls, resolve_device
from echodeploy.client.tritonserver import DEFAULT_SERVER_ENV
from echodeploy.errors import EchodeployError
from echodeploy.repository import DEFAULT_REPOSITORY
from echodeploy.specs import parse_names


def _numbers(option: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise EchodeployError(f"{option} takes positive integers separated by commas, got {text!r}")
    return values


def _models(text: str) -> tuple[str, ...]:
    return tuple(m.strip().lower() for m in text.split(",") if m.strip())


@command(deprecated={"--models": "--model", "--backends": "--backend", "--batch-sizes": "--batch-size",
                     "--modes": "--mode"})
def bench(
    models: Annotated[str, typer.Option(
        "--model", help="Comma-separated models: cmr_<view>_<task> (e.g. cmr_a4c_scar), mmode_lvid, mmode_quality.")]
        = "cmr_a4c_scar",
    backends: Annotated[str, typer.Option(
        "--backend", help="Comma-separated: torch (the seeds' way: fp32 eager at their batch size), torch-bf16, "
                          "onnxruntime, onnxruntime-int8, onnxruntime-fp16 (GPU), openvino, openvino-int8 (the "
                          "openvino extra), triton.")]
        = "torch,onnxruntime,onnxruntime-int8,torch-bf16",
    batch_sizes: Annotated[str, typer.Option("--batch-size", help="Comma-separated items per request.")] = "1,4",
    concurrency: Annotated[str, typer.Option(help="Comma-separated numbers of concurrent clients.")] = "1,2",
    duration: Annotated[Optional[float], typer.Option(help="Seconds per measurement window.")] = 5.0,
    requests: Annotated[Optional[int], typer.Option(
        help="Requests per measurement window (instead of --duration).")] = None,
    modes: Annotated[str, typer.Option(
        "--mode", help="'model' (tensors in memory), 'e2e' (files -> results, decoding included) or both.")]
        = "model,e2e",
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

    config = BenchConfig(
        models=_models(models), backends=parse_names("backend", backends, BACKENDS, ()),
        batch_sizes=_numbers("--batch-size", batch_sizes), concurrency=_numbers("--concurrency", concurrency),
        duration_s=None if requests is not None else duration, requests=requests,
        modes=parse_names("mode", modes, ("model", "e2e"), ()), e2e_items=e2e_files, data=data,
        weights_dir=weights_dir, calibration=calibration, urls=url or [], server_env=server_env,
        stability=stability, max_windows=max_windows)
    result = run_bench(config, out, progress=lambda line: typer.echo(line, err=True))
    typer.echo(console(result))
    typer.echo(f"report: {out / 'bench.md'}, {out / 'bench.json'}, plots {out}/*.png")


@command("gpu-bench", deprecated={"--models": "--model"})
def gpu_bench(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (gpu.json, gpu.md).")] = Path("gpu_bench"),
    device: Device = "auto",
    models: Annotated[str, typer.Option("--model", help="Comma-separated: cmr_a4c_scar, mmode_lvid, mmode_quality.")]
        = "cmr_a4c_scar,mmode_lvid,mmode_quality",
    weights_dir: Annotated[Optional[Path], typer.Option(
        help="Published checkpoints (default: seeded random weights, as export --untrained).")] = None,
    budget: Annotated[Optional[float], typer.Option(
        help="Seconds after which remaining points are skipped (default 450 on a GPU, 300 on a CPU).")] = None,
):
    """The torch GPU path measured in one folder: matmul peaks, seed path vs bf16/fp16 channels-last with
    and without CUDA graphs / compile over batch 1..256, roofline, memory, agreement, files/s vs decode
    workers. On a CPU: a reduced form, and the list of what it cannot produce."""
    from echodeploy.benchmarks.gpu import GpuBenchConfig, reduced_config, run_gpu_bench

    device = resolve_device(device)
    names = _models(models)
    config = reduced_config(names) if device == "cpu" else GpuBenchConfig(device=device, models=names)
    if weights_dir is not None:
        config.weights_dir = weights_dir
    if budget is not None:
        config.budget_s = budget
    command_line = "echodeploy gpu-bench " + " ".join(sys.argv[2:])
    result = run_gpu_bench(config, out, command_line, progress=lambda line: typer.echo(line, err=True))
    for line in result["targets"] + [f"not produced on a CPU: {line}" for line in result["not_produced"]]:
        typer.echo(line)
    typer.echo(f"report: {out / 'gpu.md'}, {out / 'gpu.json'} ({result['seconds']:.0f} s)")


@command(deprecated={"--backends": "--backend"})
def profile(
    model: Annotated[str, typer.Option(help="cmr_<view>_<task>, mmode_lvid or mmode_quality.")] = "mmode_lvid",
    backends: Annotated[str, typer.Option("--backend", help="Comma-separated: onnxruntime, openvino.")]
        = "onnxruntime,openvino",
    batch_size: Annotated[int, typer.Option(help="Items per request.")] = 4,
    runs: Annotated[int, typer.Option(help="Profiled requests (after one warm-up).")] = 2,
    top: Annotated[int, typer.Option(help="Operator types listed.")] = 12,
    repository: Repository = DEFAULT_REPOSITORY,
):
    """Where an exported model's time goes per operator type (ONNX Runtime profiler, OpenVINO perf counters)."""
    from echodeploy.benchmarks.profile import PROFILERS, profile_model, profile_text
    from echodeploy.specs import model_spec

    spec = model_spec(model.strip().lower())
    for name in parse_names("backend", backends, tuple(PROFILERS), ()):
        typer.echo(profile_text(profile_model(repository, spec, name, batch_size, runs), top))

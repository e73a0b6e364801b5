"""`export`: CMR and M-mode models to ONNX, parity-checked against torch, with Triton configs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from echodeploy.cli.app import command
from echodeploy.cli.options import BnMode, BnModeName, Repository, Seed, Tasks, Views, WeightsDir, choices
from echodeploy.errors import EchodeployError
from echodeploy.repository import DEFAULT_REPOSITORY, TRITON_TARGETS
from echodeploy.specs import PUBLISHED_TASKS, TASKS, VIEWS, parse_names

Target = choices("Target", TRITON_TARGETS)


@command(deprecated={"--views": "--view", "--tasks": "--task", "--families": "--family"})
def export(
    weights_dir: WeightsDir = None,
    untrained: Annotated[bool, typer.Option(
        help="Export seeded random weights (demo, tests): outputs are not predictions.")] = False,
    views: Views = None,
    tasks: Tasks = None,
    repository: Repository = DEFAULT_REPOSITORY,
    seed: Seed = 0,
    force: Annotated[bool, typer.Option(help="Re-export even if an identical model exists.")] = False,
    target: Annotated[Target, typer.Option(
        case_sensitive=False,
        help="Triton configs: 'cpu' (Python backend on ONNX Runtime, portable), 'gpu' "
             "(ONNX Runtime backend with TensorRT FP16, for NGC tritonserver), 'openvino' "
             "(NGC tritonserver's OpenVINO backend, for CPU nodes) or 'gpu-torch' "
             "(Python backend running the torch models on the GPU, CPU if none; any tritonserver).")] = Target("cpu"),
    max_batch_size: Annotated[int, typer.Option(help="Triton max_batch_size of every model.")] = 8,
    instances: Annotated[int, typer.Option(help="Triton instances per model.")] = 1,
    tensorrt: Annotated[bool, typer.Option(help="Also build TensorRT plans (needs trtexec; gpu target).")] = False,
    families: Annotated[str, typer.Option(
        "--family", help="Model families: 'cmr' (R(2+1)D-18 per view x task), 'mmode' (CardioNet + QuickNAT "
                         "from cardionet.pt / quicknat.pt) or 'cmr,mmode'.")] = "cmr",
    bn_mode: BnMode = BnModeName("seed"),
    precision: Annotated[str, typer.Option(
        help="fp32; fp16 (GPU); int8 (static QDQ quantisation, CPUs with VNNI / TensorRT); or per model, "
             "e.g. 'mmode_lvid=int8,mmode_quality=fp32' (a plain value is the default of the others). "
             "Reduced precisions print and store an agreement report against fp32.")] = "fp32",
    calibration: Annotated[Optional[Path], typer.Option(
        help="Videos / DICOMs (CMR) or M-mode DICOMs to calibrate int8 on and check agreement "
             "(default: generated echo-like inputs).")] = None,
):
    """Export CMR (R(2+1)D-18) and M-mode models to ONNX, parity-checked against torch, with Triton configs."""
    if (weights_dir is None) == (not untrained):
        raise EchodeployError("pass --weights-dir DIR, or --untrained for seeded random weights")
    if tensorrt and target.value != "gpu":
        raise EchodeployError("--tensorrt builds plans for the gpu target: add --target gpu")
    if tensorrt:
        from echodeploy.export.triton.tensorrt import require_tensorrt

        require_tensorrt()  # before anything is written
    from echodeploy.export.precision import parse_precisions

    precisions = parse_precisions(precision)
    chosen = parse_names("family", families, ("cmr", "mmode"), ("cmr",))
    if "cmr" in chosen:
        export_cmr(repository, parse_names("view", views, VIEWS, VIEWS), parse_names("task", tasks, TASKS, PUBLISHED_TASKS),
                   weights_dir, seed, force, precisions, calibration)
    if "mmode" in chosen:
        export_mmode(repository, weights_dir, bn_mode.value, seed, force, precisions, calibration)
    write_triton(repository, target.value, max_batch_size, instances, tensorrt, weights_dir, seed)


def write_triton(repository: Path, target: str, max_batch_size: int, instances: int, tensorrt: bool,
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


def export_mmode(repository: Path, weights_dir, bn_mode: str, seed: int, force: bool, precision="fp32",
                 calibration: Path | None = None) -> None:
    from echodeploy.export.mmode import export_mmode_models

    for spec, report, untrained in export_mmode_models(repository, weights_dir, bn_mode, seed, force,
                                                       precision, calibration):
        _report(spec.name, report, untrained)


def export_cmr(repository: Path, views, tasks, weights_dir, seed: int, force: bool, precision="fp32",
               calibration: Path | None = None) -> None:
    from echodeploy.export.cmr import export_cmr_models

    for result in export_cmr_models(repository, views, tasks, weights_dir, seed, force, precision, calibration):
        _report(result.spec.name, result.report, result.untrained)

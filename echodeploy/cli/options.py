"""Options shared by several commands, declared once; choices as enums so `--help` lists them.

`bulk_run` gives `cmr` and `mmode` the backend and engine options and hands the command the
settings built from them (echodeploy.wiring): an option both need is added here, once.
"""

from __future__ import annotations

import functools
import inspect
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from echodeploy.errors import EchodeployError
from echodeploy.repository import DEFAULT_REPOSITORY
from echodeploy.specs import BN_MODES, GRAPH_MODES, PUBLISHED_TASKS, TASKS, TORCH_PRECISIONS, VIEWS
from echodeploy.wiring.settings import BACKENDS, ENGINES, PROTOCOLS, BackendSettings, EngineSettings, TorchSettings


def choices(name: str, values) -> type[Enum]:
    """An enum of `values` (a str Enum: typer lists them in --help and checks them, case-insensitively)."""
    return Enum(name, [(value, value) for value in values], type=str)


View = choices("View", VIEWS)
BackendName = choices("BackendName", BACKENDS)
EngineName = choices("EngineName", ENGINES)
ProtocolName = choices("ProtocolName", PROTOCOLS)
BnModeName = choices("BnModeName", BN_MODES)
TorchPrecision = choices("TorchPrecision", TORCH_PRECISIONS)
GraphMode = choices("GraphMode", GRAPH_MODES)


def option(*names: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(*names, case_sensitive=False, **kwargs)


Out = Annotated[Path, typer.Option("--out", "-o", help="Output folder (rerun with the same one to resume).")]
Repository = Annotated[Path, typer.Option("--repository", "-r", envvar="ECHODEPLOY_REPOSITORY",
                                          help="Model repository folder.")]
Views = Annotated[Optional[str], typer.Option("--view", help=f"Comma-separated views ({', '.join(VIEWS)}) or 'all'.")]
Tasks = Annotated[Optional[str], typer.Option("--task", help=(
    f"Comma-separated tasks ({', '.join(TASKS)}) or 'all'. Default: {', '.join(PUBLISHED_TASKS)}."))]
Seed = Annotated[int, typer.Option(help="Seed of the random weights used when no checkpoint is given.")]
Workers = Annotated[int, typer.Option(help="Decoding worker processes (0: decode in the main process).")]
ReadAhead = Annotated[int, typer.Option(
    help="Rows decoded ahead of inference beyond two per worker (raise it with --batch-size, so that workers "
         "keep decoding while a large batch runs).")]
BnMode = Annotated[BnModeName, option(
    help="M-mode BatchNorm: 'seed' (per-window statistics, what the published tool ran) or 'running'.")]
Urls = Annotated[Optional[list[str]], typer.Option(
    "--url", envvar="ECHODEPLOY_TRITON_URL",
    help="Triton server HOST:PORT (repeat to spread requests over several servers).")]
WeightsDir = Annotated[Optional[Path], typer.Option(
    help="Folder of published checkpoints (A4C_Scar.pt, ..., cardionet.pt, quicknat.pt).")]
ServerEnv = Annotated[Path, typer.Option(envvar="ECHODEPLOY_SERVER_ENV",
                                         help="Virtual environment of the local tritonserver (numpy 1.x).")]
Device = Annotated[str, typer.Option(help="'cpu', 'cuda', 'cuda:N', or 'auto' (cuda when torch sees a GPU).")]

# --- the backend and engine options of bulk runs, turned into settings -----------------------------

BACKEND_OPTIONS = {
    "backend": (Annotated[BackendName, option("--backend", help=(
        "'auto' (the fastest installed embedded backend matching ONNX Runtime, said in the first line), "
        "'onnxruntime', 'openvino' (embedded; the openvino extra), 'triton', or 'torch' (PyTorch in this "
        "process, CPU or GPU)."))], BackendName("auto")),
    "repository": (Repository, DEFAULT_REPOSITORY),
    "url": (Urls, None),
    "protocol": (Annotated[ProtocolName, option(help="Triton protocol.")], ProtocolName("grpc")),
    "max_in_flight": (Annotated[int, typer.Option(help="Triton requests in flight at once.")], 4),
    "retry_seconds": (Annotated[float, typer.Option(
        help="How long to retry a Triton server that is down, restarting or overloaded before the run stops.")], 60.0),
    "device": (Annotated[str, typer.Option(
        help="--backend torch: 'cpu', 'cuda', 'cuda:N' or 'auto'; --backend onnxruntime: 'cuda' adds its CUDA "
             "execution provider (the gpu extra).")], "cpu"),
    "weights_dir": (Annotated[Optional[Path], typer.Option(
        help="--backend torch: folder of published checkpoints (as for export).")], None),
    "untrained": (Annotated[bool, typer.Option(
        help="--backend torch: seeded random weights, the same as `export --untrained --seed`.")], False),
    "seed": (Seed, 0),
    "inference_precision": (Annotated[Optional[TorchPrecision], option(
        help="--backend torch: autocast precision (fp32 default; bf16, fp16 with channels-last).")], None),
    "graph": (Annotated[Optional[GraphMode], option(
        help="--backend torch: 'eager' (default), 'cuda-graph' (CUDA: one graph per batch shape) or 'compile' "
             "(torch.compile); both replay fixed shapes (--pad-batch).")], None),
    "pad_batch": (Annotated[Optional[int], typer.Option(
        help="--backend torch: pad every request to N items, for fixed shapes (default: --batch-size on CUDA and "
             "with --graph cuda-graph/compile, else no padding).")], None),
}
ENGINE_OPTIONS = {
    "engine_name": (Annotated[EngineName, option(
        "--engine", help="'local' (this process, decoding in --workers processes) or 'ray' (a Ray Data pipeline: "
                         "decode tasks and inference actors on a Ray cluster; the ray extra).")], EngineName("local")),
    "ray_address": (Annotated[Optional[str], typer.Option(
        "--ray-address", envvar="RAY_ADDRESS",
        help="--engine ray: the cluster (HOST:PORT, or 'auto' on a cluster node); default: a local instance on "
             "loopback.")], None),
    "actors": (Annotated[int, typer.Option(
        help="--engine ray: inference actors, each with its own backend.")], 1),
    "shard": (Annotated[Optional[str], typer.Option(
        "--shard", help="Run shard K of N (K/N) of the inputs, into an --out of its own; `echodeploy merge` joins "
                        "them.")], None),
}
TORCH_ONLY = ("weights_dir", "untrained", "inference_precision", "graph", "pad_batch")


def ray_block_rows(default: int):
    return (Annotated[int, typer.Option(help="--engine ray: rows per decode task and per inference actor call.")],
            default)


def bulk_run(ray_rows: int):
    """Give a bulk-run command the backend and engine options; it receives `backend` (BackendSettings)
    and `engine` (EngineSettings) built from them, with its own `batch_size` and `bn_mode`."""
    shared = {**BACKEND_OPTIONS, **ENGINE_OPTIONS, "ray_block_rows": ray_block_rows(ray_rows)}
    parameters = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
                  for name, (annotation, default) in shared.items()]

    def decorate(command):
        own = inspect.signature(command, eval_str=True)
        kept = [p for p in own.parameters.values() if p.name not in ("backend", "engine")]

        @functools.wraps(command)
        def run(**values):
            given = {name: values.pop(name) for name in shared}
            return command(**values, backend=backend_settings(given, values["batch_size"],
                                                              values.get("bn_mode", "seed")),
                           engine=engine_settings(given))

        run.__signature__ = own.replace(parameters=kept + parameters)
        return run

    return decorate


def backend_settings(given: dict, batch_size: int, bn_mode) -> BackendSettings:
    """The backend settings of a bulk run; torch-only options are refused with the other backends."""
    name = given["backend"].value
    if name != "torch":
        named = [f"--{key.replace('_', '-')}" for key in TORCH_ONLY if given[key]]
        if named:
            raise EchodeployError(f"{', '.join(named)}: only with --backend torch (other backends read the exported models "
                        "of --repository)")
    device = given["device"]
    torch = None
    if name == "torch":
        if (given["weights_dir"] is None) == (not given["untrained"]):
            raise EchodeployError("--backend torch: pass --weights-dir DIR, or --untrained for seeded random weights")
        device = resolve_device(device)
        graph = given["graph"].value if given["graph"] else "eager"
        pad = given["pad_batch"]
        if pad is None:  # fixed shapes where graphs, compiled or cuDNN-tuned kernels replay them
            pad = batch_size if device != "cpu" or graph != "eager" else 0
        torch = TorchSettings(weights_dir=given["weights_dir"], seed=given["seed"], bn_mode=getattr(bn_mode, "value", bn_mode),
                              precision=given["inference_precision"].value if given["inference_precision"] else "fp32",
                              graph=graph, pad_batch=pad)
    return BackendSettings(name=name, repository=given["repository"], urls=tuple(given["url"] or ()),
                           protocol=given["protocol"].value, max_in_flight=given["max_in_flight"],
                           retry_seconds=given["retry_seconds"], device=device, torch=torch)


def engine_settings(given: dict) -> EngineSettings:
    from echodeploy.client.runs.shards import parse_shard

    return EngineSettings(name=given["engine_name"].value, ray_address=given["ray_address"], actors=given["actors"],
                          ray_block_rows=given["ray_block_rows"],
                          shard=parse_shard(given["shard"]) if given["shard"] else None)


def resolve_device(device: str) -> str:
    """'auto': cuda when torch sees a GPU, else cpu."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"



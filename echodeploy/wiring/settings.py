"""The settings a run is wired from: frozen, keyword-only, validated once when made.

`BackendSettings` says which backend serves the models and how to reach or build it;
`EngineSettings` how the rows are run (this process or Ray, whole or one shard); the run itself is
a `CmrRun` or an `MModeRun` (inputs, output folder, the pipeline's options). Each field keeps the
name of the flag that sets it (`--batch-size` is the pipeline's `batch_size`, clips or windows per
inference request, and nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from echodeploy.backends.base import EMBEDDED
from echodeploy.backends.openvino import HINTS
from echodeploy.backends.triton import PROTOCOLS
from echodeploy.errors import EchodeployError
from echodeploy.repository import DEFAULT_REPOSITORY
from echodeploy.specs import BN_MODES, GRAPH_MODES, TORCH_PRECISIONS

BACKENDS = ("auto", *EMBEDDED, "triton", "torch")
ENGINES = ("local", "ray")

if TYPE_CHECKING:  # the runs' modules (pandas, OpenCV) load when a run starts, not with the command line
    from echodeploy.client.runs.cmr import CmrOptions
    from echodeploy.client.runs.mmode import MModeOptions
    from echodeploy.client.runs.shards import Shard


@dataclass(frozen=True, kw_only=True)
class TorchSettings:
    """`--backend torch`: PyTorch in this process, on the weights export would use."""

    weights_dir: Path | None = None  # published checkpoints; None: seeded weights (`export --untrained --seed`)
    seed: int = 0
    bn_mode: str = "seed"  # the M-mode networks' BatchNorm (the pipeline's --bn-mode)
    precision: str = "fp32"  # autocast
    graph: str = "eager"
    pad_batch: int = 0  # every request padded to this many items (fixed shapes); 0: as sent
    channels_last: bool | None = None  # None: on for CUDA and reduced precision (off: the seeds' layout)

    def __post_init__(self):
        _check("--bn-mode", self.bn_mode, BN_MODES)
        _check("--inference-precision", self.precision, TORCH_PRECISIONS)
        _check("--graph", self.graph, GRAPH_MODES)
        if self.pad_batch < 0:
            raise EchodeployError(f"--pad-batch must be >= 0, got {self.pad_batch}")
        if self.graph != "eager" and self.pad_batch < 1:
            raise EchodeployError(f"--graph {self.graph} replays fixed shapes: it needs --pad-batch N")


@dataclass(frozen=True, kw_only=True)
class BackendSettings:
    """Which backend serves the models: by name, with what it needs to open."""

    name: str = "auto"
    repository: Path = DEFAULT_REPOSITORY  # exported models (every backend but torch)
    urls: tuple[str, ...] = ()  # triton servers
    protocol: str = "grpc"
    max_in_flight: int = 4
    retry_seconds: float = 60.0
    device: str = "cpu"  # torch: cpu, cuda, cuda:N; onnxruntime: cuda adds its CUDA execution provider
    openvino_hint: str = "throughput"  # bulk runs send batches, split over OpenVINO's streams
    torch: TorchSettings | None = None  # with name "torch" only

    def __post_init__(self):
        _check("--backend", self.name, BACKENDS)
        _check("--protocol", self.protocol, PROTOCOLS)
        _check("OpenVINO hint", self.openvino_hint, HINTS)
        if self.name == "triton" and not self.urls:
            raise EchodeployError("--backend triton needs --url HOST:PORT (start one with `echodeploy serve`)")
        if (self.torch is not None) != (self.name == "torch"):
            raise EchodeployError("torch settings go with --backend torch only")
        if self.device != "cpu" and self.name not in ("torch", "onnxruntime"):
            raise EchodeployError(f"--device {self.device}: only with --backend torch or onnxruntime")
        if self.max_in_flight < 1 or self.retry_seconds < 0:
            raise EchodeployError("--max-in-flight must be >= 1 and --retry-seconds >= 0")


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """How the rows are run: in this process, or as a Ray Data pipeline; all of them, or one shard."""

    name: str = "local"
    ray_address: str | None = None  # None: a local Ray instance on loopback
    actors: int = 1  # Ray inference actors, one backend each
    ray_block_rows: int = 10  # rows per Ray decode task and actor call
    shard: Shard | None = None

    def __post_init__(self):
        _check("--engine", self.name, ENGINES)
        if self.actors < 1 or self.ray_block_rows < 1:
            raise EchodeployError("--actors and --ray-block-rows must be >= 1")


@dataclass(frozen=True, kw_only=True)
class CmrRun:
    """A bulk CMR run: a manifest or folder in, `out` written (and resumed)."""

    source: Path
    out: Path
    view: str | None = None  # of rows without a view column
    data_root: Path | None = None
    allow_outside_root: bool = False
    options: CmrOptions


@dataclass(frozen=True, kw_only=True)
class MModeRun:
    """A bulk M-mode run: one DICOM or a folder of them in, `out` written (and resumed)."""

    source: Path
    out: Path
    mass_g: float | None = None  # for every file; or
    mass_csv: Path | None = None  # file,mass_g
    options: MModeOptions


def _check(option: str, value: str, known) -> None:
    if value not in known:
        raise EchodeployError(f"{option} must be one of {', '.join(known)}, got {value!r}")

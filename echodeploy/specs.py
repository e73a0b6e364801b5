"""Model specs: the one place that says what each deployable model is, and the limits it is held to.

Export, the model repository, the backends and the client all read these specs; none of them
redefines a tensor name, a dtype, a shape, a task or a parity limit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

from echodeploy.errors import EchodeployError

VIEWS = ("A4C", "A2C", "PLAX")

# Tensor names of the served graphs.
CLIP = "clip"  # CMR: uint8 clips (N, 3, T, H, W)
WINDOW = "window"  # M-mode: float32 grey windows (N, 1, 256, 256)
PROFILE_WEIGHTS = "profile_weights"  # M-mode segmentation: row weights of the resize back to the trace height
LVID_PROFILE = "lvid_profile"  # M-mode segmentation: per-column mask counts and row-index sums
QUALITY_PROB = "quality_prob"  # M-mode quality: good-quality probability

# Limits an output is held to against its reference (torch for an export, ONNX Runtime for another backend).
PARITY_ATOL = 1e-4  # max |diff| of probabilities and values
MASK_PARITY = 0.999  # fraction of thresholded mask pixels that must agree

# PyTorch in the process (`--backend torch`): autocast precisions and how the network is replayed.
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")
GRAPH_MODES = ("eager", "cuda-graph", "compile")


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """How a clip is cut from a video: the cardiac_mri seed's clip by default.

    `window` consecutive source frames starting at a clip start, every `stride`-th one
    kept, cropped to a centred square and resized (bicubic) to `size` x `size`.
    Channels stay in OpenCV's decoding order (BGR); values stay uint8 until the model.
    """

    frames: int = 16
    stride: int = 2
    size: int = 112
    channel_order: str = "BGR"

    def __post_init__(self):
        if self.frames < 1 or self.stride < 1 or self.size < 8:
            raise ValueError(f"invalid clip spec {self}")

    @property
    def window(self) -> int:
        """Source frames a clip needs; shorter videos are 'too_short' (32 for the seed)."""
        return self.frames * self.stride

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """Model input layout (C, T, H, W)."""
        return (3, self.frames, self.size, self.size)


@dataclass(frozen=True, kw_only=True)
class Task:
    """A CMR finding predicted from echo."""

    name: str
    kind: Literal["binary", "regression"]
    description: str
    checkpoint_stem: str  # weights file `<VIEW>_<stem>.pt`
    published: bool = False  # released weights exist for this task

    @property
    def output(self) -> str:
        return f"{self.name}_prob" if self.kind == "binary" else f"{self.name}_value"


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(name="wma", kind="binary", description="wall-motion abnormality",
             checkpoint_stem="WallMotoion", published=True),  # (sic): the published file name
        Task(name="scar", kind="binary", description="myocardial scar (LGE)",
             checkpoint_stem="Scar", published=True),
        Task(name="t1", kind="regression", description="native T1 time", checkpoint_stem="T1"),
        Task(name="t2", kind="regression", description="T2 time", checkpoint_stem="T2"),
        Task(name="ecv", kind="regression", description="ECV fraction", checkpoint_stem="ECV"),
        Task(name="ecv_high", kind="binary", description="elevated ECV fraction",
             checkpoint_stem="ECV_Binary"),
    )
}
PUBLISHED_TASKS = tuple(name for name, t in TASKS.items() if t.published)


@dataclass(frozen=True, kw_only=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name
    shape: tuple[int, ...]  # without the batch dimension
    dynamic_dims: tuple[int, ...] = ()  # item dimensions the ONNX graph leaves free (configs use `shape`)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """A deployable network: batch-first inputs and outputs of fixed per-item shape."""

    name: str
    family: Literal["cmr", "mmode"]
    kind: str  # binary / regression (CMR tasks); quality / segmentation (M-mode)
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    flops_per_item: int
    view: str = ""
    task: str = ""
    clip: ClipSpec | None = None
    bn_mode: str = ""

    def metadata(self) -> dict[str, str]:
        """What the exported file and the repository declare, and the client verifies."""
        fields = {
            "echodeploy.model": self.name,
            "echodeploy.family": self.family,
            "echodeploy.kind": self.kind,
            "echodeploy.view": self.view,
            "echodeploy.task": self.task,
            "echodeploy.bn_mode": self.bn_mode,
            "echodeploy.clip": json.dumps(asdict(self.clip), sort_keys=True) if self.clip else "",
        }
        return {key: value for key, value in fields.items() if value}


R2PLUS1D_FLOPS = 81_037_753_344  # per 16x112x112 clip (fixtures/state_dicts/r2plus1d_18.json)


MMODE_WINDOW = 256
QUICKNAT_FLOPS = 120_816_926_720  # per 256x256 window (fixtures/state_dicts/quicknat.json)
CARDIONET_FLOPS = 5_549_072_384  # per 256x256 window (fixtures/state_dicts/cardionet.json)
BN_MODES = ("seed", "running")
MMODE_QUALITY, MMODE_LVID = "mmode_quality", "mmode_lvid"


def mmode_model(name: str, bn_mode: str = "seed") -> ModelSpec:
    """M-mode networks as served: windows (N, 1, 256, 256) float32 grey 0..255 in.

    mmode_quality: CardioNet, normalisation inside -> good-quality probability (N, 1).
    mmode_lvid: QuickNAT, threshold inside -> per-column mask counts and row-index sums of
    the mask resized to the trace height, given that resize's row weights (N, 2, 256).
    """
    _check_known("bn mode", bn_mode, BN_MODES)
    window = TensorSpec(name=WINDOW, dtype="float32", shape=(1, MMODE_WINDOW, MMODE_WINDOW))
    if name == MMODE_QUALITY:
        return ModelSpec(name=name, family="mmode", kind="quality", bn_mode=bn_mode, inputs=(window,),
                         outputs=(TensorSpec(name=QUALITY_PROB, dtype="float32", shape=(1,)),),
                         flops_per_item=CARDIONET_FLOPS)
    if name == MMODE_LVID:
        # free rows: identity weights (256 rows) return the whole mask, for agreement checks
        weights = TensorSpec(name=PROFILE_WEIGHTS, dtype="float32", shape=(2, MMODE_WINDOW), dynamic_dims=(0,))
        return ModelSpec(name=name, family="mmode", kind="segmentation", bn_mode=bn_mode,
                         inputs=(window, weights),
                         outputs=(TensorSpec(name=LVID_PROFILE, dtype="float32", shape=(2, MMODE_WINDOW),
                                             dynamic_dims=(0,)),),
                         flops_per_item=QUICKNAT_FLOPS)
    raise EchodeployError(f"unknown M-mode model {name!r}; known: {MMODE_QUALITY}, {MMODE_LVID}")


def _check_known(kind: str, value: str, known) -> None:
    if value not in known:
        raise EchodeployError(f"unknown {kind} {value!r}; known: {', '.join(known)}")


def cmr_model(view: str, task: str, clip: ClipSpec = ClipSpec()) -> ModelSpec:
    """Spec of the R(2+1)D-18 network predicting `task` from `view` clips."""
    view = view.upper()
    _check_known("view", view, VIEWS)
    _check_known("task", task, TASKS)
    return ModelSpec(
        name=f"cmr_{view.lower()}_{task}",
        family="cmr",
        kind=TASKS[task].kind,
        view=view,
        task=task,
        clip=clip,
        inputs=(TensorSpec(name=CLIP, dtype="uint8", shape=clip.shape),),
        outputs=(TensorSpec(name=TASKS[task].output, dtype="float32", shape=(1,)),),
        flops_per_item=R2PLUS1D_FLOPS,
    )


def model_spec(name: str) -> ModelSpec:
    """The spec of a served model name: cmr_<view>_<task>, mmode_quality or mmode_lvid."""
    if name in (MMODE_QUALITY, MMODE_LVID):
        return mmode_model(name)
    family, view, task = (name.split("_", 2) + ["", ""])[:3]
    if family != "cmr" or view.upper() not in VIEWS or task not in TASKS:
        raise EchodeployError(f"unknown model {name!r}: expected cmr_<view>_<task> "
                              f"(e.g. cmr_a4c_scar), {MMODE_QUALITY} or {MMODE_LVID}")
    return cmr_model(view.upper(), task)


def registered_models() -> list[ModelSpec]:
    """Every model a repository can serve: each view x task network, and both M-mode networks in each
    BatchNorm mode."""
    return ([cmr_model(view, task) for view in VIEWS for task in TASKS]
            + [mmode_model(name, bn_mode) for name in (MMODE_QUALITY, MMODE_LVID) for bn_mode in BN_MODES])


def view_ensemble_name(view: str) -> str:
    """Triton ensemble that fans one clip batch out to every task model of a view."""
    return f"cmr_{view.lower()}"


def parse_names(kind: str, text: str | None, known, default) -> tuple[str, ...]:
    """Split a comma-separated CLI value and refuse unknown names (case-insensitive)."""
    if not text:
        return tuple(default)
    lookup = {k.lower(): k for k in known}
    names = []
    for raw in text.split(","):
        raw = raw.strip()
        if raw.lower() == "all":
            return tuple(known)
        _check_known(kind, raw.lower(), lookup)
        names.append(lookup[raw.lower()])
    return tuple(dict.fromkeys(names))

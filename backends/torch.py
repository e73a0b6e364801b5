"""PyTorch in this process behind the `Backend` interface: bulk runs (`--backend torch`) on a
CPU or a CUDA GPU, benchmarks and precision checks.

`fp32` eager on the CPU is the seeds' way. `bf16` / `fp16` run the same module under
autocast with channels-last(-3d) weights and inputs. On CUDA, requests are padded to one
fixed batch shape (the padding is dropped from the outputs), uint8 clips go up from pinned
memory and are normalised on the GPU (inside the served module), and the fixed shapes let
a CUDA graph or `torch.compile` replay the whole network per request (`graph`).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from echodeploy.agreement import summary as agreement_summary
from echodeploy.backends.base import ModelInfo
from echodeploy.errors import BackendError, EchodeployError, RequestError
from echodeploy.specs import GRAPH_MODES, MMODE_LVID, TORCH_PRECISIONS, ModelSpec, model_spec

log = logging.getLogger(__name__)

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

Loader = Callable[[str], "tuple[ModelSpec, nn.Module, dict[str, str]]"]


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def precision_agreement(backend: TorchBackend, spec: ModelSpec, module: nn.Module, items: int = 8) -> dict:
    """`backend`'s outputs against fp32 eager of the same module on the same device (TF32
    convolutions off), on held-out generated inputs (the agreement report `export --precision` stores)."""
    from echodeploy.agreement import compare_outputs
    from echodeploy.export.calibration import calibration_feeds
    from echodeploy.export.precision import AGREEMENT_SEED, comparable_feeds, comparable_output

    feeds = comparable_feeds(spec, calibration_feeds(spec, items, seed=AGREEMENT_SEED))
    feeds = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}
    reference = TorchBackend({spec.name: (spec, module)}, device=str(backend.device))
    output = spec.outputs[0].name
    with torch.backends.cudnn.flags(enabled=True, benchmark=torch.backends.cudnn.benchmark, allow_tf32=False):
        fp32 = comparable_output(spec, reference.infer(spec.name, feeds, [output])[output])  # true fp32, no TF32
    variant = comparable_output(spec, backend.infer(spec.name, feeds, [output])[output])
    reference.close()
    return compare_outputs("segmentation" if spec.name == MMODE_LVID else spec.kind, fp32, variant)


@dataclass
class _Loaded:
    spec: ModelSpec
    module: nn.Module
    metadata: dict[str, str]
    graphs: dict = field(default_factory=dict)  # input shapes -> (static inputs, graph, static outputs)
    pinned: dict = field(default_factory=dict)  # (input index, shape, dtype) -> page-locked host buffer


class TorchBackend:
    """`modules` (name -> (spec, served module)) or a `loader` that builds them by name.

    `fixed_batch` pads every request to that many items (and splits larger ones); 0 keeps
    request shapes. `graph` = cuda-graph captures one CUDA graph per model and batch
    shape; compile wraps the module in `torch.compile` (dynamic=False). `channels_last`
    defaults to on for CUDA and reduced precision (off: the seeds' NC(T)HW layout).
    Calls are serialised: staging buffers and graphs are shared between them. Models a
    `loader` builds at reduced precision are compared with fp32 at load.
    """

    def __init__(self, modules: dict[str, tuple[ModelSpec, nn.Module]] | None = None, precision: str = "fp32",
                 untrained: bool = True, device: str = "cpu", graph: str = "eager", fixed_batch: int = 0,
                 loader: Loader | None = None, channels_last: bool | None = None):
        if precision not in TORCH_PRECISIONS:
            raise BackendError(f"torch precision must be one of {', '.join(TORCH_PRECISIONS)}, got {precision!r}")
        if graph not in GRAPH_MODES:
            raise BackendError(f"graph mode must be one of {', '.join(GRAPH_MODES)}, got {graph!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise BackendError("--device cuda: this torch sees no CUDA GPU "
                               f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        if graph == "cuda-graph" and self.device.type != "cuda":
            raise BackendError("CUDA graphs need --device cuda")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes: the fastest convolution kernels are found once
        if graph != "eager" and fixed_batch < 1:
            raise BackendError(f"graph mode {graph} needs a fixed batch shape (fixed_batch >= 1)")
        self.name = "torch" if precision == "fp32" else f"torch-{precision}"
        self.precision, self.untrained, self.graph, self.fixed_batch = precision, untrained, graph, fixed_batch
        self.channels_last = channels_last if channels_last is not None else (
            precision != "fp32" or self.device.type == "cuda")
        self._loader = loader
        self._lock = threading.Lock()
        self._models: dict[str, _Loaded] = {}
        for name, (spec, module) in (modules or {}).items():
            metadata = {**spec.metadata(), "echodeploy.untrained": str(untrained).lower(),
                        "echodeploy.precision": precision}
            self._models[name] = self._prepare(spec, module, metadata)

    def _prepare(self, spec: ModelSpec, module: nn.Module, metadata: dict[str, str]) -> _Loaded:
        module = copy.deepcopy(module.eval())  # `to` converts in place, and callers may share modules
        module = module.to(self.device, memory_format=_channels_last(len(spec.inputs[0].shape) + 1)
                           if self.channels_last else torch.preserve_format)
        if self.graph == "compile":
            module = torch.compile(module, dynamic=False)
        return _Loaded(spec, module, metadata)

    def _get(self, model: str) -> _Loaded:
        if model not in self._models:
            if self._loader is None or not self.has_model(model):
                raise BackendError(f"model {model} is not loaded in the torch backend ({', '.join(self._models)})")
            spec, module, metadata = self._loader(model)
            self._models[model] = self._prepare(spec, module, {**metadata, "echodeploy.precision": self.precision})
            if self.precision != "fp32":
                report = precision_agreement(self, spec, module)
                self._models[model].metadata["echodeploy.agreement"] = json.dumps(report, sort_keys=True)
                log.log(logging.INFO if report["passed"] else logging.WARNING, "%s %s vs fp32: %s", model,
                        self.precision, agreement_summary(report))
        return self._models[model]

    def model_info(self, model: str) -> ModelInfo:
        return ModelInfo(metadata=dict(self._get(model).metadata), max_batch_size=0)

    def has_model(self, model: str) -> bool:
        if model in self._models:
            return True
        if self._loader is None:
            return False
        try:
            model_spec(model)
        except EchodeployError:
            return False
        return True

    # --- inference ------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, AUTOCAST_DTYPES.get(self.precision, torch.float32),
                              enabled=self.precision != "fp32", cache_enabled=False)

    def _upload(self, loaded: _Loaded, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        """Inputs on the device; on CUDA through page-locked buffers kept per shape (asynchronous copies)."""
        tensors = []
        for index, array in enumerate(arrays):
            host = torch.from_numpy(np.ascontiguousarray(array))
            if self.device.type == "cuda":
                key = (index, host.shape, host.dtype)
                if key not in loaded.pinned:
                    loaded.pinned[key] = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
                host = loaded.pinned[key].copy_(host)  # the previous copy ended: outputs were read back
            tensor = host.to(self.device, non_blocking=True)
            if index == 0 and tensor.ndim in (4, 5) and self.channels_last:
                tensor = tensor.contiguous(memory_format=_channels_last(tensor.ndim))
            tensors.append(tensor)
        return tensors

    def _run(self, loaded: _Loaded, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if self.graph != "cuda-graph":
            with torch.inference_mode(), self._autocast():
                result = loaded.module(*tensors)
            return result if isinstance(result, tuple) else (result,)
        key = tuple(tuple(t.shape) for t in tensors)
        if key not in loaded.graphs:
            loaded.graphs[key] = self._capture(loaded.module, tensors)
        static_in, graph, static_out = loaded.graphs[key]
        for static, tensor in zip(static_in, tensors):
            static.copy_(tensor)
        graph.replay()
        return static_out

    def _capture(self, module: nn.Module, tensors: list[torch.Tensor]):
        """One CUDA graph of the module at these input shapes (warm-up on a side stream first)."""
        static_in = [t.clone() for t in tensors]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode(), self._autocast():
            for _ in range(3):
                module(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode(), self._autocast():
            result = module(*static_in)
        return static_in, graph, result if isinstance(result, tuple) else (result,)

    def _check(self, spec: ModelSpec, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        arrays = []
        for t in spec.inputs:
            array = inputs.get(t.name)
            fixed = [d for i, d in enumerate(t.shape) if i not in t.dynamic_dims]
            got = None if array is None else [d for i, d in enumerate(array.shape[1:]) if i not in t.dynamic_dims]
            if array is None or array.dtype != np.dtype(t.dtype) or array.ndim != len(t.shape) + 1 or got != fixed:
                found = "nothing" if array is None else f"{array.dtype} {array.shape}"
                raise RequestError(f"{spec.name}: input {t.name} must be {t.dtype} (N, "
                                   f"{', '.join(map(str, t.shape))}), got {found}")
            arrays.append(array)
        if len({len(a) for a in arrays}) != 1:
            raise RequestError(f"{spec.name}: inputs differ in batch size")
        return arrays

    def forward(self, model: str, tensors: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The model on inputs already on the device (as `infer` would lay them out); outputs stay there."""
        loaded = self._get(model)
        if self.channels_last and tensors[0].ndim in (4, 5):
            tensors = [tensors[0].contiguous(memory_format=_channels_last(tensors[0].ndim)), *tensors[1:]]
        with self._lock:
            return self._run(loaded, tensors)

    def infer(self, model: str, inputs: dict[str, np.ndarray],
              outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        with self._lock:
            return self._infer(model, inputs, outputs)

    def _infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None) -> dict[str, np.ndarray]:
        loaded = self._get(model)
        spec = loaded.spec
        arrays = self._check(spec, inputs)
        rows = len(arrays[0])
        step = self.fixed_batch or rows
        parts: list[list[np.ndarray]] = []
        for start in range(0, rows, step):
            chunk = [a[start:start + step] for a in arrays]
            real = len(chunk[0])
            if real < step:  # pad the last batch to the fixed shape; its rows are dropped below
                chunk = [np.concatenate([c, np.zeros((step - real, *c.shape[1:]), c.dtype)]) for c in chunk]
            result = self._run(loaded, self._upload(loaded, chunk))
            parts.append([r[:real].float().cpu().numpy() for r in result])
        named = {t.name: np.concatenate([p[i] for p in parts]) for i, t in enumerate(spec.outputs)}
        return {name: named[name] for name in (outputs or named)}

    def close(self) -> None:
        self._models.clear()

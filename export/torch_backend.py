"""PyTorch in this process behind the `Backend` interface (benchmarks and precision checks).

`fp32` is the seeds' way: eager float32 on the module as published. `bf16` runs the same
module under CPU autocast to bfloat16 with channels-last weights and inputs, where the
processor has bfloat16 matrix instructions (AVX512-BF16, AMX).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from echodeploy.backend import ModelInfo
from echodeploy.errors import BackendError
from echodeploy.specs import ModelSpec

TORCH_PRECISIONS = ("fp32", "bf16")


def _channels_last(ndim: int) -> torch.memory_format:
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


class TorchBackend:
    def __init__(self, modules: dict[str, tuple[ModelSpec, nn.Module]], precision: str = "fp32",
                 untrained: bool = True):
        if precision not in TORCH_PRECISIONS:
            raise BackendError(f"torch precision must be one of {', '.join(TORCH_PRECISIONS)}, got {precision!r}")
        self.name = "torch" if precision == "fp32" else f"torch-{precision}"
        self.precision, self.untrained = precision, untrained
        self._modules = {}
        for name, (spec, module) in modules.items():
            module = module.eval()
            if precision == "bf16":  # a copy: `to` converts in place, and callers may share modules
                module = copy.deepcopy(module).to(memory_format=_channels_last(len(spec.inputs[0].shape) + 1))
            self._modules[name] = (spec, module)

    def _get(self, model: str) -> tuple[ModelSpec, nn.Module]:
        if model not in self._modules:
            raise BackendError(f"model {model} is not loaded in the torch backend ({', '.join(self._modules)})")
        return self._modules[model]

    def model_info(self, model: str) -> ModelInfo:
        spec, _ = self._get(model)
        return ModelInfo(metadata={**spec.metadata(), "echodeploy.untrained": str(self.untrained).lower(),
                                   "echodeploy.precision": self.precision}, max_batch_size=0)

    def has_model(self, model: str) -> bool:
        return model in self._modules

    def infer(self, model: str, inputs: dict[str, np.ndarray],
              outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        spec, module = self._get(model)
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])) for t in spec.inputs]
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bf16"):
            if self.precision == "bf16":
                tensors[0] = tensors[0].contiguous(memory_format=_channels_last(tensors[0].ndim))
            result = module(*tensors)
        result = result if isinstance(result, tuple) else (result,)
        named = {t.name: r.float().numpy() for t, r in zip(spec.outputs, result)}
        return {name: named[name] for name in (outputs or named)}

    def close(self) -> None:
        self._modules.clear()

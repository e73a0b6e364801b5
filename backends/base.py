"""The one interface every inference backend implements, and the check that a served model
is what its spec describes.

A backend maps a model name and a dict of batch-first numpy inputs to a dict of numpy
outputs: embedded ONNX Runtime, Triton (client/), or PyTorch (export/).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from echodeploy.errors import BackendError
from echodeploy.specs import ModelSpec

EMBEDDED = ("onnxruntime", "openvino")  # backends that run the repository's models in this process


@dataclass(frozen=True)
class ModelInfo:
    metadata: dict[str, str]
    max_batch_size: int  # 0 = no limit

    @property
    def untrained(self) -> bool:
        return self.metadata.get("echodeploy.untrained") == "true"


class Backend(Protocol):
    name: str

    def model_info(self, model: str) -> ModelInfo: ...

    def has_model(self, model: str) -> bool: ...

    def infer(self, model: str, inputs: dict[str, np.ndarray],
              outputs: list[str] | None = None) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def check_model(spec: ModelSpec, info: ModelInfo) -> None:
    """Refuse a served model whose declared view, task, kind or clip differ from the spec."""
    expected = spec.metadata()
    wrong = [
        f"{key.split('.', 1)[1]} {info.metadata.get(key)!r} (expected {value!r})"
        for key, value in expected.items()
        if info.metadata.get(key) != value
    ]
    if wrong:
        raise BackendError(f"model {spec.name} does not match its spec: " + "; ".join(wrong))

"""Inference backends behind one interface: embedded ONNX Runtime (default) and Triton.

A backend maps a model name and a dict of batch-first numpy inputs to a dict of numpy
outputs. `check_model` verifies that what a backend serves is what a spec describes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from echodeploy.errors import BackendError
from echodeploy.repository import model_file
from echodeploy.specs import ModelSpec


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


class OnnxRuntimeBackend:
    """ONNX Runtime in this process on the models of a repository (no server)."""

    name = "onnxruntime"

    def __init__(self, repository: Path, providers: list[str] | None = None, threads: int = 0):
        import onnxruntime as ort

        self._ort = ort
        self.repository = Path(repository)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads or len(os.sched_getaffinity(0))
        self._sessions = {}

    def _session(self, model: str):
        if model not in self._sessions:
            path = model_file(self.repository, model)
            if not path.is_file():
                raise BackendError(
                    f"model {model} not found at {path}; run `echodeploy export` first"
                )
            options = self._ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.graph_optimization_level = self._ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # no busy-waiting between runs: decoding workers share these cores
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._sessions[model] = self._ort.InferenceSession(str(path), options, providers=self.providers)
        return self._sessions[model]

    def model_info(self, model: str) -> ModelInfo:
        meta = self._session(model).get_modelmeta().custom_metadata_map
        return ModelInfo(metadata=dict(meta), max_batch_size=0)

    def has_model(self, model: str) -> bool:
        return model_file(self.repository, model).is_file()

    def infer(self, model: str, inputs: dict[str, np.ndarray],
              outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        session = self._session(model)
        names = outputs or [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    def close(self) -> None:
        self._sessions.clear()


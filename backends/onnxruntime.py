"""Embedded ONNX Runtime: the models of a repository in this process, no server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from echodeploy.backends.base import ModelInfo
from echodeploy.errors import BackendError
from echodeploy.repository import model_file


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


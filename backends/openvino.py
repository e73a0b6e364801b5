"""Embedded OpenVINO: the ONNX files of a repository compiled for this CPU, no server.

Runs what `export` writes (fp32, int8 QDQ, fp16) with the same tensors as ONNX Runtime:
each model is compiled once, with fp32 inference precision (OpenVINO's default on CPUs with
bf16 instructions would be bf16, which breaks fp32 parity) and a latency or throughput hint.
Under the throughput hint (what bulk runs use) OpenVINO runs several streams, each on its own
cores, and a batch is split over them: every item still goes through the same network, and the
streams do not wait on each other between layers (on 2 cores, up to 25% more items/s than one
latency stream, `benchmarks/openvino_streams.py`). Needs the `openvino` extra: `pip install 'echodeploy[openvino]'`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from echodeploy.backends.base import ModelInfo
from echodeploy.errors import BackendError
from echodeploy.repository import model_file

HINTS = ("latency", "throughput")
MISSING_EXTRA = "--backend openvino needs the openvino extra: pip install 'echodeploy[openvino]'"


def import_openvino():
    """The openvino module, or a one-line BackendError saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise BackendError(MISSING_EXTRA) from None
    return openvino


def onnx_metadata(model) -> dict[str, str]:
    """The ONNX file's metadata_props, which OpenVINO's ONNX reader keeps under rt_info['framework']."""
    if not model.has_rt_info(["framework"]):
        return {}
    return {key: value.astype(str) for key, value in model.get_rt_info()["framework"].items()}


class OpenVinoBackend:
    """OpenVINO in this process on the models of a repository (no server)."""

    name = "openvino"

    def __init__(self, repository: Path, hint: str = "throughput", threads: int = 0):
        if hint not in HINTS:
            raise BackendError(f"OpenVINO hint must be one of {', '.join(HINTS)}, got {hint!r}")
        self._ov = import_openvino()
        self._core = self._ov.Core()
        self.repository = Path(repository)
        self.hint = hint
        self.threads = threads or len(os.sched_getaffinity(0))
        self._compiled = {}
        self._metadata = {}
        self._outputs = {}
        self._streams = {}
        self._lock = threading.Lock()
        self._local = threading.local()  # infer requests per model and thread, one per stream

    def _compile(self, model: str):
        with self._lock:
            if model not in self._compiled:
                path = model_file(self.repository, model)
                if not path.is_file():
                    raise BackendError(f"model {model} not found at {path}; run `echodeploy export` first")
                network = self._core.read_model(str(path))
                self._metadata[model] = onnx_metadata(network)
                # the ONNX output names; compiled ports may carry internal tensor names besides
                self._outputs[model] = [port.get_any_name() for port in network.outputs]
                config = {"PERFORMANCE_HINT": self.hint.upper(), "INFERENCE_PRECISION_HINT": "f32",
                          "INFERENCE_NUM_THREADS": self.threads}
                compiled = self._core.compile_model(network, "CPU", config)
                self._streams[model] = max(1, compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
                self._compiled[model] = compiled
            return self._compiled[model]

    def _requests(self, model: str) -> list:
        requests = self._local.__dict__.setdefault("requests", {})
        if model not in requests:
            compiled = self._compile(model)
            requests[model] = [compiled.create_infer_request() for _ in range(self._streams[model])]
        return requests[model]

    def model_info(self, model: str) -> ModelInfo:
        self._compile(model)
        return ModelInfo(metadata=dict(self._metadata[model]), max_batch_size=0)

    def has_model(self, model: str) -> bool:
        return model_file(self.repository, model).is_file()

    def infer(self, model: str, inputs: dict[str, np.ndarray],
              outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        requests = self._requests(model)
        batch = len(next(iter(inputs.values())))
        parts = max(1, min(len(requests), batch))  # one slice of the batch per stream
        edges = [batch * k // parts for k in range(parts + 1)]
        for request, start, end in zip(requests, edges, edges[1:]):
            request.start_async({name: np.ascontiguousarray(value[start:end]) for name, value in inputs.items()})
        results = []
        for request in requests[:parts]:
            request.wait()
            results.append(request.results.to_tuple())
        names = self._outputs[model]  # outputs are batch-first; concatenate copies out of the request buffers
        return {name: np.concatenate([r[names.index(name)] for r in results]) for name in outputs or names}

    def close(self) -> None:
        self._local = threading.local()
        self._compiled.clear()

"""`echodeploy profile`: where an exported model's time goes, per operator type, on ONNX Runtime
(its JSON profiler) or OpenVINO (its performance counters), on the same generated inputs."""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from echodeploy.backends.embedded import probe_inputs
from echodeploy.errors import EchodeployError
from echodeploy.repository import model_file
from echodeploy.specs import ModelSpec


def _onnxruntime_times(path: Path, feeds: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = len(os.sched_getaffinity(0))
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up, not profiled
    with tempfile.TemporaryDirectory() as tmp:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)
        for _ in range(runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    times = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            times[event["args"]["op_name"]] += event["dur"] / 1e6 / (runs + 1)
    return dict(times)


def _openvino_times(path: Path, feeds: dict[str, np.ndarray], runs: int) -> dict[str, float]:
    from echodeploy.backends.openvino import import_openvino

    ov = import_openvino()
    compiled = ov.Core().compile_model(str(path), "CPU", {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    request.infer(feeds)  # warm-up
    times = defaultdict(float)
    for _ in range(runs):
        request.infer(feeds)
        for node in request.get_profiling_info():
            if node.status == node.Status.EXECUTED:
                times[f"{node.node_type} ({node.exec_type})"] += node.real_time.total_seconds() / runs
    return dict(times)


PROFILERS = {"onnxruntime": _onnxruntime_times, "openvino": _openvino_times}


def profile_model(repository: Path, spec: ModelSpec, backend: str, batch: int, runs: int = 2) -> dict:
    """Seconds per request by operator type (largest first), their total, and the GFLOP/s it implies."""
    if backend not in PROFILERS:
        raise EchodeployError(f"profile runs on {', '.join(PROFILERS)}, not {backend!r}")
    path = model_file(repository, spec.name)
    if not path.is_file():
        raise EchodeployError(f"model {spec.name} not found at {path}; run `echodeploy export` first")
    times = PROFILERS[backend](path, probe_inputs(spec, batch), runs)
    total = sum(times.values())
    return {"model": spec.name, "backend": backend, "batch": batch, "seconds": total,
            "gflops": spec.flops_per_item * batch / total / 1e9,
            "ops": dict(sorted(times.items(), key=lambda item: -item[1]))}


def profile_text(result: dict, top: int = 12) -> str:
    lines = [f"{result['model']} on {result['backend']}, batch {result['batch']}: {result['seconds']:.3f} s of "
             f"operator time per request ({result['gflops']:.0f} GFLOP/s of model FLOPs)"]
    for op, seconds in list(result["ops"].items())[:top]:
        lines.append(f"  {op:42s} {seconds:8.3f} s  {seconds / result['seconds']:6.1%}")
    return "\n".join(lines)

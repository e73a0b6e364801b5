"""The default embedded backend: the fastest installed one whose outputs match ONNX Runtime's.

ONNX Runtime is the reference (always installed); OpenVINO competes when its extra is
installed. Each candidate runs the run's own models on the same generated inputs: it must
match the reference (fp32 parity: max |diff| <= 1e-4, or 99.9% of mask pixels for the
segmentation model) and is timed on the first model (batch-2 requests: bulk runs send batches,
which OpenVINO splits over its streams). The choice is
kept in the repository (`EMBEDDED_BACKEND.json`) while processor, runtimes and model files
stay the same.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from echodeploy.backends.base import EMBEDDED
from echodeploy.errors import BackendError
from echodeploy.preprocessing.mmode import segmentation_windows
from echodeploy.preprocessing.video import make_clips
from echodeploy.samples import synthetic_echo, synthetic_mmode
from echodeploy.specs import CLIP, MASK_PARITY, MMODE_WINDOW, PARITY_ATOL, PROFILE_WEIGHTS, WINDOW, ModelSpec

TIMED_REQUESTS = 1
TIMED_BATCH = 2


def open_embedded(name: str, repository: Path):
    """An embedded backend by name (a one-line error when its extra is missing)."""
    if name == "onnxruntime":
        from echodeploy.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(repository)
    if name == "openvino":
        from echodeploy.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(repository)
    raise BackendError(f"unknown embedded backend {name!r}; known: {', '.join(EMBEDDED)}")


def installed_embedded() -> list[str]:
    """Embedded backends importable here, reference first."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return ["onnxruntime"]
    return ["onnxruntime", "openvino"]


def probe_inputs(spec: ModelSpec, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Generated echo-like clips or M-mode windows in the served format (outputs then spread, as on real
    data); identity profile weights, so the segmentation model returns its whole mask."""
    if spec.family == "cmr":
        clips = [make_clips(synthetic_echo(spec.clip.window, seed=seed + i), spec.clip)[0] for i in range(batch)]
        return {CLIP: np.stack(clips)}
    trace, _ = synthetic_mmode(length=MMODE_WINDOW * batch, heart_rate_bpm=450, seed=seed)
    feeds = {WINDOW: segmentation_windows(trace)[:batch]}
    if spec.kind == "segmentation":
        feeds[PROFILE_WEIGHTS] = np.repeat(np.eye(MMODE_WINDOW, dtype=np.float32)[None], batch, axis=0)
    return feeds


def parity_failure(spec: ModelSpec, reference: np.ndarray, candidate: np.ndarray) -> str | None:
    """Why `candidate` does not match the reference output, or None when it does."""
    if reference.shape != candidate.shape:
        return f"shape {candidate.shape} != {reference.shape}"
    if spec.kind == "segmentation":
        agreement = float((reference == candidate).mean())
        return None if agreement >= MASK_PARITY else f"mask agreement {agreement:.4%} < {MASK_PARITY:.1%}"
    diff = float(np.abs(candidate.astype(np.float64) - reference).max())
    return None if diff <= PARITY_ATOL else f"max |diff| {diff:.3g} > {PARITY_ATOL:g}"


def _best_seconds(backend, spec: ModelSpec, feeds: dict[str, np.ndarray]) -> float:
    """Best of `TIMED_REQUESTS` requests (after the parity request, which allocated and tuned)."""
    best = float("inf")
    for _ in range(TIMED_REQUESTS):
        start = time.perf_counter()
        backend.infer(spec.name, feeds)
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class Choice:
    backend: object
    line: str  # what was chosen and why, for the run's first line
    seconds: dict[str, float] = field(default_factory=dict)  # best TIMED_BATCH request of each matching candidate
    refused: dict[str, str] = field(default_factory=dict)  # candidate -> why it does not match


def choose_embedded(candidates: dict[str, object], specs: list[ModelSpec]) -> Choice:
    """The fastest of `candidates` (name -> open backend; the first is the reference) that matches
    the reference on every spec; the others are closed."""
    names = list(candidates)
    reference = candidates[names[0]]
    feeds = {spec.name: probe_inputs(spec) for spec in specs}
    expected = {spec.name: reference.infer(spec.name, feeds[spec.name])[spec.outputs[0].name] for spec in specs}
    timed = probe_inputs(specs[0], TIMED_BATCH)
    seconds, refused = {}, {}
    for name, backend in candidates.items():
        for spec in specs:
            why = parity_failure(spec, expected[spec.name],
                                 backend.infer(spec.name, feeds[spec.name])[spec.outputs[0].name])
            if why:
                refused[name] = f"{name} fails parity on {spec.name} ({why})"
                break
        else:
            backend.infer(specs[0].name, timed)  # a new batch size allocates and tunes
            seconds[name] = _best_seconds(backend, specs[0], timed)
    chosen = min(seconds, key=seconds.get)  # the reference always passes
    for name, backend in candidates.items():
        if name != chosen:
            backend.close()
    times = ", ".join(f"{name} {s:.3g} s" for name, s in sorted(seconds.items(), key=lambda item: item[1]))
    notes = "".join(f"; {why}" for why in refused.values())
    notes += "".join(f"; {name} not installed" for name in EMBEDDED if name not in candidates)
    line = (f"backend: {chosen} (fastest embedded backend matching ONNX Runtime here: "
            f"{specs[0].name} batch {TIMED_BATCH} {times}{notes}; --backend to choose)")
    return Choice(candidates[chosen], line, seconds, refused)


CHOICE_FILE = "EMBEDDED_BACKEND.json"  # in the repository: the last choice and what it was made on


def _choice_key(repository: Path, specs: list[ModelSpec], installed: list[str]) -> dict:
    """What a choice depends on: this processor, the installed runtimes, the model files."""
    from importlib.metadata import version

    from echodeploy.repository import model_file

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else ""
    files = {spec.name: [model_file(repository, spec.name).stat().st_size,
                         model_file(repository, spec.name).stat().st_mtime_ns] for spec in specs}
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "models": files,
            "runtimes": {name: version(name) for name in installed}}


def default_embedded(repository: Path, specs: list[ModelSpec]) -> Choice:
    """Choose among the installed embedded backends on the models of `specs` found in `repository`;
    the choice is kept in the repository and reused while processor, runtimes and files are the same."""
    from echodeploy.repository import model_file

    present = [spec for spec in specs if model_file(repository, spec.name).is_file()]
    if not present:  # the run itself reports the missing models
        return Choice(open_embedded("onnxruntime", repository), "backend: onnxruntime (no model to compare on)")
    installed = installed_embedded()
    key, saved = _choice_key(repository, present, installed), Path(repository) / CHOICE_FILE
    try:
        cached = json.loads(saved.read_text())
    except (OSError, ValueError):
        cached = {}
    if cached.get("key") == key:
        return Choice(open_embedded(cached["backend"], repository), cached["line"] + f" [as measured before: {saved}]")
    choice = choose_embedded({name: open_embedded(name, repository) for name in installed}, present)
    try:
        saved.write_text(json.dumps({"key": key, "backend": choice.backend.name, "line": choice.line}, indent=1))
    except OSError:
        pass  # a read-only repository: measure again next time
    return choice

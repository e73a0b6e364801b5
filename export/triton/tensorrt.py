"""TensorRT plans for the GPU target, built with `trtexec` (FP16, a profile over batch 1..max).

Plans only load in a server with the same TensorRT version, so the version is recorded in
the repository (`TENSORRT_VERSION`) and a build with another version is refused. Build
inside the NGC TensorRT container matching the tritonserver release (docker-compose.yml).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from echodeploy.errors import ExportError
from echodeploy.export.triton.repository import exported_models, render_config, trt_plan_config
from echodeploy.repository import model_file

VERSION_FILE = "TENSORRT_VERSION"


def tensorrt_version() -> str | None:
    """Version of the TensorRT that `trtexec` on PATH links against, or None without one."""
    trtexec = shutil.which("trtexec")
    if trtexec is None:
        return None
    try:
        import tensorrt

        return tensorrt.__version__
    except ImportError:
        output = subprocess.run([trtexec, "--help"], capture_output=True, text=True).stdout
        match = re.search(r"TensorRT v(\d+)", output)
        return match.group(1) if match else "unknown"


def require_tensorrt() -> str:
    version = tensorrt_version()
    if version is None:
        raise ExportError("TensorRT is not available here (no `trtexec` on PATH): build plans inside the "
                          "NGC TensorRT container, e.g. `docker compose --profile export run export`")
    return version


def build_plans(repository: Path, max_batch_size: int) -> list[str]:
    """Build a plan per exported model and switch its config to `tensorrt_plan`."""
    repository = Path(repository)
    version = require_tensorrt()
    recorded = repository / VERSION_FILE
    if recorded.exists() and recorded.read_text().strip() != version:
        raise ExportError(f"{repository} holds plans for TensorRT {recorded.read_text().strip()}, this is "
                          f"{version}: plans are version-bound; rebuild all of them in one TensorRT version")
    built = []
    for spec, metadata in exported_models(repository):
        def shapes(batch: int) -> str:
            return ",".join(f"{t.name}:{batch}x{'x'.join(map(str, t.shape))}" for t in spec.inputs)

        plan = model_file(repository, spec.name).with_name("model.plan")
        command = ["trtexec", f"--onnx={model_file(repository, spec.name)}", f"--saveEngine={plan}", "--fp16",
                   f"--minShapes={shapes(1)}", f"--optShapes={shapes(max_batch_size)}",
                   f"--maxShapes={shapes(max_batch_size)}"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise ExportError(f"trtexec failed for {spec.name}:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        config = trt_plan_config(spec, {**metadata, "echodeploy.tensorrt": version}, max_batch_size)
        (repository / spec.name / "config.pbtxt").write_text(render_config(config))
        built.append(spec.name)
    recorded.write_text(version + "\n")
    return built

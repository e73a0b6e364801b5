"""Layout of a model repository, shared by export, the embedded backend and Triton.

`<repository>/<model name>/<version>/model.onnx`, with `config.pbtxt` beside the
version folders for Triton. Generated files are git-ignored.
"""

from __future__ import annotations

from pathlib import Path

VERSION = "1"
MODEL_FILENAME = "model.onnx"
DEFAULT_REPOSITORY = Path("model_repository")
TRITON_TARGETS = ("cpu", "gpu", "openvino", "gpu-torch")  # the Triton configs export writes (TARGET file)


def model_file(repository: Path, name: str) -> Path:
    return Path(repository) / name / VERSION / MODEL_FILENAME

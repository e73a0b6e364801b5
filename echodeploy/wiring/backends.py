"""Open the backend a run's settings name: the one place that constructs a backend."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from echodeploy.backends.base import Backend
from echodeploy.errors import BackendError
from echodeploy.specs import ModelSpec
from echodeploy.wiring.settings import BackendSettings

log = logging.getLogger(__name__)


def open_backend(settings: BackendSettings, probe: list[ModelSpec] = (), say: Callable[[str], None] = print,
                 modules: dict | None = None) -> Backend:
    """The backend of `settings`. `auto` measures the installed embedded backends on the `probe`
    specs and says which it chose (`say`); `modules` (name -> (spec, served module)) hands the torch
    backend modules already built, instead of loading them by name (benchmarks)."""
    if settings.name == "auto":
        from echodeploy.backends.embedded import default_embedded

        choice = default_embedded(settings.repository, list(probe))
        say(choice.line)
        return choice.backend
    if settings.name == "onnxruntime":
        from echodeploy.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(settings.repository, providers=_onnxruntime_providers(settings.device))
    if settings.name == "openvino":
        from echodeploy.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(settings.repository, hint=settings.openvino_hint)
    if settings.name == "triton":
        from echodeploy.backends.triton import TritonBackend

        return TritonBackend(list(settings.urls), protocol=settings.protocol, max_in_flight=settings.max_in_flight,
                             retry_seconds=settings.retry_seconds)
    if settings.name == "torch":
        return _open_torch(settings, modules)
    raise BackendError(f"unknown backend {settings.name!r}")  # settings refuse it first


def _onnxruntime_providers(device: str) -> list[str] | None:
    """CUDA first for 'cuda' (ONNX Runtime falls back to the CPU, with a warning, where it has no CUDA),
    and for 'auto' where onnxruntime-gpu is installed; else the default (CPU)."""
    if device == "cpu":
        return None
    import onnxruntime

    if device.startswith("cuda") or "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return None


def _open_torch(settings: BackendSettings, modules: dict | None) -> Backend:
    from echodeploy.backends.torch import TorchBackend

    torch = settings.torch
    common = {"precision": torch.precision, "untrained": torch.weights_dir is None, "device": settings.device,
              "graph": torch.graph, "fixed_batch": torch.pad_batch, "channels_last": torch.channels_last}
    if modules is not None:
        return TorchBackend(modules, **common)
    from echodeploy.export.modules import checkpoint_loader

    return TorchBackend(loader=checkpoint_loader(torch.weights_dir, torch.seed, torch.bn_mode, torch.precision),
                        **common)


def for_workers(settings: BackendSettings, opened: Backend) -> BackendSettings:
    """Settings that open the same backend elsewhere (Ray actors): `auto` becomes the backend it chose."""
    return dataclasses.replace(settings, name=opened.name) if settings.name == "auto" else settings

"""Triton model repository: one `config.pbtxt` per exported model plus per-view ensembles.

Four targets with the same model names, tensors and metadata, so a client cannot tell them
apart: `gpu` (NGC tritonserver: ONNX Runtime backend with the TensorRT accelerator, FP16,
engine and timing caches), `cpu` (portable: Python-backend models running the same
ONNX files on ONNX Runtime), `openvino` (CPU nodes with the NGC tritonserver: its OpenVINO
backend runs the same ONNX files) and `gpu-torch` (any tritonserver with the Python backend,
such as nvidia-pytriton's: Python-backend models running the same weights in PyTorch on the
GPU, or the CPU where there is none; tensors through DLPack). Configs are built as dicts and parsed through Triton's own
`ModelConfig` protobuf, so a schema error fails here, not in the server.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Literal

import torch
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from echodeploy.errors import ExportError
from echodeploy.export.onnx_export import read_metadata
from echodeploy.repository import MODEL_FILENAME, TRITON_TARGETS, VERSION
from echodeploy.specs import ModelSpec, cmr_model, mmode_model, view_ensemble_name

Target = Literal["cpu", "gpu", "openvino", "gpu-torch"]
ADAPTER = Path(__file__).with_name("onnx_model.py")
TORCH_ADAPTER = Path(__file__).with_name("torch_model.py")
NETWORKS = "echodeploy_networks"  # the torch-only modules the gpu-torch adapter imports
NETWORK_SOURCES = ("r2plus1d.py", "cardionet.py", "quicknat.py", "served.py")
TORCH_WEIGHTS = "model.pt"
TRT_CACHE = "/trt_cache"  # persistent volume in docker-compose.yml
TRITON_TYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text with Triton's schema (raises on any unknown field)."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def render_config(config: dict) -> str:
    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return text_format.MessageToString(message)


def _tensors(tensors) -> list[dict]:
    return [{"name": t.name, "data_type": TRITON_TYPES[t.dtype], "dims": list(t.shape)} for t in tensors]


def _parameters(metadata: dict[str, str]) -> dict:
    return {key: {"string_value": value} for key, value in metadata.items()}


def _warmup(spec: ModelSpec) -> list[dict]:
    inputs = {t.name: {"data_type": TRITON_TYPES[t.dtype], "dims": list(t.shape), "zero_data": True}
              for t in spec.inputs}
    return [{"name": "zero_batch", "batch_size": 1, "inputs": inputs}]


def model_config(spec: ModelSpec, metadata: dict[str, str], target: Target, max_batch_size: int,
                 instances: int = 1) -> dict:
    config = {
        "name": spec.name,
        "max_batch_size": max_batch_size,
        "input": _tensors(spec.inputs),
        "output": _tensors(spec.outputs),
        "version_policy": {"latest": {"num_versions": 1}},
        "dynamic_batching": {"preferred_batch_size": [max_batch_size], "max_queue_delay_microseconds": 5000},
        "model_warmup": _warmup(spec),
        "parameters": _parameters(metadata),
    }
    if target == "cpu":
        config["backend"] = "python"
        config["instance_group"] = [{"kind": "KIND_CPU", "count": instances}]
        return config
    if target == "gpu-torch":
        config["backend"] = "python"
        # KIND_MODEL: the adapter picks the device (the GPU, or the CPU when there is none)
        config["instance_group"] = [{"kind": "KIND_MODEL", "count": instances}]
        config["parameters"].update(_parameters({"echodeploy.precision": "fp32", "torch_precision": "fp32",
                                                 "FORCE_CPU_ONLY_INPUT_TENSORS": "no"}))
        return config
    if target == "openvino":
        # one stream per instance: the dynamic batcher fills the batch, instances add parallelism
        config["backend"] = "openvino"
        config["default_model_filename"] = MODEL_FILENAME
        config["instance_group"] = [{"kind": "KIND_CPU", "count": instances}]
        config["parameters"].update(_parameters({"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1"}))
        return config
    def profile(batch: int) -> str:
        return ",".join(f"{t.name}:{batch}x{'x'.join(map(str, t.shape))}" for t in spec.inputs)

    trt = {
        "precision_mode": "INT8" if metadata.get("echodeploy.precision") == "int8" else "FP16",  # QDQ: explicit
        "max_workspace_size_bytes": str(8 << 30),
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": f"{TRT_CACHE}/{spec.name}",
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": TRT_CACHE,
        "trt_profile_min_shapes": profile(1),
        "trt_profile_opt_shapes": profile(max_batch_size),
        "trt_profile_max_shapes": profile(max_batch_size),
    }
    config["backend"] = "onnxruntime"
    config["instance_group"] = [{"kind": "KIND_GPU", "count": instances}]
    config["optimization"] = {"execution_accelerators": {
        "gpu_execution_accelerator": [{"name": "tensorrt", "parameters": trt}]}}
    return config


def trt_plan_config(spec: ModelSpec, metadata: dict[str, str], max_batch_size: int, instances: int = 1) -> dict:
    """The GPU target's config with a TensorRT plan instead of the ONNX Runtime backend."""
    config = model_config(spec, metadata, "gpu", max_batch_size, instances)
    del config["backend"], config["optimization"]
    config["platform"] = "tensorrt_plan"
    return config


def ensemble_config(name: str, specs: list[ModelSpec], max_batch_size: int, metadata: dict[str, str]) -> dict:
    """One uint8 clip batch in, every task's output out (fan-out, one upload)."""
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": max_batch_size,
        "input": _tensors(specs[0].inputs),
        "output": [t for s in specs for t in _tensors(s.outputs)],
        "ensemble_scheduling": {"step": [
            {"model_name": s.name, "model_version": -1,
             "input_map": {t.name: t.name for t in s.inputs},
             "output_map": {t.name: t.name for t in s.outputs}}
            for s in specs
        ]},
        "parameters": _parameters(metadata),
    }


def exported_models(repository: Path) -> list[tuple[ModelSpec, dict[str, str]]]:
    """(spec, metadata) of every echodeploy ONNX model in the repository."""
    found = []
    for path in sorted(Path(repository).glob(f"*/{VERSION}/{MODEL_FILENAME}")):
        metadata = read_metadata(path)
        if metadata.get("echodeploy.model") != path.parent.parent.name:
            continue
        if metadata.get("echodeploy.family") == "mmode":
            spec = mmode_model(metadata["echodeploy.model"], metadata["echodeploy.bn_mode"])
        else:
            spec = cmr_model(metadata["echodeploy.view"], metadata["echodeploy.task"])
        found.append((spec, metadata))
    return found


def write_torch_files(folder: Path, spec: ModelSpec, metadata: dict[str, str], weights_dir: Path | None,
                      seed: int) -> None:
    """The gpu-torch model folder: adapter, network code and the served module's state dict,
    from the same weights as the ONNX file beside it (refused when they differ)."""
    from echodeploy.export.modules import served_module
    from echodeploy.export.onnx_export import export_metadata

    module, checkpoint = served_module(spec, weights_dir, seed)
    declared = {k: v for k, v in metadata.items() if k != "echodeploy.agreement"}
    if export_metadata(spec, checkpoint, seed, metadata.get("echodeploy.precision", "fp32")) != declared:
        source = f"--weights-dir {weights_dir}" if weights_dir else f"--untrained --seed {seed}"
        raise ExportError(f"{spec.name}: the exported ONNX model was not made from {source}; export it again "
                          "with the same weights options")
    shutil.copyfile(TORCH_ADAPTER, folder / "model.py")
    networks = folder / NETWORKS
    networks.mkdir(exist_ok=True)
    (networks / "__init__.py").write_text("")
    for name in NETWORK_SOURCES:
        shutil.copyfile(Path(__file__).parents[1] / name, networks / name)
    torch.save(module.state_dict(), folder / TORCH_WEIGHTS)


def write_triton_repository(repository: Path, target: Target, max_batch_size: int = 8,
                            instances: int = 1, weights_dir: Path | None = None, seed: int = 0) -> list[str]:
    """Write configs (and the adapters) for every exported model and view ensemble.

    `gpu-torch` also writes each model's torch weights, rebuilt from `weights_dir` (or the
    seed of untrained models) and checked against the ONNX file's metadata.
    """
    repository = Path(repository)
    if target not in TRITON_TARGETS:
        raise ExportError(f"unknown Triton target {target!r}; known: {', '.join(TRITON_TARGETS)}")
    models = exported_models(repository)
    if not models:
        raise ExportError(f"{repository}: no exported models; run `echodeploy export` first")
    written = []
    by_view = defaultdict(list)
    for spec, metadata in models:
        folder = repository / spec.name
        (folder / "config.pbtxt").write_text(
            render_config(model_config(spec, metadata, target, max_batch_size, instances)))
        version = folder / VERSION
        adapter = version / "model.py"
        adapter.unlink(missing_ok=True)
        (version / TORCH_WEIGHTS).unlink(missing_ok=True)
        shutil.rmtree(version / NETWORKS, ignore_errors=True)
        if target == "cpu":
            shutil.copyfile(ADAPTER, adapter)
        elif target == "gpu-torch":
            write_torch_files(version, spec, metadata, weights_dir, seed)
        if spec.family == "cmr":
            by_view[spec.view].append((spec, metadata))
        written.append(spec.name)
    for view, members in sorted(by_view.items()):
        name = view_ensemble_name(view)
        specs = [spec for spec, _ in members]
        metadata = {
            "echodeploy.model": name,
            "echodeploy.view": view,
            "echodeploy.tasks": ",".join(s.task for s in specs),
            "echodeploy.untrained": "true" if any(m["echodeploy.untrained"] == "true" for _, m in members)
            else "false",
            "echodeploy.clip": members[0][1]["echodeploy.clip"],
        }
        folder = repository / name
        (folder / VERSION).mkdir(parents=True, exist_ok=True)  # ensembles need a version folder too
        (folder / "config.pbtxt").write_text(render_config(ensemble_config(name, specs, max_batch_size, metadata)))
        written.append(name)
    (repository / "TARGET").write_text(target + "\n")
    return written

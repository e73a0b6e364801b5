"""ONNX export with validation built in: a file that fails parity is never left behind.

The exported graph is the served module (`export.served`): it takes the client's uint8 clip
batch and does the server-side normalisation itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from echodeploy.errors import ExportError
from echodeploy.export.checkpoints import sha256
from echodeploy.specs import PARITY_ATOL, PROFILE_WEIGHTS, ModelSpec

OPSET = 17
VALIDATION_BATCHES = (1, 3)


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: dict[str, float]
    precision: str = "fp32"
    agreement: dict | None = None  # reduced precision vs fp32 (see export.precision)


def _sample_inputs(spec: ModelSpec, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random uint8 clips or float grey windows; all-ones profile weights (per-column pixel counts)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for t in spec.inputs:
        shape = (batch, *t.shape)
        if t.name == PROFILE_WEIGHTS:
            feeds[t.name] = np.ones(shape, t.dtype)
        elif t.dtype == "uint8":
            feeds[t.name] = rng.integers(0, 256, size=shape).astype(t.dtype)
        else:
            feeds[t.name] = rng.uniform(0, 255, size=shape).astype(t.dtype)
    return feeds


def validate(path: Path, module: nn.Module, spec: ModelSpec, atol: float = PARITY_ATOL) -> dict[str, float]:
    """Check names, dynamic batch, shapes and values of an ONNX file against its torch module.

    Collects every failure and raises once; returns the max abs difference per output.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    failures = []
    got_in = [i.name for i in session.get_inputs()]
    got_out = [o.name for o in session.get_outputs()]
    want_in = [t.name for t in spec.inputs]
    want_out = [t.name for t in spec.outputs]
    if got_in != want_in or got_out != want_out:
        raise ExportError(f"{path}: tensors {got_in}->{got_out}, expected {want_in}->{want_out}")
    for i in session.get_inputs():
        if isinstance(i.shape[0], int):
            failures.append(f"input {i.name} has a fixed batch dimension {i.shape[0]}")
    max_diff = dict.fromkeys(want_out, 0.0)
    for batch in VALIDATION_BATCHES:
        feeds = _sample_inputs(spec, batch, seed=batch)
        onnx_out = session.run(want_out, feeds)
        with torch.no_grad():
            torch_out = module(*(torch.from_numpy(feeds[n]) for n in want_in))
        torch_out = torch_out if isinstance(torch_out, tuple) else (torch_out,)
        for tensor, got, ref in zip(spec.outputs, onnx_out, torch_out):
            ref = ref.numpy()
            if got.shape != (batch, *tensor.shape) or ref.shape != got.shape:
                failures.append(f"{tensor.name} at batch {batch}: shape {got.shape}, torch {ref.shape}")
                continue
            max_diff[tensor.name] = max(max_diff[tensor.name], float(np.abs(got - ref).max()))
    for name, diff in max_diff.items():
        if not diff <= atol:
            failures.append(f"{name}: max abs difference {diff:.3g} > {atol:g}")
    if failures:
        raise ExportError(f"{path} failed validation: " + "; ".join(failures))
    return max_diff


def export_onnx(module: nn.Module, spec: ModelSpec, path: Path, metadata: dict[str, str],
                atol: float = PARITY_ATOL) -> ExportReport:
    """Write `module` as ONNX at `path` (dynamic batch, `spec` tensor names), then validate it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".onnx.tmp")
    module = module.eval()
    example = tuple(torch.from_numpy(v) for v in _sample_inputs(spec, 1, seed=0).values())
    dynamic_axes = {t.name: {0: "batch", **{d + 1: f"{t.name}_{d}" for d in t.dynamic_dims}}
                    for t in (*spec.inputs, *spec.outputs)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(tmp),
            input_names=[t.name for t in spec.inputs],
            output_names=[t.name for t in spec.outputs],
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(str(tmp))
    prelu_to_leaky_relu(model)
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(tmp))
    try:
        diffs = validate(tmp, module, spec, atol)
    except ExportError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return ExportReport(path=path, max_abs_diff=diffs)


def prelu_to_leaky_relu(model: onnx.ModelProto) -> int:
    """Rewrite PRelu nodes with one constant slope as LeakyRelu(alpha): the same function, run by
    ONNX Runtime's vectorised activation kernel instead of a broadcasting PRelu (13% of QuickNAT's
    time, docs/BENCHMARKS.md). Returns how many were rewritten."""
    initializers = {i.name: i for i in model.graph.initializer}
    # the exporter shares one slope between a block's PRelus through Identity nodes
    aliases = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Identity"}
    rewritten = 0
    for node in model.graph.node:
        source = node.input[1] if node.op_type == "PRelu" else ""
        while source in aliases:
            source = aliases[source]
        slope = initializers.get(source)
        if slope is None or np.prod(slope.dims) != 1:
            continue
        alpha = float(onnx.numpy_helper.to_array(slope).reshape(-1)[0])
        node.op_type = "LeakyRelu"
        del node.input[1]
        node.attribute.append(onnx.helper.make_attribute("alpha", alpha))
        rewritten += 1
    used = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return rewritten


def read_metadata(path: Path) -> dict[str, str]:
    """Metadata of an exported file, without loading its weights."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def export_metadata(spec: ModelSpec, checkpoint: Path | None, seed: int, precision: str) -> dict[str, str]:
    """What an export declares: the spec, where the weights came from, the exporter, the precision."""
    return {
        **spec.metadata(),
        "echodeploy.checkpoint_sha256": sha256(checkpoint) if checkpoint else "",
        "echodeploy.random_seed": "" if checkpoint else str(seed),
        "echodeploy.untrained": "false" if checkpoint else "true",
        "echodeploy.exporter": f"torch-{torch.__version__}",
        "echodeploy.precision": precision,
    }


def is_current(path: Path, metadata: dict[str, str]) -> bool:
    """An export at `path` made from the same weights and settings (its agreement report aside)."""
    if not path.exists():
        return False
    found = read_metadata(path)
    found.pop("echodeploy.agreement", None)
    return found == metadata

"""Reduced-precision variants of an exported fp32 ONNX model, with their agreement report.

fp16: weights and arithmetic in float16, uint8/float32 inputs and outputs kept (GPU).
int8: ONNX Runtime static quantisation, QDQ format, per-channel int8 weights and uint8
      activations of the convolutions, ranges calibrated on example inputs (CPUs with
      VNNI, TensorRT explicit quantisation on GPUs).
bf16 has no ONNX Runtime convolution kernels; it runs as torch on the CPU (`bench`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from echodeploy.agreement import compare_outputs
from echodeploy.errors import ExportError
from echodeploy.export.calibration import Feed, calibration_feeds
from echodeploy.export.onnx_export import ExportReport, export_onnx
from echodeploy.specs import PARITY_ATOL, PROFILE_WEIGHTS, WINDOW, ModelSpec, model_spec

PRECISIONS = ("fp32", "fp16", "int8", "bf16")
ONNX_PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_ITEMS = 16
AGREEMENT_ITEMS = 8
AGREEMENT_SEED = 1000  # generated agreement inputs never overlap the calibration ones


def check_precision(precision: str) -> None:
    if precision == "bf16":
        raise ExportError("bf16: ONNX Runtime has no bfloat16 convolution kernels, so there is no bf16 "
                          "ONNX model to serve; measure torch bf16 with `echodeploy bench --backends torch-bf16`")
    if precision not in ONNX_PRECISIONS:
        raise ExportError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


@dataclass(frozen=True)
class Precisions:
    """A precision per model: `default` for every model not named in `models`."""

    default: str = "fp32"
    models: tuple[tuple[str, str], ...] = ()

    def of(self, model: str) -> str:
        return dict(self.models).get(model, self.default)


def parse_precisions(text: str) -> Precisions:
    """`--precision`: `int8` (every model), `mmode_lvid=int8,mmode_quality=fp32` (per model), or both
    (`fp32,mmode_lvid=int8`: the plain one is the default)."""
    default, models = "fp32", {}
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        name, _, value = entry.rpartition("=")
        check_precision(value)
        if name:
            models[model_spec(name.strip().lower()).name] = value
        else:
            default = value
    return Precisions(default, tuple(sorted(models.items())))


def precision_of(precision: str | Precisions, model: str) -> str:
    """The precision one model is exported at."""
    return precision.of(model) if isinstance(precision, Precisions) else precision


class _Feeds:
    """ONNX Runtime's calibration reader protocol over a list of feeds."""

    def __init__(self, feeds: list[Feed]):
        self._feeds = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._feeds, None)


def convert(fp32: Path, out: Path, precision: str, calibration: list[Feed]) -> None:
    """Write the `precision` variant of the fp32 model at `fp32` to `out` (metadata kept)."""
    check_precision(precision)
    model = onnx.load(str(fp32))
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(model, keep_io_types=True), str(out))
    elif precision == "int8":
        from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

        with tempfile.TemporaryDirectory() as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(str(prepared), str(out), _Feeds(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"])
        quantized = onnx.load(str(out))
        onnx.helper.set_model_props(quantized, {p.key: p.value for p in model.metadata_props})
        onnx.save(quantized, str(out))
    else:
        onnx.save(model, str(out))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def comparable_feeds(spec: ModelSpec, feeds: list[Feed]) -> list[Feed]:
    """The segmentation model returns the whole mask when its profile weights are the identity."""
    if spec.kind != "segmentation":
        return feeds
    identity = np.eye(spec.inputs[0].shape[-1], dtype=np.float32)
    return [{**feed, PROFILE_WEIGHTS: np.repeat(identity[None], len(feed[WINDOW]), axis=0)} for feed in feeds]


def comparable_output(spec: ModelSpec, output: np.ndarray) -> np.ndarray:
    return output > 0.5 if spec.kind == "segmentation" else output


def agreement(spec: ModelSpec, fp32: Path, variant: Path, feeds: list[Feed]) -> dict:
    """Compare the two models on the same feeds (masks for segmentation, values otherwise)."""
    feeds = comparable_feeds(spec, feeds)
    outputs = []
    for path in (fp32, variant):
        session = _session(path)
        outputs.append(np.concatenate([session.run(None, feed)[0] for feed in feeds]))
    return compare_outputs(spec.kind, *(comparable_output(spec, o) for o in outputs))


def write_variant(spec: ModelSpec, fp32: Path, path: Path, precision: str,
                  calibration: list[Feed], checks: list[Feed]) -> dict:
    """Convert `fp32` into `path`, with the agreement report in the model's metadata; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{precision}.tmp")
    try:
        convert(fp32, tmp, precision, calibration)
        report = agreement(spec, fp32, tmp, checks)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            "echodeploy.agreement": json.dumps(report, sort_keys=True)})
        onnx.save(model, str(tmp))
    except Exception:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return report


def export_at_precision(module, spec: ModelSpec, path: Path, metadata: dict[str, str], precision: str = "fp32",
                        calibration: Path | None = None, atol: float = PARITY_ATOL) -> ExportReport:
    """Export `module` at fp32 (parity-checked against torch), then convert it to `precision`.

    Calibration and agreement inputs come from the files under `calibration` (the first
    two thirds calibrate, the rest check) or are generated, with disjoint seeds.
    """
    check_precision(precision)
    if precision == "fp32":
        return export_onnx(module, spec, path, metadata, atol)
    if calibration is not None:
        feeds = calibration_feeds(spec, CALIBRATION_ITEMS + AGREEMENT_ITEMS, calibration)
        split = max(1, len(feeds) * 2 // 3)
        calibrate, checks = feeds[:split], feeds[split:] or feeds
    else:
        calibrate = calibration_feeds(spec, CALIBRATION_ITEMS)
        checks = calibration_feeds(spec, AGREEMENT_ITEMS, seed=AGREEMENT_SEED)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        parity = export_onnx(module, spec, fp32, metadata, atol)
        report = write_variant(spec, fp32, path, precision, calibrate, checks)
    return replace(parity, path=path, precision=precision, agreement=report)

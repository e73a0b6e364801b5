"""`echodeploy bench`: how fast each way of running the models is, how close to the
hardware's limit, and what reduced precision gives up.

Measurement follows perf_analyzer: warm-up, then measurement windows repeated until the
last three agree within `stability` (throughput and mean latency), at most `max_windows`;
throughput and latency percentiles come from those three windows. Every backend goes
through the same `Backend.infer` interface on the same inputs, in one run.
"""

from __future__ import annotations

import json
import platform
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echodeploy.agreement import auc_change, compare_columns, compare_outputs
from echodeploy.errors import EchodeployError
from echodeploy.specs import MMODE_LVID, MMODE_QUALITY, ModelSpec, model_spec, view_ensemble_name
from echodeploy.wiring import BackendSettings, TorchSettings, open_backend

BACKENDS = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8", "onnxruntime-fp16", "openvino", "openvino-int8",
            "triton")
DEFAULT_BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8", "torch-bf16")
REFERENCE = "onnxruntime"  # fp32: what reduced precisions are compared with
SEED_BATCH = {"cmr": 10, "mmode": 1}  # cardiac_mri's DataLoader batch; Echo2Pheno fed one window at a time
PRECISION_OF = {"onnxruntime-int8": "int8", "onnxruntime-fp16": "fp16", "openvino-int8": "int8", "torch-bf16": "bf16"}
STAT_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")
PERCENTILES = (50, 90, 95, 99)
AGREEMENT_ITEMS = 16
AGREEMENT_SEED = 2000


@dataclass
class BenchConfig:
    models: tuple[str, ...] = ("cmr_a4c_scar",)
    backends: tuple[str, ...] = DEFAULT_BACKENDS
    batch_sizes: tuple[int, ...] = (1, 4)
    concurrency: tuple[int, ...] = (1, 2)
    duration_s: float | None = 5.0  # per measurement window; or
    requests: int | None = None  # requests per measurement window (at least one per client)
    modes: tuple[str, ...] = ("model", "e2e")
    e2e_items: int = 8
    stability: float = 0.10
    max_windows: int = 6
    weights_dir: Path | None = None
    calibration: Path | None = None
    data: Path | None = None  # files for end-to-end runs (default: generated)
    urls: list[str] = field(default_factory=list)  # running tritonservers (default: start one)
    server_env: Path | None = None
    seed: int = 0


# --- measurement ----------------------------------------------------------------------

def _best_seconds(run, repeats: int) -> float:
    run()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def _ort_matmul(n: int):
    """A one-node ONNX Runtime MatMul session (MLAS, the kernels ONNX Runtime's convolutions use)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    square = [n, n]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul",
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, square) for x in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, square)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=onnx.IR_VERSION_2023_5_5)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {x: np.random.default_rng(0).random(square, np.float32) for x in "ab"}
    return lambda: session.run(None, feeds)


def _openvino_matmul(n: int):
    """An OpenVINO MatMul compiled for the CPU in fp32 (oneDNN), or None without the extra."""
    from importlib.util import find_spec

    if not find_spec("openvino"):
        return None
    import openvino as ov
    from openvino import opset13 as ops

    a, b = (ops.parameter([n, n], np.float32) for _ in range(2))
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(a, b, False, False)], [a, b]), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    feeds = [np.random.default_rng(0).random((n, n), np.float32) for _ in range(2)]
    return lambda: request.infer(feeds)


def matmul_peak_gflops(dtype: str = "float32", sizes: tuple[int, ...] = (2048, 4096), repeats: int = 5,
                       device: str = "cpu") -> float:
    """The best square matmul rate in GFLOP/s over `sizes` on `device`: torch's, and for float32
    on the CPU also ONNX Runtime's and OpenVINO's when installed (whichever library is faster here
    sets the peak)."""
    import torch

    best = 0.0
    for n in sizes:
        a, b = (torch.randn(n, n, device=device).to(getattr(torch, dtype)) for _ in range(2))
        if device == "cpu":
            seconds = _best_seconds(lambda: torch.mm(a, b), repeats)
            if dtype == "float32":
                seconds = min(seconds, _best_seconds(_ort_matmul(n), repeats))
                openvino = _openvino_matmul(n)
                if openvino:
                    seconds = min(seconds, _best_seconds(openvino, repeats))
        else:  # ten products per timing, so that launch and synchronisation do not count
            seconds = _best_seconds(lambda: [torch.mm(a, b) for _ in range(10)] and torch.cuda.synchronize(),
                                    repeats) / 10
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def _window(infer, concurrency: int, duration_s: float | None, requests: int | None) -> tuple[float, list[float]]:
    """(wall seconds, latencies) of one window: `concurrency` clients, back to back."""
    latencies: list[float] = []
    lock = threading.Lock()
    sent = [0]
    requests = max(requests, concurrency) if requests else None  # every client sends at least one
    start = time.perf_counter()
    deadline = start + duration_s if duration_s else None

    def client():
        while True:
            with lock:
                if (deadline and time.perf_counter() >= deadline) or (requests and sent[0] >= requests):
                    return
                sent[0] += 1
            began = time.perf_counter()
            infer()
            with lock:
                latencies.append(time.perf_counter() - began)

    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(client) for _ in range(concurrency)]:
            future.result()
    return time.perf_counter() - start, latencies


def _stable(windows: list[dict], stability: float) -> bool:
    for key in ("throughput", "avg_ms"):
        values = np.array([w[key] for w in windows])
        if np.any(np.abs(values - values.mean()) > stability * values.mean()):
            return False
    return True


def measure(infer, items_per_request: int, concurrency: int, duration_s: float | None = 5.0,
            requests: int | None = None, stability: float = 0.10, max_windows: int = 6) -> dict:
    """Throughput (items/s) and latency percentiles (ms) of `infer` at one load point."""
    for _ in range(concurrency):  # warm-up: first runs allocate and tune
        infer()
    windows, all_latencies = [], []
    while len(windows) < max(3, max_windows):
        wall, latencies = _window(infer, concurrency, duration_s, requests)
        windows.append({"throughput": len(latencies) * items_per_request / wall,
                        "avg_ms": 1000 * float(np.mean(latencies))})
        all_latencies.append(latencies)
        if len(windows) >= 3 and _stable(windows[-3:], stability):
            break
    kept = np.concatenate(all_latencies[-3:]) * 1000
    return {
        "throughput": float(np.mean([w["throughput"] for w in windows[-3:]])),
        "avg_ms": float(kept.mean()),
        **{f"p{q}_ms": float(np.percentile(kept, q)) for q in PERCENTILES},
        "windows": len(windows),
        "stable": _stable(windows[-3:], stability),
        "requests": int(len(kept)),
        "latencies_ms": [round(float(v), 3) for v in kept],
    }


def server_times(backend, models: list[str]) -> dict[str, dict[str, tuple[int, int]]]:
    """Triton's cumulative (count, ns) per model and statistics field."""
    times = {}
    for stats in backend.server_statistics():
        for model in stats["model_stats"]:
            if model["name"] in models:
                stats_of = model["inference_stats"]
                times[model["name"]] = {f: (int(stats_of.get(f, {}).get("count", 0)),
                                            int(stats_of.get(f, {}).get("ns", 0))) for f in STAT_FIELDS}
    return times


def server_deltas(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Mean milliseconds per request of each statistics field between two snapshots."""
    return {model: {f"{field}_ms": (after[model][field][1] - before[model][field][1])
                    / max(after[model][field][0] - before[model][field][0], 1) / 1e6 for field in STAT_FIELDS}
            for model in after if model in before}


# --- models and backends --------------------------------------------------------------

def torch_module(spec: ModelSpec, weights_dir: Path | None, seed: int):
    """The served torch module of `spec` from the user's checkpoints, or seeded weights."""
    from echodeploy.export.modules import served_module

    return served_module(spec, weights_dir, seed)[0]


def export_repository(repository: Path, specs: list[ModelSpec], precision: str, config: BenchConfig) -> None:
    """ONNX models of `specs` at `precision` (kept between runs while weights and settings match)."""
    from echodeploy.export.cmr import export_cmr_models
    from echodeploy.export.mmode import export_mmode_models

    for spec in specs:
        if spec.family == "cmr":
            export_cmr_models(repository, (spec.view,), (spec.task,), config.weights_dir, config.seed,
                              precision=precision, calibration=config.calibration)
    if any(spec.family == "mmode" for spec in specs):
        export_mmode_models(repository, config.weights_dir, "seed", config.seed, precision=precision,
                            calibration=config.calibration)


@dataclass
class Served:
    """One backend under test, with the model name and outputs to ask it for each spec."""

    name: str
    backend: object
    batch_sizes: tuple[int, ...]
    concurrency: tuple[int, ...]

    def target(self, spec: ModelSpec) -> str:
        if self.name == "triton" and spec.family == "cmr":
            return view_ensemble_name(spec.view)  # the ensemble clients use
        return spec.name


def _open_backends(config: BenchConfig, specs: list[ModelSpec], work: Path, stack) -> list[Served]:
    needed = set(config.backends) | ({REFERENCE} if set(config.backends) & set(PRECISION_OF) else set())
    modules = {}
    if needed & {"torch", "torch-bf16"}:
        modules = {spec.name: (spec, torch_module(spec, config.weights_dir, config.seed)) for spec in specs}
    served = []
    for name in [b for b in BACKENDS if b in needed]:
        precision = PRECISION_OF.get(name, "fp32")
        if name.startswith("torch"):
            torch = TorchSettings(weights_dir=config.weights_dir, seed=config.seed, precision=precision)
            backend = open_backend(BackendSettings(name="torch", torch=torch), modules=modules)
        elif name.startswith("onnxruntime"):
            repository = work / "models" / precision
            export_repository(repository, specs, precision, config)
            backend = open_backend(BackendSettings(name="onnxruntime", repository=repository,
                                                   device="cuda" if precision == "fp16" else "cpu"))
        elif name.startswith("openvino"):
            repository = work / "models" / precision
            export_repository(repository, specs, precision, config)
            # batches or several clients: split over streams (throughput hint); else all cores on one item
            several = max(config.concurrency) > 1 or max(config.batch_sizes) > 1
            backend = open_backend(BackendSettings(name="openvino", repository=repository,
                                                   openvino_hint="throughput" if several else "latency"))
        else:
            backend = stack.enter_context(_triton(config, specs, work))
        seed_only = name == "torch"
        served.append(Served(name, backend, batch_sizes=() if seed_only else config.batch_sizes,
                             concurrency=(1,) if seed_only else config.concurrency))
    return served


class _triton:
    """A TritonBackend on the given servers, or on a tritonserver started here on 127.0.0.1."""

    def __init__(self, config: BenchConfig, specs: list[ModelSpec], work: Path):
        self.config, self.specs, self.work, self.server = config, specs, work, None

    def __enter__(self):
        urls = self.config.urls
        if not urls:
            from echodeploy.client.tritonserver import DEFAULT_SERVER_ENV, TritonServer, ensure_server_env
            from echodeploy.export.triton.repository import write_triton_repository

            repository = self.work / "models" / "fp32"
            export_repository(repository, self.specs, "fp32", self.config)
            largest = max(self.config.batch_sizes + tuple(SEED_BATCH[s.family] for s in self.specs))
            write_triton_repository(repository, "cpu", max_batch_size=largest)
            env = ensure_server_env(self.config.server_env or DEFAULT_SERVER_ENV)
            self.server = TritonServer(repository, env=env).start()
            urls = [self.server.grpc_url]
        self.backend = open_backend(BackendSettings(name="triton", urls=tuple(urls),
                                                    max_in_flight=max(self.config.concurrency)))
        return self.backend

    def __exit__(self, *exc):
        self.backend.close()
        if self.server:
            self.server.stop()


# --- the runs -------------------------------------------------------------------------

def _request(spec: ModelSpec, batch: int, seed: int) -> dict[str, np.ndarray]:
    from echodeploy.export.calibration import calibration_feeds

    feeds = calibration_feeds(spec, batch, seed=seed)
    return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}


def peak_of(backend: str, peaks: dict) -> tuple[str, float]:
    """The matmul peak a backend's arithmetic is held to: bf16 for torch-bf16, else fp32 (int8 included)."""
    kind = "bf16" if backend == "torch-bf16" else "fp32"
    return kind, peaks[f"{kind}_matmul_gflops"]


def model_precision(backend, spec: ModelSpec) -> str:
    """The precision the backend's model declares (`echodeploy.precision`, set per model by export)."""
    return backend.model_info(spec.name).metadata.get("echodeploy.precision", "")


def model_points(config: BenchConfig, specs: list[ModelSpec], served: list[Served], peaks: dict,
                 progress=print) -> list[dict]:
    points = []
    for spec in specs:
        requests = {}
        for s in served:
            sizes = s.batch_sizes or (SEED_BATCH[spec.family],)
            outputs = [spec.outputs[0].name]
            for batch in sizes:
                feeds = requests.setdefault(batch, _request(spec, batch, config.seed))
                for concurrency in s.concurrency:
                    target = s.target(spec)
                    watched = [target, spec.name] if s.name == "triton" else []
                    before = server_times(s.backend, watched) if watched else {}
                    result = measure(lambda: s.backend.infer(target, feeds, outputs), batch, concurrency,
                                     config.duration_s, config.requests, config.stability, config.max_windows)
                    if watched:
                        time.sleep(0.5)  # Triton updates statistics just after responding
                        result["server"] = server_deltas(before, server_times(s.backend, watched))
                    peak_name, peak = peak_of(s.name, peaks)
                    result.update(model=spec.name, backend=s.name, precision=model_precision(s.backend, spec),
                                  batch=batch, concurrency=concurrency,
                                  roofline=result["throughput"] * spec.flops_per_item / 1e9 / peak,
                                  roofline_peak=peak_name)
                    points.append(result)
                    progress(f"{spec.name:14s} {s.name:17s} batch {batch:2d} x{concurrency}: "
                             f"{result['throughput']:7.2f} items/s, p99 {result['p99_ms']:8.1f} ms"
                             f"{'' if result['stable'] else ' (unstable)'}")
    return points


def model_agreement(specs: list[ModelSpec], served: list[Served], seed: int) -> list[dict]:
    """Each reduced-precision backend against fp32 ONNX Runtime on the same held-out inputs."""
    from echodeploy.export.precision import comparable_feeds, comparable_output

    reference = next(s for s in served if s.name == REFERENCE)
    rows = []
    for spec in specs:
        feeds = _request(spec, AGREEMENT_ITEMS, seed + AGREEMENT_SEED)
        feeds = comparable_feeds(spec, [feeds])[0]
        output = spec.outputs[0].name

        def run(s: Served, size: int = 4) -> np.ndarray:
            parts = [s.backend.infer(spec.name, {k: v[i:i + size] for k, v in feeds.items()}, [output])[output]
                     for i in range(0, AGREEMENT_ITEMS, size)]
            return comparable_output(spec, np.concatenate(parts))

        expected = run(reference)
        for s in served:
            if s.name in PRECISION_OF:
                rows.append({"model": spec.name, "backend": s.name, "level": "model outputs",
                             **compare_outputs(spec.kind, expected, run(s))})
    return rows


def _e2e_inputs(family: str, config: BenchConfig, work: Path) -> Path:
    from echodeploy.samples import synthetic_echo, synthetic_mmode, write_avi, write_mmode_dicom

    if config.data:
        return Path(config.data)
    folder = work / "data" / family
    if family == "cmr":
        rows = []
        for i in range(config.e2e_items):
            write_avi(folder / f"v{i:03d}.avi", synthetic_echo(40, height=112, width=112, seed=config.seed + i))
            rows.append({"Study_Unique_ID": f"S{i // 2}", "Video_Unique_ID": f"v{i:03d}", "TARGET": i % 2})
        pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
        return folder / "manifest.csv"
    for i in range(config.e2e_items):
        trace, _ = synthetic_mmode(length=1800, heart_rate_bpm=420 + 20 * i, seed=config.seed + i)
        write_mmode_dicom(folder / f"mouse{i}.dcm", trace)
    return folder


def end_to_end(config: BenchConfig, specs: list[ModelSpec], served: list[Served], work: Path,
               peaks: dict, progress=print) -> tuple[list[dict], list[dict]]:
    """Files -> result tables for every backend; (timings, agreement of the tables with fp32)."""
    from echodeploy.client.runs.cmr import CmrOptions, run_cmr
    from echodeploy.client.runs.inputs import read_inputs
    from echodeploy.client.runs.mmode import MModeOptions, read_mmode_inputs, run_mmode

    timings, tables = [], {}
    families = sorted({s.family for s in specs})
    for family in families:
        source = _e2e_inputs(family, config, work)
        cmr_specs = [s for s in specs if s.family == "cmr"]
        cmr_specs = [s for s in cmr_specs if s.view == cmr_specs[0].view]  # one manifest, one view
        for s in served:
            out = work / "e2e" / family / s.name
            shutil.rmtree(out, ignore_errors=True)  # a fresh run, not a resumed one
            batch = SEED_BATCH[family] if s.name == "torch" else max(config.batch_sizes)
            start = time.perf_counter()
            if family == "cmr":
                spec = cmr_specs[0]
                inputs = read_inputs(source, spec.view)
                run_cmr(inputs, s.backend, out, CmrOptions(tasks=tuple(c.task for c in cmr_specs),
                                                           batch_size=batch, workers=0 if s.name == "torch" else 1))
                table, items = pd.read_csv(out / "predictions.csv"), len(inputs)
                flops = items * sum(c.flops_per_item for c in cmr_specs)
            else:
                inputs = read_mmode_inputs(source, 22.0)
                run_mmode(inputs, s.backend, out, MModeOptions(figures=False, batch_size=batch))
                table, items = pd.read_csv(out / "features_stats.csv"), len(inputs)
                flops = None
            seconds = time.perf_counter() - start
            ok = int((table["status"] == "ok").sum())
            peak_name, peak = peak_of(s.name, peaks)
            timings.append({"family": family, "backend": s.name, "items": items, "ok": ok, "batch": batch,
                            "seconds": seconds, "items_per_s": items / seconds, "roofline_peak": peak_name,
                            "roofline": flops / seconds / 1e9 / peak if flops else None})
            tables[(family, s.name)] = table
            progress(f"end to end {family:5s} {s.name:17s} {items} files in {seconds:6.1f} s")
    return timings, _table_agreement(tables, specs, served)


def _table_agreement(tables: dict, specs: list[ModelSpec], served: list[Served]) -> list[dict]:
    rows = []
    for (family, name), table in tables.items():
        if name not in PRECISION_OF:
            continue
        reference = tables[(family, REFERENCE)]
        if family == "cmr":
            columns = [c.outputs[0].name for c in specs if c.family == "cmr"]
            key = "Video_Unique_ID"
        else:
            columns = ["lvid_d_median_mm", "lvid_s_median_mm", "heart_rate_median_bpm"]
            key = "file"
        ok = [t[t["status"] == "ok"] for t in (reference, table)]
        row = {"model": family, "backend": name, "level": "result tables",
               **compare_columns(ok[0], ok[1], key, [c for c in columns if c in reference.columns])}
        if family == "cmr" and "TARGET" in reference.columns:
            joined = ok[0].merge(ok[1], on=key, suffixes=("", "_variant"))
            labels = joined["TARGET"].to_numpy()
            row["auc_change"] = {c: auc_change(labels, joined[c].to_numpy(), joined[f"{c}_variant"].to_numpy())
                                 for c in columns if joined[c].dtype.kind == "f"}
        rows.append(row)
    return rows


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    from importlib.metadata import PackageNotFoundError, version

    try:
        openvino = version("openvino")
    except PackageNotFoundError:
        openvino = ""
    return {"cpu": cpu, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "openvino": openvino,
            "platform": platform.platform()}


def run_bench(config: BenchConfig, out: Path, progress=print) -> dict:
    """Run every requested measurement; write bench.json, bench.md and plots into `out`."""
    from contextlib import ExitStack

    from echodeploy.benchmarks.report import write_report

    unknown = [b for b in config.backends if b not in BACKENDS]
    if unknown:
        raise EchodeployError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    if not config.duration_s and not config.requests:
        raise EchodeployError("give a window length: --duration SECONDS or --requests N")
    specs = [model_spec(name) for name in config.models]
    loaded = specs + [model_spec(name) for name in (MMODE_LVID, MMODE_QUALITY)  # M-mode files need both
                      if "e2e" in config.modes and any(s.family == "mmode" for s in specs)
                      and name not in config.models]
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    peaks = _matmul_peaks(progress, "before the points")
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(), "peaks": peaks,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
              "untrained": config.weights_dir is None, "points": [], "end_to_end": [], "agreement": []}
    with ExitStack() as stack:
        served = _open_backends(config, loaded, work, stack)
        if "model" in config.modes:
            result["points"] = model_points(config, specs, served, peaks, progress)
        if any(s.name in PRECISION_OF for s in served):
            result["agreement"] = model_agreement(specs, served, config.seed)
        if "e2e" in config.modes:
            timings, agreement = end_to_end(config, loaded, served, work, peaks, progress)
            result["end_to_end"] = timings
            result["agreement"] += agreement
    _hold_to_higher_peaks(result, _matmul_peaks(progress, "after the points"))
    (out / "bench.json").write_text(json.dumps(result, indent=1, default=float))
    write_report(result, out)
    return result


def _matmul_peaks(progress, when: str) -> dict:
    peaks = {"fp32_matmul_gflops": matmul_peak_gflops("float32"),
             "bf16_matmul_gflops": matmul_peak_gflops("bfloat16")}
    progress(f"matmul peak {when}: fp32 {peaks['fp32_matmul_gflops']:.0f} GFLOP/s, "
             f"bf16 {peaks['bf16_matmul_gflops']:.0f} GFLOP/s")
    return peaks


def _hold_to_higher_peaks(result: dict, after: dict) -> None:
    """Roofline fractions against the higher of the peaks measured before and after the points: a
    shared or throttled machine measures a low peak at times, which would inflate the fractions."""
    before = result["peaks"]
    peaks = {name: max(before[name], after[name]) for name in before}
    for point in result["points"] + result["end_to_end"]:
        if point.get("roofline") is not None:
            name = f"{point['roofline_peak']}_matmul_gflops"
            point["roofline"] *= before[name] / peaks[name]
    result["peaks"], result["peaks_measured"] = peaks, {"before": before, "after": after}

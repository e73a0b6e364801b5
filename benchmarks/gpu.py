"""`echodeploy gpu-bench` (`benchmarks/gpu.sh`): the torch GPU path measured, into one folder.

On one CUDA GPU (about 7 minutes on an H200, a time budget stops it before 8): the bf16
and fp32 matmul peaks; per model (R(2+1)D-18, QuickNAT, CardioNet) the seed's way (eager
fp32 at its batch size, NC(T)HW) and bf16 / fp16 channels-last, eager, with CUDA graphs and
with `torch.compile`, over batch 1..256: items/s and p50/p99 latency with numpy in and out
(pinned upload included) and with inputs resident on the GPU, the fraction of the bf16
roofline, the GPU memory peak; the agreement of each reduced variant with fp32; and end
to end, CMR files/s against the number of decode workers. On a CPU it runs a reduced form
(tiny sizes) and lists what it cannot produce there. Measurement is `bench.measure`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from echodeploy.benchmarks.bench import SEED_BATCH, BenchConfig, _e2e_inputs, _request, matmul_peak_gflops, measure
from echodeploy.errors import EchodeployError
from echodeploy.specs import MMODE_LVID, MMODE_QUALITY, ModelSpec, mmode_model, model_spec
from echodeploy.wiring import BackendSettings, TorchSettings, open_backend

GPU_MODELS = ("cmr_a4c_scar", MMODE_LVID, MMODE_QUALITY)
TARGET_ROOFLINE = 0.40  # R(2+1)D-18 at its best batch, of the measured bf16 peak
TARGET_SPEEDUP = 10.0  # bf16 over the seed's eager fp32 batch-10 path
NOT_ON_CPU = (
    "CUDA graphs and torch.compile variants (CUDA graphs need a GPU; compiling takes minutes on a CPU)",
    "fp16 (CPUs have no fast float16 arithmetic: not worth timing)",
    "GPU memory peaks and the pinned-memory upload",
    "batch sizes above the reduced ones, and inputs resident on a device (on a CPU they are the same as numpy in)",
    "the GPU targets: R(2+1)D-18 >= 40% of the bf16 peak, bf16 >= 10x the seed path, end to end limited only by decode",
)


@dataclass(frozen=True)
class Variant:
    precision: str
    graph: str = "eager"
    channels_last: bool = True

    @property
    def name(self) -> str:
        return f"{self.precision}-{'cl' if self.channels_last else 'nchw'}-{self.graph}"


SEED_VARIANT = Variant("fp32", "eager", channels_last=False)  # the seeds' way


@dataclass
class GpuBenchConfig:
    device: str = "cuda"
    models: tuple[str, ...] = GPU_MODELS
    variants: tuple[Variant, ...] = (Variant("bf16", "eager"), Variant("bf16", "cuda-graph"),
                                     Variant("fp16", "cuda-graph"), Variant("bf16", "compile"))
    batch_sizes: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "cmr": (1, 8, 32, 64, 128, 256), "mmode": (1, 8, 32, 64)})
    # compiling takes about a minute per shape (dynamic=False): R(2+1)D-18 only, where it may pay
    compile_batches: dict[str, tuple[int, ...]] = field(default_factory=lambda: {"cmr": (64, 256), "mmode": ()})
    seed_batch: dict[str, int] = field(default_factory=lambda: dict(SEED_BATCH))
    duration_s: float | None = 0.5
    requests: int | None = None
    max_windows: int = 3
    matmul_sizes: tuple[int, ...] = (4096, 8192)
    agreement_items: int = 16
    e2e_files: int = 256
    e2e_workers: tuple[int, ...] = (0, 1, 2, 4, 8, 12)
    e2e_batch: int = 64
    budget_s: float = 400.0  # points left when it is spent are listed as skipped (a compile may overrun it)
    weights_dir: Path | None = None
    seed: int = 0
    reduced: bool = False


def reduced_config(models: tuple[str, ...] = GPU_MODELS) -> GpuBenchConfig:
    """The CPU form: seed path and bf16 eager at batch 1, one request per window, 2 files end to end."""
    return GpuBenchConfig(device="cpu", models=models, variants=(Variant("bf16"),),
                          batch_sizes={"cmr": (1,), "mmode": (1,)}, compile_batches={"cmr": (), "mmode": ()},
                          seed_batch={"cmr": 1, "mmode": 1}, duration_s=None, requests=1, max_windows=3,
                          matmul_sizes=(1024,), agreement_items=2, e2e_files=2, e2e_workers=(0,), e2e_batch=2,
                          budget_s=300.0, reduced=True)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _feeds(spec: ModelSpec, batch: int, seed: int) -> dict[str, np.ndarray]:
    """`batch` items: up to 16 generated ones, repeated (speed does not depend on the values)."""
    base = _request(spec, min(batch, 16), seed)
    return {name: np.resize(value, (batch, *value.shape[1:])) for name, value in base.items()}


def _spec(name: str) -> ModelSpec:
    return mmode_model(name, "seed") if name in (MMODE_QUALITY, MMODE_LVID) else model_spec(name)


class _Clock:
    def __init__(self, budget_s: float):
        self.end = time.perf_counter() + budget_s

    @property
    def spent(self) -> bool:
        return time.perf_counter() >= self.end


def _point(config: GpuBenchConfig, spec: ModelSpec, module, variant: Variant, batch: int, peaks: dict,
           agreement: bool) -> dict:
    """One variant at one batch size: numpy in/out, resident (GPU), memory peak, roofline, and
    (`agreement`) the variant's agreement with fp32."""
    import torch

    cuda = config.device.startswith("cuda")
    backend = _torch_backend(config, spec, module, variant, batch if variant.graph != "eager" else 0,
                             variant.channels_last)
    point = {"model": spec.name, "variant": variant.name, "precision": variant.precision, "graph": variant.graph,
             "batch": batch}
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        feeds = _feeds(spec, batch, config.seed)
        output = [spec.outputs[0].name]
        started = time.perf_counter()
        backend.infer(spec.name, feeds, output)  # first call: capture / compile, outside the measurement
        point["first_call_s"] = time.perf_counter() - started
        host = measure(lambda: backend.infer(spec.name, feeds, output), batch, 1, config.duration_s,
                       config.requests, 0.10, config.max_windows)
        point.update({k: host[k] for k in ("throughput", "p50_ms", "p99_ms", "avg_ms", "stable", "requests")})
        if cuda:
            tensors = [torch.from_numpy(feeds[t.name]).to(config.device) for t in spec.inputs]
            resident = measure(lambda: (backend.forward(spec.name, tensors), _sync(config.device)), batch, 1,
                               config.duration_s, config.requests, 0.10, config.max_windows)
            point.update(resident_throughput=resident["throughput"], resident_p50_ms=resident["p50_ms"],
                         resident_p99_ms=resident["p99_ms"],
                         memory_peak_gib=torch.cuda.max_memory_allocated() / 2**30)
        best = point.get("resident_throughput") or point["throughput"]
        point["bf16_roofline"] = best * spec.flops_per_item / 1e9 / peaks["bf16_matmul_gflops"]
        if variant.precision == "fp32":
            point["fp32_roofline"] = best * spec.flops_per_item / 1e9 / peaks["fp32_matmul_gflops"]
        if agreement:
            from echodeploy.agreement import summary
            from echodeploy.backends.torch import precision_agreement

            point["agreement"] = precision_agreement(backend, spec, module, config.agreement_items)
            point["agreement_line"] = summary(point["agreement"])
    except Exception as exc:  # an out-of-memory batch or a failed compile must not lose the run
        point["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    finally:
        backend.close()
    return point


def _torch_backend(config: GpuBenchConfig, spec: ModelSpec, module, variant: Variant, pad_batch: int,
                   channels_last: bool | None = None):
    """The torch backend of one variant on a module already built (opened through the wiring)."""
    torch = TorchSettings(weights_dir=config.weights_dir, seed=config.seed, precision=variant.precision,
                          graph=variant.graph, pad_batch=pad_batch, channels_last=channels_last)
    return open_backend(BackendSettings(name="torch", device=config.device, torch=torch),
                        modules={spec.name: (spec, module)})


def _module(config: GpuBenchConfig, spec: ModelSpec, modules: dict):
    """The served module of `spec`, built once per run (seeded networks re-estimate BatchNorm)."""
    from echodeploy.export.modules import served_module

    if spec.name not in modules:
        modules[spec.name] = served_module(spec, config.weights_dir, config.seed)[0]
    return modules[spec.name]


def model_points(config: GpuBenchConfig, names: list[str], clock: _Clock, peaks: dict, modules: dict,
                 progress=print) -> tuple[list, list]:
    points, skipped = [], []
    for name in names:
        spec = _spec(name)
        module = _module(config, spec, modules)
        plan = [(SEED_VARIANT, config.seed_batch[spec.family])]
        for variant in config.variants:
            sizes = config.batch_sizes[spec.family]
            if variant.graph == "compile":
                sizes = config.compile_batches[spec.family]
            plan += [(variant, batch) for batch in sizes]
        compared = set()
        for variant, batch in plan:
            if clock.spent:
                skipped.append(f"{name} {variant.name} batch {batch}")
                continue
            check = variant.precision != "fp32" and variant not in compared  # once per variant
            compared.add(variant)
            point = _point(config, spec, module, variant, batch, peaks, check)
            points.append(point)
            progress(f"{name:14s} {variant.name:18s} batch {batch:3d}: " + (
                point["error"] if "error" in point else
                f"{point['throughput']:9.1f} items/s, p99 {point['p99_ms']:8.1f} ms"
                + (f", resident {point['resident_throughput']:9.1f} items/s" if "resident_throughput" in point else "")
                + f", bf16 roofline {point['bf16_roofline']:.1%}"))
    return points, skipped


def end_to_end(config: GpuBenchConfig, work: Path, clock: _Clock, modules: dict,
               progress=print) -> tuple[list, list]:
    """CMR files -> predictions.csv with the best reduced variant, for each number of decode workers."""
    import shutil

    from echodeploy.client.runs.cmr import CmrOptions, run_cmr
    from echodeploy.client.runs.inputs import read_inputs

    cmr = [m for m in config.models if _spec(m).family == "cmr"]
    if not cmr:
        return [], []
    spec = _spec(cmr[0])
    source = _e2e_inputs("cmr", BenchConfig(e2e_items=config.e2e_files, seed=config.seed), work)
    cuda = config.device.startswith("cuda")
    variant = Variant("bf16", "cuda-graph" if cuda else "eager")
    rows, skipped = [], []
    backend = _torch_backend(config, spec, _module(config, spec, modules), variant,
                             config.e2e_batch if cuda else 0)
    for workers in config.e2e_workers:
        if clock.spent:
            skipped.append(f"end to end, {workers} workers")
            continue
        out = work / "e2e" / f"workers{workers}"
        shutil.rmtree(out, ignore_errors=True)
        inputs = read_inputs(source, spec.view)
        started = time.perf_counter()
        run_cmr(inputs, backend, out, CmrOptions(tasks=(spec.task,), batch_size=config.e2e_batch, workers=workers))
        seconds = time.perf_counter() - started
        table = pd.read_csv(out / "predictions.csv")
        decode = float(table["decode_s"].mean())
        rows.append({"workers": workers, "files": len(table), "ok": int((table["status"] == "ok").sum()),
                     "variant": variant.name, "batch": config.e2e_batch, "seconds": seconds,
                     "files_per_s": len(table) / seconds, "decode_s_per_file": decode,
                     "decode_bound_files_per_s": max(workers, 1) / decode if decode else None})
        progress(f"end to end, {workers:2d} decode workers: {rows[-1]['files_per_s']:7.1f} files/s "
                 f"(decode alone allows {rows[-1]['decode_bound_files_per_s'] or 0:7.1f})")
    backend.close()
    return rows, skipped


def targets(result: dict) -> list[str]:
    """The issue's GPU targets, each met / not met from this run's figures (GPU runs only)."""
    if result["config"]["reduced"]:
        return []
    points = [p for p in result["points"] if "error" not in p and p["model"].startswith("cmr")]
    seed = [p for p in points if p["variant"] == SEED_VARIANT.name]
    reduced = [p for p in points if p["precision"] != "fp32"]
    lines = []
    if reduced:
        best = max(reduced, key=lambda p: p["bf16_roofline"])
        lines.append(f"R(2+1)D-18 best: {best['variant']} batch {best['batch']}, "
                     f"{best.get('resident_throughput', best['throughput']):.0f} clips/s resident = "
                     f"{best['bf16_roofline']:.1%} of the bf16 peak (target >= {TARGET_ROOFLINE:.0%}): "
                     f"{'met' if best['bf16_roofline'] >= TARGET_ROOFLINE else 'NOT met'}")
        if seed:
            fastest = max(p["throughput"] for p in reduced)
            speedup = fastest / seed[0]["throughput"]
            lines.append(f"bf16/fp16 vs the seed's eager fp32 batch {seed[0]['batch']}: {speedup:.1f}x, numpy in "
                         f"and out (target >= {TARGET_SPEEDUP:.0f}x): "
                         f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'}")
    if result["end_to_end"]:
        e2e = max(result["end_to_end"], key=lambda r: r["files_per_s"])
        decode_bound = e2e["decode_bound_files_per_s"] or float("inf")
        lines.append(f"end to end best: {e2e['files_per_s']:.0f} files/s with {e2e['workers']} workers; decode "
                     f"alone allows {decode_bound:.0f}: "
                     f"{'decode-bound' if e2e['files_per_s'] >= 0.8 * decode_bound else 'not decode-bound'}")
    return lines


def _escaped(text: str) -> str:
    return text.replace("|", "\\|")  # a table cell


def _cell(value, spec: str = ".1f") -> str:
    return "" if value is None else format(value, spec)


def markdown(result: dict) -> str:
    peaks = result["peaks"]
    lines = [f"# GPU benchmark ({result['date']}, {result['machine']['device_name']})", "",
             f"Command: `{result['command']}`", "",
             f"Matmul peaks measured here: bf16 {peaks['bf16_matmul_gflops']:.0f} GFLOP/s, "
             f"fp32 {peaks['fp32_matmul_gflops']:.0f} GFLOP/s.", ""]
    if result["config"]["reduced"]:
        lines += ["**Reduced run (no GPU):** tiny sizes; these figures say the script works, not how fast a "
                  "GPU is. Not produced here:", *[f"- {line}" for line in NOT_ON_CPU], ""]
    if result["targets"]:
        lines += ["## Targets", *[f"- {line}" for line in result["targets"]], ""]
    lines += ["## Model only", "",
              "| model | variant | batch | items/s | p50 ms | p99 ms | resident items/s | resident p99 ms "
              "| bf16 roofline | GPU memory GiB | first call s | vs seed |", "|" + "---|" * 12]
    seed = {p["model"]: p["throughput"] for p in result["points"]
            if p["variant"] == SEED_VARIANT.name and "error" not in p}
    for p in result["points"]:
        if "error" in p:
            lines.append(f"| {p['model']} | {p['variant']} | {p['batch']} | {p['error']} |" + " |" * 8)
            continue
        speedup = p["throughput"] / seed[p["model"]] if p["model"] in seed else None
        lines.append(f"| {p['model']} | {p['variant']} | {p['batch']} | {p['throughput']:.1f} | {p['p50_ms']:.1f} "
                     f"| {p['p99_ms']:.1f} | {_cell(p.get('resident_throughput'))} | "
                     f"{_cell(p.get('resident_p99_ms'))} | {p['bf16_roofline']:.1%} | "
                     f"{_cell(p.get('memory_peak_gib'), '.2f')} | {p['first_call_s']:.1f} | "
                     f"{_cell(speedup, '.2f')}{'x' if speedup else ''} |")
    agreement = [p for p in result["points"] if "agreement" in p]
    if agreement:
        lines += ["", "## Agreement with fp32 (same weights, same device)", "", "| model | variant | batch | report |",
                  "|---|---|---|---|"]
        lines += [f"| {p['model']} | {p['variant']} | {p['batch']} | {_escaped(p['agreement_line'])} |"
                  for p in agreement]
    if result["end_to_end"]:
        lines += ["", "## End to end: CMR files -> predictions.csv", "",
                  "| decode workers | files | seconds | files/s | decode s per file | decode alone allows files/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['workers']} | {r['files']} | {r['seconds']:.1f} | {r['files_per_s']:.1f} | "
                  f"{r['decode_s_per_file']:.4f} | {_cell(r['decode_bound_files_per_s'])} |"
                  for r in result["end_to_end"]]
    if result["skipped"]:
        lines += ["", f"Skipped (time budget of {result['config']['budget_s']:.0f} s spent): "
                  + "; ".join(result["skipped"])]
    return "\n".join(lines) + "\n"


def machine(device: str) -> dict:
    import platform

    import torch

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "CPU"
    return {"device": device, "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "threads": torch.get_num_threads()}


def run_gpu_bench(config: GpuBenchConfig, out: Path, command: str = "", progress=print) -> dict:
    """Every measurement of the config; writes gpu.json and gpu.md into `out`."""
    import torch

    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise EchodeployError("no CUDA GPU visible to torch: run with --device cpu for the reduced form")
    unknown = [m for m in config.models if m not in GPU_MODELS]
    if unknown:
        raise EchodeployError(f"gpu-bench measures {', '.join(GPU_MODELS)}; not {', '.join(unknown)}")
    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    clock = _Clock(config.budget_s)
    started = time.perf_counter()
    peaks = {f"{kind}_matmul_gflops": matmul_peak_gflops(dtype, config.matmul_sizes, 3, config.device)
             for kind, dtype in (("bf16", "bfloat16"), ("fp32", "float32"))}
    progress(f"matmul peaks: bf16 {peaks['bf16_matmul_gflops']:.0f}, fp32 {peaks['fp32_matmul_gflops']:.0f} GFLOP/s")
    # R(2+1)D-18 first, then end to end, then the M-mode models: the budget cuts the least important
    cmr = [m for m in config.models if _spec(m).family == "cmr"]
    modules: dict = {}
    points, skipped = model_points(config, cmr, clock, peaks, modules, progress)
    e2e, skipped_e2e = end_to_end(config, work, clock, modules, progress)
    mmode_points, skipped_mmode = model_points(config, [m for m in config.models if m not in cmr], clock, peaks,
                                               modules, progress)
    points, skipped_e2e = points + mmode_points, skipped_e2e + skipped_mmode
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": command, "machine": machine(config.device),
              "config": json.loads(json.dumps(asdict(config), default=str)), "peaks": peaks, "points": points,
              "end_to_end": e2e, "skipped": skipped + skipped_e2e,
              "not_produced": list(NOT_ON_CPU) if config.reduced else []}
    result["targets"] = targets(result)
    result["seconds"] = time.perf_counter() - started
    (out / "gpu.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "gpu.md").write_text(markdown(result))
    return result


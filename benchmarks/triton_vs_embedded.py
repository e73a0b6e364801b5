"""Triton (cpu target, local tritonserver) vs the embedded ONNX Runtime backend, same clips.

For each concurrency (clients sending one request at a time, `--batch` clips each), both
backends get the same requests through the same `Backend.infer` interface; reports
throughput, p50/p95/p99 latency, the Triton/embedded throughput ratio, and Triton's own
server-side queue and compute times per model and ensemble step (statistics API deltas).

    python benchmarks/triton_vs_embedded.py --concurrency 1 2 4 --requests 12
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from echodeploy.client.backends import OnnxRuntimeBackend
from echodeploy.client.server import TritonServer, ensure_server_env
from echodeploy.client.triton_backend import TritonBackend
from echodeploy.export.cmr import export_cmr_models
from echodeploy.export.triton.repository import write_triton_repository

ROOT = Path(__file__).resolve().parents[1]
STAT_FIELDS = ("queue", "compute_input", "compute_infer", "compute_output")


def measure(infer, requests: list[np.ndarray], concurrency: int) -> dict:
    latencies = []

    def one(clips):
        start = time.perf_counter()
        infer(clips)
        latencies.append(time.perf_counter() - start)

    infer(requests[0])  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, requests))
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {"clips_per_s": sum(len(r) for r in requests) / wall,
            **{f"p{q}_ms": float(np.percentile(ms, q)) for q in (50, 95, 99)}}


def server_times(backend: TritonBackend) -> dict[str, dict[str, float]]:
    """Cumulative (count, ns) per model and stat field."""
    (stats,) = backend.server_statistics()
    return {m["name"]: {f: (int(m["inference_stats"][f].get("count", 0)), int(m["inference_stats"][f].get("ns", 0)))
                        for f in STAT_FIELDS} for m in stats["model_stats"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=12, help="requests per point")
    parser.add_argument("--batch", type=int, default=1, help="clips per request")
    parser.add_argument("--instances", type=int, default=1, help="Triton instances per model")
    args = parser.parse_args()

    repo = Path(tempfile.mkdtemp(prefix="echodeploy-bench-repo-"))
    export_cmr_models(repo, views=("A4C",), tasks=("scar",), seed=0)
    write_triton_repository(repo, "cpu", max_batch_size=8, instances=args.instances)
    rng = np.random.default_rng(0)
    requests = [rng.integers(0, 256, (args.batch, 3, 16, 112, 112), dtype=np.uint8) for _ in range(args.requests)]

    embedded = OnnxRuntimeBackend(repo)
    env = ensure_server_env(ROOT / ".venv-server")
    with TritonServer(repo, env=env) as server:
        triton = TritonBackend([server.grpc_url])
        print(f"{args.requests} requests x {args.batch} clip(s), cmr_a4c (ensemble -> cmr_a4c_scar)")
        print(f"{'conc':>4} {'backend':>11} {'clips/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}  ratio")
        for concurrency in args.concurrency:
            base = measure(lambda c: embedded.infer("cmr_a4c_scar", {"clip": c}), requests, concurrency)
            before = server_times(triton)
            served = measure(lambda c: triton.infer("cmr_a4c", {"clip": c}, ["scar_prob"]), requests, concurrency)
            time.sleep(0.5)
            after = server_times(triton)
            ratio = served["clips_per_s"] / base["clips_per_s"]
            for name, row in (("embedded", base), ("triton", served)):
                print(f"{concurrency:>4} {name:>11} {row['clips_per_s']:8.2f} {row['p50_ms']:8.0f} "
                      f"{row['p95_ms']:8.0f} {row['p99_ms']:8.0f}" + (f"  {ratio:.2f}" if name == "triton" else ""))
            for model in ("cmr_a4c", "cmr_a4c_scar"):
                parts = []
                for field in STAT_FIELDS:
                    count = after[model][field][0] - before[model][field][0]
                    ns = after[model][field][1] - before[model][field][1]
                    parts.append(f"{field} {ns / max(count, 1) / 1e6:.1f} ms")
                print(f"{'':>16} server {model}: " + ", ".join(parts))
        triton.close()


if __name__ == "__main__":
    main()

"""Bounded load test of a tritonserver: several client processes, a fixed request count and a
time limit; every response is checked against a quiet run and the server's memory is sampled.

    python benchmarks/triton_load.py --repository model_repository --clients 4 --requests 500 --duration 180
    python benchmarks/triton_load.py --url 127.0.0.1:8001 --server-pid PID --clients 4 --requests 100

Without --url a tritonserver is started on 127.0.0.1 (free ports) on the cpu-target
--repository and stopped at the end. Each client process sends one request at a time
(--batch clips, drawn in turn from a fixed set of seeded inputs) until it has sent
--requests or --duration seconds have passed. The quiet run sends each input once, alone,
before the load. Server memory = RSS of the tritonserver process and its children (the
Python-backend stubs), sampled every 0.5 s. Exit status 0 only if no request failed and
every output is within 1e-6 of the quiet run's.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from echodeploy.specs import CLIP
from echodeploy.wiring import BackendSettings, open_backend

ROOT = Path(__file__).resolve().parents[1]
DISTINCT_INPUTS = 8
TOLERANCE = 1e-6


def make_inputs(batch: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (batch, 3, 16, 112, 112), dtype=np.uint8) for _ in range(DISTINCT_INPUTS)]


def quiet_run(url: str, model: str, output: str, batch: int) -> list[np.ndarray]:
    """Every input once, one request at a time, nothing else running."""
    backend = open_backend(BackendSettings(name="triton", urls=(url,)))
    try:
        return [backend.infer(model, {CLIP: clips}, [output])[output] for clips in make_inputs(batch)]
    finally:
        backend.close()


def client(index: int, url: str, model: str, output: str, batch: int, requests: int, stop_at: float,
           expected: list[np.ndarray]) -> dict:
    """One client process: sequential requests until the count or the time limit is reached."""
    inputs = make_inputs(batch)
    backend = open_backend(BackendSettings(name="triton", urls=(url,), retry_seconds=10))
    latencies, errors, max_diff = [], [], 0.0
    began = time.time()
    try:
        for i in range(requests):
            if time.time() >= stop_at:
                break
            which = (index + i) % DISTINCT_INPUTS
            start = time.perf_counter()
            try:
                result = backend.infer(model, {CLIP: inputs[which]}, [output])[output]
            except Exception as exc:  # a failed request is a finding to count, not a crash
                errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            latencies.append(time.perf_counter() - start)
            max_diff = max(max_diff, float(np.abs(result - expected[which]).max()))
    finally:
        backend.close()
    return {"latencies": latencies, "errors": errors, "max_diff": max_diff, "began": began, "ended": time.time()}


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while we looked
            children.setdefault(parent, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            status = (Path("/proc") / str(current) / "status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[int] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append(tree_rss_bytes(self.pid))
            self._done.wait(self.every_s)

    def stop(self) -> dict:
        self._done.set()
        self.join()
        self.samples.append(tree_rss_bytes(self.pid))
        mb = [s / 2**20 for s in self.samples]
        quarters = [mb[round(q * (len(mb) - 1))] for q in (0.25, 0.5, 0.75)]
        return {"rss_start_mb": mb[0], "rss_quarters_mb": quarters, "rss_peak_mb": max(mb), "rss_end_mb": mb[-1],
                "rss_samples": len(mb)}


def run_load(url: str, server_pid: int | None, args) -> dict:
    expected = quiet_run(url, args.model, args.output, args.batch)
    sampler = MemorySampler(server_pid) if server_pid else None
    if sampler:
        sampler.start()
    stop_at = time.time() + args.duration
    with ProcessPoolExecutor(args.clients, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(client, i, url, args.model, args.output, args.batch, args.requests, stop_at, expected)
                   for i in range(args.clients)]
        results = [f.result() for f in futures]
    wall = max(r["ended"] for r in results) - min(r["began"] for r in results)  # first request to last answer
    latencies = np.array([t for r in results for t in r["latencies"]]) * 1000
    errors = [e for r in results for e in r["errors"]]
    summary = {
        "clients": args.clients, "batch": args.batch, "model": args.model, "url": url,
        "requests": len(latencies) + len(errors), "errors": len(errors), "error_examples": sorted(set(errors))[:5],
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
        "requests_per_s": len(latencies) / wall, "clips_per_s": len(latencies) * args.batch / wall,
        "seconds": wall, "max_diff_vs_quiet": max(r["max_diff"] for r in results),
    }
    if sampler:
        summary.update(sampler.stop())
    return summary


def report(s: dict) -> str:
    lines = [
        f"load: {s['clients']} clients, {s['batch']} clip(s) per request, {s['model']} at {s['url']}",
        f"requests {s['requests']}, errors {s['errors']}, p50 {s['p50_ms'] or float('nan'):.0f} ms, "
        f"p99 {s['p99_ms'] or float('nan'):.0f} ms, {s['requests_per_s']:.2f} requests/s "
        f"({s['clips_per_s']:.2f} clips/s) over {s['seconds']:.0f} s",
        f"outputs vs quiet run: max |diff| {s['max_diff_vs_quiet']:.2g} (tolerance {TOLERANCE:g})",
    ]
    if "rss_start_mb" in s:
        quarters = " / ".join(f"{q:.0f}" for q in s["rss_quarters_mb"])
        lines.append(f"server RSS (tritonserver + stubs): start {s['rss_start_mb']:.0f} MB, at 1/4, 1/2, 3/4 of the "
                     f"load {quarters} MB, end {s['rss_end_mb']:.0f} MB, peak {s['rss_peak_mb']:.0f} MB "
                     f"({s['rss_samples']} samples)")
    lines += [f"error: {e}" for e in s["error_examples"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing server's gRPC HOST:PORT (default: start one on 127.0.0.1)")
    parser.add_argument("--server-pid", type=int, help="with --url: the server's process id, to sample its memory")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repository",
                        help="cpu-target repository for the server started here")
    parser.add_argument("--server-env", type=Path, default=ROOT / ".venv-server")
    parser.add_argument("--model", default="cmr_a4c", help="model or ensemble taking 'clip'")
    parser.add_argument("--output", default="scar_prob")
    parser.add_argument("--clients", type=int, default=4, help="client processes")
    parser.add_argument("--requests", type=int, default=100, help="requests per client (at most)")
    parser.add_argument("--duration", type=float, default=120, help="seconds before clients stop sending")
    parser.add_argument("--batch", type=int, default=1, help="clips per request")
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()

    if args.url:
        summary = run_load(args.url, args.server_pid, args)
    else:
        from echodeploy.client.tritonserver import TritonServer, ensure_server_env

        with TritonServer(args.repository, env=ensure_server_env(args.server_env)) as server:
            summary = run_load(server.grpc_url, server.pid, args)
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 and summary["max_diff_vs_quiet"] <= TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())

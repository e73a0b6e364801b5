"""End-to-end files/s of `echodeploy cmr` on the local engine and on Ray, against decode workers.

    python -m echodeploy.benchmarks.engines --repository model_repository --files 40 --workers 1,2

Writes generated A4C videos, then times the real command, files in to `predictions.csv` out,
for each engine and number of decode workers (a fresh `--out` each run, best of `--repeats`).
Ray runs twice per worker count: joining an instance started beforehand (the steady state on a
cluster) and starting its own local instance (what one command on a laptop pays).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from echodeploy.client.runs import ray_engine
from echodeploy.samples import synthetic_echo, write_avi


def write_videos(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"v{i:03d}" for i in range(count)]
    for i, name in enumerate(names):
        write_avi(folder / f"{name}.avi", synthetic_echo(40, seed=i))
    manifest = folder / "manifest.csv"
    pd.DataFrame({"Study_Unique_ID": [f"S{i // 2}" for i in range(count)], "Video_Unique_ID": names}).to_csv(
        manifest, index=False)
    return manifest


def timed_run(manifest: Path, repository: Path, out: Path, workers: int, engine: list[str]) -> float:
    """Seconds of one `echodeploy cmr` run, start to exit."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "echodeploy", "cmr", str(manifest), "--view", "A4C", "--tasks", "scar",
               "--repository", str(repository), "--out", str(out), "--workers", str(workers), *engine]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--workers", default="1,2", help="comma-separated decode worker counts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench_output/engines"))
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    manifest = write_videos(args.out / "data", args.files)
    cores = len(os.sched_getaffinity(0))
    address = ray_engine.start_local(num_cpus=max(cores, max(workers) + 1))
    engines = {"local": lambda w: [], "ray (joined)": lambda w: ["--engine", "ray", "--ray-address", address],
               "ray (own instance)": lambda w: ["--engine", "ray"]}
    rows = []
    for name, flags in engines.items():
        if name == "ray (own instance)":
            ray_engine.import_ray().shutdown()  # the command starts its own
        for w in workers:
            best = min(timed_run(manifest, args.repository, args.out / "run", w, flags(w)) for _ in range(args.repeats))
            rows.append({"engine": name, "workers": w, "seconds": round(best, 1),
                         "files_per_s": round(args.files / best, 2), "load_avg": round(os.getloadavg()[0], 1)})
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "engines.json").write_text(json.dumps({"files": args.files, "cores": cores, "runs": rows}, indent=1))
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()

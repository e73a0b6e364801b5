"""End-to-end CMR throughput: files -> CSV, embedded ONNX Runtime vs a seed-equivalent path.

The seed-equivalent path is what cardiac_mri's script does: decode each video in the main
process, batch 10 clips, PyTorch eager fp32, write a CSV. Both paths run on the same
generated 112x112 AVIs in one process, one after the other, and report clips/s, their
ratio and the fraction of the fp32 roofline (81 GFLOP per clip over a matmul peak
measured in the same run).

    python benchmarks/cmr_throughput.py --videos 30
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import matmul_peak_gflops
from echodeploy.client.backends import OnnxRuntimeBackend
from echodeploy.client.cmr import CmrOptions, run_cmr
from echodeploy.client.inputs import read_inputs
from echodeploy.export.cmr import export_cmr_models, seeded_network
from echodeploy.preprocessing.clips import load_clips

from echodeploy.samples import synthetic_echo, write_avi
from echodeploy.specs import R2PLUS1D_FLOPS, ClipSpec, cmr_model


def seed_equivalent(manifest: Path, out_csv: Path, batch_size: int = 10) -> None:
    """Decode in the main process, torch eager fp32 at batch 10, sigmoid, CSV."""
    spec = cmr_model("A4C", "scar")
    net = seeded_network(spec, seed=0)
    rows = pd.read_csv(manifest)
    preds = []
    clips = [load_clips(manifest.parent / f"{v}.avi", ClipSpec())[0][0] for v in rows["Video_Unique_ID"]]
    with torch.no_grad():
        for start in range(0, len(clips), batch_size):
            batch = torch.from_numpy(np.stack(clips[start:start + batch_size])).float() / 255
            preds += torch.sigmoid(net(batch)).flatten().tolist()
    rows.assign(preds=preds).to_csv(out_csv, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="echodeploy-bench-"))
    names = [f"v{i:03d}" for i in range(args.videos)]
    for i, name in enumerate(names):
        write_avi(work / "data" / f"{name}.avi", synthetic_echo(40, height=112, width=112, seed=i))
    manifest = work / "data" / "manifest.csv"
    pd.DataFrame({"Study_Unique_ID": "S", "Video_Unique_ID": names, "frames": 40}).to_csv(manifest, index=False)
    export_cmr_models(work / "repo", views=("A4C",), tasks=("scar",), seed=0)

    peak = matmul_peak_gflops()
    timings = {}
    start = time.perf_counter()
    seed_equivalent(manifest, work / "seed.csv", args.batch_size)
    timings["torch eager fp32 (seed path)"] = time.perf_counter() - start

    backend = OnnxRuntimeBackend(work / "repo")
    backend.model_info("cmr_a4c_scar")  # session creation is start-up, not throughput
    start = time.perf_counter()
    run_cmr(read_inputs(manifest, "A4C"), backend, work / "out",
            CmrOptions(tasks=("scar",), batch_size=args.batch_size, workers=args.workers))
    timings["echodeploy onnxruntime"] = time.perf_counter() - start

    ours = pd.read_csv(work / "out" / "predictions.csv")["scar_prob"].to_numpy()
    seed = pd.read_csv(work / "seed.csv")["preds"].to_numpy()
    print(f"threads {torch.get_num_threads()}, fp32 matmul peak {peak:.0f} GFLOP/s, {args.videos} videos")
    for name, seconds in timings.items():
        rate = args.videos / seconds
        print(f"{name:32s} {rate:6.2f} clips/s  {rate * R2PLUS1D_FLOPS / 1e9 / peak:6.1%} of fp32 roofline")
    ratio = timings["torch eager fp32 (seed path)"] / timings["echodeploy onnxruntime"]
    print(f"ratio onnxruntime / seed path: {ratio:.2f}x; max |delta p| = {np.abs(ours - seed).max():.1e}")


if __name__ == "__main__":
    main()

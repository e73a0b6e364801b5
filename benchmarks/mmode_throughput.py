"""Per-study M-mode time: echodeploy's batched ONNX Runtime path vs a seed-equivalent path.

The seed-equivalent path runs what Echo2Pheno ran: windows one at a time through PyTorch
eager in training mode (BatchNorm on each window's own statistics, dropout active), the
quality network in float64. Both paths process the same synthetic study (same reader,
same features) in one run; the script prints seconds per study, the ratio, and the
fraction of the fp32 roofline (QuickNAT 121 GFLOP, CardioNet 5.5 GFLOP per window over a
matmul peak measured in the same run).

    python benchmarks/mmode_throughput.py --files 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from common import matmul_peak_gflops
from echodeploy.client.backends import OnnxRuntimeBackend
from echodeploy.client.mmode import MModeOptions, read_mmode_inputs, run_mmode
from echodeploy.client.mmode_features import beat_stats, beat_table, good_columns
from echodeploy.export.mmode import export_mmode_models, seeded_mmode_network
from echodeploy.preprocessing.mmode import quality_crop, quality_windows, read_mmode, segmentation_windows

from echodeploy.samples import synthetic_mmode, write_mmode_dicom
from echodeploy.specs import CARDIONET_FLOPS, MMODE_LVID, MMODE_QUALITY, QUICKNAT_FLOPS, mmode_model

MASS_G = 22.0


def seed_equivalent(paths: list[Path]) -> tuple[int, int]:
    """The published tool's way; returns (segmentation windows, quality windows) processed."""
    quicknat = seeded_mmode_network(mmode_model(MMODE_LVID), seed=0).train()
    cardionet = seeded_mmode_network(mmode_model(MMODE_QUALITY), seed=0).double().train()
    seg_count = quality_count = 0
    with torch.no_grad():
        for path in paths:
            trace = read_mmode(path)
            height, length = trace.trace.shape
            masks = []
            for window in segmentation_windows(trace.trace):
                logits = quicknat(torch.from_numpy(window[None]))
                masks.append(torch.sigmoid(logits).round()[0, 0].numpy())
            seg_count += len(masks)
            resized = [cv2.resize(m, (height, height), interpolation=cv2.INTER_NEAREST) for m in masks]
            last_new = length - (len(resized) - 1) * height
            mask = np.concatenate(resized[:-1] + [resized[-1][:, height - last_new:]], axis=1)
            counts = mask.sum(0)
            rows = (mask * np.arange(height)[:, None]).sum(0)
            windows, spans = quality_windows(trace.trace, counts, rows, quality_crop(height, MASS_G))
            probabilities = []
            for window in windows:
                x = (torch.from_numpy(window[None]).double() / 255 - 0.5) / 0.5
                probabilities.append(float(cardionet(x)[0]))
            quality_count += len(windows)
            good = good_columns(length, spans, np.array(probabilities) > 0.5)
            beat_stats(beat_table(counts * trace.mm_per_px, trace.seconds_per_px, good))
    return seg_count, quality_count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2, help="M-mode files in the study")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="echodeploy-mmode-bench-"))
    paths = [write_mmode_dicom(work / "study" / f"mouse{i}.dcm", synthetic_mmode(length=1800, seed=i)[0])
             for i in range(args.files)]
    export_mmode_models(work / "repo", bn_mode="seed")

    peak = matmul_peak_gflops()
    start = time.perf_counter()
    seg_windows, quality_windows_count = seed_equivalent(paths)
    seed_s = time.perf_counter() - start

    backend = OnnxRuntimeBackend(work / "repo")
    for name in (MMODE_LVID, MMODE_QUALITY):
        backend.model_info(name)  # session creation is start-up, not per-study time
    start = time.perf_counter()
    run_mmode(read_mmode_inputs(work / "study", MASS_G), backend, work / "out",
              MModeOptions(figures=False, batch_size=args.batch_size))
    ours_s = time.perf_counter() - start

    flops = seg_windows * QUICKNAT_FLOPS + quality_windows_count * CARDIONET_FLOPS
    print(f"threads {torch.get_num_threads()}, fp32 matmul peak {peak:.0f} GFLOP/s; study of {args.files} files: "
          f"{seg_windows} segmentation + {quality_windows_count} quality windows")
    for name, seconds in (("seed-equivalent (torch eager, 1 window)", seed_s),
                          ("echodeploy onnxruntime (batched)", ours_s)):
        print(f"{name:42s} {seconds:7.1f} s/study  {flops / 1e9 / seconds / peak:6.1%} of fp32 roofline")
    print(f"ratio seed / echodeploy: {seed_s / ours_s:.2f}x")


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmarks: the machine's measured matmul peak and timing."""

from __future__ import annotations

import time

import torch


def matmul_peak_gflops(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 matmul rate of this machine with torch's threads, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9

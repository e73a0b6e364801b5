"""`benchmarks/gpu.sh` in its reduced CPU form: every section written, and what a CPU cannot produce said."""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def test_gpu_script_reduced_run_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    started = time.perf_counter()
    result = subprocess.run([str(ROOT / "benchmarks" / "gpu.sh"), str(out), "--device", "cpu",
                             "--model", "cmr_a4c_scar,mmode_quality", "--budget", "1200"],
                            capture_output=True, text=True, timeout=1200, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu.json").read_text())
    assert report["config"]["reduced"] and report["peaks"]["bf16_matmul_gflops"] > 0
    assert {(p["model"], p["variant"]) for p in report["points"]} == {
        (m, v) for m in ("cmr_a4c_scar", "mmode_quality") for v in ("fp32-nchw-eager", "bf16-cl-eager")}
    for point in report["points"]:
        assert "error" not in point, point
        assert point["throughput"] > 0 and point["p50_ms"] <= point["p99_ms"] and point["bf16_roofline"] > 0
    reduced = [p for p in report["points"] if p["precision"] == "bf16"]
    assert all(p["agreement"]["items"] == 2 and "passed" in p["agreement"] for p in reduced)
    (e2e,) = report["end_to_end"]
    assert e2e["files"] == e2e["ok"] == 2 and e2e["files_per_s"] > 0 and e2e["decode_bound_files_per_s"] > 0
    assert any("CUDA graphs" in line for line in report["not_produced"]) and report["targets"] == []
    markdown = (out / "gpu.md").read_text()
    for section in ("Reduced run (no GPU)", "## Model only", "## Agreement with fp32", "## End to end"):
        assert section in markdown
    assert "not produced on a CPU: CUDA graphs" in result.stdout
    print(f"reduced gpu.sh run: {time.perf_counter() - started:.0f} s")

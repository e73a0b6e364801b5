"""The bounded load test (benchmarks/triton_load.py) in a tiny configuration: its own
tritonserver on 127.0.0.1, two client processes, a fixed request count."""

import json
import subprocess
import sys


def test_load_script_serves_every_request_like_a_quiet_run(scar_repository, server_env, tmp_path):
    summary_path = tmp_path / "load.json"
    result = subprocess.run(
        [sys.executable, "-m", "echodeploy.benchmarks.triton_load", "--repository", str(scar_repository),
         "--server-env", str(server_env), "--clients", "2", "--requests", "3", "--duration", "300",
         "--json", str(summary_path)],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["requests"] == 6 and summary["errors"] == 0
    assert summary["max_diff_vs_quiet"] <= 1e-6
    assert summary["p50_ms"] <= summary["p99_ms"]
    assert 0 < summary["rss_start_mb"] <= summary["rss_peak_mb"] and summary["rss_samples"] >= 2
    assert "requests 6, errors 0" in result.stdout

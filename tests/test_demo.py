"""`echodeploy demo`, the README's first command, end to end on its embedded default."""

import pandas as pd
import pytest
from conftest import run_cli


@pytest.mark.slow
def test_demo_runs_both_pipelines(tmp_path):
    out, repository = tmp_path / "demo", tmp_path / "repository"
    result = run_cli("demo", "--out", str(out), "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(out / "cmr" / "predictions.csv")
    assert len(predictions) == 12 and (predictions["status"] == "ok").all()
    features = pd.read_csv(out / "mmode" / "features_stats.csv")
    assert len(features) == 2 and (features["status"] == "ok").all()
    assert list((out / "mmode" / "figures").glob("*.png"))
    assert "UNTRAINED" in result.stdout + result.stderr

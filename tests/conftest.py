"""Shared fixtures: real files written by the tests and a real exported repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "state_dicts"


def fixture_keys(name: str) -> dict:
    """Key/shape/dtype list of a published checkpoint (shared/fixtures/state_dicts)."""
    path = FIXTURES / f"{name}.json"
    if not path.exists():
        pytest.fail(f"missing fixture {path}: shared/ must sit beside the checkout")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    """Model repository with untrained A4C models for a binary and a regression task."""
    from echodeploy.export.cmr import export_cmr_models

    repo = tmp_path_factory.mktemp("model_repository")
    export_cmr_models(repo, views=("A4C",), tasks=("scar", "t1"), seed=0)
    return repo


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `echodeploy` entry point."""
    return subprocess.run([sys.executable, "-m", "echodeploy", *args], capture_output=True,
                          text=True, timeout=timeout)

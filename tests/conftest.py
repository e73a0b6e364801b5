"""Shared fixtures: real files written by the tests and a real exported repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture_keys(name: str) -> dict:
    """Key/shape/dtype list of a published checkpoint (tests/fixtures/<name>.json)."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


@pytest.fixture(scope="session")
def repository(tmp_path_factory) -> Path:
    """Model repository with untrained A4C models for a binary and a regression task."""
    from echodeploy.export.cmr import export_cmr_models

    repo = tmp_path_factory.mktemp("model_repository")
    export_cmr_models(repo, views=("A4C",), tasks=("scar", "t1"), seed=0)
    return repo


@pytest.fixture(scope="session")
def mmode_repository(repository) -> Path:
    """The session repository with untrained M-mode models (seed BatchNorm mode) added."""
    from echodeploy.export.mmode import export_mmode_models

    export_mmode_models(repository, bn_mode="seed", seed=0)
    return repository


def video_manifest(root: Path, count: int) -> Path:
    """`count` generated A4C AVIs (34 frames, v00, v01, ...) in one study, and their manifest `root/m.csv`."""
    import pandas as pd

    from echodeploy.samples import synthetic_echo, write_avi

    names = [f"v{i:02d}" for i in range(count)]
    for i, name in enumerate(names):
        write_avi(root / f"{name}.avi", synthetic_echo(34, seed=i))
    manifest = root / "m.csv"
    pd.DataFrame({"Study_Unique_ID": "S", "Video_Unique_ID": names}).to_csv(manifest, index=False)
    return manifest


def assert_outputs_close(left, right, columns, atol: float) -> None:
    """Two result tables of the same inputs: the same statuses, a finite value in every ok row of both
    (rows that are NaN in both runs prove nothing), and values within `atol`."""
    import numpy as np

    assert left["status"].tolist() == right["status"].tolist()
    ok = (left["status"] == "ok").to_numpy()
    assert ok.any(), "no row finished ok: nothing was compared"
    for column in columns:
        for table in (left, right):
            assert np.isfinite(table.loc[ok, column].to_numpy(float)).all(), column
        np.testing.assert_allclose(left[column], right[column], atol=atol, err_msg=column)


SERVER_FIXTURES = {"triton", "server_env", "scar_repository"}


def pytest_collection_modifyitems(items):
    """Tests that start or need a real tritonserver are marked `server` by the fixtures they use."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real `echodeploy` entry point."""
    return subprocess.run([sys.executable, "-m", "echodeploy", *args], capture_output=True,
                          text=True, timeout=timeout)


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def server_env() -> Path:
    """The tritonserver's own virtual environment (numpy 1.x), created once."""
    from echodeploy.client.tritonserver import ensure_server_env

    return ensure_server_env(Path(os.environ.get("ECHODEPLOY_SERVER_ENV", ROOT / ".venv-server")))


@pytest.fixture(scope="session")
def scar_repository(repository, tmp_path_factory) -> Path:
    """A cpu-target Triton repository of its own (the A4C scar model, max batch 2, and its
    ensemble) for servers that tests start, kill or reconfigure; the ONNX file is linked."""
    from echodeploy.export.triton.repository import write_triton_repository
    from echodeploy.repository import model_file

    repo = tmp_path_factory.mktemp("scar_repository")
    model_file(repo, "cmr_a4c_scar").parent.mkdir(parents=True)
    model_file(repo, "cmr_a4c_scar").symlink_to(model_file(repository, "cmr_a4c_scar"))
    write_triton_repository(repo, "cpu", max_batch_size=2)
    return repo


@pytest.fixture(scope="session")
def triton(mmode_repository, server_env, tmp_path_factory, request):
    """A real tritonserver on free loopback ports serving the cpu-target repository (CMR and M-mode)."""
    repository = mmode_repository
    from echodeploy.client.tritonserver import TritonServer
    from echodeploy.export.triton.repository import write_triton_repository

    write_triton_repository(repository, "cpu", max_batch_size=4)
    log = tmp_path_factory.mktemp("triton") / "tritonserver.log"
    server = TritonServer(repository, env=server_env, log_path=log).start()
    yield server
    server.stop()
    if request.session.testsfailed:
        print(f"\n--- tritonserver log ({log}) ---\n" + "\n".join(log.read_text().splitlines()[-60:]))

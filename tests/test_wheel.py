"""The package as users install it: the built wheel holds every module of the source tree, and a
non-editable install into a fresh virtual environment exports and runs from outside the checkout."""

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

pytestmark = pytest.mark.wheel

# source folder -> installed package (setup.py)
PACKAGES = {"echodeploy": "echodeploy", "export": "echodeploy/export", "backends": "echodeploy/backends",
            "client": "echodeploy/client", "analysis": "echodeploy/analysis", "preprocessing": "echodeploy/preprocessing",
            "benchmarks": "echodeploy/benchmarks"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (path,) = out.glob("echodeploy-*.whl")
    return path


def test_wheel_holds_every_source_module(wheel):
    expected = {f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
                for folder, installed in PACKAGES.items() for path in (ROOT / folder).rglob("*.py")}
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".py")}
    assert shipped == expected


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode in (0, 1), f"{' '.join(args)}\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_installed_in_a_fresh_venv_exports_and_runs_cmr(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python, echodeploy = env_dir / "bin" / "python", env_dir / "bin" / "echodeploy"
    # torch first and pinned (the CPU wheel), as the README's install does
    _run([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0"], tmp_path)
    _run([str(python), "-m", "pip", "install", "--quiet", f"{wheel}[export]"], tmp_path)
    where = _run([str(python), "-c", "import echodeploy.export.triton.repository as m; print(m.__file__)"], tmp_path)
    assert str(env_dir) in where.stdout and str(ROOT) not in where.stdout

    manifest = _run([str(python), "-c", "from pathlib import Path; from echodeploy.samples import write_demo_study; "
                     "print(write_demo_study(Path('data'), studies=2))"], tmp_path).stdout.strip()
    _run([str(echodeploy), "export", "--untrained", "--view", "A4C", "--task", "scar", "--repository", "repo"],
         tmp_path)
    assert (tmp_path / "repo" / "cmr_a4c_scar" / "config.pbtxt").is_file()
    result = _run([str(echodeploy), "cmr", manifest, "--view", "A4C", "--task", "scar", "--repository", "repo",
                   "--out", "out"], tmp_path)
    assert result.returncode == 0, result.stderr
    predictions = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(predictions) == 4 and (predictions["status"] == "ok").all()
    assert predictions["scar_prob"].between(0, 1).all()

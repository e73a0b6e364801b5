"""The wiring layer: settings validated once, one place that opens backends, Ray actors fed picklable
settings, and the command line's shared options, enums and deprecated spellings."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli, video_manifest

from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
from echodeploy.errors import EchodeployError
from echodeploy.wiring import BackendSettings, CmrRun, EngineSettings, TorchSettings, open_backend, run_job
from echodeploy.wiring.backends import for_workers
from echodeploy.wiring.jobs import _quiet


@pytest.mark.parametrize("settings, message", [
    (dict(name="triton"), "--backend triton needs --url"),
    (dict(name="nope"), "--backend must be one of auto, onnxruntime, openvino, triton, torch, got 'nope'"),
    (dict(name="onnxruntime", torch=TorchSettings()), "torch settings go with --backend torch only"),
    (dict(name="torch"), "torch settings go with --backend torch only"),
    (dict(name="openvino", device="cuda"), "--device cuda: only with --backend torch or onnxruntime"),
    (dict(name="triton", urls=("h:1",), protocol="udp"), "--protocol must be one of grpc, http"),
])
def test_backend_settings_are_checked_when_made(settings, message):
    with pytest.raises(EchodeployError, match=message.replace("(", r"\(")):
        BackendSettings(**settings)


def test_torch_settings_need_a_fixed_shape_for_graphs():
    with pytest.raises(EchodeployError, match="--graph compile replays fixed shapes: it needs --pad-batch N"):
        TorchSettings(graph="compile")
    assert TorchSettings(graph="compile", pad_batch=4).pad_batch == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        TorchSettings().seed = 1
    with pytest.raises(TypeError):
        BackendSettings("onnxruntime")  # keyword-only


def test_engine_settings_are_checked_when_made():
    with pytest.raises(EchodeployError, match="--engine must be one of local, ray"):
        EngineSettings(name="spark")
    with pytest.raises(EchodeployError, match="--actors and --ray-block-rows must be >= 1"):
        EngineSettings(actors=0)


def test_ray_actors_get_picklable_settings_and_never_the_command_line(repository):
    """What the Ray actors receive opens the same backend in a fresh process without the typer module,
    and an `auto` choice reaches them as the backend the driver chose."""
    settings = BackendSettings(name="auto", repository=repository)
    opened = OnnxRuntimeBackend(repository)
    factory = functools.partial(open_backend, for_workers(settings, opened), say=_quiet)
    assert for_workers(settings, opened).name == "onnxruntime"
    script = ("import pickle, sys; factory = pickle.loads(sys.stdin.buffer.read()); backend = factory(); "
              "print(backend.name, backend.model_info('cmr_a4c_scar').untrained, "
              "'typer' in sys.modules, 'echodeploy.cli' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(factory), capture_output=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().split() == ["onnxruntime", "True", "False", "False"]


def test_run_job_is_what_the_command_runs(repository, tmp_path):
    """The public job function (what the watch service calls) writes what `cmr` writes, from settings alone."""
    manifest = video_manifest(tmp_path / "data", 3)
    from echodeploy.client.runs.cmr import CmrOptions

    lines = []
    summary = run_job(CmrRun(source=manifest, out=tmp_path / "job", view="A4C", options=CmrOptions(tasks=("scar",))),
                      BackendSettings(name="onnxruntime", repository=repository), say=lines.append)
    assert summary.counts == {"ok": 3} and summary.exit_code == 0 and lines == []
    cli = run_cli("cmr", str(manifest), "--out", str(tmp_path / "cli"), "--view", "A4C", "--task", "scar",
                  "--backend", "onnxruntime", "--repository", str(repository))
    assert cli.returncode == 0, cli.stderr
    job, command = (pd.read_csv(tmp_path / name / "predictions.csv") for name in ("job", "cli"))
    assert job["scar_prob"].notna().all()
    pd.testing.assert_frame_equal(job.drop(columns="decode_s"), command.drop(columns="decode_s"))


def test_help_lists_the_choices():
    result = subprocess.run([sys.executable, "-m", "echodeploy", "cmr", "--help"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": "400"}, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout.lower()
    for choices in ("auto|onnxruntime|openvino|triton|torch", "local|ray", "grpc|http", "first|all", "fp32|bf16|fp16",
                    "eager|cuda-graph|compile", "a4c|a2c|plax"):
        assert f"<{choices}>" in text, choices


def test_old_spellings_still_work_and_warn(repository, tmp_path):
    manifest = video_manifest(tmp_path / "data", 1)
    result = run_cli("cmr", str(manifest), "--out", str(tmp_path / "out"), "--view", "A4C", "--tasks", "scar",
                     "--backend", "onnxruntime", "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    assert "warning: --tasks is deprecated and will be removed in the next release: use --task" in result.stderr
    assert pd.read_csv(tmp_path / "out" / "predictions.csv").columns.tolist()[-1] == "scar_prob"
    result = run_cli("export", "--untrained", "--views=A4C", "--tasks", "scar", "--families", "cmr",
                     "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    assert all(f"warning: --{old} is deprecated" in result.stderr for old in ("views", "tasks", "families"))
    assert "cmr_a4c_scar: max |onnx - torch| already exported" in result.stdout


def test_torch_only_options_are_refused_with_other_backends(repository, tmp_path):
    manifest = video_manifest(tmp_path / "data", 1)
    result = run_cli("cmr", str(manifest), "--out", str(tmp_path / "out"), "--view", "A4C", "--task", "scar",
                     "--backend", "onnxruntime", "--graph", "compile", "--repository", str(repository))
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --graph: only with --backend torch (other backends read the exported "
                                     "models of --repository)")
    assert not Path(tmp_path / "out").exists()


def test_opening_a_pipeline_changes_nothing_and_returns_what_it_learned(repository, tmp_path):
    """Shards record `Inference.learned` (JSON); the pipeline itself is left as it was."""
    from echodeploy.client.runs.cmr import CmrOptions, CmrPipeline
    from echodeploy.client.runs.inputs import read_inputs

    pipeline = CmrPipeline(read_inputs(video_manifest(tmp_path / "data", 1), "A4C"), CmrOptions(tasks=("scar",)))
    before = dict(vars(pipeline))
    inference = pipeline.open(OnnxRuntimeBackend(repository))
    assert vars(pipeline).keys() == before.keys() and all(vars(pipeline)[k] is v for k, v in before.items())
    assert inference.learned["untrained"] == ["cmr_a4c_scar"]
    assert inference.learned["view_models"]["cmr_a4c_scar"]["task"] == "scar"
    assert json.loads(json.dumps(inference.learned)) == inference.learned

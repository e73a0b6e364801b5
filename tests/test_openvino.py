"""The OpenVINO embedded backend against ONNX Runtime on exported models, per-model precision,
and the choice of the default embedded backend."""

import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pandas as pd
import pytest
from conftest import run_cli
from onnx import numpy_helper

from echodeploy.backends.base import check_model
from echodeploy.backends.embedded import choose_embedded, probe_inputs
from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
from echodeploy.backends.openvino import OpenVinoBackend
from echodeploy.benchmarks.bench import model_precision
from echodeploy.client.runs.cmr import CmrOptions, run_cmr
from echodeploy.client.runs.inputs import read_inputs
from echodeploy.client.runs.mmode import MModeOptions, read_mmode_inputs, run_mmode
from echodeploy.errors import EchodeployError
from echodeploy.export.mmode import export_mmode_models
from echodeploy.export.onnx_export import read_metadata
from echodeploy.export.precision import Precisions, parse_precisions
from echodeploy.repository import model_file
from echodeploy.samples import synthetic_echo, synthetic_mmode, write_avi, write_mmode_dicom
from echodeploy.specs import MMODE_LVID, MMODE_QUALITY, cmr_model, mmode_model

SPECS = [cmr_model("A4C", "scar"), cmr_model("A4C", "t1"), mmode_model(MMODE_QUALITY), mmode_model(MMODE_LVID)]


@pytest.fixture(scope="module")
def engines(mmode_repository):
    pair = OnnxRuntimeBackend(mmode_repository), OpenVinoBackend(mmode_repository)
    yield pair
    for engine in pair:
        engine.close()


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
@pytest.mark.slow
def test_openvino_matches_onnxruntime(engines, spec):
    """fp32 parity on two batch sizes; the segmentation model is compared on its mask (identity weights)."""
    reference, openvino = engines
    check_model(spec, openvino.model_info(spec.name))
    assert openvino.model_info(spec.name).metadata == reference.model_info(spec.name).metadata
    for batch in (1, 3):  # 3: split unevenly over the streams of the throughput hint
        feeds = probe_inputs(spec, batch, seed=batch)
        expected = reference.infer(spec.name, feeds)[spec.outputs[0].name]
        got = openvino.infer(spec.name, feeds)[spec.outputs[0].name]
        assert got.shape == expected.shape and len(got) == batch
        if spec.name == MMODE_LVID:
            assert set(np.unique(expected)) <= {0.0, 1.0} and ((got == expected).mean() >= 0.999)
        else:  # CardioNet: OpenVINO's MVN after a convolution rounds ~20x more than ONNX Runtime's on
            # near-empty ReLU maps (docs/BENCHMARKS.md), up to 3e-4 in probability: `auto` then refuses it
            np.testing.assert_allclose(got, expected, atol=1e-3 if spec.name == MMODE_QUALITY else 1e-4, rtol=0)


@pytest.mark.slow
def test_batches_split_over_streams_equal_one_request(mmode_repository):
    """The throughput hint's streams each run part of a batch; joined, they equal one latency request."""
    spec = cmr_model("A4C", "scar")
    split, whole = OpenVinoBackend(mmode_repository), OpenVinoBackend(mmode_repository, hint="latency")
    assert len(split._requests(spec.name)) >= min(2, len(os.sched_getaffinity(0)))
    feeds = probe_inputs(spec, 5, seed=3)
    got = split.infer(spec.name, feeds)
    assert set(got) == {output.name for output in spec.outputs}
    for name, expected in whole.infer(spec.name, feeds).items():
        assert got[name].shape == expected.shape
        np.testing.assert_allclose(got[name], expected, atol=1e-5, rtol=0)
    only = split.infer(spec.name, feeds, [spec.outputs[0].name])
    np.testing.assert_array_equal(only[spec.outputs[0].name], got[spec.outputs[0].name])


def test_hint_benchmark_prints_both_hints(mmode_repository):
    result = subprocess.run([sys.executable, "-m", "echodeploy.benchmarks.openvino_streams", "--repository",
                             str(mmode_repository), "--models", MMODE_QUALITY, "--batch", "2", "--rounds", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"{MMODE_QUALITY} batch 2: items/s latency ") and " throughput " in line
    assert float(line.rsplit(" ", 1)[1].rstrip("x")) > 0


@pytest.mark.slow
def test_bulk_runs_through_openvino_equal_onnxruntime(engines, tmp_path):
    for i in range(3):
        write_avi(tmp_path / "echo" / f"v{i}.avi", synthetic_echo(34, seed=i))
    write_mmode_dicom(tmp_path / "mouse.dcm", synthetic_mmode(length=1800, heart_rate_bpm=450, seed=0)[0])
    cmr, mmode = {}, {}
    for engine in engines:
        out = tmp_path / engine.name
        run_cmr(read_inputs(tmp_path / "echo", "A4C"), engine, out / "cmr",
                CmrOptions(tasks=("scar", "t1"), batch_size=2, workers=0))
        cmr[engine.name] = pd.read_csv(out / "cmr" / "predictions.csv").drop(columns="decode_s")  # a timing
        run_mmode(read_mmode_inputs(tmp_path / "mouse.dcm", 22.0), engine, out / "mmode",
                  MModeOptions(figures=False, batch_size=4))
        mmode[engine.name] = pd.read_csv(out / "mmode" / "features_stats.csv")
    assert cmr["openvino"]["status"].tolist() == ["ok"] * 3
    pd.testing.assert_frame_equal(cmr["openvino"], cmr["onnxruntime"], check_exact=False, atol=1e-4, rtol=0)
    assert mmode["openvino"]["status"].tolist() == ["ok"]
    # beat features of random weights are chaotic (a flipped mask pixel moves a beat): the file's
    # reading and windows must agree; model-level parity is the test above
    columns = ["file", "status", "windows", "duration_s"]
    pd.testing.assert_frame_equal(mmode["openvino"][columns], mmode["onnxruntime"][columns])


def test_per_model_precision_syntax():
    assert parse_precisions("int8") == Precisions("int8")
    plan = parse_precisions("mmode_lvid=int8, MMODE_QUALITY=fp32")
    assert (plan.of(MMODE_LVID), plan.of(MMODE_QUALITY), plan.of("cmr_a4c_scar")) == ("int8", "fp32", "fp32")
    assert parse_precisions("fp16,cmr_a4c_scar=int8").of("cmr_a2c_wma") == "fp16"
    for bad, reason in (("mmode_lvid=int4", "--precision must be one of"), ("nope=int8", "unknown model 'nope'"),
                        ("bf16", "no bfloat16 convolution kernels")):
        with pytest.raises(EchodeployError, match=reason):
            parse_precisions(bad)


def test_per_model_precision_round_trip(mmode_repository, tmp_path):
    """int8 CardioNet beside fp32 QuickNAT: each file says its own precision, and so does bench."""
    repo = tmp_path / "repo"
    model_file(repo, MMODE_LVID).parent.mkdir(parents=True)
    shutil.copyfile(model_file(mmode_repository, MMODE_LVID), model_file(repo, MMODE_LVID))  # current: kept
    results = export_mmode_models(repo, precision=parse_precisions(f"{MMODE_QUALITY}=int8,fp32"))
    exported = {spec.name: report for spec, report, _ in results}
    assert exported[MMODE_LVID] is None and exported[MMODE_QUALITY].precision == "int8"
    assert read_metadata(model_file(repo, MMODE_QUALITY))["echodeploy.precision"] == "int8"
    assert "echodeploy.agreement" in read_metadata(model_file(repo, MMODE_QUALITY))
    assert read_metadata(model_file(repo, MMODE_LVID))["echodeploy.precision"] == "fp32"
    engine = OpenVinoBackend(repo)
    assert [model_precision(engine, mmode_model(n)) for n in (MMODE_QUALITY, MMODE_LVID)] == ["int8", "fp32"]
    feeds = probe_inputs(mmode_model(MMODE_QUALITY), 2)
    int8 = engine.infer(MMODE_QUALITY, feeds)["quality_prob"]
    assert np.abs(int8 - OnnxRuntimeBackend(repo).infer(MMODE_QUALITY, feeds)["quality_prob"]).max() < 0.05


def _perturbed_copy(repository, repo, name):
    """`name` from `repository` with its first weight tensor scaled: same tensors, other outputs."""
    model = onnx.load(str(model_file(repository, name)))
    weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1)
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    model_file(repo, name).parent.mkdir(parents=True)
    onnx.save(model, str(model_file(repo, name)))


@pytest.mark.slow
def test_default_backend_is_the_fastest_that_matches(repository, tmp_path):
    spec = cmr_model("A4C", "scar")
    choice = choose_embedded({"onnxruntime": OnnxRuntimeBackend(repository),
                              "openvino": OpenVinoBackend(repository)}, [spec])
    assert set(choice.seconds) == {"onnxruntime", "openvino"} and not choice.refused
    assert choice.backend.name == min(choice.seconds, key=choice.seconds.get)
    assert choice.line.startswith(f"backend: {choice.backend.name} (")
    assert all(f"{name} {s:.3g} s" in choice.line for name, s in choice.seconds.items())
    # a candidate whose outputs differ from ONNX Runtime's is never chosen, however fast
    _perturbed_copy(repository, tmp_path, spec.name)
    choice = choose_embedded({"onnxruntime": OnnxRuntimeBackend(repository),
                              "openvino": OpenVinoBackend(tmp_path)}, [spec])
    assert choice.backend.name == "onnxruntime" and set(choice.seconds) == {"onnxruntime"}
    assert choice.refused["openvino"].startswith("openvino fails parity on cmr_a4c_scar (max |diff|")
    assert choice.refused["openvino"] in choice.line


@pytest.mark.slow
def test_cli_names_the_backend_on_the_first_line(repository, tmp_path):
    write_avi(tmp_path / "data" / "v.avi", synthetic_echo(34, seed=5))
    result = run_cli("cmr", str(tmp_path / "data"), "--view", "A4C", "--task", "scar", "--out",
                     str(tmp_path / "out"), "--repository", str(repository))
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(("backend: onnxruntime (", "backend: openvino (")) and "--backend to choose" in first
    again = run_cli("cmr", str(tmp_path / "data"), "--view", "A4C", "--task", "scar", "--out",
                    str(tmp_path / "again"), "--repository", str(repository))
    assert again.stdout.splitlines()[0].startswith(first.split(" (")[0]) and "as measured before" in again.stdout
    tables = [pd.read_csv(tmp_path / run / "predictions.csv").drop(columns="decode_s") for run in ("out", "again")]
    pd.testing.assert_frame_equal(*tables)


BLOCK_OPENVINO = "import sys; sys.modules['openvino'] = None; from echodeploy.cli import app; app(sys.argv[1:])"


@pytest.mark.slow
def test_missing_extra_is_one_clear_line(repository, tmp_path):
    """Without the openvino package: --backend openvino fails in one line, the default falls back."""
    write_avi(tmp_path / "data" / "v.avi", synthetic_echo(34, seed=5))
    args = ["cmr", str(tmp_path / "data"), "--view", "A4C", "--task", "scar", "--repository", str(repository)]
    chosen = subprocess.run([sys.executable, "-c", BLOCK_OPENVINO, *args, "--backend", "openvino", "--out",
                             str(tmp_path / "a")], capture_output=True, text=True, timeout=300)
    assert chosen.returncode == 2
    assert chosen.stderr.strip() == ("error: --backend openvino needs the openvino extra: "
                                     "pip install 'echodeploy[openvino]'")
    default = subprocess.run([sys.executable, "-c", BLOCK_OPENVINO, *args, "--out", str(tmp_path / "b")],
                             capture_output=True, text=True, timeout=300)
    assert default.returncode == 0, default.stderr
    assert default.stdout.splitlines()[0].startswith("backend: onnxruntime (")
    assert "openvino not installed" in default.stdout.splitlines()[0]


def test_index_free_unpooling_equals_max_unpool_with_ties():
    """QuickNAT's comparison-only unpooling puts each value where max-pool's index points, ties included."""
    import torch
    import torch.nn.functional as F

    from echodeploy.export.quicknat import QuickNAT

    rng = np.random.default_rng(0)
    skip = torch.from_numpy(rng.integers(0, 3, size=(2, 3, 8, 12)).astype(np.float32))  # many tied windows
    skip[0, 0] = 1.0  # a constant plane: every window ties four ways
    pooled, indices = F.max_pool2d(skip, 2, 2, return_indices=True)
    values = torch.from_numpy(rng.normal(size=pooled.shape).astype(np.float32))
    expected = F.max_unpool2d(values, indices, 2, 2)
    assert torch.equal(QuickNAT._max_unpool(values, skip), expected)


def test_triton_openvino_target(mmode_repository, tmp_path):
    """CPU-node configs for the NGC tritonserver's OpenVINO backend: schema-checked, no Python adapter."""
    from echodeploy.export.triton.repository import exported_models, parse_config, write_triton_repository

    for spec, _ in exported_models(mmode_repository):
        model_file(tmp_path, spec.name).parent.mkdir(parents=True)
        model_file(tmp_path, spec.name).symlink_to(model_file(mmode_repository, spec.name))
    names = write_triton_repository(tmp_path, "openvino", max_batch_size=4, instances=2)
    assert set(names) == {"cmr_a4c_scar", "cmr_a4c_t1", MMODE_QUALITY, MMODE_LVID, "cmr_a4c"}
    for name in names[:-1]:
        config = parse_config((tmp_path / name / "config.pbtxt").read_text())
        assert config.backend == "openvino" and config.default_model_filename == "model.onnx"
        assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
        assert config.instance_group[0].count == 2 and config.max_batch_size == 4
        assert config.parameters["PERFORMANCE_HINT"].string_value == "LATENCY"
        assert config.parameters["echodeploy.model"].string_value == name
        assert not (tmp_path / name / "1" / "model.py").exists()
    assert parse_config((tmp_path / "cmr_a4c" / "config.pbtxt").read_text()).platform == "ensemble"
    assert (tmp_path / "TARGET").read_text() == "openvino\n"
    # the local tritonserver (nvidia-pytriton) has no OpenVINO backend: serve says so before starting
    served = run_cli("serve", "--repository", str(tmp_path), "--no-setup", timeout=60)
    assert served.returncode == 2, served.stdout + served.stderr
    assert "openvino-target repository" in served.stderr and "NGC tritonserver image" in served.stderr
    assert "Traceback" not in served.stderr


def test_exported_quicknat_has_no_slow_operators(mmode_repository):
    """What the profiles found slow is gone from the graph: PRelu (now LeakyRelu) and MaxPool indices."""
    graph = onnx.load(str(model_file(mmode_repository, MMODE_LVID))).graph
    ops = [node.op_type for node in graph.node]
    assert "PRelu" not in ops and ops.count("LeakyRelu") == 27
    assert all(len(node.output) == 1 for node in graph.node if node.op_type == "MaxPool")
    assert "ScatterElements" not in ops

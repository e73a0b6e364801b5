"""The `gpu-torch` Triton target: configs through Triton's schema, model folders that need no
echodeploy, weights that match the ONNX export; served by the real tritonserver when its
environment has torch."""

import re

import numpy as np
import pytest
import torch

from echodeploy.backends.torch import TorchBackend
from echodeploy.errors import ExportError
from echodeploy.export.modules import checkpoint_loader, served_module
from echodeploy.export.served import ServedClipModel
from echodeploy.export.triton.repository import NETWORK_SOURCES, NETWORKS, parse_config, write_triton_repository
from echodeploy.repository import model_file
from echodeploy.specs import MASK_PARITY, MMODE_WINDOW, cmr_model, mmode_model

pytestmark = pytest.mark.slow  # each test writes a gpu-torch repository (torch weights per model)

MODELS = ("cmr_a4c_scar", "mmode_quality", "mmode_lvid")


@pytest.fixture()
def torch_repository(mmode_repository, tmp_path):
    """A repository of its own: the session's ONNX files linked, gpu-torch configs written here."""
    repo = tmp_path / "repo"
    for name in MODELS:
        model_file(repo, name).parent.mkdir(parents=True)
        model_file(repo, name).symlink_to(model_file(mmode_repository, name))
    write_triton_repository(repo, "gpu-torch", max_batch_size=4)
    return repo


def test_configs_parse_and_folders_are_self_contained(torch_repository):
    for name in MODELS:
        config = parse_config((torch_repository / name / "config.pbtxt").read_text())
        assert config.backend == "python" and config.max_batch_size == 4
        assert config.instance_group[0].kind == config.instance_group[0].KIND_MODEL
        assert config.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
        assert config.parameters["echodeploy.model"].string_value == name
        version = torch_repository / name / "1"
        assert {p.name for p in (version / NETWORKS).iterdir()} >= set(NETWORK_SOURCES)
        for source in [version / "model.py", *(version / NETWORKS).glob("*.py")]:
            assert not re.search(r"^\s*(from|import) echodeploy[.\s]", source.read_text(), re.M), source
    ensemble = parse_config((torch_repository / "cmr_a4c" / "config.pbtxt").read_text())
    assert ensemble.platform == "ensemble"
    assert (torch_repository / "TARGET").read_text().strip() == "gpu-torch"


def test_weights_are_the_exported_ones(torch_repository):
    """model.pt loads weights-only and strictly into the served module and equals the seeded one."""
    spec = cmr_model("A4C", "scar")
    state = torch.load(torch_repository / spec.name / "1" / "model.pt", weights_only=True)
    reference, _ = served_module(spec, None, 0)
    from echodeploy.export.r2plus1d import R2Plus1D18

    rebuilt = ServedClipModel(R2Plus1D18(num_classes=1), spec.kind)
    rebuilt.load_state_dict(state, strict=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_other_weights_are_refused(torch_repository):
    with pytest.raises(ExportError, match="not made from --untrained --seed 5"):
        write_triton_repository(torch_repository, "gpu-torch", seed=5)


def test_switching_target_removes_the_torch_files(torch_repository):
    write_triton_repository(torch_repository, "cpu")
    version = torch_repository / "mmode_quality" / "1"
    assert not (version / "model.pt").exists() and not (version / NETWORKS).exists()
    assert "onnxruntime" in (version / "model.py").read_text()


def test_tritonserver_serves_torch_models_like_onnxruntime(torch_repository, server_env, tmp_path):
    """Real tritonserver (CPU here: the adapter falls back), CMR ensemble and both M-mode models."""
    from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
    from echodeploy.backends.triton import TritonBackend
    from echodeploy.client.tritonserver import TritonServer, has_torch
    from echodeploy.export.calibration import calibration_feeds

    if not has_torch(server_env):
        pytest.skip(f"{server_env} has no torch (make server-env-torch, or ECHODEPLOY_SERVER_ENV=an env with it)")
    log = tmp_path / "tritonserver.log"
    embedded, in_process = OnnxRuntimeBackend(torch_repository), TorchBackend(loader=checkpoint_loader(None))
    with TritonServer(torch_repository, env=server_env, log_path=log) as server:
        client = TritonBackend([server.grpc_url])
        try:
            for spec in (cmr_model("A4C", "scar"), mmode_model("mmode_quality"), mmode_model("mmode_lvid")):
                feeds = calibration_feeds(spec, 3, seed=400)
                feeds = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
                output = spec.outputs[0].name
                got = client.infer(spec.name, feeds, [output])[output]
                want = embedded.infer(spec.name, feeds, [output])[output]
                assert np.abs(got - in_process.infer(spec.name, feeds, [output])[output]).max() <= 1e-4, spec.name
                if spec.name == "mmode_lvid":  # thresholded pixels: one at logit ~0 may flip between runtimes
                    flipped = np.abs(got - want)[:, 0].sum(axis=-1)  # per window, from the per-column counts
                    assert flipped.max() <= (1 - MASK_PARITY) * MMODE_WINDOW**2, flipped
                else:
                    assert np.abs(got - want).max() <= 1e-4, spec.name
        finally:
            client.close()
    assert f"on {'cuda:0' if torch.cuda.is_available() else 'cpu'}, fp32" in log.read_text()

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from echodeploy.errors import ExportError
from echodeploy.export.cmr import export_cmr_models, seeded_network
from echodeploy.export.onnx_export import OPSET, validate
from echodeploy.export.served import ServedClipModel
from echodeploy.repository import model_file
from echodeploy.specs import TASKS, cmr_model

EXPORTED_TASKS = ("scar", "t1")  # what the session `repository` fixture exports


def test_every_task_kind_has_an_export_test():
    assert {TASKS[t].kind for t in EXPORTED_TASKS} == {t.kind for t in TASKS.values()}


@pytest.mark.parametrize("task", EXPORTED_TASKS)
def test_exported_model_contract(repository, task):
    spec = cmr_model("A4C", task)
    path = model_file(repository, spec.name)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= OPSET
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["echodeploy.view"] == "A4C" and meta["echodeploy.task"] == task
    assert meta["echodeploy.kind"] == TASKS[task].kind
    assert meta["echodeploy.untrained"] == "true" and meta["echodeploy.random_seed"] == "0"
    assert '"frames": 16' in meta["echodeploy.clip"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["clip"]
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert [o.name for o in session.get_outputs()] == [TASKS[task].output]
    for batch in (1, 2, 5):
        clips = np.random.default_rng(batch).integers(0, 256, (batch, 3, 16, 112, 112), dtype=np.uint8)
        (out,) = session.run(None, {"clip": clips})
        with torch.no_grad():
            ref = ServedClipModel(seeded_network(spec, 0), spec.kind)(torch.from_numpy(clips)).numpy()
        assert out.shape == (batch, 1)
        np.testing.assert_allclose(out, ref, atol=1e-4)
        if TASKS[task].kind == "binary":
            assert ((out > 0) & (out < 1)).all()


def test_unchanged_export_is_skipped_and_changed_seed_re_exports(repository, tmp_path):
    (result,) = export_cmr_models(repository, views=("A4C",), tasks=("scar",), seed=0)
    assert result.report is None
    (result,) = export_cmr_models(tmp_path, views=("A4C",), tasks=("scar",), seed=1)
    assert result.report is not None and max(result.report.max_abs_diff.values()) <= 1e-4


def test_validation_fails_loudly_on_a_parity_mismatch(repository):
    spec = cmr_model("A4C", "scar")
    other = ServedClipModel(seeded_network(spec, seed=123), spec.kind)
    with pytest.raises(ExportError, match="scar_prob: max abs difference"):
        validate(model_file(repository, spec.name), other, spec, atol=1e-9)


def test_missing_checkpoint_in_weights_dir(tmp_path):
    from echodeploy.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"expected A2C_WallMotoion\.pt"):
        export_cmr_models(tmp_path / "repo", views=("A2C",), tasks=("wma",), weights_dir=tmp_path)

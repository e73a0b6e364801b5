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
from echodeploy.specs import (
    BN_MODES,
    MMODE_LVID,
    MMODE_QUALITY,
    TASKS,
    VIEWS,
    cmr_model,
    mmode_model,
    model_spec,
    registered_models,
)

EXPORTED_TASKS = ("scar", "t1")  # what the session `repository` fixture exports


ONNX_TYPES = {"uint8": "tensor(uint8)", "float32": "tensor(float)"}


def _layout(tensors, dynamic: dict[str, tuple[int, ...]]) -> list[tuple[str, list]]:
    """(type, fixed per-item dimensions) of ONNX Runtime's tensors; `dynamic` names free dimensions."""
    return [(t.type, [d for i, d in enumerate(t.shape[1:]) if i not in dynamic.get(t.name, ())]) for t in tensors]


def test_every_registered_model_matches_an_exported_graph(mmode_repository):
    """Walk every registered spec: its name resolves back to it, its metadata says what it is, and its
    tensors are those of the exported graph of its family and kind (the session exports one of each)."""
    exported = {}
    for name in (*(cmr_model("A4C", t).name for t in EXPORTED_TASKS), MMODE_QUALITY, MMODE_LVID):
        spec = model_spec(name)
        exported[(spec.family, spec.kind)] = ort.InferenceSession(str(model_file(mmode_repository, name)),
                                                                  providers=["CPUExecutionProvider"])
    specs = registered_models()
    assert len({s.name + s.bn_mode for s in specs}) == len(specs) == len(VIEWS) * len(TASKS) + 2 * len(BN_MODES)
    for spec in specs:
        assert (mmode_model(spec.name, spec.bn_mode) if spec.bn_mode else model_spec(spec.name)) == spec
        assert spec.metadata()["echodeploy.model"] == spec.name and spec.metadata()["echodeploy.kind"] == spec.kind
        if spec.family == "cmr":
            assert spec.name == f"cmr_{spec.view.lower()}_{spec.task}" and spec.kind == TASKS[spec.task].kind
            assert [t.name for t in spec.outputs] == [TASKS[spec.task].output]
        assert (spec.family, spec.kind) in exported, f"{spec.name}: no export test covers its kind {spec.kind}"
        session = exported[(spec.family, spec.kind)]
        dynamic = {t.name: t.dynamic_dims for t in (*spec.inputs, *spec.outputs)}
        assert [t.name for t in session.get_inputs()] == [t.name for t in spec.inputs], spec.name
        assert _layout(session.get_inputs(), dynamic) == [
            (ONNX_TYPES[t.dtype], [d for i, d in enumerate(t.shape) if i not in t.dynamic_dims]) for t in spec.inputs]
        assert _layout(session.get_outputs(), dynamic | {o.name: spec.outputs[0].dynamic_dims
                                                         for o in session.get_outputs()}) == [
            (ONNX_TYPES[t.dtype], [d for i, d in enumerate(t.shape) if i not in t.dynamic_dims]) for t in spec.outputs]


@pytest.mark.parametrize("task", EXPORTED_TASKS)
@pytest.mark.slow
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


@pytest.mark.slow
def test_unchanged_export_is_skipped_and_changed_seed_re_exports(repository, tmp_path):
    (result,) = export_cmr_models(repository, views=("A4C",), tasks=("scar",), seed=0)
    assert result.report is None
    (result,) = export_cmr_models(tmp_path, views=("A4C",), tasks=("scar",), seed=1)
    assert result.report is not None and max(result.report.max_abs_diff.values()) <= 1e-4


@pytest.mark.slow
def test_validation_fails_loudly_on_a_parity_mismatch(repository):
    spec = cmr_model("A4C", "scar")
    other = ServedClipModel(seeded_network(spec, seed=123), spec.kind)
    with pytest.raises(ExportError, match="scar_prob: max abs difference"):
        validate(model_file(repository, spec.name), other, spec, atol=1e-9)


def test_missing_checkpoint_in_weights_dir(tmp_path):
    from echodeploy.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"expected A2C_WallMotoion\.pt"):
        export_cmr_models(tmp_path / "repo", views=("A2C",), tasks=("wma",), weights_dir=tmp_path)

import pickle

import pytest
import torch
from conftest import fixture_keys

from echodeploy.errors import CheckpointError
from echodeploy.export.cmr import load_cmr_network
from echodeploy.export.r2plus1d import R2Plus1D18


def _published_like_state(seed: int = 0) -> dict:
    """Random tensors with exactly the published keys, shapes and dtypes, saved with `m.`."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in fixture_keys("r2plus1d_18")["keys"]:
        if dtype == "int64":
            state["m." + key] = torch.tensor(7)
        else:
            state["m." + key] = torch.rand(shape, generator=generator) + 0.5
    return state


def test_state_dict_matches_published_layout():
    fixture = fixture_keys("r2plus1d_18")
    net = R2Plus1D18(num_classes=1)
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in net.state_dict().items()]
    assert got == fixture["keys"]
    assert sum(p.numel() for p in net.parameters()) == fixture["params"]


def test_flops_match_published_count():
    from torch.utils.flop_counter import FlopCounterMode

    net = R2Plus1D18().eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = net(torch.zeros(1, 3, 16, 112, 112))
    assert counter.get_total_flops() == fixture_keys("r2plus1d_18")["flops"]
    assert out.shape == (1, 1)


def test_loads_cardiac_mri_checkpoint_strictly(tmp_path):
    state = _published_like_state()
    torch.save(state, tmp_path / "A4C_Scar.pt")
    net = load_cmr_network(tmp_path / "A4C_Scar.pt")
    loaded = net.state_dict()
    assert torch.equal(loaded["layer2.0.conv1.0.0.weight"], state["m.layer2.0.conv1.0.0.weight"])
    assert torch.equal(loaded["fc.bias"], state["m.fc.bias"])
    assert not net.training


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _published_like_state()
    del state["m.fc.weight"]
    state["m.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"missing keys: fc\.weight.*unexpected keys: extra\.weight"):
        load_cmr_network(tmp_path / "bad.pt")


def test_shape_mismatch_is_named(tmp_path):
    state = _published_like_state()
    state["m.fc.weight"] = torch.zeros(2, 512)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"fc\.weight \(2, 512\) != \(1, 512\)"):
        load_cmr_network(tmp_path / "bad.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    torch.save(_published_like_state(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a loadable weights-only checkpoint"):
        load_cmr_network(tmp_path / "cut.pt")


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickle_that_runs_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"m.fc.weight": _Exploit()}))
    with pytest.raises(CheckpointError, match="weights-only"):
        load_cmr_network(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()

"""Security: weights-only checkpoints, models only from the repository given, loopback servers,
and no DICOM patient identifiers in any output (CSV, JSON, journal, figures, logs)."""

import pickle
import re
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from echodeploy.errors import BackendError, CheckpointError
from echodeploy.samples import synthetic_echo, synthetic_mmode, write_dicom_cine, write_mmode_dicom

# Every value is unique, so a match anywhere in an output means it leaked.
IDENTIFIERS = {
    "PatientName": "Leakcheck^Anna", "PatientID": "PID-7731-SECRET", "PatientBirthDate": "19450317",
    "OtherPatientIDs": "OPID-5542-SECRET", "InstitutionName": "St Leakwood Hospital",
    "AccessionNumber": "ACC-99812", "ReferringPhysicianName": "Refdoc^Bertram",
    "StudyDescription": "Echo for Leakcheck", "PatientAddress": "12 Leak Lane",
}


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


@pytest.mark.parametrize("loader", ["cmr", "cardionet", "quicknat"])
def test_every_checkpoint_loader_refuses_pickled_code(tmp_path, monkeypatch, loader):
    from echodeploy.export.cmr import load_cmr_network
    from echodeploy.export.mmode import load_cardionet, load_quicknat

    load = {"cmr": load_cmr_network, "cardionet": lambda p: load_cardionet(p, "seed"),
            "quicknat": lambda p: load_quicknat(p, "seed")}[loader]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"net_state_dict": _Exploit()}))
    with pytest.raises(CheckpointError, match="weights-only"):
        load(tmp_path / "evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_models_load_only_from_the_repository_given(repository, tmp_path, monkeypatch):
    from echodeploy.backends.onnxruntime import OnnxRuntimeBackend

    monkeypatch.chdir(repository.parent)  # a real repository sits in the working directory...
    (tmp_path / "empty").mkdir()
    backend = OnnxRuntimeBackend(tmp_path / "empty")  # ...but the one given is empty
    assert not backend.has_model("cmr_a4c_scar")
    with pytest.raises(BackendError, match=re.escape(str(tmp_path / "empty" / "cmr_a4c_scar"))):
        backend.model_info("cmr_a4c_scar")
    assert OnnxRuntimeBackend(repository).model_info("cmr_a4c_scar").untrained


def test_servers_bind_to_loopback_by_default():
    import inspect

    from echodeploy.cli.server import serve
    from echodeploy.client.tritonserver import TritonServer

    assert TritonServer(Path("repo")).host == "127.0.0.1"
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "Exposure:" in compose and "127.0.0.1 only" in compose  # documented in the file
    ports = re.findall(r'^\s*- "(.+:\d+:\d+)"', compose, flags=re.M)
    assert ports and all(p.startswith("${TRITON_BIND:-127.0.0.1}:") for p in ports)


def _leaks(text: str) -> list[str]:
    return [value for value in IDENTIFIERS.values() if value in text]


def _all_output(folder: Path) -> str:
    """Every file under `folder` as text (PNG text chunks and all), latin-1 so no byte is lost."""
    return "".join(p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_no_patient_identifiers_in_any_output(mmode_repository, tmp_path):
    cine = tmp_path / "cine"
    write_dicom_cine(cine / "study1" / "echo.dcm", synthetic_echo(34, height=64, width=80), encoding="rle",
                     patient=IDENTIFIERS)
    # malformed values: converting them would fail the read and print them in the reason
    malformed = write_dicom_cine(cine / "study1" / "malformed.dcm", synthetic_echo(34, height=64, width=80),
                                 patient={**IDENTIFIERS, "PatientWeight": "1234567890123456"})
    malformed.write_bytes(malformed.read_bytes().replace(b"1234567890123456", b"heavy-SECRET-kg!"))  # not a DS
    result = run_cli("--verbose", "cmr", str(cine), "--out", str(tmp_path / "cmr_out"), "--view", "A4C", "--task", "scar",
                     "--workers", "0", "--repository", str(mmode_repository))
    assert result.returncode == 0, result.stderr  # both files read: identifying elements are never parsed
    assert _leaks(result.stdout + result.stderr) == [] and "-SECRET" not in result.stderr
    assert _leaks(_all_output(tmp_path / "cmr_out")) == [] and "-SECRET" not in _all_output(tmp_path / "cmr_out")

    mmode = tmp_path / "mmode"
    write_mmode_dicom(mmode / "mouse.dcm", synthetic_mmode(length=900, height=120)[0], frame_width=240,
                      step=80, patient=IDENTIFIERS)
    result = run_cli("--verbose", "mmode", str(mmode), "--mass", "20", "--out", str(tmp_path / "mmode_out"),
                     "--repository", str(mmode_repository))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "mmode_out" / "figures").iterdir())  # figures were drawn
    assert _leaks(result.stdout + result.stderr) == []
    assert _leaks(_all_output(tmp_path / "mmode_out")) == []

"""Adversarial manifests through `echodeploy cmr` (embedded backend, real files): every row
comes back with a status, and what users would want to know is said."""

import json
import os

import pandas as pd
import pytest
from conftest import run_cli

from echodeploy.samples import synthetic_echo, write_avi


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    write_avi(root / "a.avi", synthetic_echo(34, height=64, width=80, seed=1))
    write_avi(root / "b.avi", synthetic_echo(34, height=64, width=80, seed=2))
    outside = tmp_path_factory.mktemp("elsewhere")
    write_avi(outside / "c.avi", synthetic_echo(34, height=64, width=80, seed=3))
    return root, outside / "c.avi"


def cmr(manifest, out, repository, *extra):
    return run_cli("cmr", str(manifest), "--out", str(out), "--view", "A4C", "--task", "scar",
                   "--workers", "0", "--repository", str(repository), *extra)


@pytest.mark.slow
def test_every_row_gets_a_status_and_a_reason(data, repository, tmp_path):
    root, outside = data
    rows = [  # filename, TARGET
        ("a.avi", "1"), ("a.avi", "0"),  # duplicate rows: both run, a warning
        ("b.avi", ""), ("b.avi", "yes"), ("b.avi", "1e400"), ("b.avi", "7"),  # unusable TARGETs
        ("../../../../etc/passwd", "1"), (str(outside), "0"),  # outside the data root
        (str(root / "b.avi"), "0"),  # absolute, inside the root
        ("x" * 3000 + ".avi", "1"), ("", "0"),
    ]
    manifest = root / "m.csv"
    text = "Study_Unique_ID,filename,TARGET\n" + "".join(f"S{i % 3},{f},{t}\n" for i, (f, t) in enumerate(rows))
    manifest.write_bytes(b"\xef\xbb\xbf" + text.encode())  # Excel's UTF-8 with BOM
    result = cmr(manifest, tmp_path / "out", repository, "--target-task", "scar")
    assert result.returncode == 1, result.stderr
    table = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert table["filename"].tolist() == [f for f, _ in rows]
    assert table["status"].tolist() == ["ok"] * 6 + ["outside_root"] * 2 + ["ok", "missing", "missing"]
    assert "lies outside the data root" in table.loc[6, "error"] and "passwd" in table.loc[6, "error"]
    assert (table.loc[table.status != "ok", "error"].str.len() > 10).all()
    assert table.loc[0, "scar_prob"] == table.loc[1, "scar_prob"]  # duplicates give the same result
    assert "4 rows repeat a filename" in result.stderr
    assert "TARGET: 1 rows empty, 2 not a finite number" in result.stderr
    assert "1 values other than 0/1 for binary task scar" in result.stderr
    assert "2 rows name files outside the data root" in result.stderr and "--allow-outside-root" in result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["videos"]["all"]["n"] == 3  # rows 0, 1 and 8: the only usable targets
    assert "Traceback" not in result.stderr


def test_outside_root_opt_in_and_utf16_manifest(data, repository, tmp_path):
    root, outside = data
    manifest = tmp_path / "m.csv"  # Excel's "Unicode text"
    manifest.write_text(f"Video_Unique_ID\tfilename\nc\t{outside}\n".replace("\t", ","), encoding="utf-16")
    result = cmr(manifest, tmp_path / "out", repository, "--data-root", str(root), "--allow-outside-root")
    assert result.returncode == 0, result.stderr
    assert pd.read_csv(tmp_path / "out" / "predictions.csv")["status"].tolist() == ["ok"]


@pytest.mark.parametrize("content,message", [
    (b"", "not a readable CSV"),
    (b"Study_Unique_ID,Video_Unique_ID,TARGET\n", "header but no rows"),
    (b"Study,Video,Label\nS1,a,1\n", "manifest needs a Video_Unique_ID or a file column"),
    ("Video_Unique_ID\nvidéo\n".encode("latin-1"), "save it as 'CSV UTF-8'"),
])
def test_unusable_manifests_stop_with_one_clear_line(tmp_path, content, message):
    (tmp_path / "m.csv").write_bytes(content)
    result = cmr(tmp_path / "m.csv", tmp_path / "out", tmp_path)  # refused before any model is needed
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "out" / "predictions.csv")


@pytest.mark.parametrize("content,message", [
    (b"file,mass_g\n", "header but no rows"),
    ("file,mass_g\nsouris_é,20\n".encode("latin-1"), "save it as 'CSV UTF-8'"),
])
def test_unusable_mass_csv_stops_with_one_clear_line(tmp_path, content, message):
    (tmp_path / "mass.csv").write_bytes(content)
    (tmp_path / "m.dcm").write_bytes(b"\0" * 200)
    result = run_cli("mmode", str(tmp_path / "m.dcm"), "--mass-csv", str(tmp_path / "mass.csv"),
                     "--out", str(tmp_path / "out"), "--repository", str(tmp_path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr

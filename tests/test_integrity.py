"""Output integrity: the journal survives torn writes, the CSV matches the journal row for row,
and resume recomputes exactly the inputs that changed."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from echodeploy.client.runs.journal import Journal, fingerprint
from echodeploy.samples import synthetic_echo, write_avi


def test_torn_and_foreign_lines_are_dropped_and_the_file_repaired(tmp_path):
    path = tmp_path / "records.jsonl"
    with Journal(path) as journal:
        journal.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}])
    whole = path.read_bytes()
    path.write_bytes(whole + b'[1, 2]\n{"key": "c", "v": 3')  # a foreign line, then a crash mid-row
    with Journal(path) as journal:
        assert sorted(journal.records) == ["a", "b"]
        journal.append([{"key": "c", "v": 3}])
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "c"]
    path.write_bytes(whole[:-1])  # cut exactly before the last newline: the row is whole, the line is not
    with Journal(path) as journal:
        journal.append([{"key": "d", "v": 4}])
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "b", "d"]


def test_same_size_same_mtime_replacement_changes_the_fingerprint(tmp_path):
    path = tmp_path / "v.avi"
    path.write_bytes(b"a" * 100)
    before, stat = fingerprint(path), path.stat()
    assert fingerprint(path) == before  # unchanged file, unchanged fingerprint
    path.write_bytes(b"b" * 100)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what cp -p / rsync -t leave behind
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert fingerprint(path) != before


@pytest.fixture
def run(repository, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for i in range(3):
        write_avi(data / f"v{i}.avi", synthetic_echo(34, height=64, width=80, seed=i))
    (data / "bad.avi").write_bytes(b"junk" * 10)

    def cmr():
        return run_cli("cmr", str(data), "--out", str(out), "--view", "A4C", "--task", "scar,t1",
                       "--workers", "0", "--repository", str(repository))
    return data, out, cmr


def _journal(out):
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_csv_matches_the_journal_after_a_torn_write_and_resume(run):
    data, out, cmr = run
    assert cmr().returncode == 1  # bad.avi is unreadable
    journal = out / "records.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # crash mid-row
    result = cmr()
    assert "resuming: 3 of 4 rows already done" in result.stderr
    records = _journal(out)
    table = pd.read_csv(out / "predictions.csv").fillna({"error": ""})
    assert len(records) == len(table) == 4 and len({r["key"] for r in records}) == 4
    by_key = {r["key"]: r for r in records}
    for index, row in table.iterrows():
        record = by_key[f"{index}|{row['path']}"]
        assert (row["status"], row["error"]) == (record["status"], record["error"])
        for name in ("scar_prob", "t1_value"):
            np.testing.assert_allclose(row[name], record["outputs"].get(name, np.nan), rtol=1e-12)


@pytest.mark.slow
def test_resume_recomputes_changed_inputs_only(run):
    data, out, cmr = run
    cmr()
    first = {r["key"]: r for r in _journal(out)}
    stat = (data / "v1.avi").stat()
    write_avi(data / "v1.avi", synthetic_echo(34, height=64, width=80, seed=1)[::-1])  # same size
    os.utime(data / "v1.avi", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (data / "v1.avi").stat().st_size == stat.st_size
    result = cmr()
    assert "resuming: 3 of 4 rows already done" in result.stderr
    second = _journal(out)
    assert [r["key"] for r in second[len(first):]] == [k for k in first if "v1.avi" in k]
    table = pd.read_csv(out / "predictions.csv")
    assert table.loc[table.path.str.endswith("v1.avi"), "scar_prob"].item() != \
        first[next(k for k in first if "v1.avi" in k)]["outputs"]["scar_prob"]

"""`--shard K/N` and `echodeploy merge` on real files, and `--engine ray` without the extra."""

import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import assert_outputs_close, run_cli

from echodeploy.backends.onnxruntime import OnnxRuntimeBackend
from echodeploy.client.runs.cmr import CmrOptions, CmrPipeline
from echodeploy.client.runs.inputs import read_inputs
from echodeploy.client.runs.runner import run_bulk
from echodeploy.client.runs.shards import SHARD_FILE, Shard, merge_shards, row_names, run_shard, shard_of
from echodeploy.errors import EchodeployError
from echodeploy.samples import synthetic_echo, write_avi

NAMES = ["a", "b", "c", "d", "short", "gone"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("shard_data")
    for i, name in enumerate(NAMES[:4]):
        write_avi(root / f"{name}.avi", synthetic_echo(34, seed=i))
    write_avi(root / "short.avi", synthetic_echo(12))
    path = root / "m.csv"
    pd.DataFrame({"Study_Unique_ID": ["S1", "S1", "S2", "S3", "S3", "S4"], "Video_Unique_ID": NAMES,
                  "TARGET": [1, 0, 1, 0, 1, 0]}).to_csv(path, index=False)
    return path


def test_split_covers_every_row_once_and_added_rows_move_nothing(tmp_path):
    def shards_by_name(names):
        path = tmp_path / "m.csv"
        pd.DataFrame({"Video_Unique_ID": names}).to_csv(path, index=False)
        pipeline = CmrPipeline(read_inputs(path, "A4C"), CmrOptions())
        return dict(zip(row_names(pipeline), (shard_of(n, 4) for n in row_names(pipeline))))

    before = shards_by_name([f"video{i:03d}" for i in range(40)])
    assert set(before.values()) == {1, 2, 3, 4}  # every shard gets rows
    after = shards_by_name([f"new{i}" for i in range(20)] + [f"video{i:03d}" for i in range(40)])
    assert {name: after[name] for name in before} == before  # rows added in front: no finished row moves


@pytest.mark.slow
def test_merged_shards_equal_one_run_and_a_shard_rerun_resumes(manifest, repository, tmp_path):
    common = ["--view", "A4C", "--task", "scar", "--batch-size", "2", "--workers", "0", "--repository", str(repository),
              "--backend", "onnxruntime"]  # a named backend: `auto` would print what it measured first
    whole = run_cli("cmr", str(manifest), "--out", str(tmp_path / "whole"), *common)
    assert whole.returncode == 1, whole.stderr  # finished with row errors (short, gone)
    shard_rows = []
    for k in (1, 2):
        result = run_cli("cmr", str(manifest), "--out", str(tmp_path / f"s{k}"), "--shard", f"{k}/2", *common)
        assert result.returncode in (0, 1), result.stderr
        shard_rows.append(len(pd.read_csv(tmp_path / f"s{k}" / "predictions.csv")))
    assert sum(shard_rows) == len(NAMES)
    assert min(shard_rows) > 0
    merged = run_cli("merge", str(tmp_path / "s1"), str(tmp_path / "s2"), "--out", str(tmp_path / "merged"))
    assert merged.returncode == 1, merged.stderr
    assert merged.stdout.splitlines()[0] == whole.stdout.splitlines()[0]  # same "rows: ..." summary
    a, b = (pd.read_csv(tmp_path / d / "predictions.csv").drop(columns="decode_s") for d in ("whole", "merged"))
    assert a.drop(columns="scar_prob").equals(b.drop(columns="scar_prob"))
    assert_outputs_close(a, b, ["scar_prob"], atol=1e-6)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "whole" / "studies.csv"),
                                  pd.read_csv(tmp_path / "merged" / "studies.csv"), atol=1e-6)
    metrics = [json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("whole", "merged")]
    assert metrics[1]["videos"]["all"]["n"] == 4
    assert metrics[0]["videos"]["all"]["auc"] == pytest.approx(metrics[1]["videos"]["all"]["auc"], abs=1e-9)
    # the merged folder is a whole run's: rerunning the unsharded command there has nothing left to do
    again = run_cli("cmr", str(manifest), "--out", str(tmp_path / "merged"), *common)
    assert f"resuming: {len(NAMES)} of {len(NAMES)} rows already done" in again.stderr
    # a shard rerun resumes: one line removed from its journal is all it recomputes
    journal = tmp_path / "s1" / "records.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("".join(line + "\n" for line in lines[1:]))
    rerun = run_cli("cmr", str(manifest), "--out", str(tmp_path / "s1"), "--shard", "1/2", *common)
    assert f"resuming: {len(lines) - 1} of {len(lines)} rows already done" in rerun.stderr
    keys = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == len(lines)


def _shard(manifest, repository, out, shard, **options):
    pipeline = CmrPipeline(read_inputs(manifest, "A4C"), CmrOptions(tasks=("scar",), workers=0, **options))
    backend = OnnxRuntimeBackend(repository)
    return run_shard(pipeline, shard, backend, out, lambda part: run_bulk(part, backend, out, 0))


def test_mismatched_shards_are_refused_with_the_difference_named(manifest, repository, tmp_path):
    _shard(manifest, repository, tmp_path / "s1", Shard(1, 2))
    _shard(manifest, repository, tmp_path / "s2", Shard(2, 2), batch_size=3)
    with pytest.raises(EchodeployError, match="different options: batch_size 3 vs 10"):
        merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m")
    with pytest.raises(EchodeployError, match="shard 2/2 missing"):
        merge_shards([tmp_path / "s1"], tmp_path / "m")
    with pytest.raises(EchodeployError, match="shard 1/2 is given twice"):
        merge_shards([tmp_path / "s1", tmp_path / "s1"], tmp_path / "m")
    with pytest.raises(EchodeployError, match="holds shard cmr 2/2, not cmr shard 1/2"):
        _shard(manifest, repository, tmp_path / "s2", Shard(1, 2))
    longer = tmp_path / "longer.csv"
    pd.read_csv(manifest).pipe(lambda t: pd.concat([t, t.tail(1).assign(Video_Unique_ID="extra")])).to_csv(
        longer, index=False)
    _shard(longer, repository, tmp_path / "s2", Shard(2, 2))
    with pytest.raises(EchodeployError, match=f"different inputs: {len(NAMES) + 1} rows vs {len(NAMES)}"):
        merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m")
    _shard(manifest, repository, tmp_path / "s2", Shard(2, 2))
    record = json.loads((tmp_path / "s2" / SHARD_FILE).read_text())
    record["models"]["cmr_a4c_scar"]["echodeploy.random_seed"] = "7"  # as if exported from other weights
    (tmp_path / "s2" / SHARD_FILE).write_text(json.dumps(record))
    with pytest.raises(EchodeployError, match="different models: cmr_a4c_scar echodeploy.random_seed '7' vs '0'"):
        merge_shards([tmp_path / "s1", tmp_path / "s2"], tmp_path / "m")


def test_engine_ray_without_the_extra_is_one_line(manifest, tmp_path):
    hide_ray = "import sys; sys.modules['ray'] = None; from echodeploy.cli import app; app(prog_name='echodeploy')"
    result = subprocess.run([sys.executable, "-c", hide_ray, "cmr", str(manifest), "--view", "A4C",
                             "--out", str(tmp_path / "o"), "--engine", "ray"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --engine ray needs Ray, an optional extra: "
                                                  "pip install 'echodeploy[ray]'"]
    assert not (tmp_path / "o").exists()  # refused before anything ran

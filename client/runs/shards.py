"""`--shard K/N` and `echodeploy merge`: one bulk run split over the jobs of a batch scheduler
(Slurm job arrays, Kubernetes indexed Jobs), then combined into the files one run writes.

A row belongs to shard `sha256(name) mod N`, its name being its input's own name (file name or
Video_Unique_ID, never its position), so rows added to the inputs later do not move finished
rows to another shard. A shard runs the pipeline on its rows under the whole run's journal keys,
in a folder of its own, and records there what `merge` needs: the pipeline and its options, the
models' metadata (and what opening them told the pipeline), and the whole input table. `merge`
refuses shards that disagree (naming the difference), joins their journals, and writes the
outputs (and metrics) of all the rows.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from echodeploy.backends.base import Backend
from echodeploy.client.runs.cmr import CmrOptions, CmrPipeline
from echodeploy.client.runs.inputs import VIDEO
from echodeploy.client.runs.journal import Journal, write_atomic
from echodeploy.client.runs.mmode import MModeOptions, MModePipeline
from echodeploy.client.runs.record import ModelRecorder, merge_records, pipeline_options, run_context
from echodeploy.client.runs.runner import JOURNAL, Pipeline, RunSummary
from echodeploy.errors import EchodeployError

log = logging.getLogger(__name__)

SHARD_FILE, INPUTS_FILE = "shard.json", "inputs.json"
NAME_COLUMNS = ("file", "filename", "FileName", VIDEO, "path")  # a row's name: the first of these it has
IGNORED_OPTIONS = ("workers", "read_ahead")  # how fast a shard ran, not what it computed


@dataclasses.dataclass(frozen=True)
class Shard:
    index: int  # 1..count
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        index = count = 0
    if not 1 <= index <= count:
        raise EchodeployError(f"--shard takes K/N with 1 <= K <= N (e.g. 2/8), got {text!r}")
    return Shard(index, count)


def shard_of(name: str, count: int) -> int:
    """The shard (1..count) of a row named `name`: stable across runs, machines and Python versions."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % count + 1


def row_names(pipeline: Pipeline) -> list[str]:
    """Each row's name: its file name or video id, else its journal key."""
    inputs = pipeline.inputs
    names = []
    for i, key in enumerate(pipeline.keys):
        values = (inputs[c].iat[i] for c in NAME_COLUMNS if c in inputs.columns)
        names.append(next((v.strip() for v in values if isinstance(v, str) and v.strip()), key))
    return names


def shard_pipeline(pipeline: Pipeline, shard: Shard) -> Pipeline:
    """`pipeline` on the rows of `shard` only, with the whole run's journal keys."""
    rows = [i for i, name in enumerate(row_names(pipeline)) if shard_of(name, shard.count) == shard.index]
    part = copy.copy(pipeline)
    part.inputs = pipeline.inputs.iloc[rows].reset_index(drop=True)
    part.keys = [pipeline.keys[i] for i in rows]
    part.paths = [pipeline.paths[i] for i in rows]
    return part


def run_shard(pipeline: Pipeline, shard: Shard, backend: Backend, out_dir: Path,
              run: Callable[[Pipeline], RunSummary]) -> RunSummary:
    """Run shard `shard` of `pipeline` into `out_dir` with `run` (an engine), after recording it there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    part = shard_pipeline(pipeline, shard)
    recorder = ModelRecorder(backend)
    learned = part.open(recorder).learned  # checks the models and notes what they are
    record = {"pipeline": pipeline.name, "shard": [shard.index, shard.count], "rows": len(part.keys),
              "options": pipeline_options(pipeline), "models": recorder.models, "learned": learned}
    previous = out_dir / SHARD_FILE
    if previous.exists():
        found = _load(previous)
        if (found.get("pipeline"), found.get("shard")) != (record["pipeline"], record["shard"]):
            raise EchodeployError(f"{out_dir} holds shard {_label(found)}, not {pipeline.name} shard {shard}: "
                                  "give every shard an --out folder of its own")
    inputs_text = _inputs_json(pipeline.inputs)
    record["inputs_sha256"] = hashlib.sha256(inputs_text.encode()).hexdigest()
    write_atomic(out_dir / INPUTS_FILE, lambda tmp: tmp.write_text(inputs_text))
    write_atomic(previous, lambda tmp: tmp.write_text(json.dumps(record, indent=1)))
    log.info("shard %s: %d of %d %s", shard, len(part.keys), len(pipeline.keys), pipeline.counted)
    with run_context(shard=str(shard)):
        return run(part)


def merge_shards(folders: list[Path], out_dir: Path) -> RunSummary:
    """Join the shard folders of one run into `out_dir`: the journal and outputs of one unsharded run."""
    folders, out_dir = [Path(f) for f in folders], Path(out_dir)
    if out_dir.resolve() in {f.resolve() for f in folders}:
        raise EchodeployError(f"merge into a new folder, not into the shard folder {out_dir}")
    shards = []
    for folder in folders:
        if not (folder / SHARD_FILE).is_file():
            raise EchodeployError(f"{folder} is not a shard folder (no {SHARD_FILE}; was it run with --shard?)")
        shards.append(_load(folder / SHARD_FILE))
    _check_complete(folders, shards)
    for folder, shard in zip(folders[1:], shards[1:]):
        _check_same(folders[0], shards[0], folder, shard)
    inputs = _read_inputs(folders[0] / INPUTS_FILE, shards[0]["inputs_sha256"])
    pipeline = _rebuild(shards[0], inputs)
    records: dict[str, dict] = {}
    for folder in folders:
        with Journal(folder / JOURNAL) as journal:
            records.update(journal.records)
        if (folder / "figures").is_dir():
            shutil.copytree(folder / "figures", out_dir / "figures", dirs_exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / JOURNAL).unlink(missing_ok=True)
    with Journal(out_dir / JOURNAL) as journal:  # the merged folder resumes like an unsharded run's
        journal.append([records[key] for key in pipeline.keys if key in records])
        summary = pipeline.write_outputs(journal.records, out_dir, shards[0]["learned"])
    merge_records(folders, out_dir, len(pipeline.keys), summary.counts)
    return summary


def _label(record: dict) -> str:
    index, count = record.get("shard", ["?", "?"])
    return f"{record.get('pipeline', '?')} {index}/{count}"


def _load(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EchodeployError(f"{path}: not a readable shard record ({exc})") from exc
    if not isinstance(record, dict) or not {"pipeline", "shard", "options", "models", "learned", "inputs_sha256"} <= set(record):
        raise EchodeployError(f"{path}: not a shard record (written by an interrupted or other program?)")
    return record


def _check_complete(folders: list[Path], shards: list[dict]) -> None:
    counts = {shard["shard"][1] for shard in shards}
    if len(counts) > 1:
        raise EchodeployError("shards of different splits: " + ", ".join(
            f"{f} is {_label(s)}" for f, s in zip(folders, shards)))
    count = counts.pop()
    by_index: dict[int, list[Path]] = {}
    for folder, shard in zip(folders, shards):
        by_index.setdefault(shard["shard"][0], []).append(folder)
    repeated = {i: f for i, f in by_index.items() if len(f) > 1}
    if repeated:
        i, found = min(repeated.items())
        raise EchodeployError(f"shard {i}/{count} is given twice: {', '.join(map(str, found))}")
    missing = [f"{i}/{count}" for i in range(1, count + 1) if i not in by_index]
    if missing:
        raise EchodeployError(f"shard{'s' * (len(missing) > 1)} {', '.join(missing)} missing: merge needs every shard")


def _check_same(first_dir: Path, first: dict, folder: Path, shard: dict) -> None:
    """Refuse `shard` unless it ran the same pipeline, options, models and inputs as `first`; name the difference."""
    where = f"shard {_label(shard)} ({folder}) and shard {_label(first)} ({first_dir})"
    if shard["pipeline"] != first["pipeline"]:
        raise EchodeployError(f"{where} are different pipelines")
    options = [{k: v for k, v in s["options"].items() if k not in IGNORED_OPTIONS} for s in (shard, first)]
    if options[0] != options[1]:
        diff = _differences(*options)
        raise EchodeployError(f"{where} ran with different options: {diff}")
    if shard["models"] != first["models"]:
        diff = _differences(shard["models"], first["models"])
        raise EchodeployError(f"{where} ran different models: {diff}")
    if shard["inputs_sha256"] != first["inputs_sha256"]:
        theirs = _read_inputs(folder / INPUTS_FILE, shard["inputs_sha256"])
        ours = _read_inputs(first_dir / INPUTS_FILE, first["inputs_sha256"])
        raise EchodeployError(f"{where} ran on different inputs: {_input_difference(theirs, ours)}")


def _differences(a: dict, b: dict, prefix: str = "") -> str:
    """The first few differing entries of two nested dicts, as 'name a vs b'."""
    found = []
    for key in sorted(set(a) | set(b)):
        name = f"{prefix}{key}"
        if key not in b:
            found.append(f"{name} only in the first")
        elif key not in a:
            found.append(f"{name} missing in the first")
        elif isinstance(a[key], dict) and isinstance(b[key], dict):
            if a[key] != b[key]:
                found.append(_differences(a[key], b[key], f"{name} "))
        elif a[key] != b[key]:
            found.append(f"{name} {a[key]!r} vs {b[key]!r}")
    return "; ".join(found[:3])


def _input_difference(a: pd.DataFrame, b: pd.DataFrame) -> str:
    if len(a) != len(b):
        return f"{len(a)} rows vs {len(b)}"
    if list(a.columns) != list(b.columns):
        return f"columns {', '.join(map(str, a.columns))} vs {', '.join(map(str, b.columns))}"
    for i in range(len(a)):
        left, right = a.iloc[i].to_dict(), b.iloc[i].to_dict()
        if json.dumps(left, default=str) != json.dumps(right, default=str):
            return f"row {i + 1}: {_differences(left, right)}"
    return "same rows, other column types"


def _inputs_json(inputs: pd.DataFrame) -> str:
    """The input table as JSON that reads back equal (column types and missing values kept)."""
    columns = [[str(name), str(inputs[name].dtype), inputs[name].astype(object).tolist()] for name in inputs.columns]
    return json.dumps({"columns": columns}, default=lambda value: value.item())


def _read_inputs(path: Path, sha256: str) -> pd.DataFrame:
    try:
        text = path.read_text()
    except OSError as exc:
        raise EchodeployError(f"{path}: cannot read the shard's inputs ({exc.strerror or exc})") from exc
    if hashlib.sha256(text.encode()).hexdigest() != sha256:
        raise EchodeployError(f"{path} was changed after its shard ran (sha256 differs from {SHARD_FILE})")
    columns = json.loads(text)["columns"]
    return pd.DataFrame({name: pd.Series(values, dtype=object).astype(dtype) for name, dtype, values in columns})


def _rebuild(record: dict, inputs: pd.DataFrame) -> Pipeline:
    """The whole run's pipeline, as the shards ran it."""
    kinds = {"cmr": CmrOptions, "mmode": MModeOptions}
    if record["pipeline"] not in kinds:
        raise EchodeployError(f"unknown pipeline {record['pipeline']!r} in a shard record")
    paths = {f.name for f in dataclasses.fields(kinds[record["pipeline"]]) if "Path" in str(f.type)}
    options = kinds[record["pipeline"]](**{
        k: tuple(v) if isinstance(v, list) else Path(v) if k in paths and v is not None else v
        for k, v in record["options"].items()})
    return CmrPipeline(inputs, options) if record["pipeline"] == "cmr" else MModePipeline(inputs, options)

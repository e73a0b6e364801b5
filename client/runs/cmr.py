"""Bulk CMR-from-echo inference: rows in, per-video and per-study predictions out.

Decoding runs in worker processes while the backend infers; clips from many videos are
batched together per view. Each finished row goes to the journal at once, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echodeploy.backends.base import Backend, check_model
from echodeploy.client.results.metrics import binary_metrics, regression_metrics
from echodeploy.client.runs.batching import Batcher
from echodeploy.client.runs.inputs import STUDY, TARGET, target_values
from echodeploy.client.runs.journal import write_atomic, write_csv_atomic
from echodeploy.client.runs.runner import RunSummary, records_in_order, run_bulk
from echodeploy.errors import EchodeployError, InputError, RequestError
from echodeploy.preprocessing.clips import load_clips
from echodeploy.preprocessing.video import CLIP_MODES, ClipMode
from echodeploy.specs import CLIP, TASKS, VIEWS, ClipSpec, cmr_model, view_ensemble_name

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("status", "error", "notes", "clips", "untrained", "decode_s")
VIEW_MODELS_FILE = "view_models.json"  # the view models a run used, which a study model is checked against
IDENTITY = ("checkpoint_sha256", "precision", "untrained", "random_seed")  # what identifies a view model


@dataclass(frozen=True, kw_only=True)
class CmrOptions:
    tasks: tuple[str, ...] = ("wma", "scar")
    clips: ClipMode = "first"
    batch_size: int = 10  # clips per inference request, and nothing else
    workers: int = 1  # decoding worker processes
    read_ahead: int = 10  # rows decoded ahead of inference, beyond two per worker
    fps: float | None = None
    target_task: str | None = None
    study_model: Path | None = None  # checked and applied around the run by the wiring; recorded for shards

    def __post_init__(self):
        if self.batch_size < 1 or self.workers < 0 or self.read_ahead < 0:
            raise EchodeployError("--batch-size must be >= 1, --workers and --read-ahead >= 0")
        if self.clips not in CLIP_MODES:
            raise EchodeployError(f"--clips must be {' or '.join(CLIP_MODES)}, got {self.clips!r}")


def row_key(index: int, row: pd.Series) -> str:
    return f"{index}|{row['path']}"


def read_clips(path: str | None, path_error: str, clip: ClipSpec, mode: ClipMode, fps: float | None):
    """(clips, notes) of one row's file."""
    if path_error:
        raise InputError(path_error, "outside_root")
    if path is None:
        raise InputError("row names no file", "missing")
    return load_clips(Path(path), clip, mode, fps)


def _view_infer(backend: Backend, calls: list[tuple[str, list[str]]]):
    """One batch of clips -> every task output, through the view's ensemble or each task model."""
    def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = {}
        for model, names in calls:
            outputs.update(backend.infer(model, inputs, names))
        return outputs

    return infer


def _finish(record: dict, result) -> dict:
    """Fill a row's record from its clips' outputs (mean over clips) or the request's error."""
    if isinstance(result, RequestError):
        record.update(status="error", error=str(result), clips=0)
    else:
        record["outputs"] = {name: float(values.mean()) for name, values in result.items()}
    return record


def view_model_ids(backend: Backend, views, tasks) -> dict[str, dict]:
    """What identifies each served view model: view, task and the IDENTITY fields of its metadata."""
    ids = {}
    for view in views:
        for task in tasks:
            name = cmr_model(view, task).name
            metadata = backend.model_info(name).metadata
            ids[name] = {"view": view, "task": task, **{key: metadata.get(f"echodeploy.{key}", "") for key in IDENTITY}}
    return ids


def write_view_models(out_dir: Path, view_models: dict[str, dict]) -> Path:
    """The run's view models to view_models.json, with a warning when earlier rows came from other ones."""
    path = Path(out_dir) / VIEW_MODELS_FILE
    try:
        before = json.loads(path.read_text()) if path.is_file() else view_models
    except (OSError, ValueError):
        before = {}  # unreadable: rewritten below
    if not isinstance(before, dict):
        before = {}
    if before != view_models:
        changed = sorted(name for name in {*before, *view_models} if before.get(name) != view_models.get(name))
        log.warning("%s: %s differ from the view models this folder's earlier rows came from; finished rows are "
                    "not recomputed, so its predictions may mix models", out_dir, ", ".join(changed))
    text = json.dumps(view_models, indent=2)
    write_atomic(path, lambda tmp: tmp.write_text(text))
    return path


def prepare_models(backend: Backend, views, tasks) -> tuple[dict[str, list], list[str]]:
    """Inference calls per view, verified against what the backend serves; untrained models.

    The view's ensemble is used when the backend serves one covering every task.
    """
    calls, untrained = {}, []
    for view in views:
        specs = [cmr_model(view, task) for task in tasks]
        for spec in specs:
            info = backend.model_info(spec.name)
            check_model(spec, info)
            if info.untrained:
                untrained.append(spec.name)
        outputs = [spec.outputs[0].name for spec in specs]
        ensemble = view_ensemble_name(view)
        if backend.has_model(ensemble) and set(tasks) <= set(
                backend.model_info(ensemble).metadata.get("echodeploy.tasks", "").split(",")):
            calls[view] = [(ensemble, outputs)]
        else:
            calls[view] = [(spec.name, [spec.outputs[0].name]) for spec in specs]
    return calls, untrained


class CmrInference:
    """Clips of many videos batched per view; a video's record is finished when all its clips are."""

    defaults = {"outputs": {}, "clips": 0, "untrained": False}

    def __init__(self, pipeline: CmrPipeline, backend: Backend):
        self.pipeline = pipeline
        calls, self.untrained = prepare_models(backend, pipeline.views, pipeline.options.tasks)
        self.learned = {"untrained": self.untrained,
                        "view_models": view_model_ids(backend, pipeline.views, pipeline.options.tasks)}
        if self.untrained:
            log.warning("UNTRAINED MODELS (seeded random weights, not predictions): %s", ", ".join(self.untrained))
        self.batchers = {view: Batcher(_view_infer(backend, view_calls), pipeline.options.batch_size)
                         for view, view_calls in calls.items()}
        self.pending: dict[str, dict] = {}

    def add(self, index: int, record: dict, clips: np.ndarray) -> list[dict]:
        view = self.pipeline.inputs.at[index, "view"]
        if view not in VIEWS:
            record.update(status="error", error=f"unknown view {view!r}; known: {', '.join(VIEWS)}")
            return [record]
        record["clips"] = len(clips)
        record["untrained"] = any(cmr_model(view, t).name in self.untrained for t in self.pipeline.options.tasks)
        self.pending[record["key"]] = record
        return [_finish(self.pending.pop(k), r) for k, r in self.batchers[view].add(record["key"], {CLIP: clips})]

    def flush(self) -> list[dict]:
        return [_finish(self.pending.pop(k), r) for batcher in self.batchers.values() for k, r in batcher.flush()]


class CmrPipeline:
    """CMR-from-echo over the rows of a manifest or folder: clips in, task outputs per video and study out."""

    name, unit, counted = "cmr", "video", "rows"

    def __init__(self, inputs: pd.DataFrame, options: CmrOptions):
        self.inputs, self.options = inputs, options
        self.views = sorted({v for v in inputs["view"] if v in VIEWS})
        self.keys = [row_key(i, row) for i, row in inputs.iterrows()]
        self.paths = list(inputs["path"])
        self.read_ahead = options.read_ahead

    def read_job(self, index: int):
        row = self.inputs.loc[index]
        return read_clips, (row["path"], row["path_error"], ClipSpec(), self.options.clips, self.options.fps)

    def open(self, backend: Backend) -> CmrInference:
        return CmrInference(self, backend)

    def finish(self, record: dict, out_dir: Path) -> dict:
        return record

    def write_outputs(self, records: dict[str, dict], out_dir: Path, learned: dict) -> RunSummary:
        return write_outputs(self, records, out_dir, learned)


def run_cmr(inputs: pd.DataFrame, backend: Backend, out_dir: Path, options: CmrOptions) -> RunSummary:
    """Predict every row of `inputs` on `backend` into `out_dir` (resuming what is there)."""
    return run_bulk(CmrPipeline(inputs, options), backend, out_dir, options.workers)


def predictions_table(pipeline: CmrPipeline, records: dict[str, dict]) -> pd.DataFrame:
    """The input rows, in order, with status, reason and one column per task output."""
    table = pipeline.inputs.drop(columns="path_error")
    outputs = [TASKS[t].output for t in pipeline.options.tasks]
    rows = records_in_order(pipeline, records)
    for column in RESULT_COLUMNS:
        table[column] = [r.get(column, "") for r in rows]
    for name in outputs:
        table[name] = [r.get("outputs", {}).get(name, np.nan) for r in rows]
    return table


def studies_table(predictions: pd.DataFrame, tasks: tuple[str, ...]) -> pd.DataFrame:
    """Per study and task: mean over videos per view, and the mean of those view means."""
    ok = predictions[predictions["status"] == "ok"]
    rows = []
    for study, group in ok.groupby(STUDY, sort=True, dropna=False):
        for task in tasks:
            output = TASKS[task].output
            per_view = group.groupby("view")[output].mean()
            rows.append({
                STUDY: study, "task": task, "output": output, "n_videos": len(group),
                **{view: per_view.get(view, np.nan) for view in VIEWS},
                "all_views": per_view.mean(),
                "untrained": bool(group["untrained"].astype(bool).any()),
            })
    return pd.DataFrame(rows, columns=[STUDY, "task", "output", "n_videos", *VIEWS, "all_views", "untrained"])


def evaluation_sets(predictions: pd.DataFrame, studies: pd.DataFrame, task: str) -> dict[str, pd.DataFrame]:
    """What `task` is scored on, as (TARGET, prediction) columns: 'all' ok videos with a usable TARGET,
    each view's, and 'studies' (a study's first TARGET against its mean of view means)."""
    spec = TASKS[task]
    target = target_values(predictions[TARGET])
    if spec.kind == "binary":
        target = target.where(target.isin([0, 1]))
    ok = predictions.assign(**{TARGET: target})[(predictions["status"] == "ok") & target.notna()]
    sets = {"all": ok[[TARGET, spec.output]]}
    for view, group in ok.groupby("view"):
        sets[view] = group[[TARGET, spec.output]]
    per_study = studies[studies["task"] == task].set_index(STUDY)["all_views"]
    sets["studies"] = pd.concat([ok.groupby(STUDY)[TARGET].first(), per_study], axis=1, join="inner")
    return sets


def evaluate(predictions: pd.DataFrame, studies: pd.DataFrame, task: str) -> dict:
    """Metrics of `task` against TARGET, per view and pooled (videos) and per study."""
    spec = TASKS[task]
    score = binary_metrics if spec.kind == "binary" else regression_metrics
    target = target_values(predictions[TARGET])
    if spec.kind == "binary" and (outside := ~target.isin([0, 1]) & target.notna()).any():
        log.warning("TARGET: %d values other than 0/1 for binary task %s are left out of the metrics",
                    outside.sum(), task)
    result = {"task": task, "kind": spec.kind, "videos": {}}
    for name, pairs in evaluation_sets(predictions, studies, task).items():
        metrics = score(pairs.iloc[:, 0], pairs.iloc[:, 1])
        if name == "studies":
            result["studies"] = metrics
        else:
            result["videos"][name] = metrics
    return result


def write_outputs(pipeline: CmrPipeline, records: dict[str, dict], out_dir: Path, learned: dict) -> RunSummary:
    options = pipeline.options
    predictions = predictions_table(pipeline, records)
    studies = studies_table(predictions, options.tasks)
    written = [out_dir / "predictions.csv", out_dir / "studies.csv"]
    write_csv_atomic(predictions, written[0])
    write_csv_atomic(studies, written[1])
    metrics = {}
    target_task = options.target_task or (options.tasks[0] if len(options.tasks) == 1 else None)
    if TARGET in predictions.columns:
        if target_task is None:
            log.warning("TARGET present but several tasks ran: pass --target-task to evaluate")
        else:
            metrics = evaluate(predictions, studies, target_task)
            metrics["untrained"] = bool(learned["untrained"])
            written.append(out_dir / "metrics.json")
            write_atomic(written[-1], lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
    write_view_models(out_dir, learned["view_models"])
    return RunSummary(out_dir=out_dir, counted="rows", counts=predictions["status"].value_counts().to_dict(),
                      written=written, untrained=learned["untrained"], metrics=metrics, options=options)

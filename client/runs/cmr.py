"""Bulk CMR-from-echo inference: rows in, per-video and per-study predictions out.

Decoding runs in worker processes while the backend infers; clips from many videos are
batched together per view. Each finished row goes to the journal at once, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from echodeploy.backend import Backend, check_model
from echodeploy.client.backends.batching import Batcher, decode_executor, guarded_read, ordered_results
from echodeploy.client.results.metrics import binary_metrics, regression_metrics
from echodeploy.client.runs.inputs import STUDY, TARGET, target_values
from echodeploy.client.runs.journal import Journal, fingerprint, write_atomic, write_csv_atomic
from echodeploy.errors import EchodeployError, InputError, RequestError
from echodeploy.preprocessing.clips import load_clips
from echodeploy.preprocessing.video import ClipMode
from echodeploy.specs import TASKS, VIEWS, ClipSpec, cmr_model, view_ensemble_name

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("status", "error", "notes", "clips", "untrained", "decode_s")


@dataclass(frozen=True, kw_only=True)
class CmrOptions:
    tasks: tuple[str, ...] = ("wma", "scar")
    clips: ClipMode = "first"
    batch_size: int = 10
    workers: int = 1
    fps: float | None = None
    target_task: str | None = None

    def __post_init__(self):
        if self.batch_size < 1 or self.workers < 0:
            raise EchodeployError("--batch-size must be >= 1 and --workers >= 0")
        if self.clips not in ("first", "all"):
            raise EchodeployError(f"--clips must be 'first' or 'all', got {self.clips!r}")


@dataclass
class CmrSummary:
    out_dir: Path
    counts: dict[str, int]
    untrained_models: list[str]
    metrics: dict = field(default_factory=dict)

    @property
    def all_ok(self) -> bool:
        return set(self.counts) <= {"ok"}


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


def run_cmr(inputs: pd.DataFrame, backend: Backend, out_dir: Path, options: CmrOptions) -> CmrSummary:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    known_views = sorted({v for v in inputs["view"] if v in VIEWS})
    calls, untrained = prepare_models(backend, known_views, options.tasks)
    if untrained:
        log.warning("UNTRAINED MODELS (seeded random weights, not predictions): %s", ", ".join(untrained))
    clip = ClipSpec()
    keys = [row_key(i, row) for i, row in inputs.iterrows()]
    prints = [fingerprint(p) for p in inputs["path"]]
    with Journal(out_dir / "records.jsonl") as journal:
        todo = [i for i, (k, fp) in enumerate(zip(keys, prints)) if not journal.is_done(k, fp)]
        if len(todo) < len(inputs):
            log.info("resuming: %d of %d rows already done", len(inputs) - len(todo), len(inputs))
        try:
            _process(inputs, todo, keys, prints, calls, untrained, backend, journal, options, clip)
        finally:
            summary = write_outputs(inputs, keys, journal.records, out_dir, options, untrained)
    return summary


def _process(inputs, todo, keys, prints, calls, untrained, backend, journal, options, clip):
    batchers = {view: Batcher(_view_infer(backend, view_calls), options.batch_size)
                for view, view_calls in calls.items()}
    pending: dict[str, dict] = {}
    jobs = [(i, (guarded_read, read_clips, inputs.at[i, "path"], inputs.at[i, "path_error"], clip, options.clips,
                 options.fps)) for i in todo]
    window = max(2 * options.workers, 1) + options.batch_size
    with decode_executor(options.workers) as executor, tqdm(total=len(inputs), initial=len(inputs) - len(todo), unit="video",
                        desc="cmr", dynamic_ncols=True) as progress:
        for (i, _), (clips, fields) in ordered_results(executor, jobs, window):
            view = inputs.at[i, "view"]
            record = {"key": keys[i], "fingerprint": prints[i], **fields, "outputs": {},
                      "clips": 0, "untrained": False}
            if clips is not None and view not in VIEWS:
                record.update(status="error", error=f"unknown view {view!r}; known: {', '.join(VIEWS)}")
            if record["status"] != "ok":
                journal.append([record])
                progress.update(1)
                continue
            record["clips"] = len(clips)
            record["untrained"] = any(cmr_model(view, t).name in untrained for t in options.tasks)
            pending[keys[i]] = record
            finished = [_finish(pending.pop(k), r) for k, r in batchers[view].add(keys[i], {"clip": clips})]
            journal.append(finished)
            progress.update(len(finished))
        for batcher in batchers.values():
            finished = [_finish(pending.pop(k), r) for k, r in batcher.flush()]
            journal.append(finished)
            progress.update(len(finished))


def predictions_table(inputs: pd.DataFrame, keys: list[str], records: dict[str, dict],
                      tasks: tuple[str, ...]) -> pd.DataFrame:
    """The input rows, in order, with status, reason and one column per task output."""
    table = inputs.drop(columns="path_error")
    outputs = [TASKS[t].output for t in tasks]
    rows = [records.get(k) or {"status": "pending", "error": "not processed yet (interrupted)"} for k in keys]
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


def evaluate(predictions: pd.DataFrame, studies: pd.DataFrame, task: str) -> dict:
    """Metrics of `task` against TARGET, per view and pooled (videos) and per study."""
    spec = TASKS[task]
    score = binary_metrics if spec.kind == "binary" else regression_metrics
    target = target_values(predictions[TARGET])
    if spec.kind == "binary" and (outside := ~target.isin([0, 1]) & target.notna()).any():
        log.warning("TARGET: %d values other than 0/1 for binary task %s are left out of the metrics",
                    outside.sum(), task)
        target = target.where(~outside)
    ok = predictions.assign(**{TARGET: target})[(predictions["status"] == "ok") & target.notna()]
    result = {"task": task, "kind": spec.kind, "videos": {"all": score(ok[TARGET], ok[spec.output])}}
    for view, group in ok.groupby("view"):
        result["videos"][view] = score(group[TARGET], group[spec.output])
    per_study = studies[studies["task"] == task].set_index(STUDY)["all_views"]
    joined = pd.concat([ok.groupby(STUDY)[TARGET].first(), per_study], axis=1, join="inner")
    result["studies"] = score(joined.iloc[:, 0], joined.iloc[:, 1])
    return result


def write_outputs(inputs, keys, records, out_dir: Path, options: CmrOptions, untrained) -> CmrSummary:
    predictions = predictions_table(inputs, keys, records, options.tasks)
    studies = studies_table(predictions, options.tasks)
    write_csv_atomic(predictions, out_dir / "predictions.csv")
    write_csv_atomic(studies, out_dir / "studies.csv")
    metrics = {}
    target_task = options.target_task or (options.tasks[0] if len(options.tasks) == 1 else None)
    if TARGET in predictions.columns:
        if target_task is None:
            log.warning("TARGET present but several tasks ran: pass --target-task to evaluate")
        else:
            metrics = evaluate(predictions, studies, target_task)
            metrics["untrained"] = bool(untrained)
            write_atomic(out_dir / "metrics.json", lambda tmp: tmp.write_text(json.dumps(metrics, indent=2)))
    counts = predictions["status"].value_counts().to_dict()
    return CmrSummary(out_dir=out_dir, counts=counts, untrained_models=untrained, metrics=metrics)

"""One bulk run for every pipeline: journal, resume, decoding ahead of inference, progress,
outputs in input order, and the summary that sets the exit code.

A pipeline says only how to read one input row (`Pipeline.read_job`), what to do with what
was read (`Pipeline.open` returns its `Inference`, which carries what opening the models taught
it) and what follows inference on a finished row (`Pipeline.finish`: M-mode figures); the runner
does the rest, so both pipelines behave alike and every engine (this process, Ray, shards) runs
them the same way.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd
from tqdm import tqdm

from echodeploy.backends.base import Backend
from echodeploy.client.decoding import decode_executor, guarded_read, ordered_results
from echodeploy.client.runs.journal import Journal, fingerprint
from echodeploy.client.runs.record import ModelRecorder, record_session
from echodeploy.errors import EXIT_ITEM_ERRORS, EXIT_OK

log = logging.getLogger(__name__)

JOURNAL = "records.jsonl"
PENDING = {"status": "pending", "error": "not processed yet (interrupted)"}


@dataclass
class RunSummary:
    """What a finished (or interrupted) run wrote and how its rows ended."""

    out_dir: Path
    counted: str  # what a row is called in messages: "rows", "files"
    counts: dict[str, int]
    written: list[Path]
    untrained: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    options: object = None  # the pipeline's options (CmrOptions, MModeOptions) the outputs were written with

    @property
    def all_ok(self) -> bool:
        return set(self.counts) <= {"ok"}

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.all_ok else EXIT_ITEM_ERRORS


class Inference(Protocol):
    """A pipeline's inference on one backend: rows go in as they are read, finished records come out."""

    defaults: dict  # fields every record of this run starts with
    learned: dict  # what opening the models told the run (untrained models, ...): JSON, for write_outputs

    def add(self, index: int, record: dict, payload) -> list[dict]:
        """Queue row `index` (read as `payload`); return the records finished so far (any rows)."""

    def flush(self) -> list[dict]:
        """Finish every queued row; return their records."""


class Pipeline(Protocol):
    """How to read one input row, and what to do with it; the runner does the rest."""

    name: str  # progress bar label
    unit: str  # progress bar unit
    counted: str  # rows in messages ("rows", "files")
    read_ahead: int  # rows decoded ahead of inference, beyond two per worker
    inputs: pd.DataFrame
    keys: list[str]  # journal key per row
    paths: list  # input file per row (None when there is none), for fingerprints

    def read_job(self, index: int) -> tuple[Callable, tuple]:
        """A module-level reader and its arguments: reader(*args) -> (payload, notes)."""

    def open(self, backend: Backend) -> Inference:
        """Check the backend's models and return the inference state for this run (the pipeline is not changed)."""

    def finish(self, record: dict, out_dir: Path) -> dict:
        """What follows inference on a finished row (M-mode: its figures); returns the record the journal keeps."""

    def write_outputs(self, records: dict[str, dict], out_dir: Path, learned: dict) -> RunSummary:
        """Write the result tables from the journal's records (rows without one are pending) and what
        opening the models taught the run (`Inference.learned`)."""


def records_in_order(pipeline: Pipeline, records: dict[str, dict]) -> list[dict]:
    """Every input row's record in input order; rows not finished yet are `pending`."""
    return [records.get(key) or dict(PENDING) for key in pipeline.keys]


def run_bulk(pipeline: Pipeline, backend: Backend, out_dir: Path, workers: int) -> RunSummary:
    """Run every unfinished row of `pipeline` on `backend`; outputs are written even when interrupted."""
    def decode_here(todo: list[int], prints: list[str], inference: Inference, finish: Callable[[list[dict]], None]):
        jobs = [(i, (guarded_read, *_flat(pipeline.read_job(i)))) for i in todo]
        window = max(2 * workers, 1) + pipeline.read_ahead
        with decode_executor(workers) as executor:
            for (i, _), (payload, fields) in ordered_results(executor, jobs, window):
                record = start_record(pipeline.keys[i], prints[i], fields, inference)
                finish([record] if payload is None else inference.add(i, record, payload))
            finish(inference.flush())

    return run_journaled(pipeline, backend, out_dir, decode_here)


def run_journaled(pipeline: Pipeline, backend: Backend, out_dir: Path, process: Callable,
                  engine: str = "local") -> RunSummary:
    """What every engine shares: check the models, skip journaled rows, journal and count each finished
    record, write the outputs (also when interrupted) and the run record's session (run.json).
    `process(todo, prints, inference, finish)` runs the rows `todo` (input fingerprints `prints`) and
    passes records to `finish` as they finish."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = ModelRecorder(backend)
    inference = pipeline.open(recorder)
    prints = [fingerprint(path) for path in pipeline.paths]
    with Journal(out_dir / JOURNAL) as journal:
        todo = [i for i, key in enumerate(pipeline.keys) if not journal.is_done(key, prints[i])]
        total = len(pipeline.keys)
        if len(todo) < total:
            log.info("resuming: %d of %d %s already done", total - len(todo), total, pipeline.counted)
        with record_session(out_dir, pipeline, recorder, engine, total, total - len(todo)) as session:
            try:
                with tqdm(total=total, initial=total - len(todo), unit=pipeline.unit, desc=pipeline.name,
                          dynamic_ncols=True) as progress:
                    def finish(records: list[dict]) -> None:
                        journal.append([pipeline.finish(record, out_dir) for record in records])
                        progress.update(len(records))
                        session.processed += len(records)

                    process(todo, prints, inference, finish)
            finally:
                summary = pipeline.write_outputs(journal.records, out_dir, inference.learned)
                session.counts = summary.counts
    return summary


def start_record(key: str, print_: str, fields: dict, inference: Inference) -> dict:
    """A row's record as read (status, reason, notes, decode time), before inference adds to it."""
    return {"key": key, "fingerprint": print_, **fields, **copy.deepcopy(inference.defaults)}


def _flat(job: tuple[Callable, tuple]) -> tuple:
    reader, args = job
    return (reader, *args)

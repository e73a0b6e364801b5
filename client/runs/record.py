"""The run record, `run.json` in a run's output folder: what ran, when, for how long, how fast.

The runner opens a session when a journaled run starts (so a killed run still has its start)
and closes it when the run ends, finished, interrupted or failed; a resumed run adds a session.
What only the caller knows (the command line as given, the backend's first-line choice, the
settings, per-model fields) comes in through `run_context`, which may be nested; any field it
passes is kept. Values whose key names a secret, and the user part of URLs, are masked.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import os
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from echodeploy import __version__
from echodeploy.backends.base import Backend, ModelInfo
from echodeploy.client.runs.journal import write_atomic

RUN_RECORD = "run.json"
FORMAT = "echodeploy-run/1"
IGNORED_METADATA = ("echodeploy.agreement",)  # a long report, already covered by the weights' sha256
MASK = "***"
SECRET_KEY = re.compile(r"pass(word)?|passwd|token|secret|credential|api[-_]?key|auth", re.IGNORECASE)
URL_USER = re.compile(r"(?<=://)[^/@\s]+@")

_context: contextvars.ContextVar[dict] = contextvars.ContextVar("echodeploy_run_context", default={})


@contextlib.contextmanager
def run_context(**fields):
    """Fields for the run record of runs started inside this block (command, backend_choice, settings,
    models: {name: {field: value}}, shard, ...); nested blocks add to the outer ones."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def redact(value, key: str = ""):
    """`value` with every entry whose key names a secret masked, and user:password@ dropped from URLs."""
    if key and SECRET_KEY.search(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return URL_USER.sub(MASK + "@", value)
    return value


def redact_command(argv: list[str]) -> list[str]:
    """A command line with the value of every secret-named option (`--token X`, `--password=X`) masked."""
    words, masked_next = [], False
    for word in map(str, argv):
        if masked_next:
            words.append(MASK)
            masked_next = False
            continue
        option, equals, _ = word.partition("=")
        if option.startswith("-") and SECRET_KEY.search(option):
            words.append(f"{option}={MASK}" if equals else word)
            masked_next = not equals
        else:
            words.append(redact(word))
    return words


def json_safe(value):
    """Options and settings as JSON reads them back: tuples as lists, paths and other objects as text."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


def pipeline_options(pipeline) -> dict:
    return json_safe(dataclasses.asdict(pipeline.options))


class ModelRecorder:
    """The backend, noting the metadata of every model the pipeline asks about."""

    def __init__(self, backend: Backend):
        self.backend, self.name = backend, backend.name
        self.models: dict[str, dict[str, str]] = {}

    def model_info(self, model: str) -> ModelInfo:
        info = self.backend.model_info(model)
        self.models[model] = {k: v for k, v in sorted(info.metadata.items()) if k not in IGNORED_METADATA}
        return info

    def has_model(self, model: str) -> bool:
        return self.backend.has_model(model)

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None):
        return self.backend.infer(model, inputs, outputs)

    def close(self) -> None:
        self.backend.close()


def model_entries(metadata: dict[str, dict[str, str]], extra: dict[str, dict] | None = None) -> dict[str, dict]:
    """Per model: its metadata without the `echodeploy.` prefix (untrained as a bool), plus `extra` fields."""
    models = {}
    for name, fields in metadata.items():
        entry = {key.removeprefix("echodeploy."): value for key, value in fields.items()}
        entry["untrained"] = entry.get("untrained") == "true"
        models[name] = entry
    for name, fields in (extra or {}).items():
        models.setdefault(name, {}).update(fields)
    return models


def read_record(out_dir: Path) -> dict:
    """The folder's run record, or {} when it has none (or an unreadable one)."""
    try:
        record = json.loads((Path(out_dir) / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) and record.get("format") == FORMAT else {}


def write_record(out_dir: Path, record: dict) -> None:
    text = json.dumps(record, indent=1)
    write_atomic(Path(out_dir) / RUN_RECORD, lambda tmp: tmp.write_text(text))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def machine() -> dict:
    """The processor, its cores and the Python version."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def totals(sessions: list[dict]) -> dict:
    """Seconds and rows processed over every closed session, and rows per second."""
    closed = [s for s in sessions if s.get("seconds") is not None]
    seconds = sum(s["seconds"] for s in closed)
    rows = sum(s.get("rows_processed", 0) for s in closed)
    return {"seconds": round(seconds, 3), "rows_processed": rows,
            "rows_per_s": round(rows / seconds, 4) if seconds > 0 else None}


class RunSession:
    """One session of a run in its run record: opened at the start, closed with how it ended."""

    def __init__(self, out_dir: Path, record: dict):
        self.out_dir, self.record = Path(out_dir), record
        self.session = record["sessions"][-1]
        self.processed = 0
        self.counts: dict[str, int] = {}
        self._started = time.monotonic()

    def close(self, outcome: str) -> None:
        seconds = time.monotonic() - self._started
        self.session.update(end=_now(), outcome=outcome, seconds=round(seconds, 3), rows_processed=self.processed,
                            rows_done=self.session["rows_done_before"] + self.processed,
                            rows_per_s=round(self.processed / seconds, 4) if seconds > 0 else None,
                            counts={str(k): int(v) for k, v in self.counts.items()})
        self.record.update(totals(self.record["sessions"]))
        write_record(self.out_dir, self.record)


@contextlib.contextmanager
def record_session(out_dir: Path, pipeline, recorder: ModelRecorder, engine: str, rows: int, done: int):
    """Open a session of `pipeline`'s run on `recorder`'s backend and models in `out_dir`/run.json (rows
    already `done` of `rows`), and close
    it on leaving the block: finished, interrupted (Ctrl-C) or failed (with the error)."""
    fields = redact({k: v for k, v in _context.get().items() if k not in ("command", "models")})
    command = _context.get().get("command")
    before = read_record(out_dir)
    if before.get("pipeline") not in (None, pipeline.name):
        before = {}  # another pipeline's record: this run starts its own
    record = {**before, "format": FORMAT, "pipeline": pipeline.name, "version": __version__, "engine": engine,
              "backend": recorder.name, **fields}
    record.update(rows=rows, counted=pipeline.counted, options=pipeline_options(pipeline),
                  models=model_entries(recorder.models, _context.get().get("models")), machine=machine())
    if command is not None:
        record["command"] = redact_command(command if isinstance(command, (list, tuple)) else command.split())
    session = {"start": _now(), "end": None, "outcome": "running", "engine": engine, "rows_done_before": done}
    if "shard" in fields:
        session["shard"] = fields["shard"]
    record["sessions"] = [*before.get("sessions", []), session]
    write_record(out_dir, record)
    run = RunSession(out_dir, record)
    try:
        yield run
    except KeyboardInterrupt:
        run.close("interrupted")
        raise
    except BaseException as exc:
        run.close(f"failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
        raise
    run.close("finished")


def merge_records(folders: list[Path], out_dir: Path, rows: int, counts: dict[str, int]) -> None:
    """The run record of shards merged into `out_dir`: the first shard's fields, every shard's sessions."""
    records = [read_record(folder) for folder in folders]
    base = next((r for r in records if r), {"format": FORMAT})
    sessions = [{**s, "shard": s.get("shard") or r.get("shard")} for r in records for s in r.get("sessions", [])]
    record = {k: v for k, v in base.items() if k not in ("shard", "sessions")}
    record.update(rows=rows, sessions=sessions, **totals(sessions),
                  merged={"at": _now(), "shards": [str(Path(f).resolve()) for f in folders],
                          "without_record": [str(f) for f, r in zip(folders, records) if not r],
                          "counts": {str(k): int(v) for k, v in counts.items()}})
    write_record(out_dir, record)

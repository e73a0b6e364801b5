"""`--engine ray`: a bulk run as a Ray Data pipeline, with the journal and outputs of a run in this process.

The driver (this process) verifies the models, finds the unfinished rows, and journals every
record as it streams back. Reading and decoding run as stateless Ray tasks (`guarded_read` on
each row's read job, so bad input becomes a status, never an exception); inference runs in a
pool of Ray actors, each building its own backend from a picklable factory and opening the
pipeline on it once. An actor call infers a batch of rows and flushes them, so a batch is
what Ray retries when a worker or actor dies; the driver journals a key at most once.
Outputs are written by `pipeline.write_outputs`, as in the single-process run, also after an
interrupt. Ray is imported only here; without it, `--engine ray` says how to install it.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echodeploy.backends.base import Backend
from echodeploy.client.decoding import guarded_read
from echodeploy.client.runs.runner import Pipeline, RunSummary, run_journaled, start_record
from echodeploy.errors import EchodeployError

log = logging.getLogger(__name__)

RAY_MISSING = "--engine ray needs Ray, an optional extra: pip install 'echodeploy[ray]'"
# A local instance listens on loopback only (Ray binds 127.0.0.1 when it treats the host as a
# single-machine cluster) and sends no usage statistics. Read by Ray when it is imported.
LOCAL_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# Memory Ray reserves per decode task (it schedules by memory as well as cores). Resources
# different from the actors' also keep Ray from fusing decoding into the inference actors.
DECODE_MEMORY = 1 << 30


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    address: str | None = None  # an existing cluster ("auto", "HOST:PORT"); None: a local instance on loopback
    workers: int = 1  # decode tasks at once
    actors: int = 1  # inference actors, one backend each
    block_rows: int = 10  # rows per decode task and per actor call

    def __post_init__(self):
        if self.workers < 1 or self.actors < 1 or self.block_rows < 1:
            raise EchodeployError("--engine ray needs --workers, --actors and --ray-block-rows >= 1")


def import_ray():
    """Ray, or the one line that says how to install it."""
    for name, value in LOCAL_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    try:
        import ray
        import ray.data  # noqa: F401  (the `data` extra: pyarrow)
    except ImportError as exc:
        raise EchodeployError(RAY_MISSING) from exc
    return ray


def connect(options: RayOptions) -> bool:
    """Join `options.address`, or start a local instance bound to loopback; True if this call started Ray."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if options.address:
        _check_reachable(options.address)
        try:
            ray.init(address=options.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EchodeployError(f"cannot join the Ray cluster at {options.address}: {exc}") from exc
        return True
    start_local(num_cpus=max(os.cpu_count() or 1, options.workers + options.actors))
    return True


def _check_reachable(address: str) -> None:
    """Fail at once on a HOST:PORT nobody listens on (Ray itself would retry for minutes)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not port.isdigit():
        return  # 'auto' or a ray:// client address: Ray resolves it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise EchodeployError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


def start_local(num_cpus: int, object_store_memory: int | None = None) -> str:
    """Start a Ray instance on this machine, listening on loopback only; returns its address."""
    ray = import_ray()
    context = ray.init(num_cpus=num_cpus, object_store_memory=object_store_memory, include_dashboard=False,
                       log_to_driver=False, logging_level=logging.WARNING)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":  # Ray was imported before LOCAL_ENVIRONMENT was set
        ray.shutdown()
        raise EchodeployError(f"the local Ray instance would listen on {node_ip}, not loopback: import Ray "
                              "through echodeploy.client.runs.ray_engine, or pass --ray-address")
    return context.address_info["gcs_address"]


def run_ray(pipeline: Pipeline, backend: Backend, make_backend: Callable[[], Backend], out_dir: Path,
            options: RayOptions) -> RunSummary:
    """Run every unfinished row of `pipeline` on Ray; `backend` checks the models here, each actor
    builds its own with `make_backend`. Outputs are written even when interrupted."""
    def on_ray(todo: list[int], prints: list[str], inference, finish: Callable[[list[dict]], None]) -> None:
        if todo:
            _stream(pipeline, make_backend, todo, prints, finish, options)

    return run_journaled(pipeline, backend, out_dir, on_ray, engine="ray")


def _stream(pipeline, make_backend, todo, prints, finish, options: RayOptions) -> None:
    ray = import_ray()
    started = connect(options)
    try:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours is the run's progress bar
        context.execution_options.preserve_order = False  # the outputs are written in input order anyway
        rows = options.block_rows
        items = [{"index": i, "key": pipeline.keys[i], "fingerprint": prints[i],
                  "job": pickle.dumps(pipeline.read_job(i))} for i in todo]
        dataset = (
            ray.data.from_items(items, override_num_blocks=-(-len(items) // rows))
            .map(_decode, num_cpus=1, memory=DECODE_MEMORY, compute=ray.data.TaskPoolStrategy(size=options.workers))
            .map_batches(_InferenceActor, fn_constructor_args=(pipeline, make_backend), batch_size=rows,
                         batch_format="numpy", num_cpus=1, compute=ray.data.ActorPoolStrategy(size=options.actors))
        )
        seen: set[str] = set()
        for row in _rows(dataset):
            finished = [r for r in pickle.loads(row["records"]) if r["key"] not in seen]
            seen.update(r["key"] for r in finished)  # a retried task may stream a batch again
            finish(finished)
    finally:
        if started:
            ray.shutdown()


def _rows(dataset):
    """The dataset's rows; a failure inside Ray is raised as the error that caused it (one line)."""
    try:
        yield from dataset.iter_rows()
    except EchodeployError:
        raise
    except Exception as exc:  # Ray wraps task errors in its own types
        cause = _root_cause(exc)
        if isinstance(cause, EchodeployError):
            raise cause from exc
        text = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        raise EchodeployError(f"the Ray run failed: {type(cause).__name__}: {text}") from exc


def _root_cause(exc: BaseException) -> BaseException:
    while True:
        cause = getattr(exc, "cause", None) or exc.__cause__
        if cause is None or cause is exc:
            return exc
        exc = cause


def _decode(row: dict) -> dict:
    """Ray task: read and decode one row (never raises for bad input)."""
    reader, args = pickle.loads(row["job"])
    return {"index": row["index"], "key": row["key"], "fingerprint": row["fingerprint"],
            "read": pickle.dumps(guarded_read(reader, *args), protocol=pickle.HIGHEST_PROTOCOL)}


class _InferenceActor:
    """Ray actor: one backend, the pipeline opened on it once; a batch of decoded rows in, their records out."""

    def __init__(self, pipeline: Pipeline, make_backend: Callable[[], Backend]):
        self.backend = make_backend()
        self.inference = pipeline.open(self.backend)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        finished = []
        for index, key, print_, read in zip(batch["index"], batch["key"], batch["fingerprint"], batch["read"]):
            payload, fields = pickle.loads(read)
            record = start_record(str(key), str(print_), fields, self.inference)
            finished += [record] if payload is None else self.inference.add(int(index), record, payload)
        finished += self.inference.flush()
        return {"records": np.array([pickle.dumps(finished, protocol=pickle.HIGHEST_PROTOCOL)], dtype=object)}

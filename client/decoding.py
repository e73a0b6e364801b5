"""Decoding ahead of inference: worker processes (or inline), one file's failure kept to its row,
results handed back in input order."""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor

from echodeploy.errors import InputError


class _InlineExecutor(Executor):
    """`--workers 0`: decode in the main process (debugging, tiny runs)."""

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future


def ordered_results(executor: Executor, jobs, window: int):
    """Submit jobs lazily, at most `window` ahead, yielding (job, result) in input order."""
    queue = deque()
    for job in jobs:
        queue.append((job, executor.submit(*job[1])))
        if len(queue) >= window:
            job, future = queue.popleft()
            yield job, future.result()
    while queue:
        job, future = queue.popleft()
        yield job, future.result()


def guarded_read(read: Callable, *args):
    """Worker: (payload or None, result fields). `read` returns (payload, notes); bad input is
    recorded with its status and reason, never raised, so one file cannot end a bulk run."""
    start = time.perf_counter()
    try:
        payload, notes = read(*args)
        fields = {"status": "ok", "error": "", "notes": "; ".join(notes)}
    except InputError as exc:
        payload, fields = None, {"status": exc.status, "error": str(exc), "notes": ""}
    except Exception as exc:  # a reader crash on one file must not end the run
        payload, fields = None, {"status": "error", "error": f"{type(exc).__name__}: {exc}", "notes": ""}
    fields["decode_s"] = round(time.perf_counter() - start, 4)
    return payload, fields


def decode_executor(workers: int) -> Executor:
    """Worker processes for decoding (spawned: no fork after ONNX Runtime threads), or inline."""
    if workers:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    return _InlineExecutor()

"""Cross-item batching: many items' arrays in, full batches out, results back per item.

Items (a video's clips, an M-mode file's windows) are queued whole or in pieces; a batch is
inferred as soon as `batch_size` rows are queued. When the backend rejects a request, the
items in it are retried one by one so only the offending item fails.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from echodeploy.errors import RequestError

Infer = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class Batcher:
    def __init__(self, infer: Infer, batch_size: int):
        self.infer, self.batch_size = infer, batch_size
        self.pieces: deque = deque()  # (key, inputs)
        self.queued = 0
        self.items: dict[str, dict] = {}  # key -> {"remaining": rows, "outputs": [dicts]}

    def add(self, key: str, inputs: dict[str, np.ndarray]) -> list[tuple[str, dict | RequestError]]:
        rows = len(next(iter(inputs.values())))
        self.items[key] = {"remaining": rows, "outputs": []}
        self.pieces.append((key, inputs))
        self.queued += rows
        done = []
        while self.queued >= self.batch_size:
            done += self._run(self._take(self.batch_size))
        return done

    def flush(self) -> list[tuple[str, dict | RequestError]]:
        done = []
        while self.queued:
            done += self._run(self._take(min(self.queued, self.batch_size)))
        return done

    def _take(self, count: int) -> list[tuple[str, dict]]:
        taken = []
        while count:
            key, inputs = self.pieces.popleft()
            rows = len(next(iter(inputs.values())))
            if rows > count:
                self.pieces.appendleft((key, {n: a[count:] for n, a in inputs.items()}))
                inputs, rows = {n: a[:count] for n, a in inputs.items()}, count
            taken.append((key, inputs))
            count -= rows
            self.queued -= rows
        return taken

    def _run(self, taken: list[tuple[str, dict]]) -> list[tuple[str, dict | RequestError]]:
        try:
            outputs = self.infer({n: np.concatenate([inputs[n] for _, inputs in taken]) for n in taken[0][1]})
        except RequestError as exc:
            if len({key for key, _ in taken}) == 1:
                return self._fail(taken[0][0], exc)
            return [result for piece in taken for result in self._run([piece])]  # isolate the bad item
        done, offset = [], 0
        for key, inputs in taken:
            rows = len(next(iter(inputs.values())))
            state = self.items.get(key)
            if state is not None:  # None: the item already failed in an earlier piece
                state["outputs"].append({n: v[offset:offset + rows] for n, v in outputs.items()})
                state["remaining"] -= rows
                if state["remaining"] == 0:
                    parts = self.items.pop(key)["outputs"]
                    done.append((key, {n: np.concatenate([p[n] for p in parts]) for n in parts[0]}))
            offset += rows
        return done

    def _fail(self, key: str, error: RequestError) -> list[tuple[str, RequestError]]:
        self.pieces = deque(piece for piece in self.pieces if piece[0] != key)
        self.queued = sum(len(next(iter(inputs.values()))) for _, inputs in self.pieces)
        self.items.pop(key, None)
        return [(key, error)]

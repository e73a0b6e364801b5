"""Per-row results that survive a crash: an append-only JSON-lines journal.

Each finished row is one line, flushed and fsynced before the run moves on, so a kill
at any moment loses at most the row being written (a torn last line is dropped on the
next open). A rerun skips rows whose key and input fingerprint are already recorded;
a changed input (size or mtime) is recomputed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd


def fingerprint(path: Path | None) -> str:
    """Cheap identity of an input file: size and modification time."""
    try:
        stat = Path(path).stat()
    except (OSError, TypeError, ValueError):
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


class Journal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: dict[str, dict] = {}
        self._load()
        self._file = open(self.path, "a", encoding="utf-8")

    def _load(self) -> None:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            lines = f.read().split(b"\n")
        intact = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # torn line from a crash mid-write
            self.records[record["key"]] = record
            intact.append(line)
        if len(intact) != len([line for line in lines if line]):
            self._rewrite(intact)

    def _rewrite(self, lines: list[bytes]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in lines))
        os.replace(tmp, self.path)

    def is_done(self, key: str, print_: str) -> bool:
        record = self.records.get(key)
        return record is not None and record.get("fingerprint") == print_

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        self._file.write("".join(json.dumps(r, default=float) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())
        for r in records:
            self.records[r["key"]] = r

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV via a temporary file and rename, so readers never see half a file."""
    tmp = Path(path).with_suffix(".csv.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)

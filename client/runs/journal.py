"""Per-row results that survive a crash: an append-only JSON-lines journal.

Each finished row is one line, flushed and fsynced before the run moves on, so a kill
at any moment loses at most the row being written (a torn last line is dropped on the
next open). A rerun skips rows whose key and input fingerprint are already recorded;
a changed input (size, mtime or ctime) is recomputed. A write that fails (disk full) stops the
run with the path and the system's reason; rows already journaled stay.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from echodeploy.errors import EchodeployError


def fingerprint(path: Path | None) -> str:
    """Cheap identity of an input file: size, modification time and status-change time.

    The ctime catches a replacement with the same size and a restored mtime (`cp -p`,
    `rsync -t`, `touch -r`): no tool can set it back.
    """
    try:
        stat = Path(path).stat()
    except (OSError, TypeError, ValueError):
        return "missing"
    return f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


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
            data = f.read()
        lines = [line for line in data.split(b"\n") if line]
        intact = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # torn line from a crash mid-write
            if isinstance(record, dict) and "key" in record:
                self.records[record["key"]] = record
                intact.append(line)
        if len(intact) != len(lines) or not data.endswith(b"\n"):  # torn, foreign, or no final newline
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
        try:
            self._file.write("".join(json.dumps(r, default=float) + "\n" for r in records))
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            raise _write_error(self.path, exc) from exc
        for r in records:
            self.records[r["key"]] = r

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # only bytes of a failed append are left to flush, and that append has raised

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write` a temporary file, then rename it to `path`, so readers never see half a file."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_error(tmp, exc) from exc


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def _write_error(path: Path, exc: OSError) -> EchodeployError:
    return EchodeployError(f"cannot write {path}: {exc.strerror or exc}")

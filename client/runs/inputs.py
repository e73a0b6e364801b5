"""Bulk inputs: a manifest CSV (cardiac_mri columns, or a filename/path column) or a folder.

Every input becomes one row with a resolved `path` (or none, if it cannot be found) and a
`view`; a row that cannot be resolved is kept and later reported, never dropped. A manifest
path that leads outside the data root (`..`, an absolute path elsewhere) is refused with the
reason in `path_error` unless the caller allows it. Problems that do not stop the run
(duplicate rows, unusable TARGET values) are logged as warnings.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from echodeploy.errors import EchodeployError
from echodeploy.preprocessing.clips import DICOM_SUFFIXES, VIDEO_SUFFIXES
from echodeploy.specs import VIEWS

log = logging.getLogger(__name__)

STUDY = "Study_Unique_ID"
VIDEO = "Video_Unique_ID"
TARGET = "TARGET"
PATH_COLUMNS = ("filename", "path", "file", "FileName")
VIEW_COLUMNS = ("view", "View", "VIEW")
GUESSED_SUFFIXES = (".avi", ".dcm", ".mp4")


def read_inputs(source: Path, view: str | None = None, data_root: Path | None = None,
                allow_outside_root: bool = False) -> pd.DataFrame:
    """Rows with the source's own columns plus `path` (str or None), `path_error` (why a path
    was refused, or '') and `view`."""
    source = Path(source)
    if source.is_dir():
        rows = _folder_rows(source)
        root = source
    elif source.is_file():
        rows = _read_manifest(source)
        root = Path(data_root) if data_root else source.parent
        _warn_about(rows)
    else:
        raise EchodeployError(f"{source}: no such manifest or folder")
    paths = [_resolve(root, row) for _, row in rows.iterrows()]
    errors = ["" if allow_outside_root or p is None else _outside_root(root, p) for p in paths]
    rows["path"] = pd.Series([None if e else p for p, e in zip(paths, errors)], index=rows.index, dtype=object)
    rows["path_error"] = errors
    if any(errors):
        log.warning("%d rows name files outside the data root %s: refused (status outside_root); pass "
                    "--data-root or --allow-outside-root to read them", sum(map(bool, errors)), root)
    rows["view"] = _views(rows, view)
    return rows.reset_index(drop=True)


def _outside_root(root: Path, path: str) -> str:
    """Why `path` is refused ('' if it lies inside `root`), judged on the names alone: symlinks
    placed inside the root are the user's choice and are followed."""
    root_abs = os.path.abspath(root)
    if os.path.commonpath([root_abs, os.path.abspath(path)]) == root_abs:
        return ""
    return f"path {path!r} lies outside the data root {root_abs}"


def _folder_rows(folder: Path) -> pd.DataFrame:
    suffixes = VIDEO_SUFFIXES | (DICOM_SUFFIXES - {""})
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise EchodeployError(f"{folder}: no videos or DICOM files found")
    return pd.DataFrame({
        STUDY: [p.parent.name if p.parent != folder else "" for p in files],
        VIDEO: [p.stem for p in files],
        "filename": [str(p.relative_to(folder)) for p in files],
    })


def read_table(path: Path, dtype: dict | None = None) -> pd.DataFrame:
    """A user's CSV: UTF-8 (with or without BOM) or UTF-16 with BOM (Excel's 'Unicode text'),
    with at least one row; anything else is one readable `EchodeployError`."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise EchodeployError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    encoding = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise EchodeployError(f"{path}: not {encoding.removesuffix('-sig').upper()} text ({exc.reason} at byte "
                              f"{exc.start}); save it as 'CSV UTF-8'") from exc
    try:
        rows = pd.read_csv(io.StringIO(text), dtype=dtype, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise EchodeployError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from exc
    if rows.empty:
        raise EchodeployError(f"{path}: the CSV has a header but no rows")
    return rows


def _read_manifest(path: Path) -> pd.DataFrame:
    rows = read_table(path, {STUDY: str, VIDEO: str})
    if not any(c in rows.columns for c in (VIDEO, *PATH_COLUMNS)):
        raise EchodeployError(
            f"{path}: manifest needs a {VIDEO} or a file column ({', '.join(PATH_COLUMNS)}); "
            f"found {', '.join(map(str, rows.columns))}"
        )
    if STUDY not in rows.columns:
        rows[STUDY] = ""
    return rows


def _warn_about(rows: pd.DataFrame) -> None:
    """Log what a user would want to know about a manifest that still runs."""
    ids = next(c for c in (*PATH_COLUMNS, VIDEO) if c in rows.columns)
    repeated = rows[ids][rows[ids].duplicated() & rows[ids].notna()]
    if len(repeated):
        log.warning("%d rows repeat a %s listed earlier (e.g. %s): each row is processed and reported",
                    len(repeated), ids, ", ".join(map(repr, repeated.unique()[:3])))
    if TARGET in rows.columns:
        empty = rows[TARGET].isna()
        unusable = ~empty & target_values(rows[TARGET]).isna()
        if empty.any() or unusable.any():
            log.warning("TARGET: %d rows empty, %d not a finite number (e.g. %s); they are left out of the metrics",
                        empty.sum(), unusable.sum(), ", ".join(map(repr, rows.loc[unusable, TARGET].unique()[:3])))


def target_values(values: pd.Series) -> pd.Series:
    """TARGET as floats; empty, non-numeric and infinite values become NaN (left out of metrics)."""
    numbers = pd.to_numeric(values, errors="coerce").astype(float)
    return numbers.where(np.isfinite(numbers))


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # name too long, NUL byte: the row is reported as missing later
        return False


def _resolve(root: Path, row: pd.Series) -> str | None:
    for column in PATH_COLUMNS:
        if column in row and isinstance(row[column], str) and row[column].strip():
            path = Path(row[column].strip())
            return str(path if path.is_absolute() else root / path)
    video = row.get(VIDEO)
    if not isinstance(video, str) or not video.strip():
        return None
    base = root / video.strip()
    if _exists(base) or base.suffix:
        return str(base)
    for suffix in GUESSED_SUFFIXES:
        if _exists(base.with_name(base.name + suffix)):
            return str(base.with_name(base.name + suffix))
    return str(base)


def _views(rows: pd.DataFrame, default: str | None) -> list[str]:
    column = next((c for c in VIEW_COLUMNS if c in rows.columns), None)
    if column is None and default is None:
        raise EchodeployError(f"the input has no view column: pass --view ({', '.join(VIEWS)})")
    fallback = default.upper() if default else ""
    if column is None:
        return [fallback] * len(rows)
    return [str(v).strip().upper() if isinstance(v, str) and v.strip() else fallback for v in rows[column]]

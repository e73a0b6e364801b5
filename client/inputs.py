"""Bulk inputs: a manifest CSV (cardiac_mri columns, or a filename/path column) or a folder.

Every input becomes one row with a resolved `path` (or none, if it cannot be found) and a
`view`; a row that cannot be resolved is kept and later reported, never dropped.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from echodeploy.preprocessing.clips import DICOM_SUFFIXES, VIDEO_SUFFIXES

from echodeploy.errors import EchodeployError
from echodeploy.specs import VIEWS

STUDY = "Study_Unique_ID"
VIDEO = "Video_Unique_ID"
TARGET = "TARGET"
PATH_COLUMNS = ("filename", "path", "file", "FileName")
VIEW_COLUMNS = ("view", "View", "VIEW")
GUESSED_SUFFIXES = (".avi", ".dcm", ".mp4")


def read_inputs(source: Path, view: str | None = None, data_root: Path | None = None) -> pd.DataFrame:
    """Rows with the source's own columns plus `path` (str or None) and `view`."""
    source = Path(source)
    if source.is_dir():
        rows = _folder_rows(source)
        root = source
    elif source.is_file():
        rows = _read_manifest(source)
        root = Path(data_root) if data_root else source.parent
    else:
        raise EchodeployError(f"{source}: no such manifest or folder")
    rows["path"] = [_resolve(root, row) for _, row in rows.iterrows()]
    rows["view"] = _views(rows, view)
    return rows.reset_index(drop=True)


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


def _read_manifest(path: Path) -> pd.DataFrame:
    try:
        rows = pd.read_csv(path, dtype={STUDY: str, VIDEO: str}, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EchodeployError(f"{path}: not a readable CSV manifest ({exc})") from exc
    if not any(c in rows.columns for c in (VIDEO, *PATH_COLUMNS)):
        raise EchodeployError(
            f"{path}: manifest needs a {VIDEO} or a file column ({', '.join(PATH_COLUMNS)}); "
            f"found {', '.join(map(str, rows.columns))}"
        )
    if STUDY not in rows.columns:
        rows[STUDY] = ""
    return rows


def _resolve(root: Path, row: pd.Series) -> str | None:
    for column in PATH_COLUMNS:
        if column in row and isinstance(row[column], str) and row[column].strip():
            path = Path(row[column].strip())
            return str(path if path.is_absolute() else root / path)
    video = row.get(VIDEO)
    if not isinstance(video, str) or not video.strip():
        return None
    base = root / video.strip()
    if base.exists() or base.suffix:
        return str(base)
    for suffix in GUESSED_SUFFIXES:
        if base.with_name(base.name + suffix).exists():
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

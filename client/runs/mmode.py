"""Bulk M-mode phenotyping: DICOM files in, LVID/volume/heart-rate features and figures out.

Per file: read and stitch the trace (worker processes), segment all its windows, build
the LVID profile, classify quality windows sized by body mass and centred on the LV, and
report only beats in good windows. Windows of many files share backend batches; once a file's
inference is done its figures are drawn and it goes to the journal at once, so an interrupted
run resumes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pandas as pd

from echodeploy.backends.base import Backend, check_model
from echodeploy.client.results.mmode_features import (
    DEFAULT_MAX_BPM,
    beat_stats,
    beat_table,
    good_events,
    window_columns,
)
from echodeploy.client.runs.batching import Batcher
from echodeploy.client.runs.inputs import read_table
from echodeploy.client.runs.journal import write_csv_atomic
from echodeploy.client.runs.runner import RunSummary, records_in_order, run_bulk
from echodeploy.errors import EchodeployError, InputError, RequestError
from echodeploy.preprocessing.clips import is_dicom
from echodeploy.preprocessing.mmode import (
    profile_weights,
    quality_crop,
    quality_windows,
    read_mmode,
    segmentation_windows,
    stitch_profiles,
)
from echodeploy.specs import (
    LVID_PROFILE,
    MMODE_LVID,
    MMODE_QUALITY,
    MMODE_WINDOW,
    PROFILE_WEIGHTS,
    QUALITY_PROB,
    WINDOW,
    mmode_model,
)

log = logging.getLogger(__name__)


WriteMode = Literal["stats", "all"]  # a row per file, or a row per beat
WRITE_MODES: tuple[str, ...] = get_args(WriteMode)


@dataclass(frozen=True, kw_only=True)
class MModeOptions:
    write: WriteMode = "stats"
    figures: bool = True
    batch_size: int = 8  # windows per inference request, and nothing else
    workers: int = 0  # reader processes
    read_ahead: int = 2  # files read ahead of inference, beyond two per worker
    max_bpm: float = DEFAULT_MAX_BPM
    bn_mode: str = "seed"
    all_beats: bool = False  # --write all: every detected beat, low-quality events too

    def __post_init__(self):
        if self.write not in WRITE_MODES:
            raise EchodeployError(f"--write must be {' or '.join(WRITE_MODES)}, got {self.write!r}")
        if self.all_beats and self.write != "all":
            raise EchodeployError("--all-beats applies to the per-beat table: add --write all")
        if self.batch_size < 1 or self.workers < 0 or self.read_ahead < 0 or self.max_bpm <= 0:
            raise EchodeployError("--batch-size must be >= 1, --workers and --read-ahead >= 0, --max-bpm > 0")


def read_mmode_inputs(source: Path, mass_g: float | None = None, mass_csv: Path | None = None) -> pd.DataFrame:
    """One row per DICOM file (a file, or every DICOM in a folder) with its body mass."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and (p.suffix.lower() == ".dcm" or is_dicom(p)))
        if not files:
            raise EchodeployError(f"{source}: no DICOM files found")
        names = [str(p.relative_to(source)) for p in files]
    elif source.is_file():
        files, names = [source], [source.name]
    else:
        raise EchodeployError(f"{source}: no such file or folder")
    if (mass_g is None) == (mass_csv is None):
        raise EchodeployError("give the body mass: --mass GRAMS (all files) or --mass-csv FILE (file,mass_g)")
    if mass_csv is not None:
        table = read_table(mass_csv)
        if not {"file", "mass_g"} <= set(table.columns):
            raise EchodeployError(f"{mass_csv}: needs columns file,mass_g; found {', '.join(table.columns)}")
        lookup = {}
        for name, mass in zip(table["file"].astype(str), pd.to_numeric(table["mass_g"], errors="coerce")):
            lookup[name] = lookup[Path(name).stem] = mass
        masses = [lookup.get(n, lookup.get(Path(n).name, lookup.get(Path(n).stem, np.nan))) for n in names]
    else:
        if not mass_g > 0:
            raise EchodeployError(f"--mass must be a positive number of grams, got {mass_g}")
        masses = [float(mass_g)] * len(files)
    return pd.DataFrame({"file": names, "path": [str(p) for p in files], "mass_g": masses})


def read_windows(path: str, mass_g: float):
    """({trace, calibration, segmentation windows}, notes) of one file."""
    if not mass_g > 0:
        raise InputError("no body mass for this file (check --mass-csv)", "error")
    trace = read_mmode(Path(path))
    payload = {"trace": trace.trace.astype(np.float32), "seconds_per_px": trace.seconds_per_px,
               "mm_per_px": trace.mm_per_px, "windows": segmentation_windows(trace.trace)}
    return payload, trace.notes


class MModeInference:
    """Windows of many files share batches: segmentation first, then quality windows placed on its result."""

    def __init__(self, pipeline: MModePipeline, backend: Backend):
        self.pipeline, self.options = pipeline, pipeline.options
        untrained = False
        for name in (MMODE_LVID, MMODE_QUALITY):
            info = backend.model_info(name)
            check_model(mmode_model(name, self.options.bn_mode), info)
            untrained |= info.untrained
        if untrained:
            log.warning("UNTRAINED M-MODE MODELS (seeded random weights): features are not measurements")
        self.untrained = untrained
        self.learned = {"untrained": untrained}
        self.defaults = {"untrained": untrained, "stats": {}, "beats": []}
        self.segment = Batcher(lambda feeds: backend.infer(MMODE_LVID, feeds), self.options.batch_size)
        self.classify = Batcher(lambda feeds: backend.infer(MMODE_QUALITY, feeds), self.options.batch_size)
        self.files: dict[str, dict] = {}

    def add(self, index: int, record: dict, payload: dict) -> list[dict]:
        inputs = self.pipeline.inputs
        height = payload["trace"].shape[0]
        self.files[record["key"]] = {**payload, "record": record, "mass_g": inputs.at[index, "mass_g"],
                                     "file": inputs.at[index, "file"]}
        weights = np.broadcast_to(profile_weights(height), (len(payload["windows"]), 2, MMODE_WINDOW))
        return self._segmented(self.segment.add(record["key"], {WINDOW: payload.pop("windows"),
                                                                PROFILE_WEIGHTS: np.ascontiguousarray(weights)}))

    def flush(self) -> list[dict]:
        finished = self._segmented(self.segment.flush())
        return finished + self._classified(self.classify.flush())

    def _succeeded(self, done) -> tuple[list[dict], list[tuple[str, dict]]]:
        """(records of the files whose request failed, (key, outputs) of the others)."""
        failed, succeeded = [], []
        for key, result in done:
            if isinstance(result, RequestError):
                failed.append({**self.files.pop(key)["record"], "status": "error", "error": str(result)})
            else:
                succeeded.append((key, result))
        return failed, succeeded

    def _segmented(self, done) -> list[dict]:
        records, succeeded = self._succeeded(done)
        for key, result in succeeded:
            state = self.files[key]
            height, length = state["trace"].shape
            counts, row_sums = stitch_profiles(result[LVID_PROFILE], height, length)
            state.update(counts=counts, row_sums=row_sums)
            crop = quality_crop(height, state["mass_g"])
            windows, state["spans"] = quality_windows(state["trace"], counts, row_sums, crop)
            records += self._classified(self.classify.add(key, {WINDOW: windows}))
        return records

    def _classified(self, done) -> list[dict]:
        records, succeeded = self._succeeded(done)
        for key, result in succeeded:
            records.append(_features(self.files.pop(key), result[QUALITY_PROB][:, 0], self.options, self.untrained))
        return records


class MModePipeline:
    """M-mode phenotyping over DICOM files: traces in, per-beat features, statistics and figures out."""

    name, unit, counted = "mmode", "file", "files"

    def __init__(self, inputs: pd.DataFrame, options: MModeOptions):
        self.inputs, self.options = inputs, options
        self.keys = [f"{i}|{p}" for i, p in enumerate(inputs["path"])]
        self.paths = list(inputs["path"])
        self.read_ahead = options.read_ahead

    def read_job(self, index: int):
        return read_windows, (self.inputs.at[index, "path"], self.inputs.at[index, "mass_g"])

    def open(self, backend: Backend) -> MModeInference:
        return MModeInference(self, backend)

    def finish(self, record: dict, out_dir: Path) -> dict:
        """Draw the file's figures (what inference left in `figure`), which the journal does not keep."""
        figure = record.pop("figure", None)
        if figure is not None:
            from echodeploy.client.results.mmode_figures import draw_figures

            draw_figures(Path(out_dir) / "figures", **figure)
        return record

    def write_outputs(self, records: dict[str, dict], out_dir: Path, learned: dict) -> RunSummary:
        written = write_features(self, records, out_dir)
        if self.options.figures:
            written.append(out_dir / "figures")
        counts = pd.Series([r.get("status") for r in records_in_order(self, records)]).value_counts().to_dict()
        return RunSummary(out_dir=out_dir, counted="files", counts=counts, written=written,
                          untrained=[MMODE_LVID, MMODE_QUALITY] if learned.get("untrained") else [], options=self.options)


def run_mmode(inputs: pd.DataFrame, backend: Backend, out_dir: Path, options: MModeOptions) -> RunSummary:
    """Phenotype every file of `inputs` on `backend` into `out_dir` (resuming what is there)."""
    return run_bulk(MModePipeline(inputs, options), backend, out_dir, options.workers)


def _features(state: dict, probabilities: np.ndarray, options: MModeOptions, untrained: bool) -> dict:
    """Beats and statistics of one file from its LVID profile and quality windows; with figures on,
    what they are drawn from (`figure`, drawn by `MModePipeline.finish`)."""
    record = state["record"]
    counts, row_sums, spans = state["counts"], state["row_sums"], state["spans"]
    quality = window_columns(len(counts), spans, probabilities)
    good = quality > 0.5
    lvid_mm = counts * state["mm_per_px"]
    every_beat = beat_table(lvid_mm, state["seconds_per_px"], quality, options.max_bpm, all_events=True)
    beats = good_events(every_beat)
    record["stats"] = {"good_windows": int((probabilities > 0.5).sum()), "windows": len(spans),
                       "duration_s": round(len(counts) * state["seconds_per_px"], 4), **beat_stats(beats)}
    record["beats"] = every_beat.to_dict("records")  # the journal keeps every beat; writing picks
    if options.figures:
        from echodeploy.client.results.mmode_figures import figure_stem

        record["figure"] = {
            "stem": figure_stem(state["file"]), "trace": state["trace"],
            "seconds_per_px": state["seconds_per_px"], "mm_per_px": state["mm_per_px"], "counts": counts,
            "mean_rows": np.divide(row_sums, counts, out=np.zeros_like(row_sums), where=counts > 0),
            "spans": spans, "probabilities": probabilities, "good": good, "beats": beats, "untrained": untrained}
    return record


def write_features(pipeline: MModePipeline, records: dict, out_dir: Path) -> list[Path]:
    """features_stats.csv (a row per file) or features_all.csv (a row per good beat, or per beat with
    --all-beats, with each event's quality; failed files once)."""
    inputs = pipeline.inputs
    rows = records_in_order(pipeline, records)
    base = [{"file": f, "mass_g": m, "status": r.get("status"), "error": r.get("error", ""),
             "notes": r.get("notes", ""), "untrained": r.get("untrained", False)}
            for f, m, r in zip(inputs["file"], inputs["mass_g"], rows)]
    if pipeline.options.write == "stats":
        table = pd.DataFrame([{**b, **r.get("stats", {})} for b, r in zip(base, rows)])
    else:
        beats = [pd.DataFrame(r.get("beats") or [{}]) for r in rows]
        beats = [b if pipeline.options.all_beats else good_events(b) for b in beats]
        table = pd.DataFrame([{**b, "beat": n, **beat} for b, r in zip(base, beats)
                              for n, beat in enumerate(r.to_dict("records") or [{}])])
    path = out_dir / f"features_{pipeline.options.write}.csv"
    write_csv_atomic(table, path)
    return [path]

"""M-mode features from an LVID profile: beats, diameters, volumes, heart rate, quality gating.

Diastoles are peaks of LVID, systoles peaks of -LVID, at least one shortest plausible
beat apart (from a maximum heart rate and the file's own time resolution). Each event
carries the quality probability of the window its column lies in and a flag (`high` when
the probability rounds to 1, as the seed's good windows); by default only `high` events
are reported.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.signal import find_peaks

SEED_SECONDS_PER_PX = 0.00083334
SEED_MIN_DISTANCE_PX = 85
# The seed's 85 px at its typical resolution, as a heart rate (~847 bpm).
DEFAULT_MAX_BPM = 60 / (SEED_MIN_DISTANCE_PX * SEED_SECONDS_PER_PX)
STATS = ("median", "mean", "max", "min")


def teichholz_volume_ul(lvid_mm):
    """LV volume (uL) from LV internal diameter (mm): 7 D^3 / (2.4 + D), as Vevo systems report."""
    d = np.asarray(lvid_mm, dtype=float)
    return 7.0 * d**3 / (2.4 + d)


def min_peak_distance(seconds_per_px: float, max_bpm: float = DEFAULT_MAX_BPM) -> int:
    """Columns of the shortest beat allowed (85 at the seed's 0.00083334 s/px)."""
    return max(1, int(round(60.0 / (max_bpm * seconds_per_px))))


def find_beats(lvid_mm: np.ndarray, seconds_per_px: float, max_bpm: float = DEFAULT_MAX_BPM):
    """(diastole columns, systole columns)."""
    distance = min_peak_distance(seconds_per_px, max_bpm)
    diastoles, _ = find_peaks(lvid_mm, distance=distance)
    systoles, _ = find_peaks(-lvid_mm, distance=distance)
    return diastoles, systoles


def window_columns(length: int, spans: list[tuple[int, int]], values: np.ndarray) -> np.ndarray:
    """Per trace column, the value of the window it lies in: regular windows first, the last one fills the rest."""
    values = np.asarray(values)
    columns = np.zeros(length, values.dtype)
    assigned = np.zeros(length, bool)
    for (start, end), value in zip(spans, values):
        free = ~assigned[start:end]
        columns[start:end][free] = value
        assigned[start:end] = True
    return columns


def good_columns(length: int, spans: list[tuple[int, int]], good: np.ndarray) -> np.ndarray:
    """Per trace column: does it lie in a good window?"""
    return window_columns(length, spans, np.asarray(good, bool))


QUALITY_COLUMNS = ["lvid_d_quality", "lvid_d_quality_flag", "lvid_s_quality", "lvid_s_quality_flag"]
BEAT_COLUMNS = ["lvid_d_mm", "lvid_d_time_s", "lvid_s_mm", "lvid_s_time_s", "heart_rate_bpm", "heart_rate_time_s",
                *QUALITY_COLUMNS]


def quality_flag(probability: float) -> str:
    """'high' where the quality probability rounds to 1 (a good window), else 'low'."""
    return "high" if probability > 0.5 else "low"


def beat_table(lvid_mm: np.ndarray, seconds_per_px: float, quality: np.ndarray,
               max_bpm: float = DEFAULT_MAX_BPM, all_events: bool = False) -> pd.DataFrame:
    """One row per diastole: LVID;d, the next systole's LVID;s, heart rate to the next diastole,
    and the quality probability and flag of both events.

    `quality` is the per-column probability of a good window (a bool mask reads as 0/1). By
    default low-quality values are NaN and rows with nothing good are dropped (`good_events`);
    `all_events` keeps every beat with all its values.
    """
    quality = np.asarray(quality, dtype=float)
    diastoles, systoles = find_beats(lvid_mm, seconds_per_px, max_bpm)
    rows = []
    for i, d in enumerate(diastoles):
        following = diastoles[i + 1] if i + 1 < len(diastoles) else len(lvid_mm)
        between = systoles[(systoles > d) & (systoles < following)]
        s = between[0] if len(between) else None
        rows.append({
            "lvid_d_mm": lvid_mm[d], "lvid_d_time_s": d * seconds_per_px,
            "lvid_s_mm": np.nan if s is None else lvid_mm[s],
            "lvid_s_time_s": np.nan if s is None else s * seconds_per_px,
            "heart_rate_bpm": 60.0 / ((diastoles[i + 1] - d) * seconds_per_px) if i + 1 < len(diastoles) else np.nan,
            "heart_rate_time_s": d * seconds_per_px if i + 1 < len(diastoles) else np.nan,
            "lvid_d_quality": quality[d], "lvid_d_quality_flag": quality_flag(quality[d]),
            "lvid_s_quality": np.nan if s is None else quality[s],
            "lvid_s_quality_flag": "" if s is None else quality_flag(quality[s]),
        })
    table = _with_volumes(pd.DataFrame(rows, columns=BEAT_COLUMNS))
    return table if all_events else good_events(table)


def good_events(beats: pd.DataFrame) -> pd.DataFrame:
    """The beats as reported by default: values of low-quality events NaN (the heart rate goes with
    the diastole), rows with nothing good dropped; the quality columns stay."""
    if "lvid_d_quality_flag" not in beats:  # written before events carried quality: already good-only
        return beats
    beats = beats.copy()
    low_d, low_s = beats["lvid_d_quality_flag"] != "high", beats["lvid_s_quality_flag"] != "high"
    beats.loc[low_d, ["lvid_d_mm", "lvid_d_time_s", "heart_rate_bpm", "heart_rate_time_s"]] = np.nan
    beats.loc[low_s, ["lvid_s_mm", "lvid_s_time_s"]] = np.nan
    values = ["lvid_d_mm", "lvid_s_mm", "heart_rate_bpm"]
    return _with_volumes(beats.dropna(subset=values, how="all").reset_index(drop=True))


def _with_volumes(beats: pd.DataFrame) -> pd.DataFrame:
    return beats.assign(lv_vol_d_ul=teichholz_volume_ul(beats["lvid_d_mm"]),
                        lv_vol_s_ul=teichholz_volume_ul(beats["lvid_s_mm"]))


def beat_stats(beats: pd.DataFrame) -> dict[str, float]:
    """median/mean/max/min of LVID;d, LVID;s, volumes and heart rate over good beats."""
    stats = {"good_beats": int(beats["lvid_d_mm"].notna().sum())}
    for column in ("lvid_d_mm", "lvid_s_mm", "lv_vol_d_ul", "lv_vol_s_ul", "heart_rate_bpm"):
        values = beats[column].dropna()
        for stat in STATS:
            stats[f"{column.rsplit('_', 1)[0]}_{stat}_{column.rsplit('_', 1)[1]}"] = (
                float(getattr(values, stat)()) if len(values) else np.nan)
    return stats

"""M-mode features from an LVID profile: beats, diameters, volumes, heart rate, quality gating.

Diastoles are peaks of LVID, systoles peaks of -LVID, at least one shortest plausible
beat apart (from a maximum heart rate and the file's own time resolution). Only events
whose column falls in a good-quality window are reported.
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


def good_columns(length: int, spans: list[tuple[int, int]], good: np.ndarray) -> np.ndarray:
    """Per trace column: does it lie in a good window? Regular windows first, the last one fills the rest."""
    mask = np.zeros(length, bool)
    assigned = np.zeros(length, bool)
    for (start, end), ok in zip(spans, good):
        free = ~assigned[start:end]
        mask[start:end][free] = ok
        assigned[start:end] = True
    return mask


def beat_table(lvid_mm: np.ndarray, seconds_per_px: float, good: np.ndarray,
               max_bpm: float = DEFAULT_MAX_BPM) -> pd.DataFrame:
    """One row per diastole: LVID;d, the next systole's LVID;s, heart rate to the next diastole.

    Values whose event lies in a bad-quality column are NaN; rows with nothing good are dropped.
    """
    diastoles, systoles = find_beats(lvid_mm, seconds_per_px, max_bpm)
    rows = []
    for i, d in enumerate(diastoles):
        following = diastoles[i + 1] if i + 1 < len(diastoles) else len(lvid_mm)
        between = systoles[(systoles > d) & (systoles < following)]
        s = between[0] if len(between) else None
        row = {
            "lvid_d_mm": lvid_mm[d] if good[d] else np.nan,
            "lvid_d_time_s": d * seconds_per_px if good[d] else np.nan,
            "lvid_s_mm": lvid_mm[s] if s is not None and good[s] else np.nan,
            "lvid_s_time_s": s * seconds_per_px if s is not None and good[s] else np.nan,
            "heart_rate_bpm": np.nan,
            "heart_rate_time_s": np.nan,
        }
        if i + 1 < len(diastoles) and good[d]:
            row["heart_rate_bpm"] = 60.0 / ((diastoles[i + 1] - d) * seconds_per_px)
            row["heart_rate_time_s"] = d * seconds_per_px
        rows.append(row)
    table = pd.DataFrame(rows, columns=["lvid_d_mm", "lvid_d_time_s", "lvid_s_mm", "lvid_s_time_s",
                                        "heart_rate_bpm", "heart_rate_time_s"])
    table["lv_vol_d_ul"] = teichholz_volume_ul(table["lvid_d_mm"])
    table["lv_vol_s_ul"] = teichholz_volume_ul(table["lvid_s_mm"])
    values = ["lvid_d_mm", "lvid_s_mm", "heart_rate_bpm"]
    return table.dropna(subset=values, how="all").reset_index(drop=True)


def beat_stats(beats: pd.DataFrame) -> dict[str, float]:
    """median/mean/max/min of LVID;d, LVID;s, volumes and heart rate over good beats."""
    stats = {"good_beats": int(beats["lvid_d_mm"].notna().sum())}
    for column in ("lvid_d_mm", "lvid_s_mm", "lv_vol_d_ul", "lv_vol_s_ul", "heart_rate_bpm"):
        values = beats[column].dropna()
        for stat in STATS:
            stats[f"{column.rsplit('_', 1)[0]}_{stat}_{column.rsplit('_', 1)[1]}"] = (
                float(getattr(values, stat)()) if len(values) else np.nan)
    return stats

"""Per-file M-mode figures (PNG), as the seed draws them: quality strip, LV overlay, LVID/volume, heart rate."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from echodeploy.client.results.mmode_features import teichholz_volume_ul  # noqa: E402

FIGURE_KINDS = ("quality", "mask", "lvid", "heart_rate")  # figures/<stem>_<kind>.png


def figure_stem(file: str) -> str:
    """The figures' name of an input file: its path in the study without suffix, '/' as '__'."""
    return Path(file).with_suffix("").as_posix().replace("/", "__")


def _shade_bad(ax, times: np.ndarray, good: np.ndarray) -> None:
    """Grey spans where the quality network found the recording bad."""
    edges = np.flatnonzero(np.diff(np.r_[0, (~good).astype(int), 0]))
    for start, end in zip(edges[::2], edges[1::2]):
        ax.axvspan(times[start], times[min(end, len(times) - 1)], color="0.85", zorder=0)


def draw_figures(out_dir: Path, stem: str, trace: np.ndarray, seconds_per_px: float, mm_per_px: float,
                 counts: np.ndarray, mean_rows: np.ndarray, spans, probabilities, good: np.ndarray,
                 beats: pd.DataFrame, untrained: bool) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    height, length = trace.shape
    times = np.arange(length) * seconds_per_px
    lvid = counts * mm_per_px
    extent = (0, times[-1], height * mm_per_px, 0)
    title_tail = "  [UNTRAINED MODELS: not measurements]" if untrained else ""
    paths = []

    fig, (strip, image) = plt.subplots(2, 1, figsize=(14, 4.5), height_ratios=[1, 6], sharex=True)
    heat = np.zeros(length)
    for (start, end), p in zip(spans, probabilities):
        heat[start:end] = p
    shown = strip.imshow(heat[None], aspect="auto", cmap="RdYlGn", vmin=0, vmax=1, extent=(0, times[-1], 0, 1))
    strip.set_yticks([])
    strip.set_title(f"{stem}: quality (network probability of a good window){title_tail}")
    fig.colorbar(shown, ax=[strip, image], fraction=0.02, label="P(good)")
    image.imshow(trace, cmap="gray", aspect="auto", extent=extent)
    image.set(xlabel="time (s)", ylabel="depth (mm)")
    paths.append(out_dir / f"{stem}_quality.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(14, 4))
    ax.imshow(trace, cmap="gray", aspect="auto", extent=extent)
    top, bottom = (mean_rows - counts / 2) * mm_per_px, (mean_rows + counts / 2) * mm_per_px
    ax.fill_between(times, top, bottom, where=counts > 0, color="tab:red", alpha=0.35, lw=0, label="LV (segmented)")
    ax.set(title=f"{stem}: LV segmentation overlay{title_tail}", xlabel="time (s)", ylabel="depth (mm)")
    ax.legend(loc="upper right")
    paths.append(out_dir / f"{stem}_mask.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, (top_ax, bottom_ax) = plt.subplots(2, 1, figsize=(14, 6), sharex=True)
    for ax, values, unit in ((top_ax, lvid, "LVID (mm)"), (bottom_ax, teichholz_volume_ul(lvid), "LV volume (uL)")):
        _shade_bad(ax, times, good)
        ax.plot(times, values, color="tab:blue", lw=0.8)
        ax.set_ylabel(unit)
    top_ax.plot(beats["lvid_d_time_s"], beats["lvid_d_mm"], "v", color="tab:red", label="diastole (good)")
    top_ax.plot(beats["lvid_s_time_s"], beats["lvid_s_mm"], "^", color="tab:green", label="systole (good)")
    bottom_ax.plot(beats["lvid_d_time_s"], beats["lv_vol_d_ul"], "v", color="tab:red")
    bottom_ax.plot(beats["lvid_s_time_s"], beats["lv_vol_s_ul"], "^", color="tab:green")
    top_ax.legend(loc="upper right")
    top_ax.set_title(f"{stem}: LVID and volume; grey = bad quality{title_tail}")
    bottom_ax.set_xlabel("time (s)")
    paths.append(out_dir / f"{stem}_lvid.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, (rate_ax, scatter_ax) = plt.subplots(1, 2, figsize=(14, 4), width_ratios=[2, 1])
    _shade_bad(rate_ax, times, good)
    rate_ax.plot(beats["heart_rate_time_s"], beats["heart_rate_bpm"], "o-", color="tab:purple")
    rate_ax.set(title=f"{stem}: heart rate per beat{title_tail}", xlabel="time (s)", ylabel="bpm",
                xlim=(0, times[-1]))
    scatter_ax.plot(beats["heart_rate_bpm"], beats["lv_vol_d_ul"], "v", color="tab:red", label="diastole")
    scatter_ax.plot(beats["heart_rate_bpm"], beats["lv_vol_s_ul"], "^", color="tab:green", label="systole")
    scatter_ax.set(xlabel="heart rate (bpm)", ylabel="LV volume (uL)", title="volume vs heart rate")
    scatter_ax.legend()
    paths.append(out_dir / f"{stem}_heart_rate.png")
    fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
    plt.close(fig)
    return paths

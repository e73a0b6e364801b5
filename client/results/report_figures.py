"""The report's figures: small SVG charts drawn with matplotlib (text kept as text), and JPEG thumbnails
of the per-file PNG figures, both embedded in the page."""

from __future__ import annotations

import base64
import io
import itertools
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

MAX_CURVE_POINTS = 300  # a ROC curve of 10,000 rows is drawn through at most this many of its points
COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_ids = itertools.count()


def svg(figure: Figure) -> str:
    """The figure as inline SVG: text as text, ids unique in the page, no date."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"f{next(_ids)}"}):
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    return text.replace("<svg ", '<svg class="chart" ', 1)


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height))
    figure.set_layout_engine("constrained")
    return figure


def histograms(panels: list[tuple[str, dict[str, np.ndarray]]], xlabel: str, value_range=None,
               bins: int = 20) -> str:
    """One histogram per panel (title, {group label: values}); groups stacked in one panel."""
    figure = _figure(min(3.2 * len(panels), 11), 2.6)
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, groups) in zip(axes, panels):
        groups = {label: np.asarray(v, float)[np.isfinite(np.asarray(v, float))] for label, v in groups.items()}
        everything = np.concatenate(list(groups.values())) if groups else np.array([])
        low, high = value_range or ((everything.min(), everything.max()) if len(everything) else (0, 1))
        edges = np.linspace(low, high if high > low else low + 1, bins + 1)
        ax.hist(list(groups.values()), bins=edges, stacked=True, label=list(groups), color=COLOURS[:len(groups)])
        ax.set(title=title, xlabel=xlabel, ylabel="count")
        if len(groups) > 1:
            ax.legend(fontsize=7)
    return svg(figure)


def _thin(fpr: np.ndarray, tpr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(fpr) <= MAX_CURVE_POINTS:
        return fpr, tpr
    keep = np.unique(np.linspace(0, len(fpr) - 1, MAX_CURVE_POINTS).round().astype(int))
    return fpr[keep], tpr[keep]


def roc(y: np.ndarray, score: np.ndarray, label: str, youden: tuple[float, float] | None) -> str:
    """The ROC curve of `score` against binary `y`, labelled (AUC and CI), with the Youden point
    (1 - specificity, sensitivity) marked."""
    figure = _figure(3.4, 3.3)
    ax = figure.subplots()
    fpr, tpr, _ = roc_curve(np.asarray(y).astype(bool), np.asarray(score, float))
    ax.plot(*_thin(fpr, tpr), color="tab:blue", lw=1.5, label=label)
    ax.plot([0, 1], [0, 1], "--", color="0.6", lw=1)
    if youden is not None:
        ax.plot(*youden, "o", color="tab:red", label="Youden cut-off")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity")
    ax.legend(loc="lower right", fontsize=7)
    return svg(figure)


def reliability(curves: list[tuple[str, list[dict]]]) -> str:
    """Observed fraction against mean predicted probability, one line per (label, reliability bins)."""
    figure = _figure(3.4, 3.3)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], "--", color="0.6", lw=1, label="perfect calibration")
    for (label, bins), colour in zip(curves, COLOURS):
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-", color=colour, label=label, ms=4)
    ax.set(xlim=(0, 1), ylim=(-0.01, 1.01), xlabel="mean predicted probability", ylabel="observed fraction")
    ax.legend(loc="upper left", fontsize=7)
    return svg(figure)


def thumbnail(png: Path, width: int = 900, quality: int = 70) -> str | None:
    """A data URI of `png` scaled to `width` pixels as JPEG (a tenth of the PNG's bytes for traces),
    or None when the file cannot be read."""
    image = cv2.imread(str(png), cv2.IMREAD_COLOR)
    if image is None:
        return None
    if image.shape[1] > width:
        image = cv2.resize(image, (width, round(image.shape[0] * width / image.shape[1])),
                           interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode() if ok else None

"""Evaluation against TARGET: ROC AUC with bootstrap CI and Youden cut-off, reliability bins; regression errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's, ties counted half); NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, score))


def rank_auc(y: np.ndarray, score: np.ndarray) -> float:
    """The same area as a Mann-Whitney U with tied ranks averaged: equal to `roc_auc` to 1e-15 and
    20x faster, for the bootstrap's 1000 resamples; NaN when only one class is present."""
    y = np.asarray(y).astype(bool)
    positives, negatives = y.sum(), (~y).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(score).rank(method="average").to_numpy()
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def youden_cutoff(y: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    """(threshold, sensitivity, specificity) maximising TPR - FPR, predicting positive at >=.

    As the seed computed it: scikit-learn's `roc_curve` and the first `argmax(tpr - fpr)`, so
    among tied thresholds the highest is reported (inf when no threshold beats chance).
    """
    fpr, tpr, thresholds = roc_curve(np.asarray(y).astype(bool), score)
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]), float(tpr[best]), float(1 - fpr[best])


def binary_metrics(y, score, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    y, score = np.asarray(y, dtype=float), np.asarray(score, dtype=float)
    keep = ~(np.isnan(y) | np.isnan(score))
    y, score = y[keep].astype(int), score[keep]
    result = {"n": int(len(y)), "n_positive": int(y.sum()), "auc": roc_auc(y, score)}
    if np.isnan(result["auc"]):
        return result
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(y), size=(n_bootstrap, len(y)))
    aucs = np.array([rank_auc(y[s], score[s]) for s in samples])
    aucs = aucs[~np.isnan(aucs)]
    threshold, sensitivity, specificity = youden_cutoff(y, score)
    result.update(
        auc_ci95=[float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))],
        youden_threshold=threshold, sensitivity=sensitivity, specificity=specificity,
    )
    return result


def regression_metrics(y, value) -> dict:
    y, value = np.asarray(y, dtype=float), np.asarray(value, dtype=float)
    keep = ~(np.isnan(y) | np.isnan(value))
    y, value = y[keep], value[keep]
    if len(y) == 0:
        return {"n": 0}
    error = value - y
    pearson = float(np.corrcoef(y, value)[0, 1]) if len(y) > 1 and y.std() > 0 and value.std() > 0 else float("nan")
    return {
        "n": int(len(y)),
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
        "pearson_r": pearson,
    }


def reliability_bins(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict]:
    """Equal-count bins of predicted probability: mean predicted, observed fraction, items."""
    if len(y) == 0:
        return []
    groups = pd.qcut(pd.Series(p).rank(method="first"), q=min(bins, len(y)), labels=False)
    frame = pd.DataFrame({"p": p, "y": y, "bin": groups}).groupby("bin")
    return [{"predicted": float(g["p"].mean()), "observed": float(g["y"].mean()), "n": len(g)} for _, g in frame]

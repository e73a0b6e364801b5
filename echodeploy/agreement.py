"""How far a reduced-precision variant's outputs are from fp32 on the same inputs.

Pure functions on arrays and tables; thresholds are the acceptance limits users see in
export and bench reports (a variant outside them is flagged, never hidden).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

MAX_MEAN_ABS_DIFF = 0.02  # probabilities
MAX_RELATIVE_DIFF = 0.02  # regression values: mean |delta| over mean |fp32|
MIN_MASK_AGREEMENT = 0.99  # fraction of segmentation pixels


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def compare_outputs(kind: str, reference: np.ndarray, variant: np.ndarray) -> dict:
    """Agreement of one model's outputs; `passed` applies the threshold of its kind.

    binary / quality: probabilities; regression: values; segmentation: masks (bool).
    The fp32 spread and the correlation say whether the inputs moved the outputs at all.
    """
    reference, variant = np.asarray(reference), np.asarray(variant)
    if kind == "segmentation":
        agreement = float((reference == variant).mean())
        return {"items": int(len(reference)), "mask_agreement": agreement,
                "passed": agreement >= MIN_MASK_AGREEMENT}
    ref, var = reference.reshape(-1).astype(np.float64), variant.reshape(-1).astype(np.float64)
    diff = np.abs(var - ref)
    report = {"items": int(len(ref)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
              "fp32_spread": float(ref.std()), "correlation": _correlation(ref, var)}
    if kind == "regression":
        report["relative_diff"] = float(diff.mean() / max(np.abs(ref).mean(), 1e-12))
        report["passed"] = report["relative_diff"] <= MAX_RELATIVE_DIFF
    else:
        report["passed"] = report["mean_abs_diff"] <= MAX_MEAN_ABS_DIFF
    return report


def compare_columns(reference: pd.DataFrame, variant: pd.DataFrame, key: str, columns: list[str]) -> dict:
    """Mean and max |change| per column between two result tables joined on `key` (ok rows of both)."""
    joined = reference.merge(variant, on=key, suffixes=("", "_variant"))
    report = {"rows": int(len(joined))}
    for column in columns:
        change = (joined[f"{column}_variant"] - joined[column]).abs()
        report[column] = {"mean_abs_change": float(change.mean()), "max_abs_change": float(change.max())}
    return report


def auc_change(labels: np.ndarray, reference: np.ndarray, variant: np.ndarray) -> float:
    """AUC(variant) - AUC(fp32) against the same labels."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, variant) - roc_auc_score(labels, reference))


def summary(report: dict) -> str:
    """One line for people: the figures that decide, then PASS or FAIL."""
    verdict = "PASS" if report["passed"] else "FAIL"
    if "mask_agreement" in report:
        return f"mask pixels agree {report['mask_agreement']:.2%} (>= {MIN_MASK_AGREEMENT:.0%}): {verdict}"
    limit = (f"relative {report['relative_diff']:.2%} (<= {MAX_RELATIVE_DIFF:.0%})" if "relative_diff" in report
             else f"(<= {MAX_MEAN_ABS_DIFF})")
    return (f"mean |delta| {report['mean_abs_diff']:.4f} {limit}, max {report['max_abs_diff']:.4f}, "
            f"fp32 spread {report['fp32_spread']:.4f}, correlation {report['correlation']:.2f} "
            f"over {report['items']} inputs: {verdict}")

import numpy as np
import pytest

from echodeploy.client.results.metrics import binary_metrics, regression_metrics, roc_auc, youden_cutoff


def test_auc_against_hand_counted_pairs():
    y = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.9])
    # 9 positive-negative pairs; positive ranked higher in 7 of them
    assert roc_auc(y, score) == pytest.approx(7 / 9)
    assert roc_auc(y, np.ones(6)) == pytest.approx(0.5)  # ties count half


def test_youden_cutoff():
    threshold, sensitivity, specificity = youden_cutoff(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.9]))
    assert threshold == pytest.approx(0.6) and sensitivity == 1 and specificity == 1


def test_binary_metrics_ci_brackets_the_auc():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    score = y * 0.5 + rng.normal(0, 0.5, 200)
    result = binary_metrics(y, score, n_bootstrap=300)
    low, high = result["auc_ci95"]
    assert low < result["auc"] < high and 0.6 < result["auc"] < 0.9


def test_regression_metrics():
    result = regression_metrics([1.0, 2.0, 3.0, np.nan], [1.5, 2.0, 2.5, 9.0])
    assert result["n"] == 3
    assert result["mae"] == pytest.approx(1 / 3)
    assert result["rmse"] == pytest.approx(np.sqrt(0.5 / 3))
    assert result["pearson_r"] == pytest.approx(1.0)

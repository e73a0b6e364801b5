import numpy as np
import pytest

from echodeploy.client.results.metrics import binary_metrics, rank_auc, regression_metrics, roc_auc, youden_cutoff


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


def highest_best_cutoff(y: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    """Brute force: every distinct score as a cut-off (>=) and 'none positive' (inf); the highest
    one reaching the largest J = TP/P - FP/N (in floats, as scikit-learn computes it)."""
    positives, negatives = y.sum(), (~y).sum()
    best = None
    for threshold in [np.inf, *np.unique(score)[::-1]]:
        predicted = score >= threshold
        tp, fp = (predicted & y).sum(), (predicted & ~y).sum()
        j = tp / positives - fp / negatives
        if best is None or j > best[0]:
            best = (j, threshold, tp / positives, 1 - fp / negatives)
    return best[1:]


def test_youden_cutoff_matches_scikit_learn_on_tied_scores():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    tie_break_mattered = 0
    for _ in range(300):
        n = int(rng.integers(4, 16))
        y = rng.permutation(np.r_[0, 1, rng.integers(0, 2, n - 2)]).astype(bool)
        score = rng.integers(0, 5, n) / 4  # few distinct values: ties are common
        ours = youden_cutoff(y, score)
        fpr, tpr, thresholds = roc_curve(y, score)
        best = np.argmax(tpr - fpr)  # the seed's cut-off
        assert ours == (thresholds[best], tpr[best], 1 - fpr[best])
        assert ours == pytest.approx(highest_best_cutoff(y, score))
        assert rank_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)  # the bootstrap's AUC
        j = tpr - fpr
        tie_break_mattered += np.flatnonzero(np.isclose(j, j.max())).size > 1
    assert tie_break_mattered > 15  # many cases where lowest and highest tied cut-offs differ


def test_single_class_has_no_auc_or_cutoff():
    assert np.isnan(roc_auc(np.ones(4), np.arange(4.0))) and np.isnan(rank_auc(np.zeros(4), np.arange(4.0)))
    assert binary_metrics([0, 0, 0], [0.1, 0.5, 0.9]) == {"n": 3, "n_positive": 0, "auc": pytest.approx(np.nan, nan_ok=True)}

"""Classification metrics: hand-computed values, a brute-force cross-check, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detfm.errors import DetfmError
from detfm.evaluate.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    per_class_f1,
    per_class_precision,
    per_class_recall,
)

NAN = float("nan")


def test_hand_computed_example() -> None:
    # 4 classes, class 3 never occurs and is never predicted.
    y_true = np.array([0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0, 2])
    cm = confusion_matrix(y_true, y_pred, 4)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert cm.dtype == np.int64
    np.testing.assert_allclose(per_class_precision(cm), [1 / 2, 2 / 3, 1.0, NAN])
    np.testing.assert_allclose(per_class_recall(cm), [1 / 2, 2 / 3, 1.0, NAN])
    np.testing.assert_allclose(per_class_f1(cm), [1 / 2, 2 / 3, 1.0, NAN])
    assert macro_f1(cm) == pytest.approx((1 / 2 + 2 / 3 + 1.0) / 3)   # class 3 skipped (undefined)
    assert macro_f1(cm, [0, 1]) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert accuracy(cm) == pytest.approx(4 / 6)


def test_asymmetric_example_and_false_positive_class() -> None:
    # class 0: tp 2, fp 1, fn 1 -> P 2/3, R 2/3; class 1: tp 0, fp 1, fn 0 (never true) -> F1 0;
    # class 2: tp 1, fp 0, fn 1 -> P 1, R 1/2, F1 2/3.
    y_true = np.array([0, 0, 0, 2, 2, 0])
    y_pred = np.array([0, 0, 2, 2, 0, 1])
    cm = confusion_matrix(y_true, y_pred, 3)
    np.testing.assert_allclose(per_class_precision(cm), [2 / 3, 0.0, 1 / 2])
    np.testing.assert_allclose(per_class_recall(cm), [2 / 4, NAN, 1 / 2])
    np.testing.assert_allclose(per_class_f1(cm), [2 * 2 / (4 + 3), 0.0, 1 / 2])
    # The predicted-but-never-true class counts (as 0) in the macro average.
    assert macro_f1(cm) == pytest.approx((4 / 7 + 0.0 + 1 / 2) / 3)
    assert macro_f1(cm, [0, 2]) == pytest.approx((4 / 7 + 1 / 2) / 2)


def _brute_force(y_true: np.ndarray, y_pred: np.ndarray, c: int) -> tuple[list[float], list[float], list[float]]:
    """Per-class precision, recall, F1 by counting point by point (NaN where undefined)."""
    precision, recall, f1 = [], [], []
    for k in range(c):
        tp = fp = fn = 0
        for t, p in zip(y_true.tolist(), y_pred.tolist(), strict=True):
            tp += t == k and p == k
            fp += t != k and p == k
            fn += t == k and p != k
        precision.append(tp / (tp + fp) if tp + fp else NAN)
        recall.append(tp / (tp + fn) if tp + fn else NAN)
        f1.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else NAN)
    return precision, recall, f1


@pytest.mark.parametrize("trial", range(12))
def test_matches_brute_force(trial: int) -> None:
    rng = np.random.default_rng(trial)
    c = int(rng.integers(2, 7))
    n = int(rng.integers(1, 200))
    # Skewed class frequencies so that some classes are rare or absent.
    p = rng.dirichlet(np.full(c, 0.5))
    y_true = rng.choice(c, size=n, p=p)
    noisy = rng.random(n) < 0.4
    y_pred = np.where(noisy, rng.integers(0, c, n), y_true)
    cm = confusion_matrix(y_true, y_pred, c)
    precision, recall, f1 = _brute_force(y_true, y_pred, c)
    np.testing.assert_allclose(per_class_precision(cm), precision)
    np.testing.assert_allclose(per_class_recall(cm), recall)
    np.testing.assert_allclose(per_class_f1(cm), f1)
    defined = [v for v in f1 if not math.isnan(v)]
    assert macro_f1(cm) == pytest.approx(sum(defined) / len(defined))
    subset = sorted(rng.choice(c, size=2, replace=False).tolist())
    sub = [f1[k] for k in subset if not math.isnan(f1[k])]
    expected = sum(sub) / len(sub) if sub else NAN
    assert macro_f1(cm, subset) == pytest.approx(expected, nan_ok=True)
    assert cm.sum() == n and accuracy(cm) == pytest.approx(float(np.mean(y_true == y_pred)))


def test_f1_is_harmonic_mean_where_defined() -> None:
    rng = np.random.default_rng(5)
    y_true = rng.integers(0, 5, 500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 5, 500))
    cm = confusion_matrix(y_true, y_pred, 5)
    p, r = per_class_precision(cm), per_class_recall(cm)
    np.testing.assert_allclose(per_class_f1(cm), 2 * p * r / (p + r))


def test_confusion_matrices_add_up_over_batches() -> None:
    rng = np.random.default_rng(9)
    y_true, y_pred = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    whole = confusion_matrix(y_true, y_pred, 4)
    parts = sum(confusion_matrix(y_true[a:a + 70], y_pred[a:a + 70], 4) for a in range(0, 300, 70))
    np.testing.assert_array_equal(whole, parts)


def test_empty_input_gives_nan_scores() -> None:
    cm = confusion_matrix(np.zeros(0, np.int64), np.zeros(0, np.int64), 3)
    assert cm.shape == (3, 3) and cm.sum() == 0
    assert math.isnan(macro_f1(cm)) and math.isnan(accuracy(cm))


def test_integral_float_labels_are_accepted() -> None:
    cm = confusion_matrix(np.array([0.0, 1.0]), np.array([1.0, 1.0]), 2)
    np.testing.assert_array_equal(cm, [[0, 1], [0, 1]])


@pytest.mark.parametrize(("y_true", "y_pred", "c", "match"), [
    ([0, 1], [0], 2, "same shape"),
    ([0, 2], [0, 1], 2, r"y_true holds 1 label\(s\) outside 0..1"),
    ([0, 1], [0, -1], 2, "y_pred holds 1 label"),
    ([0.5, 1], [0, 1], 2, "integer class ids"),
    ([True, False], [0, 1], 2, "integer class ids"),
    ([[0, 1]], [[0, 1]], 2, r"shape \(N,\)"),
    ([0], [0], 0, "positive integer"),
])
def test_confusion_matrix_rejects_bad_input(y_true: list, y_pred: list, c: int, match: str) -> None:
    with pytest.raises(DetfmError, match=match):
        confusion_matrix(np.array(y_true), np.array(y_pred), c)


@pytest.mark.parametrize(("cm", "match"), [
    (np.zeros((2, 3)), "square"),
    (np.zeros((0, 0)), "square"),
    (np.array([[1, -1], [0, 1]]), "non-negative"),
    (np.array([[1.0, NAN], [0, 1]]), "finite"),
])
def test_metrics_reject_bad_matrices(cm: np.ndarray, match: str) -> None:
    with pytest.raises(DetfmError, match=match):
        per_class_f1(cm)


def test_macro_f1_rejects_bad_class_subsets() -> None:
    cm = np.eye(3, dtype=np.int64)
    with pytest.raises(DetfmError, match="out of range"):
        macro_f1(cm, [0, 3])
    with pytest.raises(DetfmError, match="at least one class"):
        macro_f1(cm, [])

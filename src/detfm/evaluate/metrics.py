"""Classification metrics from a confusion matrix: precision, recall, F1, macro-F1.

Everything starts from a (C, C) confusion matrix ``cm`` with rows = true class and
columns = predicted class, so metrics over millions of points can be accumulated batch by
batch (add the matrices) and computed once at the end.

Undefined values are NaN, never a silent 0:

* precision of a class that was never predicted,
* recall of a class that never occurs in the truth,
* F1 of a class that occurs in neither (``2 tp + fp + fn == 0``).

A class that is predicted but never true has F1 = 0 (its false positives count against
it). :func:`macro_f1` averages the defined F1 values of the chosen classes, i.e. over the
classes present in the truth or the predictions, the convention of scikit-learn's
``f1_score(average="macro")`` without explicit labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detfm.errors import DetfmError

__all__ = [
    "accuracy", "confusion_matrix", "macro_f1", "per_class_f1", "per_class_precision",
    "per_class_recall",
]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: ``cm[t, p]`` points of true class ``t`` predicted as ``p``.

    Raises:
        DetfmError: shapes differ, labels are not integers, or a label is outside
            ``0 .. num_classes - 1``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise DetfmError(f"num_classes must be a positive integer, got {num_classes!r}")
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise DetfmError(f"y_true and y_pred must have the same shape, got {t.shape} and {p.shape}")
    for name, v in (("y_true", t), ("y_pred", p)):
        bad = (v < 0) | (v >= num_classes)
        if bad.any():
            raise DetfmError(f"{name} holds {int(bad.sum())} label(s) outside 0..{num_classes - 1} "
                             f"(e.g. {int(v[bad][0])})")
    flat = t * num_classes + p
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_precision(cm: np.ndarray) -> np.ndarray:
    """(C,) ``tp / (tp + fp)``; NaN for a class never predicted."""
    tp, predicted, _ = _counts(cm)
    return _ratio(tp, predicted)


def per_class_recall(cm: np.ndarray) -> np.ndarray:
    """(C,) ``tp / (tp + fn)``; NaN for a class absent from the truth."""
    tp, _, true = _counts(cm)
    return _ratio(tp, true)


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """(C,) ``2 tp / (2 tp + fp + fn)``; NaN for a class neither true nor predicted.

    Equal to the harmonic mean of precision and recall where both are defined.
    """
    tp, predicted, true = _counts(cm)
    return _ratio(2.0 * tp, predicted + true)


def macro_f1(cm: np.ndarray, classes: Sequence[int] | None = None) -> float:
    """Unweighted mean F1 over ``classes`` (default: all), skipping undefined (NaN) ones.

    ``classes`` picks a subset by index, e.g. ``[0, 1, 2, 3]`` to leave out the
    low-energy class. Returns NaN when none of the chosen classes is defined.
    """
    f1 = per_class_f1(cm)
    if classes is not None:
        idx = np.asarray(list(classes), dtype=np.int64)
        if idx.size == 0:
            raise DetfmError("macro_f1 needs at least one class")
        if (idx < 0).any() or (idx >= f1.size).any():
            raise DetfmError(f"class indices {idx.tolist()} out of range for {f1.size} classes")
        f1 = f1[idx]
    defined = f1[~np.isnan(f1)]
    return float(defined.mean()) if defined.size else float("nan")


def accuracy(cm: np.ndarray) -> float:
    """Fraction of all points on the diagonal (NaN for an empty matrix)."""
    m = _check_cm(cm)
    total = m.sum()
    return float(np.trace(m) / total) if total else float("nan")


# ----------------------------------------------------------------------------- helpers
def _as_labels(values: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise DetfmError(f"{name} must be one label per point, shape (N,), got {a.shape}")
    integral = np.issubdtype(a.dtype, np.integer) or (
        np.issubdtype(a.dtype, np.floating) and bool(np.array_equal(a, np.round(a))))
    if a.dtype == bool or not integral:
        raise DetfmError(f"{name} must hold integer class ids, got dtype {a.dtype}")
    return a.astype(np.int64)


def _check_cm(cm: np.ndarray) -> np.ndarray:
    m = np.asarray(cm)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise DetfmError(f"a confusion matrix must be square (C, C), got shape {m.shape}")
    if not np.isfinite(m).all() or (m < 0).any():
        raise DetfmError("a confusion matrix must hold finite, non-negative counts")
    return m.astype(np.float64)


def _counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true positives, predicted per class, true per class)."""
    m = _check_cm(cm)
    return np.diag(m).copy(), m.sum(axis=0), m.sum(axis=1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out

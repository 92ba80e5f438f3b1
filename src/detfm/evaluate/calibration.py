"""Calibration of class probabilities: expected calibration error, reliability curves,
temperature scaling.

A classifier is *calibrated* when, among the points it labels with confidence ``c`` (the
largest class probability), a fraction ``c`` is right. The top-label expected calibration
error (ECE, Naeini et al. 2015; Guo et al. 2017) bins points by confidence and averages the
gap between accuracy and mean confidence over bins, weighted by the bin's share of points::

    ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|

Two binnings: ``"width"`` (equal-width bins on [0, 1], bin ``b`` holds confidences in
``[b/B, (b+1)/B)``, 1.0 in the last; the usual definition) and ``"mass"`` (equal-mass bins:
the points sorted by confidence are cut into ``B`` runs whose sizes differ by at most one,
so no bin is empty or nearly so; equal confidences may fall on both sides of a cut). Points with a negative label (unlabeled) are ignored.

Temperature scaling (Guo et al. 2017) divides every logit by one scalar ``T`` fitted by
minimising the negative log-likelihood on held-out labeled points; it changes confidences
but never the predicted class. All arithmetic is float64.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from detfm.errors import DetfmError
from detfm.io import atomic_path

__all__ = ["BinScheme", "ReliabilityCurve", "T_MAX", "T_MIN", "calibration_summary",
           "expected_calibration_error", "fit_temperature", "negative_log_likelihood", "reliability_curve",
           "reliability_figure", "softmax"]

BinScheme = Literal["mass", "width"]
SCHEMES: tuple[str, ...] = ("mass", "width")

# Search range of the fitted temperature.
T_MIN = 0.05
T_MAX = 20.0


# ----------------------------------------------------------------------------- checks
def as_probs(probs: np.ndarray, name: str = "probs") -> np.ndarray:
    """``probs`` as a finite (N, C) float64 array with C >= 2 (rows are not renormalised)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise DetfmError(f"{name} must have shape (N, C) with C >= 2 classes, got {p.shape}")
    if not np.isfinite(p).all():
        raise DetfmError(f"{name} holds NaN or infinite values")
    return p


def as_logits(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    """``logits`` as a finite (N, C) float64 array with C >= 2."""
    return as_probs(logits, name)


def as_labels(labels: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """``labels`` as an (N,) int64 array with values in -1..C-1 (negative: unlabeled)."""
    y = np.asarray(labels)
    if y.shape != (n,):
        raise DetfmError(f"labels must have shape ({n},), got {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise DetfmError(f"labels must be integers, got {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.size and int(y.max()) >= num_classes:
        raise DetfmError(f"labels must lie in 0..{num_classes - 1} (negative: unlabeled), got {int(y.max())}")
    return y


def labeled(probs: np.ndarray, labels: np.ndarray, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``probs`` with a label >= 0 and those labels; an error when there are none."""
    p = as_probs(probs, name)
    y = as_labels(labels, p.shape[0], p.shape[1])
    keep = y >= 0
    if not keep.any():
        raise DetfmError("no labeled points (every label is negative or there are no points)")
    return p[keep], y[keep]


def _check_bins(n_bins: int, scheme: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise DetfmError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    if scheme not in SCHEMES:
        raise DetfmError(f"unknown binning scheme '{scheme}'; choose one of {', '.join(SCHEMES)}")


# ----------------------------------------------------------------------------- probabilities
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` in float64."""
    z = as_logits(logits)
    if not (math.isfinite(temperature) and temperature > 0):
        raise DetfmError(f"temperature must be a finite value > 0, got {temperature}")
    z = z / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def negative_log_likelihood(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean ``-log p[label]`` over the labeled points (probabilities floored at the smallest
    positive float, so a zero probability gives a large finite value)."""
    p, y = labeled(probs, labels)
    picked = p[np.arange(y.size), y]
    return float(-np.log(np.maximum(picked, np.finfo(np.float64).tiny)).mean())


def _log_softmax_nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    return float((lse - z[np.arange(labels.size), labels]).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100, *,
                    max_points: int | None = None, seed: int = 0) -> float:
    """The temperature ``T`` in [``T_MIN``, ``T_MAX``] minimising the NLL of ``softmax(logits / T)``.

    Bounded Brent search over ``log T`` (the NLL is convex in ``1/T``, so it has one minimum
    along ``log T``); deterministic. Unlabeled points (label < 0) are ignored. With
    ``max_points``, at most that many labeled points, drawn without replacement by a
    generator seeded with ``seed``, are used.
    """
    from scipy.optimize import minimize_scalar  # noqa: PLC0415 - only needed here

    z, y = labeled(logits, labels, "logits")
    if max_points is not None:
        if isinstance(max_points, bool) or not isinstance(max_points, (int, np.integer)) or max_points < 1:
            raise DetfmError(f"max_points must be an integer >= 1, got {max_points!r}")
        if y.size > max_points:
            pick = np.sort(np.random.default_rng(seed).choice(y.size, size=int(max_points), replace=False))
            z, y = z[pick], y[pick]
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise DetfmError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    res = minimize_scalar(lambda log_t: _log_softmax_nll(z, y, math.exp(log_t)),
                          bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                          options={"xatol": 1e-7, "maxiter": int(max_iter)})
    best = float(res.x)
    # The bounded search never evaluates the end points themselves; check them too.
    candidates = [best, math.log(T_MIN), math.log(T_MAX)]
    values = [_log_softmax_nll(z, y, math.exp(c)) for c in candidates]
    return float(math.exp(candidates[int(np.argmin(values))]))


# ----------------------------------------------------------------------------- binning
@dataclass
class ReliabilityCurve:
    """Per-bin calibration of top-label confidences.

    Attributes:
        confidence: (B,) mean confidence of the points of each bin (NaN for an empty bin).
        accuracy: (B,) fraction of those points whose predicted class is right (NaN if empty).
        count: (B,) int64 points per bin.
        edges: (B + 1,) bin boundaries (for ``"mass"`` bins: the smallest confidence, the
            midpoints between neighbouring bins, the largest confidence).
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    edges: np.ndarray

    @property
    def ece(self) -> float:
        """The expected calibration error of these bins."""
        keep = self.count > 0
        w = self.count[keep] / self.count.sum()
        return float((w * np.abs(self.accuracy[keep] - self.confidence[keep])).sum())

    def to_json(self) -> dict[str, list[Any]]:
        """``{"confidence", "accuracy", "count", "edges"}`` as lists (None for empty bins)."""
        def clean(a: np.ndarray) -> list[float | None]:
            return [None if not math.isfinite(v) else float(v) for v in a.tolist()]
        return {"confidence": clean(self.confidence), "accuracy": clean(self.accuracy),
                "count": [int(c) for c in self.count], "edges": clean(self.edges)}


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, y = labeled(probs, labels)
    pred = p.argmax(axis=1)
    conf = p[np.arange(y.size), pred]
    return conf, (pred == y).astype(np.float64)


def _bin_index(conf: np.ndarray, n_bins: int, scheme: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(bin of each point, edges, number of bins)."""
    if scheme == "width":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
        return idx, edges, n_bins
    n = conf.size
    bins = min(n_bins, n)
    order = np.argsort(conf, kind="stable")
    idx = np.empty(n, dtype=np.int64)
    # Bin b holds sorted positions [floor(b n / B), floor((b+1) n / B)): sizes differ by <= 1.
    cuts = (np.arange(bins + 1) * n) // bins
    idx[order] = np.repeat(np.arange(bins), np.diff(cuts))
    s = conf[order]
    inner = (s[cuts[1:-1] - 1] + s[cuts[1:-1]]) / 2.0
    edges = np.concatenate([[s[0]], inner, [s[-1]]])
    return idx, edges, bins


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15,
                      scheme: BinScheme = "mass") -> ReliabilityCurve:
    """Per-bin accuracy, mean confidence and count of the top-label predictions.

    ``"mass"`` bins use ``min(n_bins, N)`` bins so none is empty.
    """
    _check_bins(n_bins, scheme)
    conf, correct = _top_label(probs, labels)
    idx, edges, bins = _bin_index(conf, int(n_bins), scheme)
    count = np.bincount(idx, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=bins) / count
        mean_acc = np.bincount(idx, weights=correct, minlength=bins) / count
    return ReliabilityCurve(confidence=mean_conf, accuracy=mean_acc, count=count, edges=edges)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15,
                               scheme: BinScheme = "mass") -> float:
    """Top-label ECE of ``probs`` against ``labels`` (see the module docstring)."""
    return reliability_curve(probs, labels, n_bins, scheme).ece


# ----------------------------------------------------------------------------- summary and figure
def calibration_summary(logits_cal: np.ndarray, labels_cal: np.ndarray, logits_eval: np.ndarray,
                        labels_eval: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Fit a temperature on the calibration points and score the evaluation points before and after.

    Returns a JSON-ready dict: ``temperature``, ``ece_before``, ``ece_after`` (equal-mass
    bins), ``nll_before``, ``nll_after`` and ``reliability`` ``{"before": {confidence,
    accuracy, count}, "after": {...}}``.
    """
    t = fit_temperature(logits_cal, labels_cal)
    before = softmax(logits_eval)
    after = softmax(logits_eval, t)
    curves = {"before": reliability_curve(before, labels_eval, n_bins),
              "after": reliability_curve(after, labels_eval, n_bins)}
    reliability = {}
    for name, curve in curves.items():
        js = curve.to_json()
        reliability[name] = {k: js[k] for k in ("confidence", "accuracy", "count")}
    return {"temperature": t, "ece_before": curves["before"].ece, "ece_after": curves["after"].ece,
            "nll_before": negative_log_likelihood(before, labels_eval),
            "nll_after": negative_log_likelihood(after, labels_eval), "reliability": reliability}


def reliability_figure(curves: Mapping[str, ReliabilityCurve], path: str | os.PathLike[str],
                       title: str | None = None) -> Path:
    """A PNG reliability diagram: accuracy against confidence per curve over the diagonal,
    and the points per bin below. Written atomically; returns the path."""
    if len(curves) == 0:
        raise DetfmError("reliability_figure needs at least one curve")
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - lazy, Agg only
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(5.0, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    lo = min(float(np.nanmin(c.edges)) for c in curves.values() if c.edges.size)
    lo = max(0.0, min(lo, 1.0))
    top.plot([lo, 1.0], [lo, 1.0], color="0.6", linestyle="--", linewidth=1.0, label="calibrated")
    for i, (name, c) in enumerate(curves.items()):
        colour = f"C{i}"
        keep = c.count > 0
        top.plot(c.confidence[keep], c.accuracy[keep], marker="o", markersize=3.5, color=colour,
                 label=f"{name} (ECE {c.ece:.3f})")
        widths = np.diff(c.edges)
        bottom.bar(c.edges[:-1], c.count, width=widths, align="edge", color=colour, alpha=0.35,
                   edgecolor=colour, linewidth=0.6)
    top.set_ylabel("accuracy")
    top.set_xlim(lo, 1.0)
    top.set_ylim(0.0, 1.0)
    top.legend(loc="upper left", fontsize=8)
    if title:
        top.set_title(title)
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("points per bin")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)

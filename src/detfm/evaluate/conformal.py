"""Split conformal prediction sets for classifiers.

Given class probabilities, a conformal predictor returns a *set* of classes per point such
that, over exchangeable calibration and test units, the true class lies in the set with
probability at least ``1 - alpha`` whatever the model (Vovk et al. 2005; split conformal:
Papadopoulos et al. 2002, Lei et al. 2018). Recipe: compute a non-conformity score
``s(x, y)`` of the true class on ``n`` held-out calibration points, take ``qhat``, the
``k``-th smallest score with ``k = ceil((n + 1)(1 - alpha))``, and predict
``{y : s(x, y) <= qhat}``. If the scores have no ties the coverage lies in
``[1 - alpha, 1 - alpha + 1/(n + 1))``.

Scores (``p`` are the probabilities of one point sorted in decreasing order, ``r`` the
0-based rank of class ``y``, ``u`` uniform on [0, 1], drawn once per point):

* ``"lac"`` (least ambiguous set-valued classifier, Sadinle et al. 2019): ``1 - p_y``.
  Smallest sets on average; a set may be empty.
* ``"aps"`` (adaptive prediction sets, Romano et al. 2020): the mass of the classes ranked
  above ``y`` plus ``u * p_y`` (randomized) or plus ``p_y`` (not randomized). Sets grow
  with the model's uncertainty.
* ``"raps"`` (regularized APS, Angelopoulos et al. 2021): the APS score plus
  ``lam * max(0, r + 1 - k_reg)``, which penalises long tails of unlikely classes.

Randomized APS/RAPS sets are ``{y : s(x, y, u) <= qhat}`` (exact coverage, a set may be
empty). Non-randomized sets hold every class whose score *without* its own mass
(``u = 0``) is at most ``qhat``, and always the top class: a superset of the exact set, so
still valid, never empty, and somewhat conservative.

Exchangeability. The guarantee is about exchangeable units. The points of one event are
not exchangeable with each other (they share the event's topology and the model's errors
come in whole tracks), so calibrating on every point of some events and testing on every
point of others does not carry the guarantee at the point level. Calibrate on one point
per event (:func:`one_point_per_event`) for a guarantee per randomly chosen point of a new
event; or treat whole particles/events as the units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from detfm.errors import DetfmError
from detfm.evaluate.calibration import as_labels, as_probs

__all__ = ["METHODS", "ConformalPredictor", "Method", "conformal_summary", "conformity_scores", "coverage",
           "fit_conformal", "mean_set_size", "one_point_per_event"]

Method = Literal["aps", "raps", "lac"]
METHODS: tuple[str, ...] = ("aps", "raps", "lac")

RngLike = np.random.Generator | int | None


def _rng(rng: RngLike) -> np.random.Generator:
    """A generator: ``rng`` itself, one seeded with it, or one seeded with 0 (never global state)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


def _check_method(method: str, k_reg: int, lam: float) -> None:
    if method not in METHODS:
        raise DetfmError(f"unknown conformal method '{method}'; choose one of {', '.join(METHODS)}")
    if isinstance(k_reg, bool) or not isinstance(k_reg, (int, np.integer)) or k_reg < 0:
        raise DetfmError(f"k_reg must be an integer >= 0, got {k_reg!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise DetfmError(f"lam must be a finite value >= 0, got {lam}")


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, (int, float, np.floating)) and math.isfinite(alpha) and 0 < alpha < 1):
        raise DetfmError(f"alpha must lie strictly between 0 and 1, got {alpha!r}")


def _score_matrix(p: np.ndarray, method: str, u: np.ndarray | None, k_reg: int, lam: float) -> np.ndarray:
    """(N, C) score of every class of every point. ``u``: (N,) uniforms, or None for the
    non-randomized score (the class's own mass counted in full)."""
    if method == "lac":
        out: np.ndarray = 1.0 - p
        return out
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    above = np.cumsum(sorted_p, axis=1) - sorted_p  # mass ranked strictly above
    own = sorted_p if u is None else u[:, None] * sorted_p
    sorted_scores = above + own
    if method == "raps":
        rank1 = np.arange(1, p.shape[1] + 1, dtype=np.float64)
        sorted_scores = sorted_scores + lam * np.maximum(0.0, rank1 - k_reg)[None, :]
    scores = np.empty_like(sorted_scores)
    np.put_along_axis(scores, order, sorted_scores, axis=1)
    return scores


def conformity_scores(probs: np.ndarray, labels: np.ndarray, method: Method = "aps", randomized: bool = True,
                      rng: RngLike = None, k_reg: int = 1, lam: float = 0.0) -> np.ndarray:
    """(N,) non-conformity score of the true class of each point (larger: less conforming).

    Every label must lie in 0..C-1. ``rng`` (a Generator or a seed; None: seed 0) draws the
    uniforms of randomized APS/RAPS; ``randomized`` is ignored by ``"lac"``.
    """
    _check_method(method, k_reg, lam)
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0], p.shape[1])
    if y.size and int(y.min()) < 0:
        raise DetfmError("conformity scores need a label for every point (found negative labels)")
    u = _rng(rng).uniform(size=p.shape[0]) if randomized and method != "lac" else None
    return _score_matrix(p, method, u, int(k_reg), float(lam))[np.arange(y.size), y]


@dataclass(frozen=True)
class ConformalPredictor:
    """A calibrated threshold: ``predict_sets`` gives each point its set of classes.

    Attributes:
        alpha: target miscoverage (sets cover the truth with probability >= 1 - alpha).
        qhat: the calibrated score threshold.
        method, randomized, k_reg, lam: the score (see the module docstring).
    """

    alpha: float
    qhat: float
    method: Method = "aps"
    randomized: bool = True
    k_reg: int = 1
    lam: float = 0.0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        _check_method(self.method, self.k_reg, self.lam)

    def predict_sets(self, probs: np.ndarray, rng: RngLike = None) -> np.ndarray:
        """(N, C) bool: ``sets[i, c]`` is True when class ``c`` is in point ``i``'s set.

        ``rng`` (a Generator or a seed; None: seed 0) draws the uniforms of randomized APS/RAPS.
        """
        p = as_probs(probs)
        if self.method == "lac":
            sets: np.ndarray = _score_matrix(p, "lac", None, self.k_reg, self.lam) <= self.qhat
            return sets
        if self.randomized:
            u = _rng(rng).uniform(size=p.shape[0])
            sets = _score_matrix(p, self.method, u, self.k_reg, self.lam) <= self.qhat
            return sets
        # Not randomized: a class is in when its score without its own mass is <= qhat.
        sets = _score_matrix(p, self.method, np.zeros(p.shape[0]), self.k_reg, self.lam) <= self.qhat
        if p.shape[0]:
            sets[np.arange(p.shape[0]), p.argmax(axis=1)] = True
        return sets


def fit_conformal(probs_cal: np.ndarray, labels_cal: np.ndarray, alpha: float = 0.1, method: Method = "aps",
                  randomized: bool = True, seed: int = 0, k_reg: int = 1, lam: float = 0.0) -> ConformalPredictor:
    """Calibrate a :class:`ConformalPredictor` on labeled points (negative labels are dropped).

    ``qhat`` is the empirical quantile of the calibration scores at level
    ``ceil((n + 1)(1 - alpha)) / n``, i.e. the ``ceil((n + 1)(1 - alpha))``-th smallest
    score; that needs ``n >= ceil((n + 1)(1 - alpha))``, about ``1/alpha - 1`` points.
    ``seed`` seeds the uniforms of randomized scores.
    """
    _check_alpha(alpha)
    _check_method(method, k_reg, lam)
    p = as_probs(probs_cal, "probs_cal")
    y = as_labels(labels_cal, p.shape[0], p.shape[1])
    keep = y >= 0
    p, y = p[keep], y[keep]
    n = int(y.size)
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    if n == 0 or k > n:
        need = math.ceil((1.0 - alpha) / alpha - 1e-12)
        raise DetfmError(f"conformal calibration at alpha={alpha} needs at least {need} labeled calibration "
                         f"points, got {n}")
    scores = conformity_scores(p, y, method, randomized, np.random.default_rng(seed), k_reg, lam)
    qhat = float(np.partition(scores, k - 1)[k - 1])
    return ConformalPredictor(alpha=float(alpha), qhat=qhat, method=method, randomized=bool(randomized),
                              k_reg=int(k_reg), lam=float(lam))


def _sets_and_labels(sets: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sets)
    if s.ndim != 2 or s.dtype != np.bool_:
        raise DetfmError(f"sets must be an (N, C) bool array, got {s.dtype} {s.shape}")
    y = as_labels(labels, s.shape[0], s.shape[1])
    keep = y >= 0
    if not keep.any():
        raise DetfmError("no labeled points (every label is negative or there are no points)")
    return s[keep], y[keep]


def coverage(sets: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of labeled points (label >= 0) whose true class is in their set."""
    s, y = _sets_and_labels(sets, labels)
    return float(s[np.arange(y.size), y].mean())


def mean_set_size(sets: np.ndarray) -> float:
    """Mean number of classes per set."""
    s = np.asarray(sets)
    if s.ndim != 2 or s.shape[0] == 0:
        raise DetfmError(f"sets must be a non-empty (N, C) array, got shape {s.shape}")
    return float(s.sum(axis=1).mean())


def conformal_summary(predictor: ConformalPredictor, probs: np.ndarray, labels: np.ndarray,
                      seed: int = 0, offsets: np.ndarray | None = None) -> dict[str, float | int]:
    """Coverage and mean set size on the labeled points: ``{"coverage", "set_size", "n", "target"}``
    (``target`` is ``1 - alpha``). ``seed`` seeds the uniforms of randomized scores.

    With ``offsets`` (the (E + 1,) event boundaries of the points) it adds
    ``"event_coverage"``, the mean over events of the fraction of each event's labeled points
    covered, and ``"events"``, how many events have labeled points. That is the probability
    that a random point of a random event is covered: what a predictor calibrated on
    :func:`one_point_per_event` guarantees. ``"coverage"`` weighs every point alike, so large
    events count more; the two differ when coverage depends on an event's size."""
    p = as_probs(probs)
    y = as_labels(labels, p.shape[0], p.shape[1])
    keep = y >= 0
    if not keep.any():
        raise DetfmError("no labeled points (every label is negative or there are no points)")
    sets = predictor.predict_sets(p[keep], np.random.default_rng(seed))
    out: dict[str, float | int] = {"coverage": coverage(sets, y[keep]), "set_size": mean_set_size(sets),
                                   "n": int(keep.sum()), "target": 1.0 - predictor.alpha}
    if offsets is not None:
        o = np.asarray(offsets, np.int64)
        if o.ndim != 1 or o.size < 1 or o[0] != 0 or o[-1] != p.shape[0] or (np.diff(o) < 0).any():
            raise DetfmError(f"offsets must be event boundaries from 0 to the {p.shape[0]} points, got {o.shape} "
                             f"ending at {o[-1] if o.size else None}")
        event = np.repeat(np.arange(o.size - 1), np.diff(o))[keep]
        covered = sets[np.arange(len(sets)), y[keep]].astype(np.float64)
        hits = np.bincount(event, weights=covered, minlength=o.size - 1)
        counts = np.bincount(event, minlength=o.size - 1)
        labeled = counts > 0
        out["event_coverage"] = float((hits[labeled] / counts[labeled]).mean())
        out["events"] = int(labeled.sum())
    return out


def one_point_per_event(offsets: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of one point drawn uniformly from each non-empty event (``offsets``: (E + 1,)
    event boundaries), in event order; seeded. Points drawn this way from different
    events are exchangeable units for conformal calibration."""
    o = np.asarray(offsets)
    if o.ndim != 1 or o.size < 1 or not np.issubdtype(o.dtype, np.integer):
        raise DetfmError(f"offsets must be a 1-d integer array of event boundaries, got {o.dtype} {o.shape}")
    o = o.astype(np.int64)
    counts = np.diff(o)
    if o[0] != 0 or (counts < 0).any():
        raise DetfmError("offsets must start at 0 and never decrease")
    nonempty = np.flatnonzero(counts > 0)
    rng = np.random.default_rng(seed)
    pick: np.ndarray = o[nonempty] + (rng.random(nonempty.size) * counts[nonempty]).astype(np.int64)
    return pick

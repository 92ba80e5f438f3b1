"""Split conformal prediction: scores by hand, finite-sample coverage over many splits, RAPS, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detfm.errors import DetfmError
from detfm.evaluate.calibration import softmax
from detfm.evaluate.conformal import (ConformalPredictor, conformal_summary, conformity_scores, coverage,
                                      fit_conformal, mean_set_size, one_point_per_event)

P = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])


def categorical(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cum = np.cumsum(probs, axis=1)
    return np.minimum((rng.random(probs.shape[0])[:, None] > cum).sum(axis=1), probs.shape[1] - 1)


def exchangeable(n: int, rng: np.random.Generator, classes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A miscalibrated model: labels come from softmax(z), the model says softmax(2 z + noise)."""
    z = rng.normal(size=(n, classes))
    labels = categorical(softmax(z), rng)
    return softmax(2.0 * z + 0.5 * rng.normal(size=z.shape)), labels


# ----------------------------------------------------------------------------- scores
def test_scores_by_hand() -> None:
    y = np.array([1, 0])
    assert conformity_scores(P, y, "lac") == pytest.approx([0.7, 0.9])
    assert conformity_scores(P, y, "aps", randomized=False) == pytest.approx([0.8, 0.9])
    u = np.random.default_rng(5).uniform(size=2)
    assert conformity_scores(P, y, "aps", rng=np.random.default_rng(5)) == pytest.approx(
        [0.5 + u[0] * 0.3, 0.8 + u[1] * 0.1])
    # RAPS: + lam * max(0, rank(1-based) - k_reg); class 2 of row 0 is 3rd, class 0 of row 1 is 2nd (stable).
    raps = conformity_scores(P, np.array([2, 0]), "raps", randomized=False, k_reg=1, lam=0.1)
    assert raps == pytest.approx([1.0 + 0.2, 0.9 + 0.1])
    with pytest.raises(DetfmError, match="negative labels"):
        conformity_scores(P, np.array([0, -1]))


def test_qhat_is_the_finite_sample_order_statistic() -> None:
    rng = np.random.default_rng(0)
    probs, labels = exchangeable(99, rng)
    pred = fit_conformal(probs, labels, alpha=0.1, method="lac")
    k = math.ceil(100 * 0.9)
    assert pred.qhat == np.sort(1.0 - probs[np.arange(99), labels])[k - 1]
    sets = pred.predict_sets(probs)
    assert sets.dtype == np.bool_ and sets.shape == probs.shape
    assert coverage(sets, labels) == pytest.approx(k / 99)  # no ties: exactly k calibration points covered


# ----------------------------------------------------------------------------- coverage
@pytest.mark.parametrize(("method", "kw"), [("aps", {}), ("raps", {"k_reg": 1, "lam": 0.05}), ("lac", {})])
def test_mean_coverage_over_many_splits(method: str, kw: dict[str, float]) -> None:
    alpha, n_cal, n_test, reps = 0.1, 200, 200, 500
    covered, sizes = [], []
    for rep in range(reps):
        rng = np.random.default_rng(1000 + rep)
        probs, labels = exchangeable(n_cal + n_test, rng)
        pred = fit_conformal(probs[:n_cal], labels[:n_cal], alpha, method, seed=rep, **kw)  # type: ignore[arg-type]
        summary = conformal_summary(pred, probs[n_cal:], labels[n_cal:], seed=reps + rep)
        covered.append(summary["coverage"])
        sizes.append(summary["set_size"])
    mean, sigma = float(np.mean(covered)), float(np.std(covered, ddof=1) / math.sqrt(reps))
    assert 1 - alpha - 3 * sigma <= mean <= 1 - alpha + 1 / (n_cal + 1) + 3 * sigma
    assert 1.0 < np.mean(sizes) < 6.0  # informative sets, not all classes


def test_non_randomized_aps_never_empty_and_still_covers() -> None:
    alpha, covered = 0.2, []
    for rep in range(50):
        rng = np.random.default_rng(rep)
        probs, labels = exchangeable(400, rng)
        pred = fit_conformal(probs[:200], labels[:200], alpha, "aps", randomized=False)
        sets = pred.predict_sets(probs[200:])
        assert sets.sum(axis=1).min() >= 1
        assert sets[np.arange(200), probs[200:].argmax(axis=1)].all()  # the top class is always in
        covered.append(coverage(sets, labels[200:]))
    assert np.mean(covered) >= 1 - alpha - 3 * np.std(covered) / math.sqrt(50)
    randomized = fit_conformal(probs[:200], labels[:200], alpha, "aps").predict_sets(probs[200:], rng=1)
    assert randomized.sum() <= sets.sum()  # the non-randomized set is the conservative one


def peaked(n: int, rng: np.random.Generator, classes: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Half the points sharply peaked, half flat, with a noisy tail; the truth is almost always
    one of the model's top two classes."""
    z = rng.normal(size=(n, classes))
    z[:, 0] += np.where(rng.random(n) < 0.5, 6.0, 1.0)
    probs = softmax(z)
    order = np.argsort(-probs, axis=1)
    u = rng.random(n)
    rank = np.where(u < 0.9, 0, np.where(u < 0.98, 1, rng.integers(2, classes, size=n)))
    return probs, order[np.arange(n), rank]


def test_raps_sets_are_smaller_than_aps_on_a_peaked_model() -> None:
    aps, raps = [], []
    for rep in range(20):
        probs, labels = peaked(2000, np.random.default_rng(rep))
        cal, test = slice(0, 1000), slice(1000, 2000)
        aps.append(mean_set_size(fit_conformal(probs[cal], labels[cal], 0.1, "aps").predict_sets(probs[test])))
        pred = fit_conformal(probs[cal], labels[cal], 0.1, "raps", k_reg=2, lam=0.5)
        raps.append(mean_set_size(pred.predict_sets(probs[test])))
    assert np.mean(raps) < 0.5 * np.mean(aps)


# ----------------------------------------------------------------------------- errors and helpers
@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_the_unit_interval_is_an_error(alpha: float) -> None:
    with pytest.raises(DetfmError, match="alpha"):
        fit_conformal(P, np.array([0, 2]), alpha=alpha)
    with pytest.raises(DetfmError, match="alpha"):
        ConformalPredictor(alpha=alpha, qhat=0.5)


def test_too_few_calibration_points_is_an_error() -> None:
    rng = np.random.default_rng(0)
    probs, labels = exchangeable(20, rng)
    with pytest.raises(DetfmError, match="needs at least 9 labeled calibration points, got 8"):
        fit_conformal(probs[:8], labels[:8], alpha=0.1)
    assert fit_conformal(probs[:9], labels[:9], alpha=0.1).qhat > 0  # 9 = ceil(10 * 0.9): the largest score
    unlabeled = labels.copy()
    unlabeled[:12] = -1  # unlabeled points do not count
    with pytest.raises(DetfmError, match="got 8"):
        fit_conformal(probs, unlabeled, alpha=0.1)
    with pytest.raises(DetfmError, match="unknown conformal method"):
        fit_conformal(probs, labels, method="thr")  # type: ignore[arg-type]
    with pytest.raises(DetfmError, match="lam"):
        fit_conformal(probs, labels, method="raps", lam=-1.0)


def test_predictions_are_seeded() -> None:
    probs, labels = exchangeable(300, np.random.default_rng(3))
    a = fit_conformal(probs[:150], labels[:150], 0.1, "aps", seed=1)
    assert a == fit_conformal(probs[:150], labels[:150], 0.1, "aps", seed=1)
    assert np.array_equal(a.predict_sets(probs[150:], rng=2), a.predict_sets(probs[150:], rng=2))
    assert conformal_summary(a, probs[150:], labels[150:], seed=4) == conformal_summary(a, probs[150:],
                                                                                       labels[150:], seed=4)
    summary = conformal_summary(a, probs[150:], labels[150:])
    assert summary["n"] == 150 and summary["target"] == pytest.approx(0.9)


def test_coverage_and_set_size_by_hand() -> None:
    sets = np.array([[True, False, False], [True, True, False], [False, False, True]])
    assert coverage(sets, np.array([0, 2, -1])) == 0.5
    assert mean_set_size(sets) == pytest.approx(4 / 3)
    with pytest.raises(DetfmError, match="bool"):
        coverage(sets.astype(int), np.array([0, 1, 2]))


def test_one_point_per_event() -> None:
    offsets = np.array([0, 5, 5, 12, 13, 40])
    pick = one_point_per_event(offsets, seed=0)
    assert pick.shape == (4,)  # the empty event gets none
    for i, (a, b) in zip(pick, [(0, 5), (5, 12), (12, 13), (13, 40)], strict=True):
        assert a <= i < b
    assert np.array_equal(pick, one_point_per_event(offsets, seed=0))
    draws = np.stack([one_point_per_event(offsets, seed=s) for s in range(200)])
    assert len(np.unique(draws[:, 3])) > 15  # spread over the 27 points of the last event
    with pytest.raises(DetfmError, match="start at 0"):
        one_point_per_event(np.array([1, 3]))


def test_event_coverage_by_hand() -> None:
    # APS without randomisation at qhat 0.6: a set holds the top classes until their sum reaches 0.6
    pred = ConformalPredictor(alpha=0.1, qhat=0.6, randomized=False)
    probs = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.7, 0.2, 0.1]])
    labels = np.array([0, 1, 0, 2, -1])  # event 0: points 0-2 (2 of 3 covered); event 1: 3 (covered) and 4 (unlabeled)
    out = conformal_summary(pred, probs, labels, offsets=np.array([0, 3, 5]))
    assert out["coverage"] == pytest.approx(3 / 4)  # every labeled point alike
    assert out["event_coverage"] == pytest.approx((2 / 3 + 1) / 2) and out["events"] == 2
    assert "event_coverage" not in conformal_summary(pred, probs, labels)
    with pytest.raises(DetfmError, match="event boundaries"):
        conformal_summary(pred, probs, labels, offsets=np.array([0, 3, 4]))


def test_one_point_per_event_calibration_covers_events_not_points() -> None:
    """Large events are harder here. Calibrated on one point per event, the sets cover a random
    point of a random event at 1 - alpha; over all points (large events weigh more) they do not."""
    alpha, reps, per_event, per_point = 0.1, 200, [], []
    for rep in range(reps):
        rng = np.random.default_rng(5000 + rep)
        sizes = np.where(rng.random(120) < 0.5, 2, 40)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        noise = np.repeat(np.where(sizes == 40, 2.0, 0.2), sizes)  # big events: a worse model
        z = rng.normal(size=(offsets[-1], 5))
        labels = categorical(softmax(z), rng)
        probs = softmax(2.0 * z + noise[:, None] * rng.normal(size=z.shape))
        cal, test = 60, 60  # events
        pick = one_point_per_event(offsets[:cal + 1], seed=rep)
        pred = fit_conformal(probs[pick], labels[pick], alpha, "aps", seed=rep)
        a = offsets[cal]
        out = conformal_summary(pred, probs[a:], labels[a:], seed=rep, offsets=offsets[cal:] - a)
        per_event.append(out["event_coverage"])
        per_point.append(out["coverage"])
        assert out["events"] == test
    sigma = float(np.std(per_event, ddof=1) / math.sqrt(reps))
    assert abs(np.mean(per_event) - (1 - alpha)) < 3 * sigma + 1 / 61
    assert np.mean(per_point) < 1 - alpha - 0.03  # the point-weighted figure misses the target

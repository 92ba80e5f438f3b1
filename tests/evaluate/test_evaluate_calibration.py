"""Calibration: ECE against torchmetrics, equal-mass bins, temperature scaling, summary, figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from detfm.errors import DetfmError
from detfm.evaluate.calibration import (T_MIN, calibration_summary, expected_calibration_error, fit_temperature,
                                        negative_log_likelihood, reliability_curve, reliability_figure, softmax)


def draw_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from the row's categorical distribution."""
    cum = np.cumsum(probs, axis=1)
    return np.minimum((rng.random(probs.shape[0])[:, None] > cum).sum(axis=1), probs.shape[1] - 1)


def overconfident(n: int, seed: int, factor: float = 3.0, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``factor`` times too sharp, with labels drawn from the true distribution."""
    rng = np.random.default_rng(seed)
    true_logits = 2.0 * rng.normal(size=(n, classes))
    return true_logits * factor, draw_labels(softmax(true_logits), rng)


# ----------------------------------------------------------------------------- ECE
@pytest.mark.parametrize(("seed", "classes", "n_bins"), [(0, 5, 15), (1, 3, 10), (2, 12, 20)])
def test_width_ece_matches_torchmetrics(seed: int, classes: int, n_bins: int) -> None:
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(size=(2000, classes)) * 2.0)
    labels = rng.integers(0, classes, size=2000)
    ref = float(tm.multiclass_calibration_error(torch.tensor(probs), torch.tensor(labels), classes, n_bins,
                                                norm="l1"))
    ours = expected_calibration_error(probs, labels, n_bins, scheme="width")
    assert ours == pytest.approx(ref, abs=1e-6)
    assert ours > 0.05  # random labels: far from calibrated, so the comparison is not of two zeros


@pytest.mark.parametrize(("n", "n_bins"), [(1003, 15), (2000, 7), (9, 15)])
def test_mass_bins_hold_equal_counts(n: int, n_bins: int) -> None:
    rng = np.random.default_rng(n)
    probs = softmax(rng.normal(size=(n, 4)))
    curve = reliability_curve(probs, rng.integers(0, 4, size=n), n_bins, scheme="mass")
    assert curve.count.size == min(n, n_bins)
    assert curve.count.sum() == n and curve.count.max() - curve.count.min() <= 1
    assert np.all(np.diff(curve.edges) >= 0) and np.all(np.diff(curve.confidence) >= 0)


def test_ece_on_a_hand_example_and_unlabeled_points_are_ignored() -> None:
    # 4 points at confidence 0.8, half right: ECE = |0.5 - 0.8| = 0.3 when they share a bin.
    probs = np.array([[0.8, 0.2]] * 4 + [[0.1, 0.9]] * 2)
    labels = np.array([0, 0, 1, 1, -1, -1])
    assert expected_calibration_error(probs, labels, 5, "width") == pytest.approx(0.3, abs=1e-12)
    assert expected_calibration_error(probs, labels, 1, "mass") == pytest.approx(0.3, abs=1e-12)
    # Equal-mass bins split ties in input order: bin 1 holds the two right points, bin 2 the two
    # wrong ones, so ECE = (|1 - 0.8| + |0 - 0.8|) / 2.
    assert expected_calibration_error(probs, labels, 2, "mass") == pytest.approx(0.5, abs=1e-12)
    curve = reliability_curve(probs, labels, 10, "width")
    assert curve.count.sum() == 4 and curve.count[8] == 4
    assert np.isnan(curve.confidence[0]) and curve.to_json()["accuracy"][0] is None


def test_calibrated_probabilities_have_small_ece() -> None:
    rng = np.random.default_rng(7)
    probs = softmax(1.5 * rng.normal(size=(20000, 5)))
    labels = draw_labels(probs, rng)
    assert expected_calibration_error(probs, labels) < 0.015
    assert expected_calibration_error(probs, labels, scheme="width") < 0.015


def test_bad_inputs_are_clear_errors() -> None:
    probs = np.full((3, 2), 0.5)
    with pytest.raises(DetfmError, match="scheme"):
        expected_calibration_error(probs, np.zeros(3, dtype=int), scheme="quantile")  # type: ignore[arg-type]
    with pytest.raises(DetfmError, match="n_bins"):
        expected_calibration_error(probs, np.zeros(3, dtype=int), n_bins=0)
    with pytest.raises(DetfmError, match="labels must lie"):
        expected_calibration_error(probs, np.array([0, 1, 2]))
    with pytest.raises(DetfmError, match="no labeled points"):
        expected_calibration_error(probs, np.full(3, -1))
    with pytest.raises(DetfmError, match="shape"):
        expected_calibration_error(probs, np.zeros(4, dtype=int))
    with pytest.raises(DetfmError, match="NaN"):
        expected_calibration_error(np.full((3, 2), np.nan), np.zeros(3, dtype=int))


# ----------------------------------------------------------------------------- softmax, NLL
def test_softmax_and_nll() -> None:
    logits = np.array([[0.0, math.log(3.0)], [1000.0, 0.0]], dtype=np.float32)
    p = softmax(logits)
    assert p.dtype == np.float64 and np.allclose(p.sum(axis=1), 1.0)
    assert p[0] == pytest.approx([0.25, 0.75]) and p[1, 0] == 1.0  # no overflow
    assert softmax(logits[:1], temperature=1e9)[0] == pytest.approx([0.5, 0.5])
    assert negative_log_likelihood(p[:1], np.array([1])) == pytest.approx(-math.log(0.75))
    assert math.isfinite(negative_log_likelihood(np.array([[1.0, 0.0]]), np.array([1])))
    with pytest.raises(DetfmError, match="temperature"):
        softmax(logits, temperature=0.0)


# ----------------------------------------------------------------------------- temperature
def test_temperature_recovers_a_known_overconfidence() -> None:
    logits, labels = overconfident(20000, seed=11, factor=3.0)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(logits, labels) == t  # deterministic
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert before > 0.15 and after < before / 5
    assert negative_log_likelihood(softmax(logits, t), labels) < negative_log_likelihood(softmax(logits), labels)


def test_temperature_subsample_is_seeded_and_unlabeled_points_are_ignored() -> None:
    logits, labels = overconfident(20000, seed=12, factor=0.5)
    t1 = fit_temperature(logits, labels, max_points=5000, seed=3)
    assert t1 == fit_temperature(logits, labels, max_points=5000, seed=3)
    assert t1 != fit_temperature(logits, labels, max_points=5000, seed=4)
    assert t1 == pytest.approx(0.5, rel=0.1)  # underconfident logits: T < 1
    noise = np.random.default_rng(0).normal(size=(100, 5)) * 50
    both = fit_temperature(np.concatenate([logits, noise]), np.concatenate([labels, np.full(100, -1)]))
    assert both == fit_temperature(logits, labels)


def test_temperature_is_bounded() -> None:
    # Always right with a margin: the NLL keeps falling as T -> 0, so the fit stops at the bound.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 3))
    assert fit_temperature(logits, logits.argmax(axis=1)) == pytest.approx(T_MIN)
    with pytest.raises(DetfmError, match="max_points"):
        fit_temperature(logits, logits.argmax(axis=1), max_points=0)


# ----------------------------------------------------------------------------- summary and figure
def test_calibration_summary_is_json_ready_and_improves_ece() -> None:
    logits, labels = overconfident(8000, seed=21)
    summary = calibration_summary(logits[:4000], labels[:4000], logits[4000:], labels[4000:], n_bins=10)
    json.dumps(summary, allow_nan=False)
    assert set(summary) == {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "reliability"}
    assert summary["temperature"] == pytest.approx(3.0, rel=0.1)
    assert summary["ece_after"] < summary["ece_before"] and summary["nll_after"] < summary["nll_before"]
    after = summary["reliability"]["after"]
    assert set(after) == {"confidence", "accuracy", "count"} and sum(after["count"]) == 4000


def test_reliability_figure_writes_a_png(tmp_path: Path) -> None:
    logits, labels = overconfident(3000, seed=5)
    curves = {"raw": reliability_curve(softmax(logits), labels),
              "scaled": reliability_curve(softmax(logits, 3.0), labels, scheme="width")}
    out = reliability_figure(curves, tmp_path / "sub" / "rel.png", title="test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name != "rel.png"]  # no temporary left behind
    with pytest.raises(DetfmError, match="at least one curve"):
        reliability_figure({}, tmp_path / "empty.png")

"""Ensemble uncertainty: mean prediction, entropies, mutual information, summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detfm.errors import DetfmError
from detfm.evaluate.calibration import softmax
from detfm.evaluate.ensemble import (ensemble_probs, ensemble_summary, expected_entropy, mutual_information,
                                     predictive_entropy)


def test_entropy_of_uniform_is_log_c_and_of_one_hot_is_zero() -> None:
    for c in (2, 5, 17):
        assert predictive_entropy(np.full((3, c), 1.0 / c)) == pytest.approx(np.full(3, math.log(c)))
    assert predictive_entropy(np.eye(4)) == pytest.approx(np.zeros(4), abs=0.0)
    assert predictive_entropy(np.array([[0.5, 0.5, 0.0]]))[0] == pytest.approx(math.log(2))


def test_mutual_information_is_zero_for_identical_members() -> None:
    p = softmax(np.random.default_rng(0).normal(size=(50, 5)))
    members = [p, p.copy(), p.copy()]
    assert np.allclose(ensemble_probs(members), p)
    assert mutual_information(members) == pytest.approx(np.zeros(50), abs=1e-12)
    assert expected_entropy(members) == pytest.approx(predictive_entropy(p))


def test_mutual_information_is_positive_when_members_disagree() -> None:
    a, b = np.array([[0.9, 0.1]]), np.array([[0.1, 0.9]])
    mi = mutual_information([a, b])
    h_member = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert mi[0] == pytest.approx(math.log(2) - h_member)  # mean is uniform
    assert mi[0] > 0.3
    rng = np.random.default_rng(1)
    members = [softmax(3 * rng.normal(size=(200, 4))) for _ in range(5)]
    mi = mutual_information(members)
    assert (mi > 0).all()
    total = predictive_entropy(ensemble_probs(members))
    assert mi + expected_entropy(members) == pytest.approx(total)


def test_ensemble_summary() -> None:
    a = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    b = np.array([[0.7, 0.3], [0.2, 0.8], [0.4, 0.6], [0.5, 0.5]])
    labels = np.array([0, 0, 0, -1])
    s = ensemble_summary([a, b], labels, n_bins=2)
    json.dumps(s, allow_nan=False)
    assert s["members"] == 2 and s["n"] == 3
    assert s["member_accuracy"] == pytest.approx([2 / 3, 1 / 3])
    # ensemble: [0.8, 0.2] right, [0.5, 0.5] argmax 0 right, [0.35, 0.65] wrong
    assert s["ensemble_accuracy"] == pytest.approx(2 / 3)
    h = predictive_entropy(np.array([[0.8, 0.2], [0.5, 0.5], [0.35, 0.65]]))
    assert s["entropy_correct"] == pytest.approx(h[:2].mean())
    assert s["entropy_wrong"] == pytest.approx(h[2])
    assert s["mutual_information_wrong"] > 0 and 0 <= s["ece"] <= 1
    only_right = ensemble_summary([a[:2], b[:2]], np.array([0, 0]))
    assert only_right["entropy_wrong"] is None


def test_members_must_match() -> None:
    with pytest.raises(DetfmError, match="at least one member"):
        ensemble_probs([])
    with pytest.raises(DetfmError, match="same points"):
        mutual_information([np.full((3, 2), 0.5), np.full((4, 2), 0.5)])
    with pytest.raises(DetfmError, match="no labeled points"):
        ensemble_summary([np.full((3, 2), 0.5)], np.full(3, -1))

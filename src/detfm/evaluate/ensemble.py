"""Uncertainty from an ensemble of models (deep ensembles, Lakshminarayanan et al. 2017).

Given the class probabilities of ``K`` members on the same points:

* the ensemble prediction is their mean;
* the *predictive entropy* ``H[mean p]`` is the total uncertainty;
* the *expected entropy* ``mean_k H[p_k]`` is the part each member already sees (aleatoric:
  ambiguity in the data);
* their difference, the *mutual information* between the prediction and the choice of
  member (BALD, Houlsby et al. 2011), measures disagreement between members (epistemic:
  what more training data or a better model could remove). It is >= 0, and 0 when all
  members agree.

Entropies use the natural logarithm (nats); the entropy of a uniform distribution over
``C`` classes is ``log C``. All arithmetic is float64.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detfm.errors import DetfmError
from detfm.evaluate.calibration import as_labels, as_probs, expected_calibration_error

__all__ = ["ensemble_probs", "ensemble_summary", "expected_entropy", "mutual_information",
           "predictive_entropy"]


def _members(list_of_probs: Sequence[np.ndarray]) -> np.ndarray:
    """(K, N, C) float64 stack of the members' probabilities, all of one shape."""
    if len(list_of_probs) == 0:
        raise DetfmError("an ensemble needs at least one member")
    members = [as_probs(p, f"member {i} probs") for i, p in enumerate(list_of_probs)]
    shapes = {m.shape for m in members}
    if len(shapes) != 1:
        raise DetfmError(f"ensemble members must score the same points and classes, got shapes {sorted(shapes)}")
    return np.stack(members)


def ensemble_probs(list_of_probs: Sequence[np.ndarray]) -> np.ndarray:
    """(N, C) mean of the members' probabilities."""
    out: np.ndarray = _members(list_of_probs).mean(axis=0)
    return out


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy over the last axis, with 0 log 0 = 0."""
    safe = np.where(p > 0, p, 1.0)
    out: np.ndarray = -(p * np.log(safe)).sum(axis=-1)
    return np.maximum(out, 0.0)


def predictive_entropy(probs: np.ndarray) -> np.ndarray:
    """(N,) entropy (nats) of each row of ``probs``."""
    return _entropy(as_probs(probs))


def expected_entropy(list_of_probs: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) mean over members of each member's entropy."""
    out: np.ndarray = _entropy(_members(list_of_probs)).mean(axis=0)
    return out


def mutual_information(list_of_probs: Sequence[np.ndarray]) -> np.ndarray:
    """(N,) BALD mutual information: entropy of the mean minus the mean entropy (>= 0)."""
    stack = _members(list_of_probs)
    mi: np.ndarray = _entropy(stack.mean(axis=0)) - _entropy(stack).mean(axis=0)
    return np.maximum(mi, 0.0)


def _mean_or_none(values: np.ndarray) -> float | None:
    return float(values.mean()) if values.size else None


def ensemble_summary(list_of_probs: Sequence[np.ndarray], labels: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Accuracy of each member and of the ensemble, and how the ensemble's uncertainty separates
    right from wrong predictions, on the labeled points (label >= 0). JSON-ready.

    Keys: ``members``, ``n``, ``member_accuracy`` (list), ``ensemble_accuracy``,
    ``entropy_correct`` / ``entropy_wrong`` (mean predictive entropy of the ensemble on
    points it gets right / wrong; None when there are none), ``mutual_information_correct``
    / ``mutual_information_wrong`` (likewise for BALD), ``mean_entropy``,
    ``mean_mutual_information`` and ``ece`` (the ensemble's, equal-mass bins).
    """
    stack = _members(list_of_probs)
    y = as_labels(labels, stack.shape[1], stack.shape[2])
    keep = y >= 0
    if not keep.any():
        raise DetfmError("no labeled points (every label is negative or there are no points)")
    stack, y = stack[:, keep], y[keep]
    mean = stack.mean(axis=0)
    right = mean.argmax(axis=1) == y
    member_acc = (stack.argmax(axis=2) == y[None, :]).mean(axis=1)
    h = _entropy(mean)
    mi = np.maximum(h - _entropy(stack).mean(axis=0), 0.0)
    return {
        "members": int(stack.shape[0]), "n": int(y.size),
        "member_accuracy": [float(a) for a in member_acc], "ensemble_accuracy": float(right.mean()),
        "entropy_correct": _mean_or_none(h[right]), "entropy_wrong": _mean_or_none(h[~right]),
        "mutual_information_correct": _mean_or_none(mi[right]),
        "mutual_information_wrong": _mean_or_none(mi[~right]),
        "mean_entropy": float(h.mean()), "mean_mutual_information": float(mi.mean()),
        "ece": expected_calibration_error(mean, y, n_bins),
    }

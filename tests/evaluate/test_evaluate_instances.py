"""Segmentation scored per particle: pieces (event, instance, true class), their recall, tagging."""

from __future__ import annotations

import numpy as np
import pytest

from detfm.evaluate.instances import InstanceTally


def test_pieces_are_split_by_event_instance_and_class() -> None:
    tally = InstanceTally(3)
    #                  event 0: instance 7 (class 2, 4 voxels; class 0, 1 voxel)  event 1: instance 7 (class 2)
    truth = np.array([2, 2, 2, 2, 0, 2, 2, -1])
    pred = np.array([2, 2, 0, 1, 0, 0, 2, 2])
    event = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    instance = np.array([7, 7, 7, 7, 7, 7, 7, 7])
    tally.add(truth, pred, event, instance)
    tally.add(np.array([1, 1, 1]), np.array([0, 0, 0]), np.array([5, 5, 5]), np.array([-1, -1, -1]))  # no instance
    assert tally.pieces == 3
    s = tally.summary(["a", "b", "c"])
    # class 2: recalls 2/4 (tagged: exactly half) and 1/2 (tagged); class 0: 1/1
    assert s["c"] == {"pieces": 2, "mean_recall": pytest.approx(0.5), "tagged": 1.0}
    assert s["a"] == {"pieces": 1, "mean_recall": 1.0, "tagged": 1.0}
    assert s["b"] == {"pieces": 0, "mean_recall": None, "tagged": None}
    tally.add(np.array([2, 2, 2]), np.array([2, 0, 0]), np.array([9, 9, 9]), np.array([1, 1, 1]))  # 1/3: not tagged
    assert tally.summary(["a", "b", "c"])["c"]["tagged"] == pytest.approx(2 / 3)


def test_bad_shapes_and_names_are_refused() -> None:
    tally = InstanceTally(2)
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        tally.add(np.zeros(3), np.zeros(2), np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="3 class names for 2 classes"):
        tally.summary(["a", "b", "c"])

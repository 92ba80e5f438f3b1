"""Event: selecting points keeps the labels aligned and leaves the event unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from detfm.io import read_events
from detfm.sim.simulate import SimConfig, simulate_to_file


def test_select_keeps_labels_aligned(tmp_path) -> None:
    simulate_to_file(SimConfig(events=2, seed=3), tmp_path / "e.h5", progress=False)
    event = read_events(tmp_path / "e.h5")[0]
    before = event.points.copy()
    keep = event.energy >= 0.5
    sub = event.select(keep)
    assert sub.n_points == int(keep.sum()) and np.array_equal(sub.points, event.points[keep])
    assert np.array_equal(sub.semantic, event.semantic[keep])
    assert np.array_equal(sub.instance, event.instance[keep])
    assert sub.clusters.shape == event.clusters.shape
    assert np.array_equal(event.points, before)  # the original is untouched
    with pytest.raises(ValueError, match="shape"):
        event.select(keep[:-1])

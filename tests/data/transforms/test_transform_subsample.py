from __future__ import annotations

import numpy as np
import pytest
from data_helpers import random_sample

from detfm.data.transforms import Subsample
from detfm.errors import ConfigError


def test_keeps_at_most_n_distinct_points_in_order() -> None:
    s = random_sample(np.random.default_rng(0), 300)
    out = Subsample(50)(s, np.random.default_rng(1))
    assert out.n_points == 50
    rows = np.array([int(np.flatnonzero((s.coord == c).all(axis=1))[0]) for c in out.coord])
    assert len(set(rows.tolist())) == 50  # without replacement
    assert (np.diff(rows) > 0).all()  # original order kept
    np.testing.assert_array_equal(out.pid, s.pid[rows])
    other = Subsample(50)(s, np.random.default_rng(2))
    assert not np.array_equal(other.coord, out.coord)


def test_small_events_are_unchanged() -> None:
    s = random_sample(np.random.default_rng(0), 20)
    out = Subsample(50)(s, np.random.default_rng(1))
    np.testing.assert_array_equal(out.coord, s.coord)


@pytest.mark.parametrize("n", [0, -1, 2.5, float("nan"), True])
def test_rejects_bad_size(n) -> None:
    with pytest.raises(ConfigError, match="max_points"):
        Subsample(n)

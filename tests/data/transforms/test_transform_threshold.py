from __future__ import annotations

import numpy as np
import pytest
from data_helpers import random_sample

from detfm.data.transforms import EnergyThreshold
from detfm.errors import ConfigError


def test_keeps_points_at_or_above_threshold_with_their_labels() -> None:
    s = random_sample(np.random.default_rng(0), 200)
    out = EnergyThreshold(0.8)(s, np.random.default_rng(0))
    keep = s.energy >= 0.8
    assert out.n_points == int(keep.sum()) and 0 < out.n_points < 200
    assert out.energy.min() >= 0.8
    np.testing.assert_array_equal(out.coord, s.coord[keep])
    np.testing.assert_array_equal(out.semantic, s.semantic[keep])


@pytest.mark.parametrize("mev", [-0.1, float("nan"), float("inf")])
def test_rejects_bad_threshold(mev: float) -> None:
    with pytest.raises(ConfigError, match="EnergyThreshold"):
        EnergyThreshold(mev)

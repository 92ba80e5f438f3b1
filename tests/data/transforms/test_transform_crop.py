from __future__ import annotations

import numpy as np
import pytest
from data_helpers import random_sample

from detfm.data.transforms import Crop
from detfm.errors import ConfigError


def test_random_crop_keeps_a_nonempty_cube() -> None:
    s = random_sample(np.random.default_rng(0), 500)
    for seed in range(20):
        out = Crop(100.0)(s, np.random.default_rng(seed))
        assert 0 < out.n_points < 500
        extent = out.coord.max(axis=0) - out.coord.min(axis=0)
        assert (extent < 100.0).all()
        # Every kept point is an original point, with its own labels.
        rows = [int(np.flatnonzero((s.coord == c).all(axis=1))[0]) for c in out.coord]
        np.testing.assert_array_equal(s.semantic[rows], out.semantic)
        np.testing.assert_array_equal(s.energy[rows], out.energy)


def test_centre_crop_is_deterministic_and_centred() -> None:
    s = random_sample(np.random.default_rng(1), 500)
    a = Crop(200.0, mode="center")(s, np.random.default_rng(0))
    b = Crop(200.0, mode="center")(s, np.random.default_rng(99))
    np.testing.assert_array_equal(a.coord, b.coord)
    mid = (s.coord.min(axis=0) + s.coord.max(axis=0)) / 2
    assert (np.abs(a.coord - mid) <= 100.0).all()
    inside = (np.abs(s.coord - mid) < 99.0).all(axis=1)
    assert a.n_points >= inside.sum() > 0


def test_large_crop_keeps_everything() -> None:
    s = random_sample(np.random.default_rng(2), 100)
    out = Crop(2000.0)(s, np.random.default_rng(0))
    np.testing.assert_array_equal(out.coord, s.coord)


@pytest.mark.parametrize("kwargs", [{"size": 0.0}, {"size": -5.0}, {"size": 10.0, "mode": "corner"}])
def test_rejects_bad_parameters(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="Crop"):
        Crop(**kwargs)

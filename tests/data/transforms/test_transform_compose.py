from __future__ import annotations

import numpy as np
import pytest
from data_helpers import random_sample

from detfm.data.transforms import Compose, Crop, RandomRotation, Subsample
from detfm.errors import ConfigError


def test_applies_transforms_in_order_with_one_generator() -> None:
    s = random_sample(np.random.default_rng(0), 300)
    steps = [RandomRotation(), Crop(400.0), Subsample(30)]
    out = Compose(steps)(s, np.random.default_rng(5))
    rng = np.random.default_rng(5)
    manual = s
    for t in steps:
        manual = t(manual, rng)
    np.testing.assert_array_equal(out.coord, manual.coord)
    assert out.n_points == 30
    assert "Subsample" in repr(Compose(steps))


def test_rejects_non_callables() -> None:
    with pytest.raises(ConfigError, match="Compose"):
        Compose([Subsample(3), "rotate"])

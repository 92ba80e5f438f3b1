from __future__ import annotations

import math

import numpy as np
import pytest
from data_helpers import random_sample

from detfm.data.transforms import LogEnergyNormalize
from detfm.errors import ConfigError


def test_sets_feature_from_energy() -> None:
    s = random_sample(np.random.default_rng(0), 50)
    out = LogEnergyNormalize(eps=0.13, emax=20.0)(s, np.random.default_rng(0))
    assert out.feat.shape == (50, 1) and out.feat.dtype == np.float32
    e = np.clip(s.energy.astype(np.float64), 0, 20)
    lo, hi = math.log10(0.13), math.log10(20.13)
    np.testing.assert_allclose(out.feat[:, 0], 2 * (np.log10(e + 0.13) - lo) / (hi - lo) - 1, atol=1e-6)
    assert out.feat.min() >= -1 and out.feat.max() <= 1
    np.testing.assert_array_equal(out.energy, s.energy)


def test_rejects_bad_parameters() -> None:
    with pytest.raises(ConfigError):
        LogEnergyNormalize(eps=-1.0)
    with pytest.raises(ConfigError):
        LogEnergyNormalize(emax=0.0)

"""The synthetic point clouds used by tests and benchmarks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detfm.errors import ConfigError
from detfm.io import layout
from detfm.data.synthetic import synthetic_batch


def test_exact_sizes_unique_voxels_in_the_box() -> None:
    batch = synthetic_batch(np.random.default_rng(0), [1, 17, 2500])
    assert batch.counts.tolist() == [1, 17, 2500]
    assert batch.feat.shape == (2518, 1)
    assert float(batch.feat.min()) >= -1.0 and float(batch.feat.max()) <= 1.0
    assert float(batch.energy.min()) >= np.float32(layout.DEFAULT_ENERGY_THRESHOLD_MEV)  # float32 data
    assert float(batch.coord.min()) >= 0 and float(batch.coord.max()) <= layout.BOX_VOXELS - 1
    ev = batch.coord[batch.offsets[2]:]
    assert torch.unique(ev, dim=0).shape[0] == 2500
    assert set(batch.semantic.tolist()) <= {layout.TRACK, layout.SHOWER}


def test_same_generator_same_batch_and_bad_size() -> None:
    a = synthetic_batch(np.random.default_rng(1), [300])
    b = synthetic_batch(np.random.default_rng(1), [300])
    assert torch.equal(a.coord, b.coord) and torch.equal(a.energy, b.energy)
    with pytest.raises(ConfigError, match="n_points"):
        synthetic_batch(np.random.default_rng(1), [0])

"""The feature monitor flags collapsed and position-only feature maps, and passes real ones."""

from __future__ import annotations

import numpy as np
import torch

from detfm.data.synthetic import synthetic_batch
from detfm.tasks.feature_monitor import feature_health, is_unhealthy


def test_collapsed_position_only_and_informative_maps() -> None:
    batch = synthetic_batch(np.random.default_rng(0), [800])
    coord = batch.coord
    collapsed = torch.ones(len(coord), 16) + 1e-9 * torch.randn(len(coord), 16, generator=torch.Generator().manual_seed(0))
    health = feature_health(collapsed, coord)
    assert "collapsed" in (is_unhealthy(health) or "")
    # a smooth non-linear function of position only
    w = torch.randn(3, 16, generator=torch.Generator().manual_seed(1)) * 0.02
    position_only = torch.tanh(coord @ w) + 0.3 * torch.sin(coord @ w * 2)
    health = feature_health(position_only, coord)
    assert health["position_r2"] > 0.9 and "position only" in (is_unhealthy(health) or "")
    # features of something position cannot tell: the energy and noise
    informative = torch.cat([batch.feat.repeat(1, 4), torch.randn(len(coord), 12,
                                                                   generator=torch.Generator().manual_seed(2))], 1)
    health = feature_health(informative, coord)
    assert is_unhealthy(health) is None and health["feature_rank"] > 5 and health["position_r2"] < 0.5

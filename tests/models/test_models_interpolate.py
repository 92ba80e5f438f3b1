"""Inverse squared-distance interpolation of patch tokens back to points."""

from __future__ import annotations

import torch

from detfm.data.batch import PackedBatch
from detfm.models.interpolation import interpolate, knn_interpolation


def test_points_on_centres_take_that_token_and_events_stay_separate() -> None:
    centers = torch.tensor([[[0., 0, 0], [100, 0, 0], [0, 100, 0], [9, 9, 9]],
                            [[0., 0, 0], [50, 50, 50], [0, 0, 0], [0, 0, 0]]])
    tokens = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    coord = torch.tensor([[100., 0, 0], [0, 0, 0], [50, 50, 50], [25, 25, 25]])
    batch = PackedBatch(coord=coord, feat=torch.zeros(4, 1), offsets=torch.tensor([0, 2, 4]),
                        energy=torch.zeros(4))
    f = interpolate(tokens, knn_interpolation(batch.coord, batch.offsets, centers, mask, k=3))
    torch.testing.assert_close(f[0], tokens[0, 1], atol=1e-3, rtol=0)   # on a centre
    torch.testing.assert_close(f[1], tokens[0, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(f[2], tokens[1, 1], atol=1e-3, rtol=0)   # the other event's centre
    # halfway between the two real centres of event 1: the average (padded centre ignored)
    torch.testing.assert_close(f[3], (tokens[1, 0] + tokens[1, 1]) / 2, atol=1e-4, rtol=0)

"""Packed <-> padded helpers and per-group pooling of packed rows."""

from __future__ import annotations

import pytest
import torch

from detfm.errors import DataFormatError
from detfm.models.packing import check_points, group_max, group_mean, local_index, packed_to_padded


def test_group_mean_and_max_match_a_loop_and_pool_empty_groups_to_zero() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(11, 4, generator=gen) - 5.0  # all negative: a zero max would show a bug
    index = torch.tensor([0, 2, 2, 0, 3, 3, 3, 0, 2, 3, 0])
    mean, peak = group_mean(values, index, num_groups=5), group_max(values, index, num_groups=5)
    assert mean.shape == peak.shape == (5, 4)
    for g in range(5):
        rows = values[index == g]
        if len(rows):
            torch.testing.assert_close(mean[g], rows.mean(0))
            torch.testing.assert_close(peak[g], rows.max(0).values)
        else:  # groups 1 and 4 have no rows
            assert mean[g].eq(0).all() and peak[g].eq(0).all()


def test_padding_round_trip_and_bad_offsets() -> None:
    values = torch.arange(5.0)
    offsets = torch.tensor([0, 2, 5])
    padded, valid = packed_to_padded(values, offsets, fill=-1.0)
    assert padded.tolist() == [[0.0, 1.0, -1.0], [2.0, 3.0, 4.0]]
    assert padded[valid].tolist() == values.tolist()
    event, position = local_index(offsets)
    assert event.tolist() == [0, 0, 1, 1, 1] and position.tolist() == [0, 1, 0, 1, 2]
    with pytest.raises(DataFormatError, match="event has no points"):
        check_points(torch.zeros(2, 3), torch.tensor([0, 2, 2]))

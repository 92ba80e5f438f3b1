"""Views for self-supervised objectives: crops, grid-cell masks, matching, ramps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detfm.data.synthetic import synthetic_batch
from detfm.errors import ConfigError
from detfm.tasks.views import crop_views, grid_mask, match_rows, ramp


def test_crops_keep_a_ball_of_each_event_and_remember_their_origin() -> None:
    batch = synthetic_batch(np.random.default_rng(0), [400, 200, 3])
    g = torch.Generator().manual_seed(1)
    view = crop_views(batch, (0.25, 0.25), g)
    assert view.batch.counts.tolist() == [100, 50, 1]
    assert torch.equal(view.batch.coord, batch.coord[view.origin])
    event = batch.batch_index()
    assert torch.equal(event[view.origin], view.batch.batch_index())  # no point leaves its event
    # a ball: some kept point (the centre) has every kept point at least as near as any dropped one
    kept = batch.coord[view.origin[:100]]
    rest = batch.coord[torch.tensor(sorted(set(range(400)) - set(view.origin[:100].tolist())))]
    assert any(float(((kept - c) ** 2).sum(1).max()) <= float(((rest - c) ** 2).sum(1).min()) for c in kept)
    again = crop_views(batch, (0.25, 0.25), torch.Generator().manual_seed(1))
    assert torch.equal(again.origin, view.origin)  # same generator, same crops
    with pytest.raises(ConfigError, match="crop fraction"):
        crop_views(batch, (0.5, 0.2), g)


def test_grid_mask_hides_whole_cells_at_the_ratio_per_event() -> None:
    batch = synthetic_batch(np.random.default_rng(2), [600, 300])
    mask = grid_mask(batch.coord, batch.offsets, 8.0, 0.5, torch.Generator().manual_seed(0))
    cells = torch.floor(batch.coord / 8.0).long()
    event = batch.batch_index()
    for e in range(2):
        sel = event == e
        keys = [tuple(c) for c in cells[sel].tolist()]
        hidden = {k for k, m in zip(keys, mask[sel].tolist(), strict=True) if m}
        shown = {k for k, m in zip(keys, mask[sel].tolist(), strict=True) if not m}
        assert not hidden & shown  # a cell is hidden whole
        n = len(set(keys))
        assert len(hidden) == max(1, min(n - 1, int(0.5 * n)))


def test_match_rows_pairs_points_by_origin() -> None:
    a, b = torch.tensor([5, 2, 9, 7]), torch.tensor([9, 1, 5])
    rows_a, rows_b = match_rows(a, b, size=10)
    assert rows_a.tolist() == [0, 2] and rows_b.tolist() == [2, 0]


def test_ramp_runs_from_start_to_end() -> None:
    assert ramp(0, 100, 0.04, 0.07) == pytest.approx(0.04)
    assert ramp(50, 100, 0.04, 0.07) == pytest.approx(0.055)
    assert ramp(100, 100, 0.04, 0.07) == ramp(500, 100, 0.04, 0.07) == 0.07

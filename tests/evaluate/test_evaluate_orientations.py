"""Test-time orientation averaging: seeded per-event rotations of a packed batch, and a task's
class probabilities averaged over them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from detfm.data import EventDataset, PackedBatch, collate
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.orientations import OrientationAverage, average_views, rotate_batch
from detfm.evaluate.scoring import score_task
from detfm.io import layout
from detfm.tasks.registry import get_task


class CoordTask(nn.Module):
    """Per-point logits linear in the coordinates: its calls change when an event turns."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(3, 5, generator=g) / 100.0)

    def forward_logits(self, batch: PackedBatch) -> torch.Tensor:
        return (batch.coord - layout.BOX_VOXELS / 2) @ self.w

    def scored_items(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.semantic, self.forward_logits(batch)

    def item_outputs(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.forward_logits(batch), batch.batch_index(), torch.arange(batch.num_points)


@pytest.fixture(scope="module")
def data(tiny_events):  # type: ignore[no-untyped-def]
    return EventDataset([tiny_events], labels=True).subset(range(6))


def _pairwise(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[:, None, :] - x[None, :, :], axis=-1)


def test_views_turn_each_event_rigidly_inside_the_box_and_leave_the_input(data) -> None:  # type: ignore[no-untyped-def]
    batch = collate([data[i] for i in range(3)])
    before = batch.coord.clone()
    assert rotate_batch(batch, seed=0, view=0) is batch
    turned = rotate_batch(batch, seed=0, view=1)
    assert torch.equal(batch.coord, before)  # the input is not changed
    assert torch.equal(turned.semantic, batch.semantic) and torch.equal(turned.offsets, batch.offsets)
    c = turned.coord.numpy()
    assert (c >= 0).all() and (c < layout.BOX_VOXELS).all()
    for e in range(3):
        a, b = int(batch.offsets[e]), int(batch.offsets[e + 1])
        old, new = before.numpy()[a:b].astype(np.float64), c[a:b].astype(np.float64)
        assert not np.allclose(old, new, atol=1.0)
        # a rigid turn (and shift): distances between points kept to float32 precision (points clipped
        # onto a wall, of an event longer than the box, are left out)
        inside = ((new > 0) & (new < layout.BOX_VOXELS - 1)).all(axis=1)
        assert inside.mean() > 0.5
        some = np.flatnonzero(inside)[:200]
        np.testing.assert_allclose(_pairwise(new[some]), _pairwise(old[some]), atol=2e-3)
        # particle start points turn and move with the points
        start_old, start_new = batch.particle_start.numpy()[a:b], turned.particle_start.numpy()[a:b]
        ok = np.isfinite(start_old).all(axis=1) & inside
        assert ok.any()
        np.testing.assert_allclose(np.linalg.norm(new[ok] - start_new[ok], axis=1),
                                   np.linalg.norm(old[ok] - start_old[ok], axis=1), atol=2e-3)


def test_an_events_views_depend_on_seed_view_and_event_only(data) -> None:  # type: ignore[no-untyped-def]
    alone = rotate_batch(collate([data[2]]), seed=0, view=1).coord
    batch = collate([data[0], data[1], data[2]])
    a = int(batch.offsets[2])
    assert torch.equal(rotate_batch(batch, seed=0, view=1).coord[a:], alone)
    assert torch.equal(rotate_batch(collate([data[2]]), seed=0, view=1).coord, alone)  # same seed, same view
    assert not torch.allclose(rotate_batch(collate([data[2]]), seed=0, view=2).coord, alone)
    assert not torch.allclose(rotate_batch(collate([data[2]]), seed=1, view=1).coord, alone)
    with pytest.raises(DetfmError, match="dataset index"):
        rotate_batch(dataclasses.replace(collate([data[2]]), index=None), 0, 1)


def test_one_view_is_the_task_and_more_views_average_probabilities(data) -> None:  # type: ignore[no-untyped-def]
    task = CoordTask().eval()
    batch = collate([data[i] for i in range(4)])
    with torch.no_grad():
        labels, plain = task.scored_items(batch)
        one_labels, one = OrientationAverage(task, 1).scored_items(batch)
        assert torch.equal(one, plain) and torch.equal(one_labels, labels)
        got_labels, got = OrientationAverage(task, 3, seed=7).scored_items(batch)
        want = sum(torch.softmax(task.forward_logits(rotate_batch(batch, 7, v)), -1) for v in range(3)) / 3
    assert torch.equal(got_labels, labels)
    torch.testing.assert_close(got.exp(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.exp().sum(-1), torch.ones(len(got)))
    assert (got.argmax(-1) != plain.argmax(-1)).any()  # the turned views change some calls
    # item_outputs and forward_logits are averaged the same way; the item ids pass through
    with torch.no_grad():
        logits, event, ids = OrientationAverage(task, 3, seed=7).item_outputs(batch)
        torch.testing.assert_close(logits, got)
        torch.testing.assert_close(OrientationAverage(task, 3, seed=7).forward_logits(batch), got)
    assert torch.equal(event, batch.batch_index()) and torch.equal(ids, torch.arange(batch.num_points))


def test_scores_with_views_are_batch_independent_and_say_so(data) -> None:  # type: ignore[no-untyped-def]
    spec = get_task("semseg")
    plain = score_task(CoordTask(), spec, data, batch_size=4)
    by_four = score_task(CoordTask(), spec, data, batch_size=4, views=3, view_seed=1)
    by_one = score_task(CoordTask(), spec, data, batch_size=1, views=3, view_seed=1)
    assert "orientation_views" not in plain
    assert by_four["orientation_views"] == {"views": 3, "seed": 1}
    assert by_four["confusion"] == by_one["confusion"]  # an event's views do not depend on its batch
    assert by_four["confusion"] != plain["confusion"] and by_four["points"] == plain["points"]


def test_bad_view_counts_and_tasks_that_find_their_own_items(data) -> None:  # type: ignore[no-untyped-def]
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ConfigError, match="views must be an integer >= 1"):
            OrientationAverage(CoordTask(), bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cannot be averaged"):
        OrientationAverage(nn.Linear(2, 2), 2)
    with pytest.raises(ConfigError, match="finds its own items"):
        score_task(CoordTask(), get_task("particles"), data, views=2)
    calls = iter([torch.zeros(4, 5), torch.zeros(3, 5)])
    with pytest.raises(DetfmError, match="depend on the orientation"):
        average_views(lambda b: (next(calls),), collate([data[0]]), views=2)

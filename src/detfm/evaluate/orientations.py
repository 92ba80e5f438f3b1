"""Test-time orientation averaging: a task's class probabilities averaged over several
orientations of each event.

An event has no preferred orientation in the detector (the training augmentation turns every
event at random about the box centre), yet a model's per-point call can change when the
event is turned. Averaging the class probabilities over a few turned copies of each event
(the first one the event as it is) removes part of that variance. It costs one forward pass
per view.

:class:`OrientationAverage` wraps a trained task and answers the two questions the scoring
and prediction loops ask of a task, ``scored_items(batch)`` and ``item_outputs(batch)``, with
the log of the averaged probabilities in place of the logits (so ``argmax`` and ``softmax``
read them as before). The rotation of view ``k`` of an event depends only on the seed, ``k``
and the event's dataset index: an event gets the same views in any batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from detfm.data import PackedBatch
from detfm.data.transforms import random_rotation_matrix, turn_points
from detfm.errors import ConfigError, DetfmError

__all__ = ["OrientationAverage", "average_views", "rotate_batch"]


def _view_rotation(seed: int, event_index: int, view: int) -> np.ndarray:
    return random_rotation_matrix(np.random.default_rng([seed, event_index, view]))


def rotate_batch(batch: PackedBatch, seed: int, view: int) -> PackedBatch:
    """A copy of ``batch`` with each event turned by the rotation of view ``view`` (``view`` 0:
    the batch itself), uniform over 3D rotations about the box centre and kept inside the box,
    as :class:`~detfm.data.transforms.RandomRotation` turns an event. Particle start points turn
    with the points. Needs ``batch.index`` (the dataset sets it)."""
    if view == 0:
        return batch
    if batch.index is None:
        raise DetfmError("orientation views need each event's dataset index (batch.index); collate the "
                         "samples of an EventDataset")
    coord = batch.coord.detach().cpu().numpy()
    start = None if batch.particle_start is None else batch.particle_start.detach().cpu().numpy().copy()
    out = np.empty_like(coord)
    offsets = batch.offsets.cpu().numpy()
    for e, index in enumerate(batch.index.cpu().tolist()):
        a, b = int(offsets[e]), int(offsets[e + 1])
        r = _view_rotation(seed, int(index), view)
        out[a:b], shift = turn_points(coord[a:b], r)
        if start is not None:
            turned, _ = turn_points(start[a:b], r, keep_inside=False)
            start[a:b] = turned + shift.astype(np.float32)
    moved = {"coord": torch.from_numpy(out).to(batch.coord.device)}
    if start is not None:
        moved["particle_start"] = torch.from_numpy(start).to(batch.coord.device)
    return replace(batch, **moved)


def average_views(items: Callable[[PackedBatch], tuple[torch.Tensor, ...]], batch: PackedBatch, views: int,
                  seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``items(batch)`` (logits first, then what identifies the items) with the logits replaced
    by the log of the class probabilities averaged over ``views`` orientations of each event.

    The items must not depend on the orientation (points, particle instances or events of the
    batch, in the same order); a view that returns other items is an error."""
    first = items(batch)
    if views == 1:
        return first
    probs = torch.softmax(first[0].float(), dim=-1)
    for view in range(1, views):
        logits = items(rotate_batch(batch, seed, view))[0]
        if logits.shape != probs.shape:
            raise DetfmError(f"view {view} gave outputs of shape {tuple(logits.shape)}, the event as it is "
                             f"{tuple(probs.shape)}: this task's items depend on the orientation")
        probs = probs + torch.softmax(logits.float(), dim=-1)
    mean = (probs / views).clamp_min(torch.finfo(probs.dtype).tiny)
    return (torch.log(mean), *first[1:])


class OrientationAverage(nn.Module):
    """``task`` scored and predicted as the average of its class probabilities over ``views``
    orientations of each event (view 0: the event as it is; the others drawn from ``seed`` and
    the event's dataset index). ``views=1`` is the task itself.

    Only the evaluation methods are averaged (``scored_items``, ``item_outputs``,
    ``forward_logits`` of point tasks); training goes through the task itself.
    """

    def __init__(self, task: nn.Module, views: int, seed: int = 0) -> None:
        super().__init__()
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"views must be an integer >= 1, got {views!r}")
        if not hasattr(task, "scored_items") or not hasattr(task, "item_outputs"):
            raise ConfigError(f"{type(task).__name__} does not score items one by one (no scored_items / "
                              f"item_outputs), so its outputs cannot be averaged over orientations")
        self.task = task
        self.views = views
        self.seed = int(seed)

    def scored_items(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """True labels and averaged log-probabilities of the items the task scores."""
        def flipped(b: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
            labels, logits = self.task.scored_items(b)
            return logits, labels
        logits, labels = average_views(flipped, batch, self.views, self.seed)
        return labels, logits

    def item_outputs(self, batch: PackedBatch) -> tuple[torch.Tensor, ...]:
        """Averaged log-probabilities of every item, with the task's event and item ids."""
        return average_views(self.task.item_outputs, batch, self.views, self.seed)

    def forward_logits(self, batch: PackedBatch) -> torch.Tensor:
        """Averaged log-probabilities of every point (point tasks)."""
        return average_views(lambda b: (self.task.forward_logits(b),), batch, self.views, self.seed)[0]

    def extra_repr(self) -> str:
        return f"views={self.views}, seed={self.seed}"

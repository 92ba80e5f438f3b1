"""Test-time fragment vote: one class for each connected fragment of shower-like points.

A per-point classifier can split one particle between classes: a Michel electron's voxels
called partly Michel and partly shower, or a handful of voxels inside a large shower called
Michel. The particles the classes stand for are connected in space, so a cheap consistency
step helps: take the points whose call is one of a *group* of classes (by default the
electron-like ones of the LArTPC: shower, Michel, delta), split them into fragments that touch
(26-neighbour voxels of the same event), and give every point of a fragment the group class
with the largest summed probability over the fragment.

Points outside the group (tracks, for example) are left alone, and so is each member's total
probability over the group: the vote only moves a member's group mass onto the fragment's
winner, so a point called track stays track and a member stays a member.

:class:`FragmentVote` wraps a trained segmentation task (or an
:class:`~detfm.evaluate.orientations.OrientationAverage` of one) and answers
``forward_logits``, ``scored_items`` and ``item_outputs`` with the log of the voted
probabilities, as the orientation average does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import nn

from detfm.data import PackedBatch
from detfm.errors import ConfigError
from detfm.models.sparse.hashing import MAX_BOX, kernel_map
from detfm.tasks.registry import TaskSpec

__all__ = ["FragmentVote", "PointProbabilityStep", "check_fragment_steps", "check_fragment_vote", "fragment_vote",
           "point_fragments"]


def check_fragment_vote(spec: TaskSpec) -> None:
    """Refuse the fragment vote for a task without fragment classes (every task but semseg)."""
    if not spec.fragment_classes:
        raise ConfigError(f"the fragment vote applies to tasks that classify points (semseg); this is a "
                          f"'{spec.name}' task, which has no fragment classes: leave out the fragment vote")


def check_fragment_steps(spec: TaskSpec, vote: bool, classifier: bool) -> None:
    """Refuse a fragment step (the vote, the fitted classifier) for a task without fragment
    classes, and both at once."""
    if vote or classifier:
        check_fragment_vote(spec)
    if vote and classifier:
        raise ConfigError("the fragment vote and the fragment classifier both name each fragment: use one")


def point_fragments(coord: torch.Tensor, event: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Connected fragments of the member points: ``(labels, count)``.

    ``coord`` (P, 3) voxel coordinates (rounded down to whole voxels), ``event`` (P,) the event
    of each point, ``member`` (P,) bool. Two members touch when their voxels are 26-neighbours
    (or the same voxel) in the same event. ``labels`` (P,) int64 is the fragment of each
    member, numbered from 0, and -1 for the other points."""
    labels = torch.full((int(coord.shape[0]),), -1, dtype=torch.long)
    idx = member.nonzero().squeeze(1).cpu()
    if idx.numel() == 0:
        return labels, 0
    grid = torch.floor(coord[idx].detach().cpu().float()).long()
    if int(grid.min()) < 0 or int(grid.max()) >= MAX_BOX:
        raise ConfigError(f"fragment vote: voxel coordinates must lie in [0, {MAX_BOX}), got "
                          f"[{int(grid.min())}, {int(grid.max())}]")
    # points sharing a voxel are one node of the graph
    keyed = torch.cat([event[idx].cpu().long().unsqueeze(1), grid], dim=1)
    voxels, node = torch.unique(keyed, dim=0, return_inverse=True)
    kmap = kernel_map(voxels[:, 1:], voxels[:, 0])
    n = int(voxels.shape[0])
    graph = coo_matrix((np.ones(kmap.pair_in.numel(), dtype=np.int8),
                        (kmap.pair_in.numpy(), kmap.pair_out.numpy())), shape=(n, n))
    count, per_voxel = connected_components(graph, directed=False)
    labels[idx] = torch.from_numpy(per_voxel.astype(np.int64))[node]
    return labels, int(count)


def fragment_vote(probs: torch.Tensor, coord: torch.Tensor, event: torch.Tensor,
                  group: Sequence[int], excluded: int | None = None) -> torch.Tensor:
    """``probs`` (P, C) after the fragment vote over the classes ``group``.

    A point is a member when its most probable class (leaving out class ``excluded``, e.g. the
    low-energy class the scores leave out) is in ``group``. Each fragment of touching members
    (:func:`point_fragments`) takes the group class with the largest probability summed over
    its points, and each member's probability over the group moves onto that class. Other
    classes and other points keep their probabilities; the input is not modified."""
    num_classes = int(probs.shape[1])
    g = torch.as_tensor(list(group), dtype=torch.long)
    if g.numel() < 2 or int(g.min()) < 0 or int(g.max()) >= num_classes or g.unique().numel() != g.numel():
        raise ConfigError(f"fragment vote: the group must name at least two distinct classes of 0..{num_classes - 1}, "
                          f"got {list(group)}")
    p = probs.detach().float().cpu()
    called = p.clone()
    if excluded is not None:
        called[:, excluded] = -1.0
    member = torch.isin(called.argmax(dim=1), g)
    labels, count = point_fragments(coord, event, member)
    out = p.clone()
    if count == 0:
        return out.to(probs.device)
    rows = labels >= 0
    frag = labels[rows]
    mass = p[rows][:, g]
    summed = torch.zeros(count, int(g.numel())).index_add_(0, frag, mass)
    winner = summed.argmax(dim=1)[frag]  # per member: the column of its fragment's class in ``group``
    voted = torch.zeros_like(mass)
    voted[torch.arange(mass.shape[0]), winner] = mass.sum(dim=1)
    sub = out[rows]
    sub[:, g] = voted
    out[rows] = sub
    return out.to(probs.device)


class PointProbabilityStep(nn.Module):
    """Base of the test-time steps that change a point task's class probabilities: answers
    ``forward_logits``, ``scored_items`` and ``item_outputs`` with the log of
    ``self.step(probs, batch)``. ``task``: a point task or an
    :class:`~detfm.evaluate.orientations.OrientationAverage` of one."""

    def __init__(self, task: nn.Module, what: str) -> None:
        super().__init__()
        if not hasattr(task, "forward_logits"):
            raise ConfigError(f"{type(task).__name__} has no per-point outputs (forward_logits): the {what} "
                              f"applies to segmentation tasks")
        self.task = task

    def step(self, probs: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        raise NotImplementedError

    def _changed(self, logits: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        out = self.step(torch.softmax(logits.float(), dim=-1), batch)
        return torch.log(out.clamp_min(torch.finfo(out.dtype).tiny))

    def forward_logits(self, batch: PackedBatch) -> torch.Tensor:
        """(P, C) log of the changed probabilities of every point."""
        return self._changed(self.task.forward_logits(batch), batch)

    def scored_items(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every point's true class and changed log-probabilities."""
        labels, logits = self.task.scored_items(batch)
        return labels, self._changed(logits, batch)

    def item_outputs(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Changed log-probabilities of every point, its event and its position in the batch."""
        logits, event, position = self.task.item_outputs(batch)
        return self._changed(logits, batch), event, position


class FragmentVote(PointProbabilityStep):
    """``task``'s per-point class probabilities after :func:`fragment_vote`.

    ``task``: a point task (``forward_logits``, ``scored_items``, ``item_outputs``), or an
    :class:`~detfm.evaluate.orientations.OrientationAverage` of one. ``group``: the class
    indices that vote together; ``excluded``: the class left out when deciding which points
    are members. Outputs are log-probabilities, so ``argmax`` and ``softmax`` read them as
    logits."""

    def __init__(self, task: nn.Module, group: Sequence[int], excluded: int | None = None) -> None:
        super().__init__(task, "fragment vote")
        self.group = tuple(int(c) for c in group)
        self.excluded = excluded

    def step(self, probs: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return fragment_vote(probs, batch.coord, batch.batch_index(), self.group, self.excluded)

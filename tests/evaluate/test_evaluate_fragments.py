"""Test-time fragment vote: connected fragments of shower-like points, one class each."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from detfm_testing import check_point_step, energy_logits_task
from torch import nn

from detfm.data import EventDataset, collate
from detfm.errors import ConfigError
from detfm.evaluate.fragments import FragmentVote, fragment_vote, point_fragments
from detfm.io import layout

SH, TR, MI, DE, LE = range(5)
GROUP = (SH, MI, DE)


def _brute_fragments(coord: np.ndarray, event: np.ndarray, member: np.ndarray) -> np.ndarray:
    """Union-find over every pair of members (Chebyshev distance <= 1, same event)."""
    idx = np.flatnonzero(member)
    parent = {int(i): int(i) for i in idx}

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for a in idx:
        for b in idx:
            if a < b and event[a] == event[b] and np.abs(coord[a] - coord[b]).max() <= 1:
                parent[find(int(a))] = find(int(b))
    roots = np.full(len(coord), -1)
    for i in idx:
        roots[i] = find(int(i))
    return roots


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """True when the labels split the points the same way (-1: not in any fragment)."""
    if not np.array_equal(a < 0, b < 0):
        return False
    pairs = {(int(x), int(y)) for x, y in zip(a[a >= 0], b[b >= 0], strict=True)}
    return len({x for x, _ in pairs}) == len(pairs) == len({y for _, y in pairs})


def test_fragments_are_26_neighbour_components_within_each_event() -> None:
    coord = torch.tensor([[10, 10, 10], [11, 11, 11], [12, 12, 12],   # a diagonal chain
                          [14, 12, 12],                                 # two voxels away: apart
                          [10, 10, 10],                                 # the same voxel, other event
                          [11, 11, 11], [11, 11, 11]], dtype=torch.float32)  # a duplicate voxel
    event = torch.tensor([0, 0, 0, 0, 1, 0, 2])
    member = torch.tensor([True, True, True, True, True, False, True])
    labels, count = point_fragments(coord, event, member)
    assert count == 4
    assert labels[0] == labels[1] == labels[2]
    assert len({int(labels[0]), int(labels[3]), int(labels[4]), int(labels[6])}) == 4
    assert labels[5] == -1  # not a member
    # a member sharing a voxel with another member joins its fragment
    labels, _ = point_fragments(coord, torch.tensor([0, 0, 0, 0, 1, 0, 0]), torch.ones(7, dtype=torch.bool))
    assert labels[5] == labels[6] == labels[1]


def test_fragments_match_a_brute_force_union_find() -> None:
    rng = np.random.default_rng(3)
    coord = rng.integers(0, 12, size=(300, 3))
    event = rng.integers(0, 3, size=300)
    member = rng.random(300) < 0.7
    labels, count = point_fragments(torch.from_numpy(coord).float(), torch.from_numpy(event),
                                    torch.from_numpy(member))
    expected = _brute_fragments(coord, event, member)
    assert _same_partition(labels.numpy(), expected)
    assert count == len(set(expected[expected >= 0].tolist()))


def test_no_members_and_coordinates_outside_the_hash_range() -> None:
    coord = torch.zeros(3, 3)
    labels, count = point_fragments(coord, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool))
    assert count == 0 and (labels == -1).all()
    with pytest.raises(ConfigError, match="voxel coordinates"):
        point_fragments(coord - 5, torch.zeros(3, dtype=torch.long), torch.ones(3, dtype=torch.bool))


def test_each_fragment_takes_the_group_class_with_the_largest_summed_probability() -> None:
    coord = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 0, 0],   # fragment: Michel wins 0.4+0.9+0.8 to 0.6+0.1+0.2
                          [3, 0, 0],                          # called track: left alone, cuts the line
                          [4, 0, 0], [5, 0, 0],               # fragment: shower wins
                          [9, 9, 9]], dtype=torch.float32)    # low-energy first, shower second: a member
    probs = torch.tensor([[0.6, 0.0, 0.4, 0.0, 0.0],
                          [0.1, 0.0, 0.9, 0.0, 0.0],
                          [0.2, 0.0, 0.7, 0.0, 0.1],
                          [0.3, 0.6, 0.1, 0.0, 0.0],
                          [0.9, 0.0, 0.1, 0.0, 0.0],
                          [0.3, 0.1, 0.4, 0.2, 0.0],
                          [0.3, 0.1, 0.2, 0.0, 0.4]])
    before = probs.clone()
    out = fragment_vote(probs, coord, torch.zeros(7, dtype=torch.long), GROUP, excluded=LE)
    assert torch.equal(probs, before)  # the input is not changed
    assert out.argmax(dim=1).tolist() == [MI, MI, MI, TR, SH, SH, SH]
    assert torch.equal(out[3], probs[3])
    # a member's probability over the group moves onto the winner; the other classes keep theirs
    g = list(GROUP)
    assert torch.allclose(out[:, g].sum(dim=1), probs[:, g].sum(dim=1))
    assert torch.equal(out[:, [TR, LE]], probs[:, [TR, LE]])
    assert out[0, MI] == pytest.approx(1.0) and out[5, SH] == pytest.approx(0.9)
    # without an excluded class the last point is called low-energy and is not a member
    kept = fragment_vote(probs, coord, torch.zeros(7, dtype=torch.long), GROUP)
    assert torch.equal(kept[6], probs[6])


def test_a_group_must_name_distinct_classes() -> None:
    probs = torch.full((2, 5), 0.2)
    coord, event = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    for bad in ((SH,), (SH, SH), (SH, 7), (-1, SH)):
        with pytest.raises(ConfigError, match="group"):
            fragment_vote(probs, coord, event, bad)


def test_the_wrapper_votes_on_the_tasks_probabilities(tiny_events) -> None:  # type: ignore[no-untyped-def]
    data = EventDataset([tiny_events], labels=True).subset(range(3))
    batch = collate([data[i] for i in range(3)])
    task = energy_logits_task()
    expected = fragment_vote(torch.softmax(task.forward_logits(batch), dim=-1), batch.coord, batch.batch_index(),
                             GROUP, layout.LOW_ENERGY)
    check_point_step(FragmentVote(task, GROUP, excluded=layout.LOW_ENERGY), batch, expected)
    with pytest.raises(ConfigError, match="per-point"):
        FragmentVote(nn.Linear(2, 2), GROUP)


def test_scoring_with_the_vote_needs_a_task_with_fragment_classes(tiny_events) -> None:  # type: ignore[no-untyped-def]
    from detfm.evaluate.scoring import score_task
    from detfm.tasks.registry import get_task

    data = EventDataset([tiny_events], labels=True).subset(range(2))
    assert get_task("semseg").fragment_classes == GROUP
    scores = score_task(energy_logits_task(), get_task("semseg"), data, fragment_vote=True)
    assert scores["fragment_vote"] == {"classes": ["shower", "michel", "delta"]}
    with pytest.raises(ConfigError, match="this is a 'pid' task, which has no fragment classes: leave out the fragment vote"):
        score_task(energy_logits_task(), get_task("pid"), data, fragment_vote=True)

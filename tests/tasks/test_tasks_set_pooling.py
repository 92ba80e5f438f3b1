"""Set pooling of a particle's points: contact distances, the set encoder, and particle ID with it."""

from __future__ import annotations

import pytest
import torch

from detfm.data import EventDataset, collate
from detfm_testing import assert_events_scored_alone
from detfm.models import create_model
from detfm.sim.simulate import SimConfig, simulate_to_file
from detfm.tasks.pid import PIDConfig, ParticleID
from detfm.tasks.set_pooling import SetPooling, contact_distance


def brute_contact(coord: torch.Tensor, event: torch.Tensor, group: torch.Tensor, clip: float) -> torch.Tensor:
    """Reference: every point against every point of another group of its event."""
    out = torch.full((len(group),), clip, dtype=torch.float64)
    for p in range(len(group)):
        if group[p] < 0:
            continue
        other = (event == event[p]) & (group >= 0) & (group != group[p])
        if other.any():
            out[p] = min(clip, float((coord[other].double() - coord[p].double()).norm(dim=1).min()))
    return out


def test_contact_distance_is_the_distance_to_the_nearest_other_group_of_the_same_event() -> None:
    gen = torch.Generator().manual_seed(0)
    coord = torch.rand(300, 3, generator=gen) * 60.0
    event = torch.repeat_interleave(torch.arange(3), torch.tensor([120, 100, 80]))
    group = torch.randint(-1, 4, (300,), generator=gen) + 4 * event  # groups numbered across the batch
    group[group % 4 == 3] = -1  # some points in no group
    group[event == 2] = 8  # event 2: one group alone
    got = contact_distance(coord, event, group, clip=20.0)
    want = brute_contact(coord, event, group, 20.0)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    assert (got[group < 0] == 20.0).all() and (got[event == 2] == 20.0).all()
    assert (got[(group >= 0) & (event < 2)] < 20.0).any()
    assert got.dtype == coord.dtype


def rows_of(groups: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    coord = torch.cat(groups)
    index = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([len(g) for g in groups]))
    return coord, index


def test_set_pooling_ignores_point_order_and_translation_and_pools_each_group_alone() -> None:
    gen = torch.Generator().manual_seed(1)
    pool = SetPooling(in_features=6, width=8, out_features=8).eval()
    coord, index = rows_of([torch.rand(n, 3, generator=gen) * 40 for n in (7, 30, 12)])
    values = torch.randn(len(index), 6, generator=gen)
    energy = torch.rand(len(index), generator=gen) + 0.1
    contact = torch.rand(len(index), generator=gen) * 10
    with torch.no_grad():
        pooled = pool(values, coord, energy, contact, index, 3)
        assert pooled.shape == (3, pool.out_features)
        perm = torch.randperm(len(index), generator=gen)
        torch.testing.assert_close(pool(values[perm], coord[perm], energy[perm], contact[perm], index[perm], 3),
                                   pooled, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pool(values, coord + torch.tensor([300.0, -20.0, 5.0]), energy, contact,
                                        index, 3), pooled, rtol=1e-4, atol=1e-4)
        alone = index == 1
        torch.testing.assert_close(pool(values[alone], coord[alone], energy[alone], contact[alone],
                                        torch.zeros(int(alone.sum()), dtype=torch.long), 1)[0], pooled[1],
                                   rtol=1e-5, atol=1e-5)


def touching_or_apart(gen: torch.Generator, gap: float) -> tuple[torch.Tensor, torch.Tensor]:
    """An event of two straight 20-voxel lines along x, the second starting ``gap`` voxels past
    the first's end, at a random place and height."""
    start = torch.rand(3, generator=gen) * 100
    line = torch.arange(20.0)[:, None] * torch.tensor([1.0, 0.0, 0.0])
    second = line + torch.tensor([19.0 + gap, 0.0, 0.0])
    return torch.cat([line, second]) + start, torch.repeat_interleave(torch.arange(2), 20)


def test_set_pooling_learns_what_the_mean_and_maximum_cannot_see() -> None:
    """Identical point values, two labels: the lines touch (gap 1 voxel) or lie apart (12 voxels).
    Mean and maximum of the values are the same for both; the contact distance tells them apart."""
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(0)
    pool = SetPooling(in_features=2, width=16, out_features=16)
    head = torch.nn.Linear(pool.out_features, 2)
    opt = torch.optim.Adam([*pool.parameters(), *head.parameters()], lr=3e-3)

    def batch(n: int) -> tuple[torch.Tensor, ...]:
        coords, groups, events, labels = [], [], [], []
        for e in range(n):
            label = int(torch.randint(0, 2, (1,), generator=gen))
            c, g = touching_or_apart(gen, 1.0 if label else 12.0)
            coords.append(c)
            groups.append(g + 2 * e)
            events.append(torch.full((40,), e))
            labels += [label, label]
        coord, group, event = torch.cat(coords), torch.cat(groups), torch.cat(events)
        return coord, group, contact_distance(coord, event, group), torch.tensor(labels)

    for _ in range(150):
        coord, group, contact, label = batch(8)
        values = torch.ones(len(group), 2)
        logits = head(pool(values, coord, torch.ones(len(group)), contact, group, len(label)))
        loss = torch.nn.functional.cross_entropy(logits, label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    coord, group, contact, label = batch(32)
    with torch.no_grad():
        logits = head(pool(torch.ones(len(group), 2), coord, torch.ones(len(group)), contact, group, len(label)))
    assert float((logits.argmax(dim=1) == label).float().mean()) == 1.0


@pytest.fixture(scope="module")
def events(pid_events: EventDataset) -> EventDataset:
    return pid_events


def test_pid_set_pooling_scores_each_event_alone_and_trains_every_parameter(events: EventDataset) -> None:
    backbone = create_model("ptv3_micro", seed=0, drop_path=0.0)
    task = ParticleID(backbone, PIDConfig(pooling="set", freeze_backbone=True)).eval()
    assert task.set_pool is not None and task.classifier[0].normalized_shape == (task.set_pool.out_features,)
    assert_events_scored_alone(task, events)
    loss = task.train()(collate([events[0], events[1]]))["loss"]
    loss.backward()
    trainable = [(n, p) for n, p in task.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable), [n for n, p in trainable if p.grad is None]

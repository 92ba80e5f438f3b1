"""Data order: seeded per-epoch permutations, global batches split over ranks and micro-batches."""

from __future__ import annotations

import pytest
import torch

from detfm.engine import BatchPlan, epoch_permutation
from detfm.errors import ConfigError


def test_epoch_permutations_depend_on_seed_and_epoch_only() -> None:
    a = epoch_permutation(50, seed=3, epoch=0)
    assert sorted(a.tolist()) == list(range(50))
    assert torch.equal(a, epoch_permutation(50, seed=3, epoch=0))
    assert not torch.equal(a, epoch_permutation(50, seed=3, epoch=1))
    assert not torch.equal(a, epoch_permutation(50, seed=4, epoch=0))


def test_batches_of_an_epoch_are_disjoint_and_drop_the_remainder() -> None:
    plan = BatchPlan(num_events=23, batch_size=5, accum_steps=1, world_size=1, seed=0)
    assert plan.steps_per_epoch == 4
    epoch0 = [plan.global_batch(s) for s in range(4)]
    flat = [i for b in epoch0 for i in b]
    assert len(flat) == len(set(flat)) == 20
    assert plan.position(4) == (1, 0) and plan.position(7) == (1, 3)
    assert plan.global_batch(4) != plan.global_batch(0)   # a new permutation in epoch 1


@pytest.mark.parametrize(("world", "accum"), [(1, 1), (2, 1), (2, 3), (3, 2)])
def test_micro_batches_partition_the_global_batch(world: int, accum: int) -> None:
    plan = BatchPlan(num_events=40, batch_size=12, accum_steps=accum, world_size=world, seed=1)
    for step in (0, 3, 5):
        parts = [plan.micro_batch(step, m, r) for r in range(world) for m in range(accum)]
        assert all(len(p) == 12 // (world * accum) for p in parts)
        flat = [i for p in parts for i in p]
        assert sorted(flat) == sorted(plan.global_batch(step))
        assert len(set(flat)) == 12


def test_rank_sampler_resumes_mid_epoch() -> None:
    plan = BatchPlan(num_events=30, batch_size=8, accum_steps=2, world_size=2, seed=5)
    sampler = plan.sampler(rank=1, start_step=2, stop_step=7)
    got = list(sampler)
    assert len(got) == len(sampler) == 10
    assert got == [plan.micro_batch(s, m, 1) for s in range(2, 7) for m in range(2)]


def test_bad_plans() -> None:
    with pytest.raises(ConfigError, match="the dataset has 3 events, fewer than batch_size 4"):
        BatchPlan(num_events=3, batch_size=4, accum_steps=1, world_size=1, seed=0)
    with pytest.raises(ConfigError, match=r"batch_size \(6\) must be divisible by accum_steps \(1\) "
                                          r"x world size \(4\)"):
        BatchPlan(num_events=10, batch_size=6, accum_steps=1, world_size=4, seed=0)

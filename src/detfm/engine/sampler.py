"""Which events go into which micro-batch, on which rank, at which step.

Each epoch is a seeded permutation of the dataset; optimiser step ``s`` takes the
``batch_size`` events at position ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``
(events left over at the end of an epoch are skipped that epoch: a different few each
time). The global batch is cut into ``world_size * accum_steps`` equal micro-batches:
rank ``r`` gets micro-batch ``k`` = slice ``k * world_size + r``. Everything is a pure
function of ``(seed, step)``, so a checkpoint only needs the step to resume the exact
data order, on any number of ranks.

Datasets with a ``set_epoch(epoch)`` method (such as :class:`detfm.data.dataset.EventDataset`,
whose augmentations are seeded by epoch and event) are told the epoch before it starts;
:func:`micro_batches` starts a fresh DataLoader per epoch so worker processes see it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detfm.errors import ConfigError


def derived_seed(*keys: int) -> int:
    """A 63-bit seed derived from integer ``keys`` (independent streams for distinct keys)."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def epoch_permutation(num_events: int, seed: int, epoch: int) -> torch.Tensor:
    """The seeded order of the dataset in ``epoch`` (int64 tensor of indices)."""
    generator = torch.Generator().manual_seed(derived_seed(seed, epoch, 0x5A3D))
    return torch.randperm(num_events, generator=generator)


@dataclass(frozen=True)
class BatchPlan:
    """The data order of a run: global batches split over ranks and micro-batches."""

    num_events: int
    batch_size: int
    accum_steps: int
    world_size: int
    seed: int

    def __post_init__(self) -> None:
        if self.num_events < self.batch_size:
            raise ConfigError(f"the dataset has {self.num_events} events, fewer than "
                              f"batch_size {self.batch_size}")
        shards = self.accum_steps * self.world_size
        if self.batch_size % shards:
            raise ConfigError(f"batch_size ({self.batch_size}) must be divisible by accum_steps "
                              f"({self.accum_steps}) x world size ({self.world_size})")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_events // self.batch_size

    @property
    def micro_batch_size(self) -> int:
        """Events per micro-batch on one rank."""
        return self.batch_size // (self.accum_steps * self.world_size)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of optimiser step ``step`` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def global_batch(self, step: int) -> list[int]:
        """Dataset indices of the whole batch of optimiser step ``step``."""
        epoch, position = self.position(step)
        order = epoch_permutation(self.num_events, self.seed, epoch)
        return order[position * self.batch_size:(position + 1) * self.batch_size].tolist()

    def micro_batch(self, step: int, micro: int, rank: int) -> list[int]:
        """Indices read by ``rank`` for micro-batch ``micro`` of step ``step``."""
        size = self.micro_batch_size
        shard = micro * self.world_size + rank
        return self.global_batch(step)[shard * size:(shard + 1) * size]

    def sampler(self, rank: int, start_step: int, stop_step: int) -> RankBatchSampler:
        """A batch sampler giving ``rank``'s micro-batches for steps ``start_step..stop_step-1``."""
        return RankBatchSampler(self, rank, start_step, stop_step)


class RankBatchSampler(Sampler[list[int]]):
    """Yields one rank's micro-batches (lists of dataset indices) in training order."""

    def __init__(self, plan: BatchPlan, rank: int, start_step: int, stop_step: int) -> None:
        self.plan, self.rank = plan, rank
        self.start_step, self.stop_step = start_step, stop_step

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step) * self.plan.accum_steps

    def __iter__(self) -> Iterator[list[int]]:
        plan, size = self.plan, self.plan.micro_batch_size
        cached_epoch, order = -1, torch.empty(0, dtype=torch.int64)
        for step in range(self.start_step, self.stop_step):
            epoch, position = plan.position(step)
            if epoch != cached_epoch:  # one permutation per epoch, not per step
                cached_epoch, order = epoch, epoch_permutation(plan.num_events, plan.seed, epoch)
            batch = order[position * plan.batch_size:(position + 1) * plan.batch_size]
            for micro in range(plan.accum_steps):
                shard = micro * plan.world_size + self.rank
                yield batch[shard * size:(shard + 1) * size].tolist()


def micro_batches(dataset: Dataset[Any], collate: Callable[[list[Any]], Any], plan: BatchPlan, rank: int,
                  start_step: int, stop_step: int, num_workers: int = 0,
                  pin_memory: bool = False) -> Iterator[Any]:
    """Collated micro-batches of ``rank`` for steps ``start_step..stop_step-1``, in order."""
    step = start_step
    while step < stop_step:
        epoch = plan.position(step)[0]
        end = min(stop_step, (epoch + 1) * plan.steps_per_epoch)
        set_epoch = getattr(dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=plan.sampler(rank, step, end), collate_fn=collate,
                            num_workers=num_workers, pin_memory=pin_memory,
                            worker_init_fn=_one_thread if num_workers > 0 else None,
                            generator=torch.Generator().manual_seed(derived_seed(plan.seed, epoch, rank, 1)))
        yield from loader
        step = end


def _one_thread(worker_id: int) -> None:
    # several workers each using every core would oversubscribe the CPU
    torch.set_num_threads(1)

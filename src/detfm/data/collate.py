"""Turn per-event samples into a :class:`PackedBatch`, and build a seeded DataLoader.

Batches are packed, not padded (events range from ~10^2 to ~10^5 points): all points are
concatenated and ``offsets`` marks where each event starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detfm.data.batch import PackedBatch
from detfm.errors import ConfigError

if TYPE_CHECKING:
    from detfm.data.dataset import Sample

# Log-energy normalisation of the PoLAr-MAE PILArNet loader (Young et al., arXiv:2502.02558,
# polarmae/datasets/PILArNet.py `log_transform`): energies in [0, EMAX] map to [-1, 1] on a
# log scale. The reference code passes the 0.13 MeV threshold as eps; detfm uses a fixed
# eps = 0.01 MeV so the feature does not change when the threshold does.
LOG_ENERGY_EPS_MEV = 0.01
LOG_ENERGY_MAX_MEV = 20.0


def log_energy_feature(energy: np.ndarray, eps: float = LOG_ENERGY_EPS_MEV,
                       emax: float = LOG_ENERGY_MAX_MEV) -> np.ndarray:
    """Map energies (MeV) to [-1, 1]: 0 -> -1, ``emax`` and above -> +1, log-spaced between.

    ``2 (log10(E + eps) - log10(eps)) / (log10(eps + emax) - log10(eps)) - 1`` with E clipped
    to [0, emax]. Returns float32 of the same shape.
    """
    if not (eps > 0 and emax > 0):
        raise ConfigError(f"log-energy needs eps > 0 and emax > 0, got eps={eps}, emax={emax}")
    e = np.clip(np.asarray(energy, dtype=np.float64), 0.0, emax)
    lo, hi = math.log10(eps), math.log10(eps + emax)
    return (2.0 * (np.log10(e + eps) - lo) / (hi - lo) - 1.0).astype(np.float32)


def collate(samples: Sequence[Sample]) -> PackedBatch:
    """Concatenate samples into one :class:`PackedBatch`.

    ``feat`` is taken from the samples when they carry one (all must, with the same width);
    otherwise it is the log-normalised energy (:func:`log_energy_feature`), shape (P, 1).
    Labels are kept when every sample has them and dropped (None) when none has.
    """
    if len(samples) == 0:
        raise ValueError("collate needs at least one sample")
    counts = np.array([s.n_points for s in samples], dtype=np.int64)
    offsets = np.zeros(len(samples) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])

    coord = np.concatenate([s.coord for s in samples]).astype(np.float32, copy=False)
    energy = np.concatenate([s.energy for s in samples]).astype(np.float32, copy=False)

    has_feat = [s.feat is not None for s in samples]
    if all(has_feat):
        widths = {s.feat.shape[1] for s in samples if s.feat is not None}
        if len(widths) != 1:
            raise ValueError(f"samples have features of different widths {sorted(widths)}")
        feat = np.concatenate([s.feat for s in samples if s.feat is not None]).astype(np.float32, copy=False)
    elif not any(has_feat):
        feat = log_energy_feature(energy)[:, None]
    else:
        raise ValueError("some samples carry 'feat' and some do not; use the same transform for all")

    labels: dict[str, torch.Tensor | None] = {}
    for name in ("semantic", "pid", "instance", "interaction"):
        parts = [getattr(s, name) for s in samples]
        present = [p is not None for p in parts]
        if all(present):
            labels[name] = torch.from_numpy(np.concatenate(parts).astype(np.int64, copy=False))
        elif not any(present):
            labels[name] = None
        else:
            raise ValueError(f"some samples have '{name}' labels and some do not")
    for name in ("particle_energy", "particle_start"):  # per-particle truth, repeated per point
        parts = [getattr(s, name) for s in samples]
        if all(p is not None for p in parts):
            labels[name] = torch.from_numpy(np.concatenate(parts).astype(np.float32, copy=False))
        else:  # a sample without it (e.g. made by hand): none of the batch has it
            labels[name] = None

    return PackedBatch(
        coord=torch.from_numpy(np.ascontiguousarray(coord)),
        feat=torch.from_numpy(np.ascontiguousarray(feat)),
        offsets=torch.from_numpy(offsets),
        energy=torch.from_numpy(np.ascontiguousarray(energy)),
        index=torch.tensor([s.index for s in samples], dtype=torch.int64),
        **labels,
    )


class EpochSampler(Sampler[int]):
    """Indices 0..n-1, shuffled by a permutation drawn from ``(seed, epoch)``.

    The epoch is read from ``dataset.epoch`` (see :meth:`EventDataset.set_epoch`) each time
    iteration starts, so one ``set_epoch`` call fixes both the order and the augmentations,
    and a run resumed at epoch ``e`` sees exactly the order it would have seen.
    """

    def __init__(self, dataset: Dataset[Any], shuffle: bool, seed: int) -> None:
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        n = len(self)
        if not self.shuffle:
            return iter(range(n))
        epoch = int(getattr(self.dataset, "epoch", 0))
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        return iter(order.tolist())


def _worker_init(worker_id: int) -> None:
    # One thread per worker: several workers each using all cores would oversubscribe them.
    # HDF5 handles need nothing here: EventFile re-opens itself in a new process.
    torch.set_num_threads(1)


def make_loader(dataset: Dataset[Any], batch_size: int, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0, drop_last: bool = False) -> DataLoader[Any]:
    """A DataLoader yielding :class:`PackedBatch` es, deterministic for a given ``seed``.

    The batches do not depend on ``num_workers``. Call ``dataset.set_epoch(e)`` before
    iterating epoch ``e``: workers are started afresh for every epoch (no persistent
    workers) so they see the new epoch.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {num_workers}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(dataset, shuffle=shuffle, seed=seed),
        num_workers=num_workers,
        collate_fn=collate,
        drop_last=drop_last,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        generator=generator,
        persistent_workers=False,
    )

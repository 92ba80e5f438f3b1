"""Synthetic track- and shower-like point clouds for tests, benchmarks and examples.

Not physics (that is :mod:`detfm.sim`): just point clouds with the geometry of LArTPC
events - thin lines and fuzzy cones of unique 3 mm voxels in the 768^3 box - built fast
and to an exact point count, so model code can be exercised at any event size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from detfm.data import PackedBatch, log_energy_feature
from detfm.errors import ConfigError
from detfm.io import layout

TRACK, SHOWER = layout.TRACK, layout.SHOWER


def _track(rng: np.random.Generator) -> np.ndarray:
    start = rng.uniform(64, layout.BOX_VOXELS - 64, 3)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    length = rng.uniform(20, 400)
    t = np.arange(0.0, length, 0.25)[:, None]
    wiggle = np.cumsum(rng.normal(0.0, 0.03, (t.shape[0], 3)), axis=0)
    blur = rng.normal(0.0, 0.6, (t.shape[0], 3))  # ~diffusion: tracks 2-3 voxels thick
    return start + t * direction + wiggle + blur


def _shower(rng: np.random.Generator) -> np.ndarray:
    start = rng.uniform(64, layout.BOX_VOXELS - 64, 3)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    n = int(rng.integers(300, 5000))
    depth = rng.gamma(2.0, 12.0, n)[:, None]
    spread = rng.normal(0.0, 1.0, (n, 3)) * (1.0 + 0.1 * depth)
    return start + depth * direction + spread


def synthetic_event(rng: np.random.Generator, n_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coord (n, 3) float32 voxel indices, energy (n,) float32 MeV, semantic (n,) int64).

    Adds tracks (70 %) and showers (30 %) until ``n_points`` unique voxels exist, and keeps
    the first ``n_points`` in order of creation (so structures stay contiguous).
    """
    if n_points < 1:
        raise ConfigError(f"n_points must be >= 1, got {n_points}")
    seen: set[int] = set()
    coords, labels = [], []
    total = 0
    while total < n_points:
        is_track = rng.random() < 0.7
        pts = _track(rng) if is_track else _shower(rng)
        vox = np.clip(np.floor(pts), 0, layout.BOX_VOXELS - 1).astype(np.int64)
        key = (vox[:, 0] * layout.BOX_VOXELS + vox[:, 1]) * layout.BOX_VOXELS + vox[:, 2]
        _, first = np.unique(key, return_index=True)
        first.sort()
        fresh = [i for i in first if int(key[i]) not in seen]
        seen.update(int(key[i]) for i in fresh)
        coords.append(vox[fresh])
        labels.append(np.full(len(fresh), TRACK if is_track else SHOWER, np.int64))
        total += len(fresh)
    coord = np.concatenate(coords)[:n_points].astype(np.float32)
    semantic = np.concatenate(labels)[:n_points]
    log_e = np.where(semantic == TRACK, rng.normal(0.0, 0.4, n_points), rng.normal(-0.7, 1.0, n_points))
    energy = np.maximum(np.exp(log_e), layout.DEFAULT_ENERGY_THRESHOLD_MEV).astype(np.float32)
    return coord, energy, semantic


def synthetic_batch(rng: np.random.Generator, sizes: Sequence[int]) -> PackedBatch:
    """A :class:`PackedBatch` of synthetic events with the given point counts.

    ``feat`` is the log-normalised energy (:func:`detfm.data.log_energy_feature`), (P, 1);
    ``semantic`` holds track/shower labels.
    """
    events = [synthetic_event(rng, int(n)) for n in sizes]
    coord = np.concatenate([e[0] for e in events])
    energy = np.concatenate([e[1] for e in events])
    semantic = np.concatenate([e[2] for e in events])
    offsets = np.concatenate([[0], np.cumsum([len(e[0]) for e in events])])
    return PackedBatch(coord=torch.from_numpy(coord),
                       feat=torch.from_numpy(log_energy_feature(energy)[:, None]),
                       offsets=torch.from_numpy(offsets.astype(np.int64)),
                       energy=torch.from_numpy(energy),
                       semantic=torch.from_numpy(semantic),
                       index=torch.arange(len(events)))

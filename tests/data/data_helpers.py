"""Helpers shared by the data-layer tests: synthetic events and samples, non-mutation checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detfm.data import Sample
from detfm.io import Event, layout


def make_event(rng: np.random.Generator, n_clusters: int = 4, max_points: int = 40,
               energy_scale: float = 0.5, labeled: bool = True) -> Event:
    """A PILArNet-M style event: row 0 is the low-energy bucket, then ``n_clusters`` clusters.

    Consecutive cluster rows share a group id (two fragments per particle) so per-particle
    counting can be told apart from per-cluster counting. Energies are exponential with
    mean ``energy_scale`` MeV, so a fraction falls below the 0.13 MeV threshold.
    """
    sizes = [int(rng.integers(0, 6))] + [int(rng.integers(1, max_points)) for _ in range(n_clusters)]
    n = sum(sizes)
    centre = rng.integers(100, 668, size=3)
    points = np.zeros((n, layout.N_POINT), np.float32)
    points[:, :3] = np.clip(centre + rng.integers(-60, 60, size=(n, 3)), 0, layout.BOX_VOXELS - 1)
    points[:, layout.VALUE] = rng.exponential(energy_scale, size=n)
    points[:, layout.DE] = points[:, layout.VALUE]
    points[:, layout.DX] = 3.0
    clusters = np.zeros((len(sizes), layout.N_CLUSTER), np.float32)
    clusters[:, layout.C_NPOINTS] = sizes
    clusters[0, layout.C_FRAGMENT:layout.C_SEMANTIC] = -1
    clusters[0, layout.C_SEMANTIC] = layout.LOW_ENERGY
    clusters[0, layout.C_PID] = layout.PID_NONE
    for r in range(1, len(sizes)):
        group = (r - 1) // 2
        clusters[r, layout.C_FRAGMENT] = r - 1
        clusters[r, layout.C_GROUP] = group
        clusters[r, layout.C_INTERACTION] = group % 2
        clusters[r, layout.C_SEMANTIC] = rng.integers(0, 4)
        clusters[r, layout.C_PID] = (group * 7 + int(centre[0])) % 6  # includes some "none"
    if not labeled:
        clusters[:, layout.C_SEMANTIC] = -1
        clusters[:, layout.C_PID] = -1
    return Event(points, clusters, np.zeros((len(sizes), layout.N_CLUSTER_EXTRA), np.float32))


def below_threshold_event(rng: np.random.Generator) -> Event:
    """A non-empty event whose voxels are all below 0.13 MeV."""
    e = make_event(rng, n_clusters=2)
    points = e.points.copy()
    points[:, layout.VALUE] = 0.05
    return Event(points, e.clusters, e.cluster_extra)


@dataclass(frozen=True)
class Files:
    paths: tuple[Path, ...]
    events: tuple[tuple[Event, ...], ...]  # events[file][event]

    @property
    def flat(self) -> list[Event]:
        return [e for file_events in self.events for e in file_events]


def random_sample(rng: np.random.Generator, n: int, labels: bool = True) -> Sample:
    """A sample with ``n`` random points (for transform and collate tests)."""
    lab = {}
    if labels:
        lab = {name: rng.integers(0, 5, size=n).astype(np.int64)
               for name in ("semantic", "pid", "instance", "interaction")}
    return Sample(coord=rng.uniform(0, 767, size=(n, 3)).astype(np.float32),
                  energy=rng.exponential(1.0, size=n).astype(np.float32), index=7, **lab)


def frozen_copy(sample: Sample) -> tuple[Sample, dict[str, np.ndarray]]:
    """Make the sample's arrays read-only (in-place writes raise) and keep copies to compare."""
    saved = {}
    for name, v in vars(sample).items():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
            saved[name] = v.copy()
    return sample, saved


def assert_unchanged(sample: Sample, saved: dict[str, np.ndarray]) -> None:
    for name, v in saved.items():
        np.testing.assert_array_equal(getattr(sample, name), v, err_msg=f"{name} was modified")

"""One detector event in memory, as stored in the PILArNet-M layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detfm.io import layout


@dataclass(frozen=True)
class Event:
    """A labeled LArTPC event.

    Attributes:
        points: (N, 8) float32, columns :data:`layout.POINT_COLUMNS`, ordered by cluster.
        clusters: (M, 6) float32, columns :data:`layout.CLUSTER_COLUMNS`. Files in the older
            (M, 5) variant are read with pid set to ``PID_NONE``.
        cluster_extra: (M, 5) float32, columns :data:`layout.CLUSTER_EXTRA_COLUMNS`.

    Per-point labels repeat each cluster's column ``n_points`` times.
    """

    points: np.ndarray
    clusters: np.ndarray
    cluster_extra: np.ndarray

    @property
    def n_points(self) -> int:
        return int(self.points.shape[0])

    @property
    def coords(self) -> np.ndarray:
        """(N, 3) voxel coordinates."""
        return self.points[:, layout.X : layout.Z + 1]

    @property
    def energy(self) -> np.ndarray:
        """(N,) reconstructed voxel value in MeV."""
        return self.points[:, layout.VALUE]

    def _per_point(self, column: int) -> np.ndarray:
        counts = self.clusters[:, layout.C_NPOINTS].astype(np.int64)
        return np.repeat(self.clusters[:, column].astype(np.int64), counts)

    @property
    def semantic(self) -> np.ndarray:
        """(N,) semantic class per point (0 shower ... 4 low-energy)."""
        return self._per_point(layout.C_SEMANTIC)

    @property
    def pid(self) -> np.ndarray:
        """(N,) particle id per point (0 photon ... 4 proton, 5 none)."""
        return self._per_point(layout.C_PID)

    @property
    def instance(self) -> np.ndarray:
        """(N,) particle instance (group id) per point."""
        return self._per_point(layout.C_GROUP)

    @property
    def fragment(self) -> np.ndarray:
        """(N,) fragment id per point."""
        return self._per_point(layout.C_FRAGMENT)

    @property
    def interaction(self) -> np.ndarray:
        """(N,) interaction id per point."""
        return self._per_point(layout.C_INTERACTION)

    @property
    def cluster_index(self) -> np.ndarray:
        """(N,) row of ``clusters`` each point belongs to."""
        counts = self.clusters[:, layout.C_NPOINTS].astype(np.int64)
        return np.repeat(np.arange(len(counts)), counts)

    def select(self, keep: np.ndarray) -> Event:
        """The event restricted to the points where ``keep`` (an (N,) bool mask) is true.

        Points stay in stored order and every cluster row is kept, with its point count
        updated (a cluster may end with 0 points). The event itself is not changed.
        """
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (self.n_points,):
            raise ValueError(f"keep mask has shape {keep.shape}, expected ({self.n_points},)")
        clusters = self.clusters.copy()
        counts = np.bincount(self.cluster_index[keep], minlength=len(clusters))
        clusters[:, layout.C_NPOINTS] = counts.astype(np.float32)
        return Event(self.points[keep].copy(), clusters, self.cluster_extra.copy())

    @staticmethod
    def empty() -> Event:
        """An event with no points and only the (empty) low-energy cluster row."""
        clusters = np.zeros((1, layout.N_CLUSTER), np.float32)
        clusters[0, layout.C_FRAGMENT :] = -1
        clusters[0, layout.C_SEMANTIC] = layout.LOW_ENERGY
        clusters[0, layout.C_PID] = layout.PID_NONE
        return Event(np.zeros((0, layout.N_POINT), np.float32), clusters,
                     np.zeros((1, layout.N_CLUSTER_EXTRA), np.float32))

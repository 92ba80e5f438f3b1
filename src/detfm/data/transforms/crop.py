"""Cubic crop of an event."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detfm.data.dataset import Sample
from detfm.errors import ConfigError

CROP_MODES = ("random", "center")


@dataclass(frozen=True)
class Crop:
    """Keep the points inside an axis-aligned cube of side ``size`` voxels.

    ``mode="random"`` centres the cube on a randomly chosen point of the event (so the crop
    is never empty for a non-empty event); ``mode="center"`` centres it on the middle of the
    event's bounding box (deterministic, for evaluation). Coordinates are not shifted.
    A point is kept if ``centre - size/2 <= x < centre + size/2`` on every axis.
    """

    size: float
    mode: str = "random"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.size) and self.size > 0):
            raise ConfigError(f"Crop size must be a positive number of voxels, got {self.size}")
        if self.mode not in CROP_MODES:
            raise ConfigError(f"Crop mode must be one of {CROP_MODES}, got {self.mode!r}")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample.n_points == 0:
            return sample
        coord = sample.coord
        if self.mode == "random":
            centre = coord[rng.integers(sample.n_points)].astype(np.float64)
        else:
            centre = (coord.min(axis=0).astype(np.float64) + coord.max(axis=0)) / 2.0
        lo, hi = centre - self.size / 2.0, centre + self.size / 2.0
        keep = ((coord >= lo) & (coord < hi)).all(axis=1)
        return sample.select(keep)

"""Random subsampling to a maximum number of points."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detfm.data.dataset import Sample
from detfm.errors import ConfigError


@dataclass(frozen=True)
class Subsample:
    """Keep at most ``max_points`` points, drawn without replacement.

    Events with fewer points are returned unchanged. Kept points stay in their original
    order (the file stores points grouped by cluster).
    """

    max_points: int

    def __post_init__(self) -> None:
        n = self.max_points
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"Subsample max_points must be an integer >= 1, got {self.max_points}")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if sample.n_points <= self.max_points:
            return sample
        keep = np.sort(rng.choice(sample.n_points, size=int(self.max_points), replace=False))
        return sample.select(keep)

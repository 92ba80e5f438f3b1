"""Drop voxels below an energy threshold."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detfm.data.dataset import Sample
from detfm.errors import ConfigError


@dataclass(frozen=True)
class EnergyThreshold:
    """Keep only points with ``energy >= mev``.

    The dataset already applies its ``energy_threshold``; use this for a higher cut, e.g.
    to study how a model behaves when low-energy hits are lost.
    """

    mev: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mev) and self.mev >= 0):
            raise ConfigError(f"EnergyThreshold needs a finite value >= 0 MeV, got {self.mev}")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return sample.select(sample.energy >= self.mev)

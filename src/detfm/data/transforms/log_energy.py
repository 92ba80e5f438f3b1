"""Set the input feature to the log-normalised energy."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from detfm.data.collate import LOG_ENERGY_EPS_MEV, LOG_ENERGY_MAX_MEV, log_energy_feature
from detfm.data.dataset import Sample


@dataclass(frozen=True)
class LogEnergyNormalize:
    """``feat`` = (N, 1) log energy mapped to [-1, 1] (see :func:`log_energy_feature`).

    The dataset does this by default; the transform exists to choose other ``eps``/``emax``
    (the reference PoLAr-MAE loader uses eps = the 0.13 MeV threshold).
    """

    eps: float = LOG_ENERGY_EPS_MEV
    emax: float = LOG_ENERGY_MAX_MEV

    def __post_init__(self) -> None:
        log_energy_feature(np.zeros(0), self.eps, self.emax)  # validates eps and emax

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return replace(sample, feat=log_energy_feature(sample.energy, self.eps, self.emax)[:, None])

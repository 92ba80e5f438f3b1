"""Chain several transforms into one."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detfm.data.dataset import Sample, Transform
from detfm.errors import ConfigError


class Compose:
    """Apply ``transforms`` in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        for t in transforms:
            if not callable(t):
                raise ConfigError(f"Compose expects callables transform(sample, rng), got {t!r}")
        self.transforms: tuple[Transform, ...] = tuple(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            sample = t(sample, rng)
        return sample

    def __repr__(self) -> str:
        return f"Compose([{', '.join(repr(t) for t in self.transforms)}])"

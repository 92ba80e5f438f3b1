"""Properties every transform must have: no mutation, determinism, empty events."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import assert_unchanged, frozen_copy, random_sample

from detfm.data.transforms import (
    Compose,
    Crop,
    EnergyThreshold,
    LogEnergyNormalize,
    RandomRotation,
    Subsample,
)

TRANSFORMS = [
    EnergyThreshold(0.5),
    LogEnergyNormalize(),
    RandomRotation(),
    RandomRotation(axis="z"),
    Crop(100.0),
    Crop(100.0, mode="center"),
    Subsample(10),
    Compose([EnergyThreshold(0.2), RandomRotation(), Crop(300.0), Subsample(20), LogEnergyNormalize()]),
]


@pytest.mark.parametrize("transform", TRANSFORMS, ids=repr)
def test_never_mutates_its_input(transform) -> None:
    sample, saved = frozen_copy(random_sample(np.random.default_rng(0), 60))
    out = transform(sample, np.random.default_rng(1))  # read-only arrays: any in-place write raises
    assert_unchanged(sample, saved)
    assert out.index == sample.index


@pytest.mark.parametrize("transform", TRANSFORMS, ids=repr)
def test_deterministic_for_a_fixed_generator(transform) -> None:
    sample = random_sample(np.random.default_rng(0), 60)
    a = transform(sample, np.random.default_rng(42))
    b = transform(sample, np.random.default_rng(42))
    for name in ("coord", "energy", "semantic", "pid", "instance", "interaction"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("transform", TRANSFORMS, ids=repr)
def test_empty_and_unlabeled_events(transform) -> None:
    rng = np.random.default_rng(3)
    empty = random_sample(rng, 0)
    out = transform(empty, rng)
    assert out.n_points == 0 and out.coord.shape == (0, 3) and out.semantic.shape == (0,)
    unlabeled = transform(random_sample(rng, 30, labels=False), rng)
    assert unlabeled.semantic is None

"""Helpers for the simulator tests: single-particle guns through transport."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from detfm.sim.particles import species
from detfm.sim.transport import BOX_CENTRE_CM, World, transport
from detfm.sim.truth import Primary, TruthEvent

Gun = Callable[..., list[TruthEvent]]


def shoot(name: str, kinetic_mev: float, n: int, seed: int, world: World | None = None,
          direction: tuple[float, float, float] = (0.0, 0.0, 1.0), delta_rays: bool = True) -> list[TruthEvent]:
    """``n`` events of one particle from the box centre along ``direction`` (default +z).

    The default world is :meth:`World.large` (nothing escapes). Events are independent
    draws from one generator seeded with ``seed``.
    """
    rng = np.random.default_rng(seed)
    pdg = species(name).pdg
    world = World.large() if world is None else world
    start = np.full(3, BOX_CENTRE_CM)
    u = np.asarray(direction, dtype=np.float64)
    return [transport([Primary(pdg, float(kinetic_mev), start.copy(), u.copy())], rng, world, delta_rays=delta_rays)
            for _ in range(n)]


@pytest.fixture
def gun() -> Gun:
    """The :func:`shoot` helper, as a fixture."""
    return shoot

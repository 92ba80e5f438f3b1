"""Event generators follow the PILArNet-M generator tables."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from detfm.errors import DetfmError
from detfm.io import layout
from detfm.sim import generator as gen
from detfm.sim.particles import BY_PDG, species


def test_mpv_multiplicity_species_limits_and_energies() -> None:
    rng = np.random.default_rng(0)
    sizes = Counter()
    for _ in range(2000):
        prims = gen.multi_particle_vertex(rng)
        sizes[len(prims)] += 1
        assert 2 <= len(prims) <= 7
        names = Counter(BY_PDG[p.pdg].name for p in prims)
        assert names["mu-"] + names["mu+"] + names["e-"] + names["e+"] <= 1
        assert names["proton"] <= 4 and names["gamma"] <= 2 and names["pi0"] <= 2
        assert names["pi+"] + names["pi-"] <= 2
        vertex = prims[0].position_cm
        assert all(np.array_equal(p.position_cm, vertex) for p in prims)
        assert (vertex >= gen.VERTEX_MARGIN_CM).all() and (vertex <= layout.BOX_CM - gen.VERTEX_MARGIN_CM).all()
        for p in prims:
            cap = 3000.0 if abs(p.pdg) in (11, 13) else 1000.0
            assert gen.MIN_KINETIC_MEV <= p.kinetic_mev <= cap
            assert np.linalg.norm(p.direction) == pytest.approx(1.0)
    assert set(sizes) == set(range(2, 8))


def test_isotropic_directions_are_uniform() -> None:
    rng = np.random.default_rng(1)
    d = np.array([gen.isotropic(rng) for _ in range(20000)])
    # mean of a uniform unit vector is 0 (std of the mean ~ 0.004) and <cos^2> = 1/3
    assert np.abs(d.mean(axis=0)).max() < 0.02
    assert (d[:, 2] ** 2).mean() == pytest.approx(1 / 3, abs=0.01)


def test_rain_starts_uniformly_inside_the_box() -> None:
    # Reference generator (MultiPartRain): each particle starts at a uniform point of the box.
    rng = np.random.default_rng(2)
    starts = []
    for _ in range(500):
        prims = gen.multi_particle_rain(rng, first_interaction=1)
        assert 3 <= len(prims) <= 5
        assert [p.interaction for p in prims] == list(range(1, len(prims) + 1))
        starts += [p.position_cm for p in prims]
    pos = np.array(starts) / layout.BOX_CM
    assert ((pos > 0) & (pos < 1)).all()
    # uniform: mean 1/2 and variance 1/12 per axis (n ~ 2000: std of the mean ~ 0.006)
    np.testing.assert_allclose(pos.mean(axis=0), 0.5, atol=0.03)
    np.testing.assert_allclose(pos.var(axis=0), 1 / 12, atol=0.01)
    assert len({tuple(p) for p in starts}) == len(starts)  # every particle its own start


def test_gun_parsing_and_errors() -> None:
    assert gen.parse_gun("mu-:500") == ("mu-", 500.0)
    assert gen.parse_gun("p:100")[0] == "proton"
    with pytest.raises(DetfmError, match="unknown particle 'muon'"):
        gen.parse_gun("muon:500")
    with pytest.raises(DetfmError, match="PARTICLE:KINETIC_MEV"):
        gen.parse_gun("mu-")
    with pytest.raises(DetfmError, match="not a number"):
        gen.parse_gun("mu-:fast")
    with pytest.raises(DetfmError, match="positive"):
        gen.parse_gun("mu-:-3")
    with pytest.raises(DetfmError, match="needs --gun"):
        gen.generate("gun", np.random.default_rng(0))
    prims = gen.particle_gun(np.random.default_rng(0), "e-", 1000.0)
    assert len(prims) == 1 and prims[0].pdg == 11
    np.testing.assert_allclose(prims[0].position_cm, layout.BOX_CM / 2)


def test_generation_is_deterministic() -> None:
    a = gen.generate("mpvmpr", np.random.default_rng(5))
    b = gen.generate("mpvmpr", np.random.default_rng(5))
    assert [(p.pdg, p.kinetic_mev) for p in a] == [(p.pdg, p.kinetic_mev) for p in b]


def test_masses_match_the_pdg_table() -> None:
    """Cross-check our masses against the `particle` package (PDG data), to 1e-6 relative."""
    particle = pytest.importorskip("particle")
    for pdg, sp in BY_PDG.items():
        ref = particle.Particle.from_pdgid(pdg).mass
        assert sp.mass_mev == pytest.approx(ref, rel=1e-6, abs=1e-9), sp.name
    assert species(13).charge == -1

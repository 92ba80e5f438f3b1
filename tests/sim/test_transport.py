"""Transport: fragment table, deposits, bookkeeping, determinism and bad input."""

from __future__ import annotations


import numpy as np
import pytest

from detfm.errors import DetfmError
from detfm.io import layout
from detfm.sim import physics as ph
from detfm.sim.generator import generate
from detfm.sim.particles import ELECTRON_MASS_MEV, MUON_MASS_MEV, PI0_MASS_MEV, PROTON_MASS_MEV
from detfm.sim.transport import BOX_CENTRE_CM, World, transport
from detfm.sim.truth import Primary, Role, TruthEvent

CENTRE = np.full(3, BOX_CENTRE_CM)
UP = np.array([0.0, 0.0, 1.0])


def ledger_residual(ev: TruthEvent) -> float:
    """deposited + escaped + invisible - (primary kinetic + released rest mass): 0 if energy is conserved."""
    m = ev.meta
    return (m["deposited_mev"] + m["escaped_mev"] + m["invisible_mev"]  # type: ignore[operator]
            - m["primary_kinetic_mev"] - m["released_mev"])  # type: ignore[operator]


def path_length_cm(ev: TruthEvent, fragment: int = 0) -> float:
    return float(ev.deposits.dx_cm[ev.deposits.frag == fragment].sum())


def one(pdg: int, kinetic: float, seed: int = 0, world: World = World(), **kw: object) -> TruthEvent:
    return transport([Primary(pdg, kinetic, CENTRE.copy(), UP.copy(), **kw)], np.random.default_rng(seed), world)


# --- World -------------------------------------------------------------------------------
def test_world_default_is_the_detector_box_and_large_is_centred() -> None:
    assert World().lo == (0.0, 0.0, 0.0) and World().hi == (layout.BOX_CM,) * 3
    big = World.large(1000.0)
    assert np.allclose(np.add(big.lo, big.hi) / 2, BOX_CENTRE_CM)
    assert np.allclose(np.subtract(big.hi, big.lo), 1000.0)


@pytest.mark.parametrize(("lo", "hi"), [((0, 0, 0), (1, 1, 0)), ((0, 0, np.nan), (1, 1, 1)), ((0, 0), (1, 1))])
def test_bad_world_is_rejected(lo: tuple, hi: tuple) -> None:
    with pytest.raises(DetfmError, match="World"):
        World(lo, hi)
    with pytest.raises(DetfmError, match="positive size"):
        World.large(-1.0)


# --- Fragment table and deposits ----------------------------------------------------------
def test_muon_fragment_row_is_filled_as_documented() -> None:
    ev = one(13, 500.0, interaction=4, time_ns=10.0)
    f = ev.fragments
    assert f.role[0] == Role.TRACK and f.pid[0] == layout.PID_MUON and f.pdg[0] == 13
    assert f.group[0] == 0 and f.interaction[0] == 4
    assert f.mass_mev[0] == pytest.approx(MUON_MASS_MEV)
    assert f.momentum_gev[0] == pytest.approx(ph.momentum_mev(500.0, MUON_MASS_MEV) / 1000, rel=1e-6)
    np.testing.assert_allclose(f.vertex_cm[0], CENTRE, rtol=1e-6)
    assert f.energy_mev[0] == 500.0
    assert (f.interaction == 4).all() and (f.group == 0).all()
    d = ev.deposits
    assert d.pos_cm.dtype == np.float64 and d.frag.dtype == np.int32
    assert (d.time_ns >= 10.0).all()
    # steps are at most one voxel long, energies non-negative, deposits inside the world
    assert d.dx_cm.max() <= 0.3 + 1e-9 and (d.de_mev >= 0).all()
    assert ((d.pos_cm >= 0) & (d.pos_cm <= layout.BOX_CM)).all()
    # delta rays are separate DELTA electron fragments
    deltas = np.flatnonzero(f.role == Role.DELTA)
    assert len(deltas) > 0 and (f.pdg[deltas] == 11).all() and (f.energy_mev[deltas] >= 1.0).all()


def test_track_steps_shrink_near_the_end_of_range() -> None:
    # Bragg peak resolved: the last centimetre of a stopping proton has steps below 1 mm
    # and a higher dE/dx than its first centimetre.
    ev = next(e for e in (one(2212, 150.0, seed=s, world=World.large()) for s in range(20))
              if e.meta["hadronic_interactions"] == 0)
    track = ev.deposits.frag == 0
    dx, de = ev.deposits.dx_cm[track], ev.deposits.de_mev[track]
    path = np.cumsum(dx)
    end = path > path[-1] - 1.0
    assert dx[end].min() < 0.1
    assert de[end].sum() > 3 * de[path < 1.0].sum()


def test_groups_and_interactions_follow_the_input_list() -> None:
    prims = [Primary(2212, 200.0, CENTRE.copy(), UP.copy(), interaction=0),
             Primary(22, 300.0, CENTRE.copy(), -UP, interaction=0),
             Primary(-13, 2000.0, np.array([0.0, 50.0, 50.0]), np.array([1.0, 0, 0]), interaction=3)]
    ev = transport(prims, np.random.default_rng(1))
    f = ev.fragments
    assert list(f.role[:3]) == [Role.TRACK, Role.SHOWER, Role.TRACK]   # primaries first, in order
    assert list(f.pid[:3]) == [layout.PID_PROTON, layout.PID_PHOTON, layout.PID_MUON]
    assert set(f.group.tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(f.interaction, np.where(f.group == 2, 3, 0))
    assert ev.primaries == prims


def test_empty_input_gives_an_empty_event() -> None:
    ev = transport([], np.random.default_rng(0))
    assert len(ev.deposits) == 0 and len(ev.fragments) == 0
    assert ev.deposits.pos_cm.shape == (0, 3) and ev.fragments.vertex_cm.shape == (0, 3)


def test_a_primary_outside_the_world_escapes_at_once() -> None:
    ev = transport([Primary(13, 100.0, np.array([-5.0, 10, 10]), UP.copy())], np.random.default_rng(0))
    assert len(ev.deposits) == 0 and ev.meta["escaped_mev"] == 100.0


# --- Energy bookkeeping ---------------------------------------------------------------------
def test_energy_ledger_closes_exactly_for_the_default_mix() -> None:
    rng = np.random.default_rng(5)
    for _ in range(15):
        ev = transport(generate("mpvmpr", rng), rng)
        assert abs(ledger_residual(ev)) < 1e-9 * max(1.0, ev.meta["primary_kinetic_mev"])  # type: ignore[arg-type]
        assert ev.deposits.de_mev.sum() == pytest.approx(ev.meta["deposited_mev"], rel=1e-12)


def test_contained_electron_shower_deposits_its_energy() -> None:
    # 1 GeV e- from the box centre in a 40 m argon world: deposited energy = 1 GeV
    # + rest-mass energy released (annihilation minus pair creation) - escaping (none);
    # that is within 2 % of 1 GeV. In the 2.3 m box the rest escapes (ledger exact).
    ev = one(11, 1000.0, seed=3, world=World.large())
    assert ev.meta["invisible_mev"] == 0.0 and ev.meta["escaped_mev"] == 0.0
    assert ev.deposits.de_mev.sum() == pytest.approx(1000.0 + ev.meta["released_mev"], rel=1e-9)
    assert ev.deposits.de_mev.sum() == pytest.approx(1000.0, rel=0.02)
    box = one(11, 1000.0, seed=3)
    assert box.meta["deposited_mev"] + box.meta["escaped_mev"] == pytest.approx(
        1000.0 + box.meta["released_mev"], rel=1e-9)
    assert 0.5 < box.meta["deposited_mev"] / 1000.0 < 1.0


def test_a_20_gev_muon_crosses_the_box_at_minimum_ionisation() -> None:
    ev = transport([Primary(13, 20_000.0, np.array([115.2, 115.2, 0.0]), UP.copy())], np.random.default_rng(2))
    assert ev.meta["escaped_mev"] > 19_000.0
    track = ev.deposits.frag == 0
    # restricted loss on the track (no delta rays above 1 MeV) at ~ 2 MeV/cm over 230 cm
    assert 1.5 < ev.deposits.de_mev[track].sum() / 230.4 < 2.3


# --- Decays and captures ----------------------------------------------------------------------
def test_stopped_mu_plus_gives_a_delayed_michel_positron() -> None:
    times = []
    for seed in range(300):
        ev = one(-13, 0.0, seed=seed)
        f = ev.fragments
        michel = np.flatnonzero(f.role == Role.MICHEL)
        assert len(michel) == 1 and f.pdg[michel[0]] == -11 and f.pid[michel[0]] == layout.PID_ELECTRON
        assert f.energy_mev[michel[0]] + ELECTRON_MASS_MEV <= ph.MICHEL_EMAX_MEV + 1e-4
        times.append(ev.deposits.time_ns[ev.deposits.frag == michel[0]].min())
    # exponential decay with tau = 2197 ns: mean of 300 within 4 sigma (4 x 2197 / sqrt(300))
    assert np.mean(times) == pytest.approx(ph.MUON_LIFETIME_NS, abs=4 * ph.MUON_LIFETIME_NS / np.sqrt(300))


def test_pi_plus_at_rest_decays_to_a_4_mev_muon_then_a_michel() -> None:
    ev = one(211, 0.0)
    f = ev.fragments
    muon = np.flatnonzero((f.role == Role.TRACK) & (f.pdg == -13))
    assert len(muon) == 1
    assert f.energy_mev[muon[0]] == pytest.approx(4.12, abs=0.01)       # PHYSICS.md: 4.1 MeV
    assert (f.role == Role.MICHEL).sum() == 1
    # the muon travels ~1-2 mm (PHYSICS.md)
    assert 0.05 < path_length_cm(ev, muon[0]) < 0.3


def test_pi0_decays_into_two_photon_showers_carrying_its_energy() -> None:
    ev = one(111, 500.0, seed=4)
    f = ev.fragments
    # the two photons; SHOWER fragments with a parent are conversion pairs of brem photons
    photons = np.flatnonzero((f.role == Role.SHOWER) & (f.pdg == 22) & (f.parent == -1))
    assert len(photons) == 2 and (f.group[photons] == 0).all()
    assert f.energy_mev[photons].sum() == pytest.approx(500.0 + PI0_MASS_MEV, rel=1e-6)
    assert ev.meta["released_mev"] >= PI0_MASS_MEV - 50  # pi0 mass released, minus pairs made


def test_photons_leave_detached_compton_fragments() -> None:
    # A 1 GeV photon shower: the photon's conversion pair is SHOWER fragment 0; the conversion
    # pairs of brem photons are SHOWER fragments and the Compton and photo-electrons COMPTON
    # fragments, each the child of the fragment whose electron or photon made it, all of the
    # same group, some tens of cm away; every fragment descends from fragment 0.
    ev = one(22, 1000.0, seed=6, world=World.large())
    f = ev.fragments
    comptons = np.flatnonzero(f.role == Role.COMPTON)
    pairs = np.flatnonzero((f.role == Role.SHOWER) & (f.parent >= 0))
    assert f.role[0] == Role.SHOWER and f.parent[0] == -1 and len(comptons) > 10 and len(pairs) > 0
    assert (f.group == 0).all()
    assert (f.parent[comptons] >= 0).all() and (f.parent[pairs] < pairs).all()
    dist = np.linalg.norm(f.vertex_cm[comptons] - CENTRE, axis=1)
    assert dist.max() > 30.0
    # follow every fragment's parents up to its root (LOW_ENERGY buckets have none)
    root = np.where(f.parent >= 0, f.parent, np.arange(len(f)))
    for _ in range(64):
        root = np.where(f.parent[root] >= 0, f.parent[root], root)
    assert set(root[f.role != Role.LOW_ENERGY].tolist()) == {0}
    shower = ev.deposits.de_mev[np.isin(ev.deposits.frag, np.flatnonzero(f.role == Role.SHOWER))].sum()
    assert shower > 0.5 * ev.deposits.de_mev.sum()


def test_without_delta_rays_the_track_keeps_all_its_energy() -> None:
    with_deltas = one(13, 300.0, seed=8, world=World.large())
    rng = np.random.default_rng(8)
    without = transport([Primary(13, 300.0, CENTRE.copy(), UP.copy())], rng, World.large(), delta_rays=False)
    assert (with_deltas.fragments.role == Role.DELTA).any()
    assert not (without.fragments.role == Role.DELTA).any()
    track = without.deposits.frag == 0
    assert without.deposits.de_mev[track].sum() == pytest.approx(300.0, rel=1e-9)


def test_protons_interact_in_flight_with_the_nuclear_interaction_length(gun) -> None:  # noqa: ANN001
    # Probability that a 300 MeV proton (CSDA range 51 cm) interacts before stopping:
    # 1 - exp(-R / lambda_I), lambda_I = 85.7 cm -> 0.45; binomial 4 sigma with 300 protons.
    events = gun("proton", 300.0, 300, seed=9)
    frac = np.mean([e.meta["hadronic_interactions"] > 0 for e in events])
    p = 1 - np.exp(-ph.csda_range_cm(300.0, PROTON_MASS_MEV) / ph.LIQUID_ARGON.nuclear_interaction_length_cm)
    assert frac == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / 300))
    interacted = next(e for e in events if e.meta["hadronic_interactions"] > 0)
    assert abs(ledger_residual(interacted)) < 1e-9


# --- Determinism and purity --------------------------------------------------------------------
def _arrays(ev: TruthEvent) -> list[np.ndarray]:
    d, f = ev.deposits, ev.fragments
    return [d.pos_cm, d.de_mev, d.dx_cm, d.time_ns, d.frag, f.role, f.pid, f.pdg, f.group, f.interaction,
            f.mass_mev, f.momentum_gev, f.vertex_cm, f.energy_mev]


def test_same_seed_same_event_other_seed_other_event() -> None:
    prims = generate("mpvmpr", np.random.default_rng(10))
    a = transport(prims, np.random.default_rng(11))
    b = transport(prims, np.random.default_rng(11))
    c = transport(prims, np.random.default_rng(12))
    for x, y in zip(_arrays(a), _arrays(b)):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert a.meta == b.meta
    assert len(a.deposits) != len(c.deposits) or not np.array_equal(a.deposits.de_mev, c.deposits.de_mev)


def test_transport_advances_the_generator_and_does_not_touch_its_input() -> None:
    rng = np.random.default_rng(13)
    prims = [Primary(11, 100.0, CENTRE.copy(), np.array([0.0, 0.0, 2.0]))]   # not unit: normalised inside
    before = (prims[0].position_cm.copy(), prims[0].direction.copy())
    first = transport(prims, rng)
    second = transport(prims, rng)
    assert not np.array_equal(first.deposits.de_mev, second.deposits.de_mev)
    np.testing.assert_array_equal(prims[0].position_cm, before[0])
    np.testing.assert_array_equal(prims[0].direction, before[1])


# --- Bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("primary", "match"), [
    (Primary(321, 10.0, CENTRE, UP), "PDG code 321"),
    (Primary(13, float("nan"), CENTRE, UP), "kinetic energy"),
    (Primary(13, -1.0, CENTRE, UP), "kinetic energy"),
    (Primary(13, 10.0, np.array([1.0, 2.0]), UP), "position_cm"),
    (Primary(13, 10.0, CENTRE, np.zeros(3)), "direction"),
    (Primary(13, 10.0, CENTRE, UP, time_ns=float("inf")), "time_ns"),
])
def test_bad_primaries_are_rejected_with_a_clear_message(primary: Primary, match: str) -> None:
    with pytest.raises(DetfmError, match=match):
        transport([primary], np.random.default_rng(0))


def test_bad_rng_world_and_list_items_are_rejected() -> None:
    p = Primary(13, 10.0, CENTRE, UP)
    with pytest.raises(DetfmError, match="Generator"):
        transport([p], 42)  # type: ignore[arg-type]
    with pytest.raises(DetfmError, match="World"):
        transport([p], np.random.default_rng(0), world=(0, 1))  # type: ignore[arg-type]
    with pytest.raises(DetfmError, match="primary 1"):
        transport([p, "mu-"], np.random.default_rng(0))  # type: ignore[list-item]

"""Rare signatures for anomaly studies: their physics, labels, files and determinism."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from detfm.errors import DetfmError
from detfm.io import EventFile, layout, validate_file
from detfm.sim import _kernels, exotic, physics
from detfm.sim.particles import (HSIP_MASS_MEV, HSIP_PDG, LIP_MASS_MEV, LIP_THIRD_PDG, LIP_TWO_THIRDS_PDG,
                                 MUON_MASS_MEV, species)
from detfm.sim.simulate import SimConfig, simulate_to_file, simulate_truth
from detfm.sim.transport import World, transport
from detfm.sim.truth import Primary, Role

START = np.array([layout.BOX_CM / 2, layout.BOX_CM / 2, 0.0])
ALONG_Z = np.array([0.0, 0.0, 1.0])


def _track_steps(pdg: int, kinetic: float, n: int, length_cm: float, seed: int
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(dE, dx, z) of the stepped deposits of the primary track in its first ``length_cm``,
    for ``n`` particles along +z from the middle of a box face (no delta rays: the whole
    collision loss stays on the track)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ev = transport([Primary(pdg, kinetic, START.copy(), ALONG_Z.copy())], rng, World(), delta_rays=False)
        d = ev.deposits
        keep = (d.frag == 0) & (d.dx_cm > 0) & (d.pos_cm[:, 2] < length_cm)
        out.append((d.de_mev[keep], d.dx_cm[keep], d.pos_cm[keep]))
    return out


def _mean_dedx(steps: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> float:
    return sum(float(de.sum()) for de, _, _ in steps) / sum(float(dx.sum()) for _, dx, _ in steps)


@pytest.mark.parametrize("pdg, q", [(LIP_THIRD_PDG, 1 / 3), (LIP_TWO_THIRDS_PDG, 2 / 3)])
def test_fractional_charge_scales_dedx_by_q_squared(pdg: int, q: float) -> None:
    """Bethe with z = q: q^2 times the loss of a unit charge of the same velocity (same mass
    and kinetic energy: a muon). The formula exactly; transport within 3 % (40 tracks of 50 cm,
    measured spread of the ratio 0.3 %)."""
    kind = _kernels.PDG_TO_KIND[pdg]
    assert _kernels.KIND_MASS[kind] == LIP_MASS_MEV == MUON_MASS_MEV
    for t in (50.0, 1000.0, 10000.0):
        ratio = (_kernels.stopping_power(kind, t, physics.LIQUID_ARGON)
                 / _kernels.stopping_power(_kernels.MU_MINUS, t, physics.LIQUID_ARGON))
        assert ratio == pytest.approx(q * q, rel=1e-12)
        assert _kernels.stopping_power(kind, t, physics.LIQUID_ARGON) == pytest.approx(
            physics.bethe_dedx(t, LIP_MASS_MEV, charge=q), rel=1e-9)  # type: ignore[arg-type]
    frac = _mean_dedx(_track_steps(pdg, 1000.0, 40, 50.0, seed=1))
    unit = _mean_dedx(_track_steps(species("mu-").pdg, 1000.0, 40, 50.0, seed=2))
    assert frac / unit == pytest.approx(q * q, rel=0.03)


@pytest.mark.parametrize("beta_gamma", [0.2, 0.3, 0.5])
def test_slow_heavy_particle_follows_bethe_and_is_straight(beta_gamma: float) -> None:
    """dE/dx along the first 3 cm equals Bethe at each step's energy within 3 % (measured:
    within 0.6 %), is several times a MIP, and the track is straight."""
    t0 = exotic.kinetic_from_beta_gamma(beta_gamma, HSIP_MASS_MEV)
    assert physics.beta_gamma(t0, HSIP_MASS_MEV) == pytest.approx(beta_gamma, rel=1e-12)
    steps = _track_steps(HSIP_PDG, t0, 30, 3.0, seed=3)
    measured, expected = 0.0, 0.0
    for de, dx, _ in steps:
        t_mid = t0 - np.concatenate([[0.0], np.cumsum(de)[:-1]]) - de / 2  # no delta rays: T known
        measured += float(de.sum())
        expected += float((np.asarray(physics.bethe_dedx(t_mid, HSIP_MASS_MEV)) * dx).sum())
    assert measured / expected == pytest.approx(1.0, rel=0.03)
    bethe_entry = physics.bethe_dedx(t0, HSIP_MASS_MEV)
    assert bethe_entry / physics.LAR_MIP_DEDX_MEV_CM > 3.0
    # straight: over 30 cm (or its whole range) the deposits stay within a voxel of the entry
    # line, and a particle that stops does so at its CSDA range
    (_, _, pos), = _track_steps(HSIP_PDG, t0, 1, 30.0, seed=4)
    csda = physics.csda_range_cm(t0, HSIP_MASS_MEV)
    assert pos[:, 2].max() == pytest.approx(min(csda, 30.0), rel=0.03)
    assert np.hypot(pos[:, 0] - START[0], pos[:, 1] - START[1]).max() < layout.VOXEL_SIZE_CM


def test_displaced_vertex_daughters_rebuild_the_neutral_parent() -> None:
    """Two tracks from one vertex inside the box: their invariant mass is the K0s or heavy
    neutral lepton mass, and nothing else is made."""
    rng = np.random.default_rng(5)
    seen = set()
    for _ in range(40):
        prims = exotic.displaced_vertex_primaries(rng, interaction=3)
        assert len(prims) == 2 and all(p.interaction == 3 for p in prims)
        np.testing.assert_array_equal(prims[0].position_cm, prims[1].position_cm)
        v = prims[0].position_cm
        assert ((v >= exotic.CENTRAL_MARGIN_CM) & (v <= layout.BOX_CM - exotic.CENTRAL_MARGIN_CM)).all()
        energy, momentum = 0.0, np.zeros(3)
        for p in prims:
            m = species(p.pdg).mass_mev
            e = p.kinetic_mev + m
            energy += e
            momentum += math.sqrt(e * e - m * m) * np.asarray(p.direction)
        mass = math.sqrt(energy**2 - momentum @ momentum)
        parent = next(c for c in exotic.DECAY_CHANNELS if {c[1], c[2]} == {p.pdg for p in prims})
        assert mass == pytest.approx(parent[0], rel=1e-6)
        lo, hi = exotic.PARENT_MOMENTUM_MEV
        assert lo * (1 - 1e-9) <= np.linalg.norm(momentum) <= hi * (1 + 1e-9)
        seen.add(parent[0])
    assert seen == {exotic.K0S_MASS_MEV, exotic.HNL_MASS_MEV}


def test_two_body_decay_at_rest_is_back_to_back() -> None:
    p1, p2 = exotic.two_body_decay(exotic.K0S_MASS_MEV, np.zeros(3), 139.57039, 139.57039,
                                   np.random.default_rng(0))
    np.testing.assert_allclose(p1 + p2, 0.0, atol=1e-9)
    assert np.linalg.norm(p1) == pytest.approx(206.0, abs=0.2)  # PDG: K0s -> pi pi, p* = 206 MeV/c
    with pytest.raises(DetfmError, match="below"):
        exotic.two_body_decay(200.0, np.zeros(3), 139.6, 139.6, np.random.default_rng(0))


def test_crossing_signatures_enter_from_the_box_surface() -> None:
    rng = np.random.default_rng(6)
    for _ in range(50):
        (h,) = exotic.hsip_primaries(rng)
        (f,) = exotic.fractional_primaries(rng)
        for p in (h, f):
            pos = np.asarray(p.position_cm)
            on_face = np.isclose(pos, 0.0, atol=1e-6) | np.isclose(pos, layout.BOX_CM, atol=1e-6)
            assert on_face.any() and ((pos >= 0) & (pos <= layout.BOX_CM)).all()
        assert 0.2 <= physics.beta_gamma(h.kinetic_mev, HSIP_MASS_MEV) <= 0.5
        assert f.pdg in (LIP_THIRD_PDG, LIP_TWO_THIRDS_PDG)
        assert exotic.FRACTIONAL_KINETIC_MEV[0] <= f.kinetic_mev <= exotic.FRACTIONAL_KINETIC_MEV[1]


@pytest.mark.parametrize("anomaly", exotic.ANOMALIES)
def test_injected_event_is_the_normal_event_plus_the_signature(anomaly: str) -> None:
    """The normal part is the exact physics twin; the signature is its own interaction, of
    track fragments with the documented PID."""
    normal_cfg, anomalous_cfg = SimConfig(events=3, seed=7), SimConfig(events=3, seed=7, anomaly=anomaly)
    for i in range(3):
        normal, _ = simulate_truth(normal_cfg, i)
        truth, _ = simulate_truth(anomalous_cfg, i)
        k, f = len(normal.deposits), len(normal.fragments)
        np.testing.assert_array_equal(truth.deposits.pos_cm[:k], normal.deposits.pos_cm)
        np.testing.assert_array_equal(truth.deposits.de_mev[:k], normal.deposits.de_mev)
        np.testing.assert_array_equal(truth.fragments.role[:f], normal.fragments.role)
        assert len(truth.deposits) > k and (truth.deposits.frag[k:] >= f).all()
        groups = truth.meta["anomaly_groups"]
        assert truth.meta["anomaly"] == anomaly and groups == list(range(len(normal.primaries), len(truth.primaries)))
        sig = np.isin(truth.fragments.group, groups)
        assert (np.flatnonzero(sig) >= f).all()
        assert set(truth.fragments.interaction[sig].tolist()) == {max(p.interaction for p in normal.primaries) + 1}
        primaries = truth.fragments.role[sig] == Role.TRACK
        primaries &= np.isin(truth.fragments.pdg[sig], [p.pdg for p in truth.primaries[len(normal.primaries):]])
        pids = set(truth.fragments.pid[sig][primaries].tolist())
        if anomaly == "displaced_vertex":
            assert pids <= {layout.PID_MUON, layout.PID_PION} and pids
        else:
            assert pids == {layout.PID_NONE}
        assert truth.meta["deposited_mev"] == pytest.approx(
            normal.meta["deposited_mev"] + float(truth.deposits.de_mev[k:].sum()), rel=1e-9)


@pytest.mark.parametrize("anomaly", exotic.ANOMALIES)
def test_anomalous_files_validate_and_are_deterministic(anomaly: str, tmp_path: Path) -> None:
    cfg = SimConfig(events=3, seed=7, anomaly=anomaly)
    a = simulate_to_file(cfg, tmp_path / "a.h5", progress=False)
    b = simulate_to_file(cfg, tmp_path / "b.h5", progress=False)
    normal = simulate_to_file(SimConfig(events=3, seed=7), tmp_path / "n.h5", progress=False)
    assert a.content_sha256 == b.content_sha256 != normal.content_sha256
    assert validate_file(tmp_path / "a.h5") == []
    with EventFile(tmp_path / "a.h5") as f:
        assert f.attrs["sim_config"]["anomaly"] == anomaly
        events = [f[i] for i in range(len(f))]
    with EventFile(tmp_path / "n.h5") as f:
        assert "anomaly" not in f.attrs["sim_config"]  # standard files keep their attributes
    clusters = np.concatenate([e.clusters for e in events])
    extra = np.concatenate([e.cluster_extra for e in events])
    assert np.isin(clusters[:, layout.C_SEMANTIC], np.arange(len(layout.SEMANTIC_CLASSES))).all()
    if anomaly == "hsip":  # heavy tracks are recorded: semantic track, pid none, 50 GeV
        heavy = np.isclose(extra[:, 0], HSIP_MASS_MEV)
        assert heavy.sum() == 3
        assert (clusters[heavy, layout.C_SEMANTIC] == layout.TRACK).all()
        assert (clusters[heavy, layout.C_PID] == layout.PID_NONE).all()


def test_unknown_anomaly_is_rejected() -> None:
    with pytest.raises(DetfmError, match="unknown anomaly 'monopole'; choose one of hsip"):
        SimConfig(anomaly="monopole")
    with pytest.raises(DetfmError, match="unknown anomaly"):
        exotic.anomaly_primaries("x", np.random.default_rng(0))
    assert SimConfig(anomaly=None) == SimConfig()

"""Physics validation of the simulated events against published numbers.

Each test states its reference and tolerance. Single particles start at the box centre
in a 40 m liquid-argon world (``World.large``). Tests marked ``slow`` run the full set
(all energies and species); the fast ones keep one point of each kind for CI.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import least_squares
from scipy.special import gammaln

from detfm.sim import physics as ph
from detfm.sim.particles import ELECTRON_MASS_MEV, MUON_MASS_MEV, PROTON_MASS_MEV
from detfm.sim.transport import BOX_CENTRE_CM, World
from detfm.sim.truth import Role, TruthEvent

LAR = ph.LIQUID_ARGON
X0 = LAR.radiation_length_cm
EC = LAR.critical_energy_mev
R_MOLIERE = ph.LAR_MOLIERE_RADIUS_CM   # 9.04 cm


def path_length_cm(ev: TruthEvent, fragment: int = 0) -> float:
    """Path length (sum of step lengths) of a fragment; CSDA range is a path length too."""
    return float(ev.deposits.dx_cm[ev.deposits.frag == fragment].sum())


# ---------------------------------------------------------------------------------------------
# Minimum ionisation
# ---------------------------------------------------------------------------------------------
def test_mip_muon_deposits_2_105_mev_per_cm(gun) -> None:  # noqa: ANN001
    # Reference: PDG liquid argon, minimum ionisation 2.105 MeV/cm. Tolerance 3 %.
    # Muons of p = 400 MeV/c (beta gamma 3.8, at the minimum) along +z; all energy deposited
    # in the slab 0 < z < 30 cm (track + delta rays, which mostly stop nearby) per cm.
    kinetic = np.hypot(400.0, MUON_MASS_MEV) - MUON_MASS_MEV
    length = 30.0
    events = gun("mu-", kinetic, 20, seed=20)
    total = 0.0
    for ev in events:
        z = ev.deposits.pos_cm[:, 2] - BOX_CENTRE_CM
        total += ev.deposits.de_mev[(z > 0) & (z < length)].sum()
    assert total / (length * len(events)) == pytest.approx(ph.LAR_MIP_DEDX_MEV_CM, rel=0.03)


# ---------------------------------------------------------------------------------------------
# Ranges of stopping tracks
# ---------------------------------------------------------------------------------------------
def _median_path(gun, name: str, kinetic: float, n: int, seed: int) -> float:  # noqa: ANN001
    """Median path length of the primary track over events without a nuclear interaction."""
    events = [e for e in gun(name, kinetic, n, seed=seed) if e.meta["hadronic_interactions"] == 0]
    assert len(events) >= 20   # at 500 MeV only exp(-R / lambda_I) = 26 % of protons get to stop
    return float(np.median([path_length_cm(e) for e in events]))


def test_muon_range_matches_csda_fast(gun) -> None:  # noqa: ANN001
    # Reference: CSDA range from the Bethe integral (physics.csda_range_cm, itself within
    # 0.2 % of the PDG muon table). Median path length of 40 stopping 100 MeV muons; 5 %.
    assert _median_path(gun, "mu-", 100.0, 40, seed=21) == pytest.approx(
        ph.csda_range_cm(100.0, MUON_MASS_MEV), rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kinetic", [50.0, 100.0, 300.0, 1000.0])
def test_muon_range_matches_csda(gun, kinetic: float) -> None:  # noqa: ANN001
    # Median path length of 120 stopping muons vs CSDA range; 5 %.
    assert _median_path(gun, "mu+", kinetic, 120, seed=22) == pytest.approx(
        ph.csda_range_cm(kinetic, MUON_MASS_MEV), rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("kinetic", [50.0, 100.0, 300.0, 500.0])
def test_proton_range_matches_csda(gun, kinetic: float) -> None:  # noqa: ANN001
    # Median path length of protons that did not interact (lambda_I = 85.7 cm removes up to
    # 74 % at 500 MeV) vs CSDA range; 5 %.
    assert _median_path(gun, "proton", kinetic, 200, seed=23) == pytest.approx(
        ph.csda_range_cm(kinetic, PROTON_MASS_MEV), rel=0.05)


# ---------------------------------------------------------------------------------------------
# Multiple scattering
# ---------------------------------------------------------------------------------------------
def test_lateral_displacement_follows_highland(gun) -> None:  # noqa: ANN001
    # Reference: PDG eq. 34.15-34.16, projected lateral displacement after a path x:
    # y_rms = theta0 x / sqrt(3), Highland theta0 (accurate to 11 %). 1 GeV/c muons over
    # x = X0 = 14 cm; 600 tracks (statistical error 3 %); tolerance 10 %.
    p = 1000.0
    kinetic = np.hypot(p, MUON_MASS_MEV) - MUON_MASS_MEV
    world = World((BOX_CENTRE_CM - 20,) * 3, (BOX_CENTRE_CM + 20,) * 3)
    y = []
    for ev in gun("mu-", kinetic, 600, seed=24, world=world):
        track = ev.deposits.frag == 0
        path = np.cumsum(ev.deposits.dx_cm[track])
        pos = ev.deposits.pos_cm[track]
        i = np.searchsorted(path, X0)
        y.append(np.interp(X0, path[i - 1:i + 1] - 0.5 * ev.deposits.dx_cm[track][i - 1:i + 1],
                           pos[i - 1:i + 1, 0]) - BOX_CENTRE_CM)
    beta = p / np.hypot(p, MUON_MASS_MEV)
    expected = ph.highland_theta0(p, beta, X0) * X0 / np.sqrt(3)
    assert np.sqrt(np.mean(np.square(y))) == pytest.approx(expected, rel=0.10)


# ---------------------------------------------------------------------------------------------
# Muon decay
# ---------------------------------------------------------------------------------------------
def test_michel_spectrum_from_stopped_muons(gun) -> None:  # noqa: ANN001
    # Reference: Michel spectrum x^2 (3 - 2x), E_max = 52.83 MeV (PDG). Electrons from 600
    # mu+ decaying at rest: no total energy above E_max; KS test p > 0.001.
    energies = []
    for ev in gun("mu+", 0.0, 600, seed=25):
        michel = ev.fragments.role == Role.MICHEL
        assert michel.sum() == 1
        energies.append(ev.fragments.energy_mev[michel][0] + ELECTRON_MASS_MEV)
    e = np.asarray(energies, dtype=np.float64)
    assert e.max() <= ph.MICHEL_EMAX_MEV + 1e-4
    assert stats.kstest(np.clip(e / ph.MICHEL_EMAX_MEV, 0, 1), ph.michel_cdf).pvalue > 1e-3


def test_michel_fraction_of_stopped_muons(gun) -> None:  # noqa: ANN001
    # Reference (PHYSICS.md): a stopped mu+ always decays; a stopped mu- in argon gives a
    # Michel electron in tau_Ar / tau_free = 0.54 / 2.197 = 24.6 % of cases (~25 %).
    # Tolerance: 4 binomial standard deviations for 800 mu-.
    n = 800
    frac = np.mean([(e.fragments.role == Role.MICHEL).sum() for e in gun("mu-", 5.0, n, seed=26)])
    p = ph.MUON_MINUS_AR_DECAY_FRACTION
    assert frac == pytest.approx(p, abs=4 * np.sqrt(p * (1 - p) / n))
    assert all((e.fragments.role == Role.MICHEL).sum() == 1 for e in gun("mu+", 5.0, 200, seed=27))


# ---------------------------------------------------------------------------------------------
# Electromagnetic showers
# ---------------------------------------------------------------------------------------------
BIN_X0 = 0.25


def _shower_arrays(events: list[TruthEvent]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Depth t (X0) along +z, radius r (cm) from the axis, energy of every deposit."""
    pos = np.concatenate([e.deposits.pos_cm for e in events]) - BOX_CENTRE_CM
    w = np.concatenate([e.deposits.de_mev for e in events])
    return pos[:, 2] / X0, np.hypot(pos[:, 0], pos[:, 1]), w


def fit_tmax(t: np.ndarray, w: np.ndarray) -> float:
    """Depth of the maximum (X0) of the gamma function b (bt)^(a-1) e^(-bt) / Gamma(a) fitted
    (least squares) to the mean longitudinal profile in 0.25 X0 bins (PDG eq. 34.35)."""
    profile, edges = np.histogram(t, bins=np.arange(0.0, 25.0 + BIN_X0, BIN_X0), weights=w)
    centre = 0.5 * (edges[1:] + edges[:-1])
    profile = profile / (w.sum() * BIN_X0)

    def residual(par: np.ndarray) -> np.ndarray:
        a, b = par
        return np.exp(np.log(b) + (a - 1) * np.log(b * centre) - b * centre - gammaln(a)) - profile

    a, b = least_squares(residual, x0=[3.0, 0.5], bounds=([1.01, 0.05], [50.0, 5.0])).x
    return (a - 1) / b


def radius_containing(r: np.ndarray, w: np.ndarray, fraction: float) -> float:
    order = np.argsort(r)
    cum = np.cumsum(w[order])
    return float(r[order][np.searchsorted(cum, fraction * cum[-1])])


def grindhammer_peters_containment(energy_mev: float, z: float = 18.0) -> tuple[float, float]:
    """(r90 in cm, fraction within 9.04 cm) of the mean shower in a homogeneous medium.

    G. Grindhammer, S. Peters, hep-ex/0001020 (Z-dependent fit to detailed simulations;
    parameters as in Geant4's GFlash, GVFlashHomoShowerTuning). Radii in their Moliere
    radius X0 * 21 MeV / Ec with Ec = 2.66 (X0 Z / A)^1.1 MeV; E in GeV.
    """
    ec = 2.66 * (ph.LAR_RADIATION_LENGTH_G_CM2 * z / LAR.a_g_mol) ** 1.1
    rm = X0 * 21.0 / ec
    e_gev, y = energy_mev / 1000.0, energy_mev / ec
    tmax = np.log(y) - 0.812
    alpha = 0.81 + (0.458 + 2.26 / z) * np.log(y)
    beta = (alpha - 1) / tmax
    t = np.linspace(0.005, 40.0, 8000)
    weight = np.exp((alpha - 1) * np.log(beta * t) - beta * t)
    weight /= weight.sum()
    tau = t / tmax
    r_core = 0.0251 + 0.00319 * np.log(e_gev) + (0.1162 - 0.000381 * z) * tau
    r_tail = (0.659 - 0.00309 * z) * (np.exp(-2.59 * (tau - 0.645))
                                      + np.exp((0.3585 + 0.0412 * np.log(e_gev)) * (tau - 0.645)))
    q = (0.401 + 0.00187 * z - tau) / (1.313 - 0.0686 * np.log(e_gev))
    p = np.clip((2.632 - 0.00094 * z) * np.exp(q - np.exp(q)), 0.0, 1.0)

    def contained(r_cm: float) -> float:
        r = r_cm / rm
        return float((weight * (p * r * r / (r * r + r_core**2) + (1 - p) * r * r / (r * r + r_tail**2))).sum())

    grid = np.linspace(0.1, 80.0, 4000)
    f = np.array([contained(r) for r in grid])
    return float(grid[np.searchsorted(f, 0.9)]), contained(R_MOLIERE)


def check_shower(gun, name: str, energy: float, n: int, seed: int) -> dict[str, float]:  # noqa: ANN001
    """Simulate ``n`` showers and check t_max, lateral containment and energy (see callers)."""
    events = gun(name, energy, n, seed=seed)
    t, r, w = _shower_arrays(events)
    c = -0.5 if name.startswith("e") else 0.5
    measured = {
        "tmax": fit_tmax(t, w), "tmax_pdg": np.log(energy / EC) + c,
        "r90": radius_containing(r, w, 0.9), "in_rm": float(w[r < R_MOLIERE].sum() / w.sum()),
        "deposited": float(np.mean([e.deposits.de_mev.sum() for e in events])),
    }
    measured["r90_gp"], measured["in_rm_gp"] = grindhammer_peters_containment(energy)
    # Longitudinal: t_max = ln(E/Ec) + C (PDG eq. 34.36, C = -0.5 e, +0.5 gamma); +-1 X0.
    assert measured["tmax"] == pytest.approx(measured["tmax_pdg"], abs=1.0)
    # Lateral: the 90 % containment radius about the axis. PDG's rule of thumb (90 % within
    # R_M = 9.04 cm) is material-independent; the Z-dependent fit of Grindhammer & Peters
    # gives 1.8-2.1 R_M for argon, whose low Z lets MeV photons fly far in units of R_M
    # (the photon mean free path at its maximum, ~30 cm, is 3.3 R_M in argon, 1.3 R_M in
    # lead). We compare with that fit, 30 % (we measure 10-20 % narrower), require the
    # radius within 1-2.5 R_M and the fraction inside R_M within 0.07 of the fit's.
    assert measured["r90"] == pytest.approx(measured["r90_gp"], rel=0.30)
    assert R_MOLIERE < measured["r90"] < 2.5 * R_MOLIERE
    assert measured["in_rm"] == pytest.approx(measured["in_rm_gp"], abs=0.07)
    # Energy: contained (40 m world): deposited = E + rest mass released, within 2 % of E.
    assert measured["deposited"] == pytest.approx(energy, rel=0.02)
    return measured


def test_electron_shower_1gev_fast(gun) -> None:  # noqa: ANN001
    check_shower(gun, "e-", 1000.0, 20, seed=30)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["e-", "gamma"])
@pytest.mark.parametrize("energy", [500.0, 1000.0, 2000.0])
def test_showers(gun, name: str, energy: float) -> None:  # noqa: ANN001
    check_shower(gun, name, energy, 80, seed=31)


def test_showers_branch_and_leave_detached_blips(gun) -> None:  # noqa: ANN001
    # Not a smooth blob: a 1 GeV shower has many separate e+- tracks (pair conversions
    # downstream of the start) and Compton blips tens of cm away; still O(1e3-1e4) deposits.
    ev = gun("gamma", 1000.0, 1, seed=32)[0]
    f = ev.fragments
    comptons = f.role == Role.COMPTON
    assert comptons.sum() > 20
    far = np.linalg.norm(f.vertex_cm[comptons] - BOX_CENTRE_CM, axis=1)
    assert np.median(far) > 15.0
    assert 1000 < len(ev.deposits) < 10_000

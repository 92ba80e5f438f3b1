"""Physics constants and formulas of the transport stage (liquid argon).

Everything here is plain numpy and vectorised over arrays, written to read like the
textbook: the PDG Review of Particle Physics, "Passage of particles through matter"
(PDG RPP 2024, ch. 34) and "Atomic and nuclear properties of materials" (liquid argon).
Tests validate these formulas against published numbers, and the numba transport
kernels (:mod:`detfm.sim._kernels`) carry scalar copies of the same formulas that the
tests compare with these references.

Material constants travel to the kernels as a :class:`Medium` (a NamedTuple of floats),
an argument rather than a module global, so a changed value reaches the compiled kernels
at once. The few universal constants the kernels import from here (K, lifetimes, Michel
end point...) are frozen into numba's on-disk cache: after editing one, delete
``src/detfm/sim/__pycache__`` (see :mod:`detfm.sim._kernels`).

The random samplers at the bottom (Michel energies, per-step energy loss) call the very
kernel code transport uses, so their tests validate what the simulator does.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from detfm.errors import DetfmError
from detfm.sim.particles import ELECTRON_MASS_MEV, MUON_MASS_MEV, PION_MASS_MEV

# ---------------------------------------------------------------------------------------
# Fundamental constants (PDG RPP 2024, "Physical constants").
# ---------------------------------------------------------------------------------------
K_BETHE = 0.307075          # MeV mol^-1 cm^2, 4 pi N_A r_e^2 m_e c^2 (PDG ch. 34, Table 34.1)
AVOGADRO = 6.02214076e23    # 1/mol
ELECTRON_RADIUS_CM = 2.8179403262e-13
SPEED_OF_LIGHT_CM_NS = 29.9792458
BARN_CM2 = 1e-24
HIGHLAND_MEV = 13.6         # PDG eq. 34.15 (Highland, Lynch & Dahl)
HIGHLAND_LOG = 0.038
LANDAU_J = 0.200            # PDG eq. 34.12 (most probable loss)
SCALE_ENERGY_ES_MEV = 21.2052  # E_s = m_e c^2 sqrt(4 pi / alpha), PDG eq. 34.37 (Moliere radius)


class Medium(NamedTuple):
    """Material constants handed to the transport kernels (all floats, CGS + MeV)."""

    density_g_cm3: float
    z: float
    a_g_mol: float
    z_over_a: float
    mean_excitation_mev: float
    sternheimer_cbar: float
    sternheimer_x0: float
    sternheimer_x1: float
    sternheimer_a: float
    sternheimer_k: float
    sternheimer_delta0: float
    radiation_length_cm: float
    critical_energy_mev: float
    nuclear_interaction_length_cm: float


# PDG "Atomic and nuclear properties of materials", liquid argon (Ar, Z = 18):
# rho = 1.396 g/cm^3, Z/A = 0.45059, I = 188.0 eV, Sternheimer (C-bar 5.2146, x0 0.2000,
# x1 3.0000, a 0.19559, k 3.0000, delta0 0), X0 = 19.55 g/cm^2, E_c(e-) = 32.84 MeV,
# lambda_I = 119.7 g/cm^2. (A 2022 evaluation prefers I = 197 eV for the liquid; we keep
# the PDG table value so that the MIP dE/dx reproduces the tabulated 2.105 MeV/cm.)
LAR_DENSITY_G_CM3 = 1.396
LAR_RADIATION_LENGTH_G_CM2 = 19.55
LAR_NUCLEAR_INTERACTION_LENGTH_G_CM2 = 119.7
LIQUID_ARGON = Medium(
    density_g_cm3=LAR_DENSITY_G_CM3,
    z=18.0,
    a_g_mol=39.948,
    z_over_a=0.45059,
    mean_excitation_mev=188.0e-6,
    sternheimer_cbar=5.2146,
    sternheimer_x0=0.2000,
    sternheimer_x1=3.0000,
    sternheimer_a=0.19559,
    sternheimer_k=3.0000,
    sternheimer_delta0=0.0,
    radiation_length_cm=LAR_RADIATION_LENGTH_G_CM2 / LAR_DENSITY_G_CM3,        # 14.0 cm
    critical_energy_mev=32.84,
    nuclear_interaction_length_cm=LAR_NUCLEAR_INTERACTION_LENGTH_G_CM2 / LAR_DENSITY_G_CM3,  # 85.7 cm
)
# PDG liquid argon table: minimum ionisation 1.508 MeV cm^2/g -> 2.105 MeV/cm.
LAR_MIP_DEDX_MEV_CM = 2.105
# Moliere radius R_M = X0 E_s / E_c (PDG eq. 34.37): 9.04 cm in liquid argon.
LAR_MOLIERE_RADIUS_CM = LIQUID_ARGON.radiation_length_cm * SCALE_ENERGY_ES_MEV / LIQUID_ARGON.critical_energy_mev

# ---------------------------------------------------------------------------------------
# Decays at rest (PDG particle listings; PHYSICS.md).
# ---------------------------------------------------------------------------------------
MUON_LIFETIME_NS = 2196.9811          # PDG: tau_mu = 2.1969811 us
PION_LIFETIME_NS = 26.033             # PDG: tau_pi+- = 26.033 ns
# mu- stopped in argon: lifetime 0.54 us (capture ~1.4e6/s against free decay 4.55e5/s,
# PHYSICS.md; Suzuki, Measday & Roalsvig, PRC 35 (1987) 2212 measure 537 ns). Whether it
# decays or is captured is decided with the ratio of rates: P(decay) = tau_Ar / tau_free.
MUON_MINUS_AR_LIFETIME_NS = 540.0
MUON_MINUS_AR_DECAY_FRACTION = MUON_MINUS_AR_LIFETIME_NS / MUON_LIFETIME_NS   # 0.246
# Michel spectrum end point (m_mu^2 + m_e^2) / (2 m_mu) = 52.83 MeV (PDG muon decay review).
MICHEL_EMAX_MEV = (MUON_MASS_MEV**2 + ELECTRON_MASS_MEV**2) / (2 * MUON_MASS_MEV)
# pi+ -> mu+ nu at rest: two-body kinetic energy of the muon, 4.12 MeV.
PION_DECAY_MUON_KINETIC_MEV = (PION_MASS_MEV - MUON_MASS_MEV) ** 2 / (2 * PION_MASS_MEV)

# ---------------------------------------------------------------------------------------
# Photon cross sections of argon: NIST XCOM (M. J. Berger, J. H. Hubbell et al., NIST
# Standard Reference Database 8), barns per atom. Columns: photon energy (MeV),
# incoherent (Compton) scattering, photoelectric absorption, pair production (nuclear +
# electron field). Coherent scattering is left out: it neither deposits energy nor
# changes a photon's direction noticeably at these energies.
# ---------------------------------------------------------------------------------------
XCOM_ARGON = np.array([
    (0.01, 6.161, 4134, 0), (0.015, 7.33, 1278, 0), (0.02, 8.048, 544.4, 0),
    (0.03, 8.727, 159.4, 0), (0.04, 8.961, 65.73, 0), (0.05, 9.013, 32.81, 0),
    (0.06, 8.975, 18.53, 0), (0.08, 8.767, 7.479, 0), (0.1, 8.493, 3.691, 0),
    (0.15, 7.8, 1.024, 0), (0.2, 7.209, 0.4166, 0), (0.3, 6.314, 0.1215, 0),
    (0.4, 5.674, 0.05293, 0), (0.5, 5.189, 0.02882, 0), (0.6, 4.805, 0.01805, 0),
    (0.8, 4.225, 0.009158, 0), (1, 3.801, 0.005696, 0), (1.022, 3.761, 0.005389, 0),
    (1.25, 3.4, 0.003651, 0.002826), (1.5, 3.09, 0.002639, 0.01507), (2, 2.638, 0.001639, 0.0588),
    (3, 2.076, 0.0008991, 0.1665), (4, 1.731, 0.0006101, 0.27), (5, 1.495, 0.000459, 0.3627),
    (6, 1.322, 0.0003669, 0.4462), (8, 1.081, 0.000261, 0.5882), (10, 0.9208, 0.0002022, 0.7049),
    (15, 0.6815, 0.000129, 0.9226), (20, 0.547, 9.463e-05, 1.08), (30, 0.3982, 6.167e-05, 1.301),
    (40, 0.3164, 4.573e-05, 1.454), (50, 0.2642, 3.633e-05, 1.568), (60, 0.2276, 3.014e-05, 1.657),
    (80, 0.1795, 2.247e-05, 1.791), (100, 0.149, 1.791e-05, 1.887), (150, 0.1061, 1.189e-05, 2.043),
    (200, 0.08318, 8.894e-06, 2.139), (300, 0.05896, 5.915e-06, 2.253), (500, 0.03822, 3.542e-06, 2.364),
    (1000, 0.02103, 1.769e-06, 2.467), (2000, 0.01137, 8.837e-07, 2.53), (5000, 0.004988, 3.533e-07, 2.576),
    (10000, 0.00266, 1.766e-07, 2.594), (100000, 0.0003214, 1.766e-08, 2.615),
])
PAIR_THRESHOLD_MEV = 2 * ELECTRON_MASS_MEV


# ---------------------------------------------------------------------------------------
# Kinematics.
# ---------------------------------------------------------------------------------------
def _check_mass(mass_mev: float) -> None:
    if not (np.isfinite(mass_mev) and mass_mev > 0):
        raise DetfmError(f"mass must be a positive number of MeV, got {mass_mev}")


def _arr(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _out(x: np.ndarray, like: np.ndarray | float) -> np.ndarray | float:
    """Return a float for scalar input, an array otherwise."""
    return float(x) if np.ndim(like) == 0 else x


def beta_gamma(kinetic_mev: np.ndarray | float, mass_mev: float) -> np.ndarray | float:
    """p / (m c) of a particle with this kinetic energy."""
    t = _arr(kinetic_mev)
    return _out(np.sqrt(t * (t + 2 * mass_mev)) / mass_mev, kinetic_mev)


def momentum_mev(kinetic_mev: np.ndarray | float, mass_mev: float) -> np.ndarray | float:
    """Momentum (MeV/c) from kinetic energy."""
    t = _arr(kinetic_mev)
    return _out(np.sqrt(t * (t + 2 * mass_mev)), kinetic_mev)


def density_effect(beta_gamma_: np.ndarray | float, medium: Medium = LIQUID_ARGON) -> np.ndarray | float:
    """Sternheimer density-effect correction delta(beta gamma) (PDG eq. 34.7)."""
    x = np.log10(_arr(beta_gamma_))
    m = medium
    delta = np.where(
        x >= m.sternheimer_x1, 2 * np.log(10) * x - m.sternheimer_cbar,
        np.where(x >= m.sternheimer_x0,
                 2 * np.log(10) * x - m.sternheimer_cbar
                 + m.sternheimer_a * np.abs(m.sternheimer_x1 - x) ** m.sternheimer_k,
                 m.sternheimer_delta0 * 10.0 ** (2 * (x - m.sternheimer_x0))))
    return _out(delta, beta_gamma_)


def max_energy_transfer(kinetic_mev: np.ndarray | float, mass_mev: float) -> np.ndarray | float:
    """W_max, the largest energy a heavy particle gives a free electron (PDG eq. 34.4)."""
    t = _arr(kinetic_mev)
    gamma = 1 + t / mass_mev
    bg2 = t * (t + 2 * mass_mev) / mass_mev**2
    r = ELECTRON_MASS_MEV / mass_mev
    return _out(2 * ELECTRON_MASS_MEV * bg2 / (1 + 2 * gamma * r + r * r), kinetic_mev)


# ---------------------------------------------------------------------------------------
# Stopping powers and ranges.
# ---------------------------------------------------------------------------------------
def bethe_dedx(kinetic_mev: np.ndarray | float, mass_mev: float, charge: int = 1,
               medium: Medium = LIQUID_ARGON) -> np.ndarray | float:
    """Mean stopping power -dE/dx (MeV/cm) of a heavy charged particle: Bethe (PDG eq. 34.5).

    Includes W_max and the Sternheimer density effect; no shell or Barkas corrections,
    so it is good to a few % for beta gamma >= 0.1.
    """
    _check_mass(mass_mev)
    t = _arr(kinetic_mev)
    gamma = 1 + t / mass_mev
    bg2 = t * (t + 2 * mass_mev) / mass_mev**2
    beta2 = bg2 / gamma**2
    wmax = _arr(max_energy_transfer(t, mass_mev))
    delta = _arr(density_effect(np.sqrt(bg2), medium))
    i = medium.mean_excitation_mev
    bracket = 0.5 * np.log(2 * ELECTRON_MASS_MEV * bg2 * wmax / i**2) - beta2 - delta / 2
    k = K_BETHE * charge**2 * medium.z_over_a * medium.density_g_cm3
    return _out(k / beta2 * bracket, kinetic_mev)


def restricted_dedx(kinetic_mev: np.ndarray | float, mass_mev: float, cut_mev: float, charge: int = 1,
                    medium: Medium = LIQUID_ARGON) -> np.ndarray | float:
    """Mean loss (MeV/cm) to collisions that give electrons less than ``cut_mev`` (PDG eq. 34.12).

    Transport produces delta rays above the cut explicitly and applies this restricted
    loss continuously, so that the two add up to :func:`bethe_dedx` on average.
    """
    _check_mass(mass_mev)
    t = _arr(kinetic_mev)
    gamma = 1 + t / mass_mev
    bg2 = t * (t + 2 * mass_mev) / mass_mev**2
    beta2 = bg2 / gamma**2
    wmax = _arr(max_energy_transfer(t, mass_mev))
    tup = np.minimum(cut_mev, wmax)
    delta = _arr(density_effect(np.sqrt(bg2), medium))
    i = medium.mean_excitation_mev
    bracket = (0.5 * np.log(2 * ELECTRON_MASS_MEV * bg2 * tup / i**2)
               - beta2 / 2 * (1 + tup / wmax) - delta / 2)
    k = K_BETHE * charge**2 * medium.z_over_a * medium.density_g_cm3
    return _out(k / beta2 * bracket, kinetic_mev)


def electron_collision_dedx(kinetic_mev: np.ndarray | float, positron: bool = False,
                            medium: Medium = LIQUID_ARGON) -> np.ndarray | float:
    """Collision stopping power (MeV/cm) of electrons or positrons (ICRU Report 37, Rohrlich-Carlson).

    -dE/dx = (K/2)(Z/A) rho / beta^2 [ln(tau^2 (tau + 2) / (2 (I/mc^2)^2)) + F(tau) - delta],
    tau = T / mc^2, with the Moller (e-) or Bhabha (e+) F(tau).
    """
    t = _arr(kinetic_mev)
    tau = t / ELECTRON_MASS_MEV
    gamma = tau + 1
    beta2 = 1 - 1 / gamma**2
    if positron:
        y = 1 / (tau + 2)
        f = 2 * np.log(2) - beta2 / 12 * (23 + 14 * y + 10 * y**2 + 4 * y**3)
    else:
        f = 1 - beta2 + (tau**2 / 8 - (2 * tau + 1) * np.log(2)) / (tau + 1) ** 2
    delta = _arr(density_effect(np.sqrt(tau * (tau + 2)), medium))
    i_rel = medium.mean_excitation_mev / ELECTRON_MASS_MEV
    bracket = np.log(tau**2 * (tau + 2) / (2 * i_rel**2)) + f - delta
    k = 0.5 * K_BETHE * medium.z_over_a * medium.density_g_cm3
    return _out(k / beta2 * bracket, kinetic_mev)


def electron_radiative_dedx(kinetic_mev: np.ndarray | float, medium: Medium = LIQUID_ARGON
                            ) -> np.ndarray | float:
    """Bremsstrahlung loss (MeV/cm) from the complete-screening spectrum (PDG eq. 34.29).

    d sigma / dk ~ (1/k)(4/3 - 4/3 y + y^2), y = k/E, integrated over photon energies
    k <= T: (1/X0)(4/3 T - 2/3 T^2/E + T^3/(3 E^2)), which tends to E / X0 at high energy.
    """
    t = _arr(kinetic_mev)
    e = t + ELECTRON_MASS_MEV
    loss = (4 / 3 * t - 2 / 3 * t**2 / e + t**3 / (3 * e**2)) / medium.radiation_length_cm
    return _out(loss, kinetic_mev)


# Heavy particles are followed down to beta gamma = 0.1 (where Bethe is still good to a
# few %, PDG Fig. 34.1); the rest of the range is taken as R = T / (1.75 S), the
# Bragg-Kleeman power law R ~ T^1.75. Transport (kernels) uses the same rule.
HEAVY_STOP_BETA_GAMMA = 0.1
RANGE_POWER = 1.75


def heavy_stop_kinetic_mev(mass_mev: float) -> float:
    """Kinetic energy below which a heavy particle's remaining range is deposited at once."""
    return mass_mev * (np.sqrt(1 + HEAVY_STOP_BETA_GAMMA**2) - 1)


def csda_range_cm(kinetic_mev: np.ndarray | float, mass_mev: float, charge: int = 1,
                  medium: Medium = LIQUID_ARGON) -> np.ndarray | float:
    """CSDA range (cm, path length) of a heavy charged particle: integral of dT / bethe_dedx.

    Below beta gamma = 0.1 the remaining range is T / (1.75 S) (see RANGE_POWER).
    """
    _check_mass(mass_mev)
    t = _arr(kinetic_mev)
    if not np.isfinite(t).all() or (t < 0).any():
        raise DetfmError("csda_range_cm: kinetic energies must be finite and >= 0 MeV")
    t0 = heavy_stop_kinetic_mev(mass_mev)
    r0 = t0 / (RANGE_POWER * bethe_dedx(t0, mass_mev, charge, medium))
    tmax = max(float(np.max(t, initial=t0)), t0)
    grid = np.geomspace(t0, tmax * (1 + 1e-9), 4000)
    # integrate in ln T: dR = T / S d(ln T), trapezoid, cumulative
    g = grid / _arr(bethe_dedx(grid, mass_mev, charge, medium))
    dl = np.diff(np.log(grid))
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (g[1:] + g[:-1]) * dl)])
    r = np.where(t < t0, r0 * (t / t0) ** RANGE_POWER,
                 np.interp(np.log(np.maximum(t, t0)), np.log(grid), cum) + r0)
    return _out(r, kinetic_mev)


# ---------------------------------------------------------------------------------------
# Fluctuations and scattering.
# ---------------------------------------------------------------------------------------
def landau_xi_mev(kinetic_mev: np.ndarray | float, mass_mev: float, step_cm: float, charge: int = 1,
                  medium: Medium = LIQUID_ARGON) -> np.ndarray | float:
    """Landau's xi = (K/2)(Z/A) z^2 rho x / beta^2 (PDG eq. 34.12)."""
    t = _arr(kinetic_mev)
    gamma = 1 + t / mass_mev
    beta2 = 1 - 1 / gamma**2
    xi = 0.5 * K_BETHE * medium.z_over_a * charge**2 * medium.density_g_cm3 * step_cm / beta2
    return _out(xi, kinetic_mev)


def landau_most_probable_loss(kinetic_mev: np.ndarray | float, mass_mev: float, step_cm: float,
                              charge: int = 1, medium: Medium = LIQUID_ARGON) -> np.ndarray | float:
    """Most probable energy loss (MeV) over ``step_cm`` (Landau-Vavilov-Bichsel, PDG eq. 34.12)."""
    t = _arr(kinetic_mev)
    gamma = 1 + t / mass_mev
    bg2 = t * (t + 2 * mass_mev) / mass_mev**2
    beta2 = bg2 / gamma**2
    xi = _arr(landau_xi_mev(t, mass_mev, step_cm, charge, medium))
    i = medium.mean_excitation_mev
    delta = _arr(density_effect(np.sqrt(bg2), medium))
    mpv = xi * (np.log(2 * ELECTRON_MASS_MEV * bg2 / i) + np.log(xi / i) + LANDAU_J - beta2 - delta)
    return _out(mpv, kinetic_mev)


def highland_theta0(momentum_mev_c: np.ndarray | float, beta: np.ndarray | float, step_cm: float,
                    charge: int = 1, medium: Medium = LIQUID_ARGON) -> np.ndarray | float:
    """RMS projected multiple-scattering angle (rad) after ``step_cm`` (Highland, PDG eq. 34.15)."""
    p = _arr(momentum_mev_c)
    b = _arr(beta)
    x = step_cm / medium.radiation_length_cm
    theta = (HIGHLAND_MEV / (b * p) * abs(charge) * np.sqrt(x)
             * (1 + HIGHLAND_LOG * np.log(x * charge**2 / b**2)))
    return _out(theta, momentum_mev_c)


# ---------------------------------------------------------------------------------------
# Photons.
# ---------------------------------------------------------------------------------------
def klein_nishina_cm2(energy_mev: np.ndarray | float) -> np.ndarray | float:
    """Total Compton cross section per free electron (cm^2), Klein-Nishina."""
    k = _arr(energy_mev) / ELECTRON_MASS_MEV
    l = np.log1p(2 * k)
    sigma = 2 * np.pi * ELECTRON_RADIUS_CM**2 * (
        (1 + k) / k**2 * (2 * (1 + k) / (1 + 2 * k) - l / k) + l / (2 * k) - (1 + 3 * k) / (1 + 2 * k) ** 2)
    return _out(sigma, energy_mev)


def photon_attenuation_per_cm(energy_mev: np.ndarray | float, medium: Medium = LIQUID_ARGON
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Compton, photoelectric, pair) linear attenuation coefficients (1/cm) from XCOM.

    Log-log interpolation of :data:`XCOM_ARGON` (argon, per atom; ``medium`` supplies
    the density and molar mass); pair production is interpolated linearly between its
    threshold (2 m_e) and the first tabulated point.
    """
    e = np.atleast_1d(_arr(energy_mev))
    per_atom_to_cm = BARN_CM2 * AVOGADRO / medium.a_g_mol * medium.density_g_cm3
    table_e = np.log(XCOM_ARGON[:, 0])
    le = np.log(np.clip(e, XCOM_ARGON[0, 0], XCOM_ARGON[-1, 0]))
    compton = np.exp(np.interp(le, table_e, np.log(XCOM_ARGON[:, 1])))
    photo = np.exp(np.interp(le, table_e, np.log(XCOM_ARGON[:, 2])))
    has_pair = XCOM_ARGON[:, 3] > 0
    pair = np.exp(np.interp(le, table_e[has_pair], np.log(XCOM_ARGON[has_pair, 3])))
    e_first = XCOM_ARGON[has_pair, 0][0]
    near = e < e_first
    pair[near] = (XCOM_ARGON[has_pair, 3][0] * np.clip(e[near] - PAIR_THRESHOLD_MEV, 0, None)
                  / (e_first - PAIR_THRESHOLD_MEV))
    return compton * per_atom_to_cm, photo * per_atom_to_cm, pair * per_atom_to_cm


# Photon table for the kernels: attenuation coefficients on a uniform grid in ln E.
PHOTON_TABLE_EMIN_MEV = 1e-3
PHOTON_TABLE_EMAX_MEV = 1e5
PHOTON_TABLE_POINTS = 1601


def photon_table(medium: Medium = LIQUID_ARGON) -> np.ndarray:
    """(N, 4) table for the kernels: energy (MeV), Compton, photoelectric, pair (1/cm).

    Energies are uniform in ln E from EMIN to EMAX; the kernels interpolate linearly.
    """
    e = np.geomspace(PHOTON_TABLE_EMIN_MEV, PHOTON_TABLE_EMAX_MEV, PHOTON_TABLE_POINTS)
    return np.ascontiguousarray(np.column_stack([e, *photon_attenuation_per_cm(e, medium)]))


# ---------------------------------------------------------------------------------------
# Michel spectrum.
# ---------------------------------------------------------------------------------------
def michel_pdf(x: np.ndarray | float) -> np.ndarray | float:
    """Normalised Michel spectrum in x = E / E_max: 2 x^2 (3 - 2x) on [0, 1] (leading order)."""
    xa = _arr(x)
    return _out(np.where((xa >= 0) & (xa <= 1), 2 * xa**2 * (3 - 2 * xa), 0.0), x)


def michel_cdf(x: np.ndarray | float) -> np.ndarray | float:
    """Cumulative Michel spectrum: 2 x^3 - x^4 on [0, 1]."""
    xa = np.clip(_arr(x), 0, 1)
    return _out(2 * xa**3 - xa**4, x)


# ---------------------------------------------------------------------------------------
# Random samplers: thin wrappers around the kernel code transport runs.
# ---------------------------------------------------------------------------------------
def _kernel_state(rng: np.random.Generator) -> np.ndarray:
    from detfm.sim import _kernels

    if not isinstance(rng, np.random.Generator):
        raise DetfmError(f"expected a numpy.random.Generator, got {type(rng).__name__}")
    return _kernels.seed_state(rng)


def sample_michel_energy(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` Michel electron energies (MeV, total energy x E_max), as transport samples them."""
    from detfm.sim import _kernels

    if int(n) != n or n < 0:
        raise DetfmError(f"sample_michel_energy: n must be a whole number >= 0, got {n}")
    return _kernels.sample_michel_many(_kernel_state(rng), int(n)) * MICHEL_EMAX_MEV


def sample_step_loss(rng: np.random.Generator, kinetic_mev: float, mass_mev: float, step_cm: float,
                     n: int, cut_mev: float | None = None, medium: Medium = LIQUID_ARGON) -> np.ndarray:
    """``n`` draws of the energy (MeV) a heavy particle deposits along one step, delta rays excluded.

    Landau-like: collisions giving an electron between 10 keV and the delta-ray cut are
    sampled one by one from the 1/T^2 spectrum (a Poisson number of them), softer ones
    add a Gaussian; the mean equals :func:`restricted_dedx` x step. See
    :func:`detfm.sim._kernels.restricted_loss`.
    """
    from detfm.sim import _kernels

    _check_mass(mass_mev)
    cut = _kernels.DELTA_CUT_MEV if cut_mev is None else float(cut_mev)
    if not (kinetic_mev > 0 and step_cm > 0 and cut > 0) or int(n) != n or n < 0:
        raise DetfmError(f"sample_step_loss: need kinetic_mev > 0, step_cm > 0, cut_mev > 0 and a whole n >= 0; "
                         f"got {kinetic_mev}, {step_cm}, {cut}, {n}")
    return _kernels.sample_restricted_loss_many(_kernel_state(rng), float(kinetic_mev), float(mass_mev),
                                                float(step_cm), cut, int(n), medium)

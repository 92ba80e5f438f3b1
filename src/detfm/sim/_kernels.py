"""Numba kernels of the transport stage: one particle stack, stepped until it is empty.

Read this file top to bottom: random numbers, physics formulas (scalar copies of
:mod:`detfm.sim.physics`, compared with it by the tests), buffers, charged-particle
stepping, photons, decays and nuclear interactions, and the main loop :func:`run`.

The model in one paragraph. Charged particles step through the argon in steps of at
most 3 mm (a fifth of the remaining range for heavy particles, half for electrons, so
the Bragg peak is resolved). Each step deposits the restricted collision loss (Landau-
like fluctuations: collisions between 10 keV and the delta-ray cut sampled one by one)
as a segment (midpoint, length, direction: the response shares it among the voxels it
crosses), emits delta rays above ``DELTA_CUT_MEV`` and, for e+-, bremsstrahlung
photons above ``BREM_CUT_MEV`` as new particles, then deflects the direction by
multiple scattering. Photons fly to their next interaction (photoelectric, Compton or
pair, XCOM cross sections) so that low-energy photons leave detached blips. Particles
end by ranging out (then mu/pi decay or capture, e+ annihilation), by a nuclear
interaction (pi, p; a toy model that conserves energy) or by leaving the world.

Why everything is in one file: numba's on-disk cache (``cache=True``) is invalidated
only when the file defining a kernel changes, not when a function or constant it uses
from another module changes. Material constants therefore arrive as arguments (a
:class:`~detfm.sim.physics.Medium`); the few universal constants imported below from
``physics`` / ``particles`` are frozen into the cache, so after editing them delete
``src/detfm/sim/__pycache__`` (or touch this file).

Randomness: a xoshiro256** generator whose 4-word state is drawn from the caller's
``numpy.random.Generator``; the kernels are therefore a pure function of that state.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from detfm.sim.particles import (ELECTRON_MASS_MEV, HSIP_CHARGE, HSIP_MASS_MEV, HSIP_PDG, LIP_MASS_MEV,
                                 LIP_THIRD_PDG, LIP_TWO_THIRDS_PDG, MUON_MASS_MEV, PI0_MASS_MEV,
                                 PION_MASS_MEV, PROTON_MASS_MEV)
from detfm.sim.physics import (HEAVY_STOP_BETA_GAMMA, HIGHLAND_LOG, HIGHLAND_MEV, K_BETHE, MICHEL_EMAX_MEV,
                               MUON_LIFETIME_NS, MUON_MINUS_AR_DECAY_FRACTION, MUON_MINUS_AR_LIFETIME_NS,
                               PION_DECAY_MUON_KINETIC_MEV, PION_LIFETIME_NS, RANGE_POWER,
                               SPEED_OF_LIGHT_CM_NS)
from detfm.sim.truth import Role

ME = ELECTRON_MASS_MEV
NEUTRON_MASS_MEV = 939.56542052  # PDG

# ---------------------------------------------------------------------------------------
# Particle kinds (rows of the tables below) and roles.
# ---------------------------------------------------------------------------------------
GAMMA, ELECTRON, POSITRON, MU_MINUS, MU_PLUS, PI_PLUS, PI_MINUS, PROTON, PI0, NEUTRON = range(10)
# Exotic kinds, only made on request by detfm.sim.exotic: a slow heavy stable particle and
# muon-mass leptons of charge 1/3 and 2/3. Stable, no nuclear interactions: they step,
# ionise (Bethe with z^2), scatter and stop like any other charged track.
HSIP, LIP_THIRD, LIP_TWO_THIRDS = range(10, 13)
NO_KIND = -1   # fragment kind of the LOW_ENERGY buckets (a mix of particles)
KIND_MASS = np.array([0.0, ME, ME, MUON_MASS_MEV, MUON_MASS_MEV, PION_MASS_MEV, PION_MASS_MEV,
                      PROTON_MASS_MEV, PI0_MASS_MEV, NEUTRON_MASS_MEV, HSIP_MASS_MEV, LIP_MASS_MEV, LIP_MASS_MEV])
KIND_CHARGE = np.array([0.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, 0.0, 0.0, HSIP_CHARGE, -1.0 / 3.0, -2.0 / 3.0])
KIND_PDG = np.array([22, 11, -11, 13, -13, 211, -211, 2212, 111, 2112, HSIP_PDG, LIP_THIRD_PDG, LIP_TWO_THIRDS_PDG])
PDG_TO_KIND = {int(p): k for k, p in enumerate(KIND_PDG)}

ROLE_TRACK, ROLE_SHOWER, ROLE_MICHEL = int(Role.TRACK), int(Role.SHOWER), int(Role.MICHEL)
ROLE_DELTA, ROLE_COMPTON, ROLE_LOW_ENERGY = int(Role.DELTA), int(Role.COMPTON), int(Role.LOW_ENERGY)

# ---------------------------------------------------------------------------------------
# Model parameters (choices of this simulator, not published constants).
# ---------------------------------------------------------------------------------------
DELTA_CUT_MEV = 1.0          # delta rays above this are explicit particles (range ~ 3 mm = 1 voxel)
HARD_COLLISION_MIN_MEV = 0.01  # collisions above this are sampled one by one (fluctuations)
BREM_CUT_MEV = 0.05          # bremsstrahlung photons above this are explicit particles: a softer
                             # photon flies < 1.1 cm (XCOM) and cannot light a recorded (>= 0.05 MeV)
                             # voxel alone; Geant4 makes them down to its keV-scale production cut.
                             # Was 0.5: the 0.05-0.5 MeV photons, which fly 1-9 cm and leave isolated
                             # blips, were deposited on the electron's step.
ELECTRON_CUT_MEV = 0.25      # e+- below this deposit at once (CSDA range ~ 0.7 mm)
PHOTON_CUT_MEV = 0.01        # photons below this deposit at once
STEP_MAX_CM = 0.3            # one voxel
STEP_MIN_CM = 0.01
STEP_FRACTION_HEAVY = 0.2    # step <= this x T / (dE/dx): resolves the Bragg peak
STEP_FRACTION_ELECTRON = 0.5
MAX_THETA0_RAD = 1.0         # Highland is meaningless beyond this; slow electrons random-walk anyway
STEPS_PER_POP = 16           # a track is re-queued after this many steps (bounded buffer growth)
MAX_PER_STEP = 4             # at most this many delta rays / photons per step (means are << 1)

# Nuclear interactions in flight of pi+- and p (toy model; see _hadronic).
P_LEADING_PROTON = 0.5
P_PION_SCATTER = 0.40
P_PION_CHARGE_EXCHANGE = 0.10
LEADING_FRACTION_MIN, LEADING_FRACTION_MAX = 0.3, 0.9
PION_PRODUCTION_MIN_MEV = 400.0
BREAKUP_MEV_PER_PROTON = 150.0
BREAKUP_VISIBLE_MIN, BREAKUP_VISIBLE_MAX = 0.2, 0.6
# Neutrons from nuclear break-up (pi/p interactions in flight, pi- capture): each flies to its
# first interaction (fast-neutron mean free path in argon, sigma_tot ~ 1.5-2 b -> ~30 cm) and
# there knocks out a proton and de-excites the nucleus (one photon), away from the vertex:
# the scattered protons and Compton blips that Geant4 events show around hadronic interactions.
NEUTRON_PATH_CM = 30.0
NEUTRON_MEAN_MEV = 40.0      # mean kinetic energy (exponential): evaporation plus cascade tail
NEUTRON_MIN_MEV = 2.0        # break-up energy below this stays invisible (binding, slow neutrons)
NEUTRON_MAX = 8              # neutrons followed per break-up
NEUTRON_PROTON_MIN, NEUTRON_PROTON_MAX = 0.3, 0.8   # fraction of its energy given to the proton
DEEXCITATION_GAMMAS_MEAN = 1.0
DEEXCITATION_GAMMA_MIN_MEV, DEEXCITATION_GAMMA_MAX_MEV = 0.5, 3.0
PI_CAPTURE_PROTONS_MEAN = 0.7
PI_CAPTURE_PROTON_MEAN_MEV = 15.0
PROTON_STUB_MEV = 10.0       # nuclear-breakup protons below this (range ~1 mm) are LOW_ENERGY
# The heavy slow particle is stepped down to this beta gamma (not HEAVY_STOP_BETA_GAMMA): at
# 0.1 its residual range would put ~250 MeV into one 1.3 cm deposit; at 0.05, 62 MeV in 2 mm.
HSIP_STOP_BETA_GAMMA = 0.05

# Buffer layouts.
# stack rows: kind, T, x, y, z, ux, uy, uz, time, fragment, group, flags, cm to nuclear interaction
S_KIND, S_T, S_X, S_U, S_TIME, S_FRAG, S_GROUP, S_FLAGS, S_LAM = 0, 1, 2, 5, 8, 9, 10, 11, 12
# flags of a photon: FLAG_PARENT_FRAGMENT says its ``fragment`` column is the fragment of the
# electron that radiated it (bremsstrahlung), not a fragment of its own. Geant4 records a brem
# photon as a particle of its own ("eBrem"); Supera merges its conversion pair into it
# (kConversion) and merges that group into the radiating electron's only where they touch.
FLAG_PARENT_FRAGMENT = 1
S_COLS = 13
D_COLS = 10                  # deposits: x, y, z, dE, dx, time, fragment, ux, uy, uz (step direction)
F_COLS = 9                   # fragments: role, kind, group, interaction, T, vx, vy, vz, parent fragment (-1: none)
N_DEP, N_STACK, N_FRAG, N_HADRONIC = 0, 1, 2, 3
L_DEPOSITED, L_ESCAPED, L_INVISIBLE, L_RELEASED = 0, 1, 2, 3
RESERVE_DEP = 2 * STEPS_PER_POP * (MAX_PER_STEP + 2) + 64
RESERVE_STACK = STEPS_PER_POP * 2 * MAX_PER_STEP + 64
RESERVE_FRAG = STEPS_PER_POP * MAX_PER_STEP + 64

C_CM_NS = SPEED_OF_LIGHT_CM_NS
TWO_PI = 2.0 * math.pi


# ---------------------------------------------------------------------------------------
# Random numbers: xoshiro256** (Blackman & Vigna 2018), state = 4 uint64 words.
# ---------------------------------------------------------------------------------------
def seed_state(rng: np.random.Generator) -> np.ndarray:
    """Draw a kernel RNG state from a numpy Generator (advancing it by one draw)."""
    state = rng.integers(0, np.iinfo(np.uint64).max, size=4, dtype=np.uint64, endpoint=True)
    if not state.any():
        state[0] = 1  # the all-zero state is the generator's only fixed point
    return state


@njit(cache=True)
def _rotl(x, k):
    return (x << np.uint64(k)) | (x >> np.uint64(64 - k))


@njit(cache=True)
def _next_u64(s):
    result = _rotl(s[1] * np.uint64(5), 7) * np.uint64(9)
    t = s[1] << np.uint64(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], 45)
    return result


@njit(cache=True)
def uniform(s):
    """Uniform in the open interval (0, 1)."""
    return (np.float64(_next_u64(s) >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def normal(s):
    return math.sqrt(-2.0 * math.log(uniform(s))) * math.cos(TWO_PI * uniform(s))


@njit(cache=True)
def exponential(s):
    return -math.log(uniform(s))


@njit(cache=True)
def poisson(s, mean):
    if mean <= 0.0:
        return 0
    if mean > 30.0:
        return max(0, int(round(mean + math.sqrt(mean) * normal(s))))
    limit = math.exp(-mean)
    k = 0
    p = uniform(s)
    while p > limit:
        k += 1
        p *= uniform(s)
    return k


@njit(cache=True)
def isotropic(s):
    cos_t = 2.0 * uniform(s) - 1.0
    sin_t = math.sqrt(max(0.0, 1.0 - cos_t * cos_t))
    phi = TWO_PI * uniform(s)
    return sin_t * math.cos(phi), sin_t * math.sin(phi), cos_t


@njit(cache=True)
def deflect(ux, uy, uz, cos_t, phi):
    """Unit vector at polar angle acos(cos_t), azimuth phi, around the unit vector u."""
    cos_t = min(1.0, max(-1.0, cos_t))
    sin_t = math.sqrt(1.0 - cos_t * cos_t)
    cp = math.cos(phi)
    sp = math.sin(phi)
    perp = math.sqrt(max(0.0, 1.0 - uz * uz))
    if perp > 1e-8:
        nx = ux * cos_t + sin_t * (ux * uz * cp - uy * sp) / perp
        ny = uy * cos_t + sin_t * (uy * uz * cp + ux * sp) / perp
        nz = uz * cos_t - sin_t * perp * cp
    else:
        sign = 1.0 if uz > 0 else -1.0
        nx = sin_t * cp
        ny = sin_t * sp
        nz = sign * cos_t
    norm = math.sqrt(nx * nx + ny * ny + nz * nz)
    return nx / norm, ny / norm, nz / norm


# ---------------------------------------------------------------------------------------
# Physics formulas (scalar copies of detfm.sim.physics; tests check they agree).
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def density_effect(bg, med):
    x = math.log10(bg)
    if x >= med.sternheimer_x1:
        return 2.0 * math.log(10.0) * x - med.sternheimer_cbar
    if x >= med.sternheimer_x0:
        return (2.0 * math.log(10.0) * x - med.sternheimer_cbar
                + med.sternheimer_a * (med.sternheimer_x1 - x) ** med.sternheimer_k)
    return med.sternheimer_delta0 * 10.0 ** (2.0 * (x - med.sternheimer_x0))


@njit(cache=True)
def max_transfer(kinetic, mass):
    """W_max for a heavy particle (PDG eq. 34.4)."""
    gamma = 1.0 + kinetic / mass
    bg2 = kinetic * (kinetic + 2.0 * mass) / (mass * mass)
    r = ME / mass
    return 2.0 * ME * bg2 / (1.0 + 2.0 * gamma * r + r * r)


@njit(cache=True)
def bethe(kinetic, mass, z2, med):
    """Mean dE/dx (MeV/cm) of a heavy charged particle (Bethe, PDG eq. 34.5)."""
    gamma = 1.0 + kinetic / mass
    bg2 = kinetic * (kinetic + 2.0 * mass) / (mass * mass)
    beta2 = bg2 / (gamma * gamma)
    wmax = max_transfer(kinetic, mass)
    i = med.mean_excitation_mev
    bracket = (0.5 * math.log(2.0 * ME * bg2 * wmax / (i * i)) - beta2
               - 0.5 * density_effect(math.sqrt(bg2), med))
    return K_BETHE * z2 * med.z_over_a * med.density_g_cm3 / beta2 * bracket


@njit(cache=True)
def electron_collision(kinetic, positron, med):
    """Collision dE/dx (MeV/cm) of e- (Moller) or e+ (Bhabha), ICRU 37."""
    tau = kinetic / ME
    gamma = tau + 1.0
    beta2 = 1.0 - 1.0 / (gamma * gamma)
    if positron:
        y = 1.0 / (tau + 2.0)
        f = 2.0 * math.log(2.0) - beta2 / 12.0 * (23.0 + 14.0 * y + 10.0 * y * y + 4.0 * y * y * y)
    else:
        f = 1.0 - beta2 + (tau * tau / 8.0 - (2.0 * tau + 1.0) * math.log(2.0)) / (gamma * gamma)
    i_rel = med.mean_excitation_mev / ME
    bracket = (math.log(tau * tau * (tau + 2.0) / (2.0 * i_rel * i_rel)) + f
               - density_effect(math.sqrt(tau * (tau + 2.0)), med))
    return 0.5 * K_BETHE * med.z_over_a * med.density_g_cm3 / beta2 * bracket


@njit(cache=True)
def electron_radiative(kinetic, med):
    """Bremsstrahlung dE/dx (MeV/cm), complete screening (PDG eq. 34.29)."""
    e = kinetic + ME
    return (4.0 / 3.0 * kinetic - 2.0 / 3.0 * kinetic * kinetic / e
            + kinetic ** 3 / (3.0 * e * e)) / med.radiation_length_cm


@njit(cache=True)
def stopping_power(kind, kinetic, med):
    """Total mean dE/dx (MeV/cm) of a charged particle of this kind."""
    if kind == ELECTRON or kind == POSITRON:
        return electron_collision(kinetic, kind == POSITRON, med) + electron_radiative(kinetic, med)
    q = KIND_CHARGE[kind]
    return bethe(kinetic, KIND_MASS[kind], q * q, med)


@njit(cache=True)
def stop_kinetic(kind):
    """Below this kinetic energy the rest of the range is deposited at once."""
    if kind == ELECTRON or kind == POSITRON:
        return ELECTRON_CUT_MEV
    m = KIND_MASS[kind]
    bg = HSIP_STOP_BETA_GAMMA if kind == HSIP else HEAVY_STOP_BETA_GAMMA
    return m * (math.sqrt(1.0 + bg * bg) - 1.0)


@njit(cache=True)
def residual_range(kind, kinetic, med):
    """Range (cm) below the stopping energy: R0 (T / T0)^1.75 with R0 = T0 / (1.75 S(T0))."""
    t0 = stop_kinetic(kind)
    r0 = t0 / (RANGE_POWER * stopping_power(kind, t0, med))
    return r0 * (max(kinetic, 0.0) / t0) ** RANGE_POWER


@njit(cache=True)
def restricted_loss(s, mean, xi, tup, beta2):
    """Energy (MeV) lost in a step to collisions giving electrons less than ``tup``.

    Landau-like: the Poisson number of collisions above HARD_COLLISION_MIN_MEV (1/T^2
    spectrum, xi (1/T1 - 1/tup) on average) is sampled one by one; the many softer ones
    add a Gaussian around the remaining mean. ``mean`` is the restricted mean loss and
    ``xi`` Landau's xi for the step (PDG eq. 34.12).
    """
    t1 = HARD_COLLISION_MIN_MEV
    if tup > t1:
        n_mean = xi * (1.0 / t1 - 1.0 / tup)
        hard_mean = xi * math.log(tup / t1)
        if n_mean < 30.0:
            hard = 0.0
            for _ in range(poisson(s, n_mean)):
                hard += 1.0 / (1.0 / t1 - uniform(s) * (1.0 / t1 - 1.0 / tup))
        else:
            hard = hard_mean + math.sqrt(xi * (tup - t1)) * normal(s)
        soft = mean - hard_mean + math.sqrt(xi * t1 * (1.0 - 0.5 * beta2)) * normal(s)
    else:
        hard = 0.0
        soft = mean + math.sqrt(xi * tup * (1.0 - 0.5 * beta2)) * normal(s)
    return max(0.0, soft) + max(0.0, hard)


@njit(cache=True)
def sample_delta_energy(s, cut, wmax, b):
    """Delta-ray kinetic energy from 1/T^2 (1 - b T / W_max) on [cut, W_max] (PDG eq. 34.8)."""
    while True:
        t = cut * wmax / (wmax - uniform(s) * (wmax - cut))
        if uniform(s) <= 1.0 - b * t / wmax:
            return t


@njit(cache=True)
def sample_brem_energy(s, kc, kinetic):
    """Photon energy from (1/k)(4/3 - 4/3 y + y^2) on [kc, T], y = k/E (PDG eq. 34.29)."""
    e = kinetic + ME
    log_ratio = math.log(kinetic / kc)
    while True:
        k = kc * math.exp(uniform(s) * log_ratio)
        y = k / e
        if uniform(s) * (4.0 / 3.0) <= 4.0 / 3.0 - 4.0 / 3.0 * y + y * y:
            return k


@njit(cache=True)
def sample_compton(s, energy):
    """(E'/E, cos theta) of a Compton-scattered photon, Klein-Nishina.

    Sample eps = E'/E from (1/eps + eps) on [eps0, 1] as a two-term mixture and accept
    with the remaining factor 1 - eps sin^2(theta) / (1 + eps^2) <= 1.
    """
    k = energy / ME
    eps0 = 1.0 / (1.0 + 2.0 * k)
    a1 = -math.log(eps0)
    a2 = 0.5 * (1.0 - eps0 * eps0)
    while True:
        if uniform(s) * (a1 + a2) < a1:
            eps = math.exp(-a1 * uniform(s))
        else:
            eps = math.sqrt(eps0 * eps0 + (1.0 - eps0 * eps0) * uniform(s))
        one_minus_cos = (1.0 - eps) / (k * eps)
        sin2 = one_minus_cos * (2.0 - one_minus_cos)
        if uniform(s) <= 1.0 - eps * sin2 / (1.0 + eps * eps):
            return eps, 1.0 - one_minus_cos


@njit(cache=True)
def sample_pair_fraction(s):
    """Electron share of E - 2m in a conversion: 1 - 4/3 eps (1 - eps) (complete screening)."""
    while True:
        eps = uniform(s)
        if uniform(s) <= 1.0 - 4.0 / 3.0 * eps * (1.0 - eps):
            return eps


@njit(cache=True)
def sample_michel_x(s):
    """x = E / E_max from the Michel spectrum x^2 (3 - 2x) (rejection, max 1 at x = 1)."""
    while True:
        x = uniform(s)
        if uniform(s) <= x * x * (3.0 - 2.0 * x):
            return x


@njit(cache=True)
def photon_mu(energy, table):
    """(Compton, photoelectric, pair) attenuation (1/cm): linear interpolation on the log grid."""
    n = table.shape[0]
    lmin = math.log(table[0, 0])
    lspan = math.log(table[n - 1, 0]) - lmin
    g = (math.log(energy) - lmin) / lspan * (n - 1)
    g = min(max(g, 0.0), n - 1.000001)
    i = int(g)
    f = g - i
    return ((1 - f) * table[i, 1] + f * table[i + 1, 1], (1 - f) * table[i, 2] + f * table[i + 1, 2],
            (1 - f) * table[i, 3] + f * table[i + 1, 3])


# ---------------------------------------------------------------------------------------
# Buffers. Capacity is reserved by the main loop before each particle is processed, so
# these helpers never reallocate.
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def _reserve(a, used, extra):
    if used + extra <= a.shape[0]:
        return a
    b = np.empty((max(2 * a.shape[0], used + extra), a.shape[1]))
    b[:used] = a[:used]
    return b


@njit(cache=True)
def _deposit(D, n, ledger, x, y, z, de, dx, t, frag):
    """A point-like deposit (no direction)."""
    _deposit_step(D, n, ledger, x, y, z, de, dx, t, frag, 0.0, 0.0, 0.0)


@njit(cache=True)
def _deposit_step(D, n, ledger, x, y, z, de, dx, t, frag, ux, uy, uz):
    """A deposit spread over the segment of length ``dx`` through (x, y, z) along u."""
    i = n[N_DEP]
    D[i, 0] = x
    D[i, 1] = y
    D[i, 2] = z
    D[i, 3] = de
    D[i, 4] = dx
    D[i, 5] = t
    D[i, 6] = frag
    D[i, 7] = ux
    D[i, 8] = uy
    D[i, 9] = uz
    n[N_DEP] = i + 1
    ledger[L_DEPOSITED] += de


@njit(cache=True)
def _push(S, n, kind, kinetic, x, y, z, ux, uy, uz, t, frag, group, flags, lam):
    i = n[N_STACK]
    S[i, S_KIND] = kind
    S[i, S_T] = kinetic
    S[i, S_X] = x
    S[i, S_X + 1] = y
    S[i, S_X + 2] = z
    S[i, S_U] = ux
    S[i, S_U + 1] = uy
    S[i, S_U + 2] = uz
    S[i, S_TIME] = t
    S[i, S_FRAG] = frag
    S[i, S_GROUP] = group
    S[i, S_FLAGS] = flags
    S[i, S_LAM] = lam
    n[N_STACK] = i + 1


@njit(cache=True)
def _new_fragment(F, n, inter, role, kind, group, kinetic, x, y, z):
    i = n[N_FRAG]
    F[i, 0] = role
    F[i, 1] = kind
    F[i, 2] = group
    F[i, 3] = inter[group]
    F[i, 4] = kinetic
    F[i, 5] = x
    F[i, 6] = y
    F[i, 7] = z
    F[i, 8] = -1
    n[N_FRAG] = i + 1
    return i


@njit(cache=True)
def _low_energy_fragment(F, n, inter, lowe, group, x, y, z):
    """The group's bucket for tiny detached deposits (role LOW_ENERGY), made on first use."""
    if lowe[group] < 0:
        lowe[group] = _new_fragment(F, n, inter, ROLE_LOW_ENERGY, NO_KIND, group, 0.0, x, y, z)
    return lowe[group]


@njit(cache=True)
def distance_to_exit(x, y, z, ux, uy, uz, lo, hi):
    """Path length (cm) to leave the world box along u; 0 if already outside."""
    if x < lo[0] or x > hi[0] or y < lo[1] or y > hi[1] or z < lo[2] or z > hi[2]:
        return 0.0
    d = np.inf
    if ux > 0:
        d = min(d, (hi[0] - x) / ux)
    elif ux < 0:
        d = min(d, (lo[0] - x) / ux)
    if uy > 0:
        d = min(d, (hi[1] - y) / uy)
    elif uy < 0:
        d = min(d, (lo[1] - y) / uy)
    if uz > 0:
        d = min(d, (hi[2] - z) / uz)
    elif uz < 0:
        d = min(d, (lo[2] - z) / uz)
    return d


# ---------------------------------------------------------------------------------------
# Emitting secondaries.
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def _emit_photon(S, D, F, n, ledger, inter, lowe, energy, x, y, z, ux, uy, uz, t, frag, group, flags):
    """Queue a photon, or deposit it on the spot below PHOTON_CUT_MEV."""
    if energy < PHOTON_CUT_MEV:
        f = frag if frag >= 0 else _low_energy_fragment(F, n, inter, lowe, group, x, y, z)
        _deposit(D, n, ledger, x, y, z, energy, 0.0, t, f)
    else:
        _push(S, n, GAMMA, energy, x, y, z, ux, uy, uz, t, frag, group, flags, 0.0)


@njit(cache=True)
def _emit_electron(S, F, n, inter, lowe, kind, kinetic, x, y, z, ux, uy, uz, t, frag, group, parent):
    """Queue an e+- made by a photon; ``frag`` < 0 means it starts its own COMPTON fragment
    whose parent is ``parent`` (the photon's fragment, or the radiating electron's; -1: none),
    or, if too soft to travel, joins the group's LOW_ENERGY bucket. Particles below the
    stopping energy are queued too: _track ends them at once."""
    if frag < 0:
        if kinetic <= ELECTRON_CUT_MEV:
            frag = _low_energy_fragment(F, n, inter, lowe, group, x, y, z)
        else:
            frag = _new_fragment(F, n, inter, ROLE_COMPTON, kind, group, kinetic, x, y, z)
            F[frag, 8] = parent   # merges into it where they touch (labels.py)
    _push(S, n, kind, kinetic, x, y, z, ux, uy, uz, t, frag, group, 0, 0.0)


@njit(cache=True)
def _emit_hadron(rs, S, F, n, inter, lowe, kind, kinetic, x, y, z, ux, uy, uz, t, group, nuclear_length):
    """Queue a secondary mu/pi/p as a new TRACK fragment; a stub shorter than a voxel joins
    the LOW_ENERGY bucket (a pi or mu stub still decays or is captured)."""
    stub = max(stop_kinetic(kind), PROTON_STUB_MEV) if kind == PROTON else stop_kinetic(kind)
    if kinetic <= stub:
        frag = _low_energy_fragment(F, n, inter, lowe, group, x, y, z)
    else:
        frag = _new_fragment(F, n, inter, ROLE_TRACK, kind, group, kinetic, x, y, z)
    lam = nuclear_length * exponential(rs) if kind == PI_PLUS or kind == PI_MINUS or kind == PROTON else 0.0
    _push(S, n, kind, kinetic, x, y, z, ux, uy, uz, t, frag, group, 0, lam)


# ---------------------------------------------------------------------------------------
# End of a charged track: deposit the residual range, then decay / capture / annihilate.
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def _end_track(rs, S, D, F, n, ledger, inter, lowe, med, lo, hi, kind, kinetic, x, y, z, ux, uy, uz, t, frag,
               group):
    if kinetic > 0.0:
        r = residual_range(kind, kinetic, med)
        _deposit_step(D, n, ledger, x + 0.5 * r * ux, y + 0.5 * r * uy, z + 0.5 * r * uz, kinetic, r, t, frag,
                      ux, uy, uz)
        x += r * ux
        y += r * uy
        z += r * uz
    if kind == POSITRON:
        # annihilation at rest: two back-to-back 511 keV photons (e+ and an atomic e- vanish)
        ledger[L_RELEASED] += 2.0 * ME
        vx, vy, vz = isotropic(rs)
        _emit_photon(S, D, F, n, ledger, inter, lowe, ME, x, y, z, vx, vy, vz, t, frag, group, 0)
        _emit_photon(S, D, F, n, ledger, inter, lowe, ME, x, y, z, -vx, -vy, -vz, t, frag, group, 0)
    elif kind == MU_PLUS:
        _muon_decay(rs, S, F, n, ledger, inter, POSITRON, x, y, z,
                    t + MUON_LIFETIME_NS * exponential(rs), group)
    elif kind == MU_MINUS:
        t_end = t + MUON_MINUS_AR_LIFETIME_NS * exponential(rs)
        if uniform(rs) < MUON_MINUS_AR_DECAY_FRACTION:
            _muon_decay(rs, S, F, n, ledger, inter, ELECTRON, x, y, z, t_end, group)
        else:
            # nuclear capture mu- p -> n nu: the neutrino and neutrons take most of the
            # energy; the excited nucleus emits a few MeV-scale photons.
            ledger[L_RELEASED] += MUON_MASS_MEV
            budget = _deexcitation_gammas(rs, S, D, F, n, ledger, inter, lowe, MUON_MASS_MEV, x, y, z, t_end, group)
            ledger[L_INVISIBLE] += budget
    elif kind == PI_PLUS:
        # pi+ -> mu+ nu at rest (99.99 %): a 4.1 MeV muon, which then decays too
        t_end = t + PION_LIFETIME_NS * exponential(rs)
        ledger[L_RELEASED] += PION_MASS_MEV - MUON_MASS_MEV
        ledger[L_INVISIBLE] += PION_MASS_MEV - MUON_MASS_MEV - PION_DECAY_MUON_KINETIC_MEV
        vx, vy, vz = isotropic(rs)
        _emit_hadron(rs, S, F, n, inter, lowe, MU_PLUS, PION_DECAY_MUON_KINETIC_MEV,
                     x, y, z, vx, vy, vz, t_end, group, med.nuclear_interaction_length_cm)
    elif kind == PI_MINUS:
        # pi- captured at rest: the nucleus breaks up (mostly neutrons; a few protons, photons)
        ledger[L_RELEASED] += PION_MASS_MEV
        budget = PION_MASS_MEV
        for _ in range(min(poisson(rs, PI_CAPTURE_PROTONS_MEAN), 3)):
            tp = PI_CAPTURE_PROTON_MEAN_MEV * exponential(rs)
            if tp < budget:
                budget -= tp
                vx, vy, vz = isotropic(rs)
                _emit_hadron(rs, S, F, n, inter, lowe, PROTON, tp, x, y, z, vx, vy, vz, t, group,
                             med.nuclear_interaction_length_cm)
        budget = _deexcitation_gammas(rs, S, D, F, n, ledger, inter, lowe, budget, x, y, z, t, group)
        budget = _neutron_activity(rs, S, F, n, ledger, inter, lowe, lo, hi, med.nuclear_interaction_length_cm,
                                   budget, x, y, z, t, group)
        ledger[L_INVISIBLE] += budget


@njit(cache=True)
def _muon_decay(rs, S, F, n, ledger, inter, e_kind, x, y, z, t, group):
    """mu -> e nu nu at rest: a Michel electron (own MICHEL fragment), isotropic."""
    kinetic = max(sample_michel_x(rs) * MICHEL_EMAX_MEV - ME, 0.0)
    ledger[L_RELEASED] += MUON_MASS_MEV - ME
    ledger[L_INVISIBLE] += MUON_MASS_MEV - ME - kinetic
    frag = _new_fragment(F, n, inter, ROLE_MICHEL, e_kind, group, kinetic, x, y, z)
    vx, vy, vz = isotropic(rs)
    _push(S, n, e_kind, kinetic, x, y, z, vx, vy, vz, t, frag, group, 0, 0.0)


@njit(cache=True)
def _deexcitation_gammas(rs, S, D, F, n, ledger, inter, lowe, budget, x, y, z, t, group):
    """A Poisson number of nuclear de-excitation photons; returns the budget left."""
    for _ in range(min(poisson(rs, DEEXCITATION_GAMMAS_MEAN), 3)):
        e = DEEXCITATION_GAMMA_MIN_MEV + (DEEXCITATION_GAMMA_MAX_MEV - DEEXCITATION_GAMMA_MIN_MEV) * uniform(rs)
        if e < budget:
            budget -= e
            vx, vy, vz = isotropic(rs)
            _emit_photon(S, D, F, n, ledger, inter, lowe, e, x, y, z, vx, vy, vz, t, -1, group, 0)
    return budget


@njit(cache=True)
def _neutron_activity(rs, S, F, n, ledger, inter, lowe, lo, hi, nuclear_length, budget, x, y, z, t, group):
    """Neutrons sharing up to ``budget`` MeV; returns the budget left (to stay invisible).

    Each neutron interacts once, ~30 cm away: a knocked-out proton (30-80 % of its energy;
    its own TRACK fragment, or LOW_ENERGY if a stub) and a de-excitation photon; the rest
    (recoil, binding, the outgoing neutron) is invisible. Neutrons that leave the world escape.
    """
    for _ in range(NEUTRON_MAX):
        if budget < NEUTRON_MIN_MEV:
            break
        tn = min(NEUTRON_MEAN_MEV * exponential(rs), budget)
        budget -= tn
        vx, vy, vz = isotropic(rs)
        d = NEUTRON_PATH_CM * exponential(rs)
        if d >= distance_to_exit(x, y, z, vx, vy, vz, lo, hi):
            ledger[L_ESCAPED] += tn
            continue
        bx, by, bz = x + d * vx, y + d * vy, z + d * vz
        gam = 1.0 + tn / NEUTRON_MASS_MEV
        tb = t + d / (math.sqrt(1.0 - 1.0 / (gam * gam)) * C_CM_NS)
        tp = tn * (NEUTRON_PROTON_MIN + (NEUTRON_PROTON_MAX - NEUTRON_PROTON_MIN) * uniform(rs))
        px, py, pz = isotropic(rs)
        _emit_hadron(rs, S, F, n, inter, lowe, PROTON, tp, bx, by, bz, px, py, pz, tb, group, nuclear_length)
        rest = tn - tp
        e = DEEXCITATION_GAMMA_MIN_MEV + (DEEXCITATION_GAMMA_MAX_MEV - DEEXCITATION_GAMMA_MIN_MEV) * uniform(rs)
        if e < rest:
            rest -= e
            gx, gy, gz = isotropic(rs)
            _push(S, n, GAMMA, e, bx, by, bz, gx, gy, gz, tb, -1, group, 0, 0.0)
        ledger[L_INVISIBLE] += rest
    return budget


# ---------------------------------------------------------------------------------------
# Nuclear interaction in flight of pi+- and p: a toy model.
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def _hadronic(rs, S, D, F, n, ledger, inter, lowe, med, lo, hi, kind, kinetic, x, y, z, ux, uy, uz, t, group):
    """The track ends; its energy goes to a few secondaries, conserving energy exactly.

    * leading particle: a proton keeps going (new fragment, a "kink") half of the time;
      a pion scatters (40 %), charge-exchanges into a pi0 (10 %) or is absorbed (50 %);
      it keeps 30-90 % of the kinetic energy, in the forward hemisphere;
    * protons above 400 MeV may make a pion;
    * the rest breaks the nucleus: 1-4 protons share 20-60 % of it, neutrons leave a
      few MeV in blips up to ~1 m away (LOW_ENERGY bucket), de-excitation photons;
      what is left (neutron kinetic energy, binding) is invisible.
    """
    n[N_HADRONIC] += 1
    lam = med.nuclear_interaction_length_cm
    budget = kinetic
    if kind != PROTON:
        budget += PION_MASS_MEV          # the incoming pion is absorbed into the nucleus ...
        ledger[L_RELEASED] += PION_MASS_MEV
    out = -1
    r = uniform(rs)
    if kind == PROTON:
        if r < P_LEADING_PROTON:
            out = PROTON
    elif r < P_PION_SCATTER:
        out = kind
    elif r < P_PION_SCATTER + P_PION_CHARGE_EXCHANGE:
        out = PI0
    if out >= 0:
        t_out = kinetic * (LEADING_FRACTION_MIN + (LEADING_FRACTION_MAX - LEADING_FRACTION_MIN) * uniform(rs))
        mass_out = 0.0 if out == PROTON else KIND_MASS[out]   # ... and re-created if it comes out
        if t_out + mass_out < budget:
            budget -= t_out + mass_out
            ledger[L_RELEASED] -= mass_out
            vx, vy, vz = deflect(ux, uy, uz, uniform(rs), TWO_PI * uniform(rs))
            if out == PI0:
                _push(S, n, PI0, t_out, x, y, z, vx, vy, vz, t, -1, group, 0, 0.0)
            else:
                _emit_hadron(rs, S, F, n, inter, lowe, out, t_out, x, y, z, vx, vy, vz, t, group, lam)
    if kind == PROTON and kinetic > PION_PRODUCTION_MIN_MEV and uniform(rs) < min(
            0.5, (kinetic - PION_PRODUCTION_MIN_MEV) / 1000.0):
        pk = (PI_PLUS, PI_MINUS, PI0)[int(3 * uniform(rs))]
        m = KIND_MASS[pk]
        if budget > m + 10.0:
            tp = (budget - m) * (0.1 + 0.4 * uniform(rs))
            budget -= tp + m
            ledger[L_RELEASED] -= m
            vx, vy, vz = deflect(ux, uy, uz, uniform(rs), TWO_PI * uniform(rs))
            if pk == PI0:
                _push(S, n, PI0, tp, x, y, z, vx, vy, vz, t, -1, group, 0, 0.0)
            else:
                _emit_hadron(rs, S, F, n, inter, lowe, pk, tp, x, y, z, vx, vy, vz, t, group, lam)
    if budget > 5.0:
        n_p = min(1 + poisson(rs, budget / BREAKUP_MEV_PER_PROTON), 4)
        share = budget * (BREAKUP_VISIBLE_MIN + (BREAKUP_VISIBLE_MAX - BREAKUP_VISIBLE_MIN) * uniform(rs))
        weights = np.empty(n_p)
        for i in range(n_p):
            weights[i] = exponential(rs)
        total = weights.sum()
        for i in range(n_p):
            tp = share * weights[i] / total
            budget -= tp
            vx, vy, vz = isotropic(rs)
            _emit_hadron(rs, S, F, n, inter, lowe, PROTON, tp, x, y, z, vx, vy, vz, t, group, lam)
    budget = _neutron_activity(rs, S, F, n, ledger, inter, lowe, lo, hi, lam, budget, x, y, z, t, group)
    budget = _deexcitation_gammas(rs, S, D, F, n, ledger, inter, lowe, budget, x, y, z, t, group)
    ledger[L_INVISIBLE] += budget


# ---------------------------------------------------------------------------------------
# Charged particles: up to STEPS_PER_POP steps, then re-queued.
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def _track(rs, S, D, F, n, ledger, inter, lowe, med, lo, hi, delta_on, cur):
    kind = int(cur[S_KIND])
    kinetic = cur[S_T]
    x, y, z = cur[S_X], cur[S_X + 1], cur[S_X + 2]
    ux, uy, uz = cur[S_U], cur[S_U + 1], cur[S_U + 2]
    t = cur[S_TIME]
    frag = int(cur[S_FRAG])
    group = int(cur[S_GROUP])
    lam = cur[S_LAM]
    m = KIND_MASS[kind]
    charge = KIND_CHARGE[kind]
    z2 = charge * charge
    is_e = kind == ELECTRON or kind == POSITRON
    hadron = kind == PI_PLUS or kind == PI_MINUS or kind == PROTON
    t_stop = stop_kinetic(kind)
    fraction = STEP_FRACTION_ELECTRON if is_e else STEP_FRACTION_HEAVY
    x0 = med.radiation_length_cm
    coef = 0.5 * K_BETHE * med.z_over_a * med.density_g_cm3 * z2   # xi = coef * step / beta^2

    for _ in range(STEPS_PER_POP):
        if kinetic <= t_stop:
            _end_track(rs, S, D, F, n, ledger, inter, lowe, med, lo, hi, kind, kinetic, x, y, z, ux, uy, uz, t,
                       frag, group)
            return
        d_exit = distance_to_exit(x, y, z, ux, uy, uz, lo, hi)
        if d_exit <= 0.0:
            ledger[L_ESCAPED] += kinetic
            return
        step = min(STEP_MAX_CM, max(fraction * kinetic / stopping_power(kind, kinetic, med), STEP_MIN_CM))
        interacts = False
        exits = False
        if hadron and lam < step:
            step = lam
            interacts = True
        if d_exit <= step:
            step = d_exit
            exits = True
            interacts = False

        # mean loss evaluated at the step's midpoint energy
        tm = max(kinetic - 0.5 * step * stopping_power(kind, kinetic, med), 0.5 * kinetic)
        gamma = 1.0 + tm / m
        beta2 = 1.0 - 1.0 / (gamma * gamma)
        beta = math.sqrt(beta2)
        p = math.sqrt(tm * (tm + 2.0 * m))
        xi = coef * step / beta2
        if is_e:
            mean_coll = step * electron_collision(tm, kind == POSITRON, med)
            wmax = tm if kind == POSITRON else 0.5 * tm   # Bhabha / Moller (identical electrons)
            b = 0.0
        else:
            mean_coll = step * bethe(tm, m, z2, med)
            wmax = max_transfer(tm, m)
            b = beta2
        avail = kinetic
        tup = min(wmax, DELTA_CUT_MEV)

        # delta rays above the cut: explicit electrons; the continuous part is the restricted loss
        if delta_on and wmax > DELTA_CUT_MEV:
            ratio = wmax / DELTA_CUT_MEV
            mean_coll -= xi * (math.log(ratio) - b * (1.0 - 1.0 / ratio))
            n_mean = xi * ((1.0 / DELTA_CUT_MEV - 1.0 / wmax) - b / wmax * math.log(ratio))
            for _k in range(min(poisson(rs, n_mean), MAX_PER_STEP)):
                td = sample_delta_energy(rs, DELTA_CUT_MEV, wmax, b)
                if td >= avail:
                    continue
                avail -= td
                a = step * uniform(rs)
                ex, ey, ez = x + a * ux, y + a * uy, z + a * uz
                pd = math.sqrt(td * (td + 2.0 * ME))
                if is_e:
                    cos_d = math.sqrt(td * (tm + 2.0 * ME) / (tm * (td + 2.0 * ME)))
                    f = frag
                else:
                    cos_d = td / pd * math.sqrt(wmax * (wmax + 2.0 * ME)) / wmax   # PDG eq. 34.9
                    f = _new_fragment(F, n, inter, ROLE_DELTA, ELECTRON, group, td, ex, ey, ez)
                    F[f, 8] = frag   # a small delta ray merges back into this track (labels.py)
                vx, vy, vz = deflect(ux, uy, uz, cos_d, TWO_PI * uniform(rs))
                _push(S, n, ELECTRON, td, ex, ey, ez, vx, vy, vz, t + a / (beta * C_CM_NS), f, group, 0, 0.0)

        dep = restricted_loss(rs, mean_coll, xi, tup, beta2)

        # bremsstrahlung: photons above BREM_CUT_MEV explicit, softer ones deposited here
        if is_e and tm > BREM_CUT_MEV:
            kc = BREM_CUT_MEV
            e = tm + ME
            dep += step / x0 * (4.0 / 3.0 * kc - 2.0 / 3.0 * kc * kc / e + kc ** 3 / (3.0 * e * e))
            nb_mean = step / x0 * (4.0 / 3.0 * math.log(tm / kc) - 4.0 / 3.0 * (tm - kc) / e
                                   + (tm * tm - kc * kc) / (2.0 * e * e))
            for _k in range(min(poisson(rs, nb_mean), MAX_PER_STEP)):
                k = sample_brem_energy(rs, kc, tm)
                if k >= avail:
                    continue
                avail -= k
                a = step * uniform(rs)
                _push(S, n, GAMMA, k, x + a * ux, y + a * uy, z + a * uz, ux, uy, uz,
                      t + a / (beta * C_CM_NS), frag, group, FLAG_PARENT_FRAGMENT, 0.0)

        dep = min(dep, avail)
        avail -= dep
        dt = step / (beta * C_CM_NS)
        _deposit_step(D, n, ledger, x + 0.5 * step * ux, y + 0.5 * step * uy, z + 0.5 * step * uz, dep, step,
                      t + 0.5 * dt, frag, ux, uy, uz)
        x += step * ux
        y += step * uy
        z += step * uz
        t += dt
        kinetic = avail
        if exits:
            ledger[L_ESCAPED] += kinetic
            return
        if interacts:
            _hadronic(rs, S, D, F, n, ledger, inter, lowe, med, lo, hi, kind, kinetic, x, y, z, ux, uy, uz, t, group)
            return
        lam -= step

        # multiple Coulomb scattering: Gaussian, theta0 ~ sqrt(step) (Highland with its
        # log term taken at x = X0, so that the angles of many steps add up correctly)
        theta0 = HIGHLAND_MEV / (beta * p) * abs(charge) * math.sqrt(step / x0) * (
            1.0 + HIGHLAND_LOG * math.log(z2 / beta2))
        theta = min(theta0, MAX_THETA0_RAD) * math.sqrt(-2.0 * math.log(uniform(rs)))
        ux, uy, uz = deflect(ux, uy, uz, math.cos(theta), TWO_PI * uniform(rs))

    _push(S, n, kind, kinetic, x, y, z, ux, uy, uz, t, frag, group, 0, lam)


# ---------------------------------------------------------------------------------------
# Photons and pi0.
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def _photon(rs, S, D, F, n, ledger, inter, lowe, med, lo, hi, table, cur):
    """Fly a photon to its next interaction and make it happen (or let it escape)."""
    energy = cur[S_T]
    x, y, z = cur[S_X], cur[S_X + 1], cur[S_X + 2]
    ux, uy, uz = cur[S_U], cur[S_U + 1], cur[S_U + 2]
    t = cur[S_TIME]
    frag = int(cur[S_FRAG])
    group = int(cur[S_GROUP])
    flags = int(cur[S_FLAGS])
    if energy < PHOTON_CUT_MEV:
        _emit_photon(S, D, F, n, ledger, inter, lowe, energy, x, y, z, ux, uy, uz, t, frag, group, flags)
        return
    mu_c, mu_pe, mu_pair = photon_mu(energy, table)
    mu = mu_c + mu_pe + mu_pair
    d = exponential(rs) / mu
    if d >= distance_to_exit(x, y, z, ux, uy, uz, lo, hi):
        ledger[L_ESCAPED] += energy
        return
    x += d * ux
    y += d * uy
    z += d * uz
    t += d / C_CM_NS
    # Every Compton and photo-electron starts its own fragment, however near its photon's
    # origin: Geant4 records each as a particle (process "compt" / "phot"), and Supera keeps
    # it apart (kCompton, kPhotoElectron; only kIonization and kConversion merge into their
    # parent at once). Its parent is the photon's fragment (a brem photon's: the radiating
    # electron's), into which it merges where they touch (Supera's
    # MergeShowerTouchingLEScatter, labels.py); else it is low-energy unless it has > 10
    # voxels and > 4 MeV. A conversion pair joins the photon's fragment (Supera: kConversion
    # merges into its parent photon); a brem photon has none yet, so its pair starts one,
    # child of the radiating electron's (Supera's MergeShowerFamilyTouching, labels.py).
    near = -1
    brem = (flags & FLAG_PARENT_FRAGMENT) != 0
    r = uniform(rs) * mu
    if r < mu_pe:
        # photo-absorption: the electron takes all (the 3 keV binding is deposited with it)
        _emit_electron(S, F, n, inter, lowe, ELECTRON, energy, x, y, z, ux, uy, uz, t,
                       near, group, frag)
    elif r < mu_pe + mu_c:
        eps, cos_t = sample_compton(rs, energy)
        gx, gy, gz = deflect(ux, uy, uz, cos_t, TWO_PI * uniform(rs))
        e_out = eps * energy
        px, py, pz = energy * ux - e_out * gx, energy * uy - e_out * gy, energy * uz - e_out * gz
        pn = math.sqrt(px * px + py * py + pz * pz)
        if pn > 0:
            px, py, pz = px / pn, py / pn, pz / pn
        else:
            px, py, pz = ux, uy, uz
        _emit_electron(S, F, n, inter, lowe, ELECTRON, energy - e_out, x, y, z, px, py, pz, t,
                       near, group, frag)
        _emit_photon(S, D, F, n, ledger, inter, lowe, e_out, x, y, z, gx, gy, gz, t, frag, group, flags)
    else:
        # conversion: e- and e+ share E - 2m, each at angle ~ m/E from the photon
        ledger[L_RELEASED] -= 2.0 * ME
        eps = sample_pair_fraction(rs)
        t_minus = eps * (energy - 2.0 * ME)
        t_plus = energy - 2.0 * ME - t_minus
        phi = TWO_PI * uniform(rs)
        pair = frag
        if brem or frag < 0:
            pair = _new_fragment(F, n, inter, ROLE_SHOWER, GAMMA, group, energy, x, y, z)
            F[pair, 8] = frag
        vx, vy, vz = deflect(ux, uy, uz, math.cos(ME / (t_minus + ME)), phi)
        _emit_electron(S, F, n, inter, lowe, ELECTRON, t_minus, x, y, z, vx, vy, vz, t,
                       pair, group, frag)
        vx, vy, vz = deflect(ux, uy, uz, math.cos(ME / (t_plus + ME)), phi + math.pi)
        _emit_electron(S, F, n, inter, lowe, POSITRON, t_plus, x, y, z, vx, vy, vz, t,
                       pair, group, frag)


@njit(cache=True)
def _pi0_decay(rs, S, D, F, n, ledger, inter, lowe, cur):
    """pi0 -> gamma gamma, isotropic in the pi0 rest frame; each photon is a SHOWER fragment."""
    kinetic = cur[S_T]
    x, y, z = cur[S_X], cur[S_X + 1], cur[S_X + 2]
    ux, uy, uz = cur[S_U], cur[S_U + 1], cur[S_U + 2]
    t = cur[S_TIME]
    group = int(cur[S_GROUP])
    ledger[L_RELEASED] += PI0_MASS_MEV
    gamma = 1.0 + kinetic / PI0_MASS_MEV
    beta = math.sqrt(1.0 - 1.0 / (gamma * gamma))
    half = 0.5 * PI0_MASS_MEV
    cos_star = 2.0 * uniform(rs) - 1.0
    phi = TWO_PI * uniform(rs)
    for sign in (1.0, -1.0):
        c = sign * cos_star
        e = gamma * half * (1.0 + beta * c)          # Lorentz boost along u
        cos_lab = gamma * half * (c + beta) / e
        vx, vy, vz = deflect(ux, uy, uz, cos_lab, phi if sign > 0 else phi + math.pi)
        frag = _new_fragment(F, n, inter, ROLE_SHOWER, GAMMA, group, e, x, y, z)
        _emit_photon(S, D, F, n, ledger, inter, lowe, e, x, y, z, vx, vy, vz, t, frag, group, 0)


# ---------------------------------------------------------------------------------------
# Main loop.
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def run(kinds, kinetic, pos, dirs, times, inter, state, lo, hi, delta_on, med, table):
    """Transport the primaries; return (deposits (K, 10), fragments (F, 8), ledger (4,), counters (4,)).

    ``state`` (uint64[4]) is advanced in place. Ledger: deposited, escaped, invisible
    (neutrinos, neutrons, binding) and rest-mass energy released (decays, annihilation;
    negative for pair creation), so deposited + escaped + invisible = sum T + released.
    """
    n_prim = kinds.shape[0]
    D = np.empty((4096, D_COLS))
    S = np.empty((n_prim + 2 * RESERVE_STACK, S_COLS))
    F = np.empty((n_prim + 2 * RESERVE_FRAG, F_COLS))
    n = np.zeros(4, np.int64)
    ledger = np.zeros(4)
    lowe = np.full(n_prim, -1, np.int64)
    cur = np.empty(S_COLS)
    frags = np.full(n_prim, -1, np.int64)
    lam = med.nuclear_interaction_length_cm
    for i in range(n_prim):   # fragments of the primaries first, in input order
        k = kinds[i]
        if k == GAMMA or k == ELECTRON or k == POSITRON:
            frags[i] = _new_fragment(F, n, inter, ROLE_SHOWER, k, i, kinetic[i], pos[i, 0], pos[i, 1], pos[i, 2])
        elif k != PI0:
            frags[i] = _new_fragment(F, n, inter, ROLE_TRACK, k, i, kinetic[i], pos[i, 0], pos[i, 1], pos[i, 2])
    for i in range(n_prim - 1, -1, -1):   # last in, first out: primary 0 is transported first
        k = kinds[i]
        hadron = k == PI_PLUS or k == PI_MINUS or k == PROTON
        _push(S, n, k, kinetic[i], pos[i, 0], pos[i, 1], pos[i, 2], dirs[i, 0], dirs[i, 1], dirs[i, 2], times[i],
              frags[i], i, 0, lam * exponential(state) if hadron else 0.0)

    while n[N_STACK] > 0:
        D = _reserve(D, n[N_DEP], RESERVE_DEP)
        S = _reserve(S, n[N_STACK], RESERVE_STACK)
        F = _reserve(F, n[N_FRAG], RESERVE_FRAG)
        n[N_STACK] -= 1
        cur[:] = S[n[N_STACK]]
        kind = int(cur[S_KIND])
        if kind == GAMMA:
            _photon(state, S, D, F, n, ledger, inter, lowe, med, lo, hi, table, cur)
        elif kind == PI0:
            _pi0_decay(state, S, D, F, n, ledger, inter, lowe, cur)
        else:
            _track(state, S, D, F, n, ledger, inter, lowe, med, lo, hi, delta_on, cur)
    return D[:n[N_DEP]].copy(), F[:n[N_FRAG]].copy(), ledger, n


# ---------------------------------------------------------------------------------------
# Loops behind the samplers in detfm.sim.physics.
# ---------------------------------------------------------------------------------------
@njit(cache=True)
def sample_michel_many(state, count):
    out = np.empty(count)
    for i in range(count):
        out[i] = sample_michel_x(state)
    return out


@njit(cache=True)
def sample_compton_many(state, energy, count):
    """(count, 2) array of (E'/E, cos theta) for Compton scattering at ``energy``."""
    out = np.empty((count, 2))
    for i in range(count):
        out[i, 0], out[i, 1] = sample_compton(state, energy)
    return out


@njit(cache=True)
def sample_restricted_loss_many(state, kinetic, mass, step, cut, count, med):
    """Energy deposited by a heavy particle (charge 1) over ``step``, as in _track."""
    gamma = 1.0 + kinetic / mass
    beta2 = 1.0 - 1.0 / (gamma * gamma)
    xi = 0.5 * K_BETHE * med.z_over_a * med.density_g_cm3 * step / beta2
    wmax = max_transfer(kinetic, mass)
    mean = step * bethe(kinetic, mass, 1.0, med)
    tup = min(wmax, cut)
    if wmax > cut:
        ratio = wmax / cut
        mean -= xi * (math.log(ratio) - beta2 * (1.0 - 1.0 / ratio))
    out = np.empty(count)
    for i in range(count):
        out[i] = restricted_loss(state, mean, xi, tup, beta2)
    return out

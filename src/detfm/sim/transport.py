"""Transport: primaries -> energy deposits in liquid argon (the simulator's second stage).

:func:`transport` follows every primary and all its descendants through liquid argon
until they stop, decay, interact or leave the :class:`World`, and returns a
:class:`~detfm.sim.truth.TruthEvent`: a fragment table and one energy deposit per step.
The physics (PHYSICS.md, DESIGN.md "Simulation") lives in :mod:`detfm.sim._kernels`;
its formulas and constants in :mod:`detfm.sim.physics`. In short:

* mu, pi, p, e+-: steps <= 3 mm (shorter near the end of range, for the Bragg peak),
  Bethe-Bloch / Berger-Seltzer mean loss with Landau-like fluctuations, delta rays above
  1 MeV as their own particles (DELTA fragments for mu/pi/p), multiple scattering;
* mu+ decays at rest (Michel e+); mu- decays 24.6 % of the time, else is captured;
  pi+ -> mu+ -> e+ at rest; pi- is captured; pi and p interact in flight with
  lambda_I = 85.7 cm (a toy nuclear model that conserves energy); pi0 -> gamma gamma;
* e+- and photons: an explicit cascade (bremsstrahlung above 0.05 MeV, pair production,
  Compton scattering, photo-absorption with XCOM cross sections), so showers branch and
  low-energy photons leave detached blips.

Fragments (see :class:`~detfm.sim.truth.Fragments`): each mu/pi/p is a TRACK; a primary e
or gamma is a SHOWER (each photon of a pi0 its own SHOWER); a Michel electron is a MICHEL;
each delta ray of a mu/pi/p is a DELTA; the ionisation electrons of an e+- stay in its
fragment; the conversion pair of a bremsstrahlung photon starts a SHOWER fragment and
every Compton or photo-electron a COMPTON fragment, each a child of the fragment it came
from, into which the labels merge it where they touch (as Geant4 records them and Supera
merges them); deposits too small to travel (electrons below 0.25 MeV made by such
photons, neutron blips, short proton stubs) go to one LOW_ENERGY fragment per group.

Energy bookkeeping is exact and returned in ``meta``: ``deposited + escaped + invisible
= sum of primary kinetic energies + released`` where ``released`` is rest-mass energy
turned into kinetic energy (decays, captures, annihilation; minus pair creation) and
``invisible`` is what neutrinos, neutrons and nuclear binding take away.

The result is a pure function of the ``numpy.random.Generator`` state: transport draws
one seed from it and runs its own generator inside the kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from detfm.errors import DetfmError
from detfm.io import layout
from detfm.sim import _kernels
from detfm.sim.particles import BY_PDG
from detfm.sim.physics import LIQUID_ARGON, photon_table
from detfm.sim.truth import Deposits, Fragments, Primary, TruthEvent

BOX_CENTRE_CM = layout.BOX_CM / 2


@dataclass(frozen=True)
class World:
    """Transport volume (cm): an axis-aligned box of liquid argon.

    Particles are followed until they stop or leave it. The default is the detector box
    (0 - 230.4 cm); :meth:`large` gives a big world for validation runs.
    """

    lo: tuple[float, float, float] = (0.0, 0.0, 0.0)
    hi: tuple[float, float, float] = (layout.BOX_CM, layout.BOX_CM, layout.BOX_CM)

    def __post_init__(self) -> None:
        if len(self.lo) != 3 or len(self.hi) != 3:
            raise DetfmError(f"World needs 3 coordinates for lo and hi, got lo={self.lo}, hi={self.hi}")
        for a, b in zip(self.lo, self.hi):
            if not (math.isfinite(a) and math.isfinite(b) and a < b):
                raise DetfmError(f"World must have finite lo < hi on every axis, got lo={self.lo}, hi={self.hi}")

    @staticmethod
    def large(size_cm: float = 4000.0) -> World:
        """A cube of side ``size_cm`` centred on the detector box centre."""
        if not (math.isfinite(size_cm) and size_cm > 0):
            raise DetfmError(f"World.large needs a positive size in cm, got {size_cm}")
        half = size_cm / 2
        return World((BOX_CENTRE_CM - half,) * 3, (BOX_CENTRE_CM + half,) * 3)


@lru_cache(maxsize=1)
def _photon_table() -> np.ndarray:
    return photon_table(LIQUID_ARGON)


def _primary_arrays(primaries: list[Primary]) -> tuple[np.ndarray, ...]:
    """Validate the primaries and lay them out as arrays for the kernel."""
    n = len(primaries)
    kinds = np.empty(n, np.int64)
    kinetic = np.empty(n)
    pos = np.empty((n, 3))
    dirs = np.empty((n, 3))
    times = np.empty(n)
    inter = np.empty(n, np.int64)
    for i, p in enumerate(primaries):
        if not isinstance(p, Primary):
            raise DetfmError(f"primary {i}: expected a detfm.sim.truth.Primary, got {type(p).__name__}")
        if p.pdg not in _kernels.PDG_TO_KIND:
            known = ", ".join(f"{code} ({BY_PDG[code].name})" for code in sorted(BY_PDG))
            raise DetfmError(f"primary {i}: PDG code {p.pdg} cannot be transported; known: {known}")
        kinds[i] = _kernels.PDG_TO_KIND[p.pdg]
        if not (math.isfinite(p.kinetic_mev) and p.kinetic_mev >= 0):
            raise DetfmError(f"primary {i}: kinetic energy must be a finite number >= 0 MeV, got {p.kinetic_mev}")
        kinetic[i] = p.kinetic_mev
        position = np.asarray(p.position_cm, dtype=np.float64)
        direction = np.asarray(p.direction, dtype=np.float64)
        if position.shape != (3,) or not np.isfinite(position).all():
            raise DetfmError(f"primary {i}: position_cm must be 3 finite numbers (cm), got {p.position_cm!r}")
        norm = float(np.linalg.norm(direction)) if direction.shape == (3,) else 0.0
        if not (math.isfinite(norm) and norm > 0):
            raise DetfmError(f"primary {i}: direction must be a non-zero finite 3-vector, got {p.direction!r}")
        pos[i] = position
        dirs[i] = direction / norm
        if not math.isfinite(p.time_ns):
            raise DetfmError(f"primary {i}: time_ns must be finite, got {p.time_ns}")
        times[i] = p.time_ns
        inter[i] = p.interaction
    return kinds, kinetic, pos, dirs, times, inter


def transport(primaries: list[Primary], rng: np.random.Generator, world: World = World(),
              *, delta_rays: bool = True) -> TruthEvent:
    """Follow ``primaries`` through liquid argon and return their fragments and energy deposits.

    Args:
        primaries: particles to transport; ``Fragments.group`` is the index in this list.
        rng: the only source of randomness (one seed is drawn from it).
        world: the volume in which particles are followed.
        delta_rays: produce delta rays above 1 MeV as particles (with their own DELTA
            fragments for mu/pi/p); if False the whole collision loss stays on the track.

    Returns:
        A TruthEvent; ``meta`` holds the energy ledger (``deposited_mev``, ``escaped_mev``,
        ``invisible_mev``, ``released_mev``, ``primary_kinetic_mev``) and the number of
        nuclear interactions in flight (``hadronic_interactions``).
    """
    if not isinstance(rng, np.random.Generator):
        raise DetfmError(f"transport needs a numpy.random.Generator, got {type(rng).__name__}")
    if not isinstance(world, World):
        raise DetfmError(f"world must be a detfm.sim.transport.World, got {type(world).__name__}")
    primaries = list(primaries)
    kinds, kinetic, pos, dirs, times, inter = _primary_arrays(primaries)
    state = _kernels.seed_state(rng)
    dep, frag, ledger, counters = _kernels.run(
        kinds, kinetic, pos, dirs, times, inter, state, np.asarray(world.lo, np.float64),
        np.asarray(world.hi, np.float64), bool(delta_rays), LIQUID_ARGON, _photon_table())
    meta: dict[str, object] = {
        "deposited_mev": float(ledger[_kernels.L_DEPOSITED]),
        "escaped_mev": float(ledger[_kernels.L_ESCAPED]),
        "invisible_mev": float(ledger[_kernels.L_INVISIBLE]),
        "released_mev": float(ledger[_kernels.L_RELEASED]),
        "primary_kinetic_mev": float(kinetic.sum()),
        "hadronic_interactions": int(counters[_kernels.N_HADRONIC]),
    }
    return TruthEvent(primaries, _fragments(frag), _deposits(dep), meta)


def _deposits(dep: np.ndarray) -> Deposits:
    return Deposits(pos_cm=np.ascontiguousarray(dep[:, 0:3]), de_mev=dep[:, 3].copy(), dx_cm=dep[:, 4].copy(),
                    time_ns=dep[:, 5].copy(), frag=dep[:, 6].astype(np.int32),
                    direction=np.ascontiguousarray(dep[:, 7:10]))


# Kernel particle kind -> (PDG code, io.layout PID); the LOW_ENERGY buckets (kind -1) have neither.
# The exotic kinds (heavy slow particle, fractional charges) have no PID class of their own: "none".
_KIND_PID = np.array([layout.PID_PHOTON, layout.PID_ELECTRON, layout.PID_ELECTRON, layout.PID_MUON,
                      layout.PID_MUON, layout.PID_PION, layout.PID_PION, layout.PID_PROTON, layout.PID_NONE,
                      layout.PID_NONE, layout.PID_NONE, layout.PID_NONE, layout.PID_NONE])


def _fragments(f: np.ndarray) -> Fragments:
    kind = f[:, 1].astype(np.int64)
    known = kind >= 0
    k = np.where(known, kind, 0)
    mass = np.where(known, _kernels.KIND_MASS[k], 0.0)
    kinetic = f[:, 4]
    return Fragments(
        role=f[:, 0].astype(np.int8),
        pid=np.where(known, _KIND_PID[k], layout.PID_NONE).astype(np.int8),
        pdg=np.where(known, _kernels.KIND_PDG[k], 0).astype(np.int32),
        group=f[:, 2].astype(np.int32),
        interaction=f[:, 3].astype(np.int32),
        mass_mev=mass.astype(np.float32),
        momentum_gev=(np.sqrt(kinetic * (kinetic + 2 * mass)) / 1000.0).astype(np.float32),
        vertex_cm=f[:, 5:8].astype(np.float32),
        energy_mev=kinetic.astype(np.float32),
        parent=f[:, 8].astype(np.int32),
    )

"""Event generators: which particles start where (the first simulator stage).

* Multi-particle vertex (MPV): 2-7 particles from one vertex inside the box.
* Multi-particle rain (MPR): 3-5 cosmic-like particles, each from its own uniform point
  inside the box.
* Particle gun: one particle of a fixed kinetic energy from the box centre, for validation.

Species, multiplicities, weights and kinetic-energy ranges follow the public PILArNet-M
generator configurations (PHYSICS.md, "How PILArNet-M events are made").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detfm.errors import DetfmError
from detfm.io import layout
from detfm.sim.particles import species
from detfm.sim.truth import Primary

# Lowest kinetic energy drawn (MeV). The reference ranges start at 0; a particle of a few
# keV leaves no voxel above threshold, so we start at 1 MeV.
MIN_KINETIC_MEV = 1.0


@dataclass(frozen=True)
class SpeciesChoice:
    """One line of a generator table: candidate names, max per event, weight, kinetic range (MeV)."""

    names: tuple[str, ...]
    max_count: int
    weight: float
    kinetic_mev: tuple[float, float]


# MPV table (PILArNet-M public configuration): lepton e or mu (1, 3, 0-3 GeV), pi0 (2, 1, 0-1 GeV),
# pi+- (2, 1, 0-1 GeV), p (4, 3, 0-1 GeV), gamma (2, 1, 0-1 GeV).
MPV_TABLE = (
    SpeciesChoice(("e-", "e+", "mu-", "mu+"), 1, 3.0, (MIN_KINETIC_MEV, 3000.0)),
    SpeciesChoice(("pi0",), 2, 1.0, (MIN_KINETIC_MEV, 1000.0)),
    SpeciesChoice(("pi+", "pi-"), 2, 1.0, (MIN_KINETIC_MEV, 1000.0)),
    SpeciesChoice(("proton",), 4, 3.0, (MIN_KINETIC_MEV, 1000.0)),
    SpeciesChoice(("gamma",), 2, 1.0, (MIN_KINETIC_MEV, 1000.0)),
)
MPV_MULTIPLICITY = (2, 7)

# MPR table: mu+- (5, 0-20 GeV), mu+- (5, 0-2 GeV), e+- (1, 0-1 GeV), gamma (2, 0-1 GeV), p (1, 0-1 GeV).
MPR_TABLE = (
    SpeciesChoice(("mu-", "mu+"), 5, 5.0, (MIN_KINETIC_MEV, 20000.0)),
    SpeciesChoice(("mu-", "mu+"), 5, 5.0, (MIN_KINETIC_MEV, 2000.0)),
    SpeciesChoice(("e-", "e+"), 1, 1.0, (MIN_KINETIC_MEV, 1000.0)),
    SpeciesChoice(("gamma",), 2, 2.0, (MIN_KINETIC_MEV, 1000.0)),
    SpeciesChoice(("proton",), 1, 1.0, (MIN_KINETIC_MEV, 1000.0)),
)
MPR_MULTIPLICITY = (3, 5)

# Vertices are drawn this far (cm) from the walls so that most of the activity is contained.
VERTEX_MARGIN_CM = 30.0
BOX_CENTRE_CM = np.full(3, layout.BOX_CM / 2)


def isotropic(rng: np.random.Generator) -> np.ndarray:
    """A unit vector uniform on the sphere."""
    cos_t = rng.uniform(-1.0, 1.0)
    phi = rng.uniform(0.0, 2 * np.pi)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    return np.array([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t])


def _draw_species(table: tuple[SpeciesChoice, ...], n: int, rng: np.random.Generator
                  ) -> list[tuple[str, float]]:
    """Draw ``n`` (name, kinetic energy) pairs by weight, respecting each line's maximum."""
    counts = [0] * len(table)
    out = []
    for _ in range(n):
        open_lines = [i for i, c in enumerate(table) if counts[i] < c.max_count]
        if not open_lines:
            break
        w = np.array([table[i].weight for i in open_lines])
        line = open_lines[int(rng.choice(len(open_lines), p=w / w.sum()))]
        counts[line] += 1
        choice = table[line]
        name = choice.names[int(rng.integers(len(choice.names)))]
        out.append((name, float(rng.uniform(*choice.kinetic_mev))))
    return out


def multi_particle_vertex(rng: np.random.Generator, interaction: int = 0) -> list[Primary]:
    """2-7 particles from a common vertex, isotropic, flat in kinetic energy."""
    n = int(rng.integers(MPV_MULTIPLICITY[0], MPV_MULTIPLICITY[1] + 1))
    vertex = rng.uniform(VERTEX_MARGIN_CM, layout.BOX_CM - VERTEX_MARGIN_CM, size=3)
    return [Primary(species(name).pdg, ke, vertex.copy(), isotropic(rng), interaction)
            for name, ke in _draw_species(MPV_TABLE, n, rng)]


def multi_particle_rain(rng: np.random.Generator, first_interaction: int = 1) -> list[Primary]:
    """3-5 particles, each starting at its own uniform point inside the box, isotropic; each
    its own interaction.

    The reference generator (``MultiPartRain``, K. Terao, in LArSoft/icaruscode:
    ``GenPosition`` draws every particle's start uniformly in the TPC's active box) starts
    rain particles inside the detector. Until this version they entered from outside, which
    made every rain muon cross the whole box: 1.6x the track voxels of PILArNet-M events.
    """
    n = int(rng.integers(MPR_MULTIPLICITY[0], MPR_MULTIPLICITY[1] + 1))
    out = []
    for k, (name, ke) in enumerate(_draw_species(MPR_TABLE, n, rng)):
        direction = isotropic(rng)
        start = rng.uniform(0.0, layout.BOX_CM, size=3)
        out.append(Primary(species(name).pdg, ke, start, direction, first_interaction + k))
    return out


def parse_gun(spec: str) -> tuple[str, float]:
    """Parse ``PARTICLE:KINETIC_MEV`` (e.g. ``mu-:500``) into (name, kinetic energy)."""
    name, sep, energy = spec.partition(":")
    if not sep:
        raise DetfmError(f"--gun '{spec}': expected PARTICLE:KINETIC_MEV, e.g. mu-:500")
    sp = species(name)  # raises a DetfmError listing known names
    try:
        ke = float(energy)
    except ValueError:
        raise DetfmError(f"--gun '{spec}': kinetic energy '{energy}' is not a number (MeV)") from None
    if not np.isfinite(ke) or ke <= 0:
        raise DetfmError(f"--gun '{spec}': kinetic energy must be a positive number of MeV")
    return sp.name, ke


def particle_gun(rng: np.random.Generator, name: str, kinetic_mev: float,
                 position_cm: np.ndarray | None = None) -> list[Primary]:
    """One particle from the box centre (or ``position_cm``) in a random direction."""
    pos = BOX_CENTRE_CM.copy() if position_cm is None else np.asarray(position_cm, float)
    return [Primary(species(name).pdg, float(kinetic_mev), pos, isotropic(rng), 0)]


MIXES = ("mpvmpr", "mpv", "mpr", "gun")


def generate(mix: str, rng: np.random.Generator, gun: tuple[str, float] | None = None) -> list[Primary]:
    """Primaries for one event of the given mix."""
    if mix == "mpvmpr":
        return multi_particle_vertex(rng) + multi_particle_rain(rng, first_interaction=1)
    if mix == "mpv":
        return multi_particle_vertex(rng)
    if mix == "mpr":
        return multi_particle_rain(rng, first_interaction=0)
    if mix == "gun":
        if gun is None:
            raise DetfmError("--mix gun needs --gun PARTICLE:KINETIC_MEV, e.g. --gun mu-:500")
        return particle_gun(rng, *gun)
    raise DetfmError(f"unknown mix '{mix}'; choose one of {', '.join(MIXES)}")

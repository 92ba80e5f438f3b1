"""Truth records passed between the simulator's stages.

The simulator runs in three stages with these records between them::

    generator  -> list[Primary]
    transport  -> TruthEvent (fragments + energy deposits, in cm, detector-independent)
    response   -> io.Event  (voxels, labels; depends on the DetectorModel)

Because transport never looks at the detector, the same TruthEvent rendered through two
detector models gives exact twins for systematic studies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np


class Role(IntEnum):
    """What a fragment is, before voxel-count cuts turn some into low-energy deposits.

    The response stage maps roles to semantic classes (DESIGN.md / PHYSICS.md labeling):
    TRACK -> track; SHOWER -> shower; MICHEL -> Michel; DELTA -> delta, or merged into its
    parent track if it owns fewer than 10 voxels; COMPTON (electron from a photon's Compton scatter
    or photo-absorption) -> shower, or low-energy if it makes 10 voxels or fewer; LOW_ENERGY ->
    low-energy always. A COMPTON fragment, and the SHOWER fragment of a bremsstrahlung photon's
    conversion pair, merge into their parent fragment where they touch it (labels.py).
    """

    TRACK = 0
    SHOWER = 1
    MICHEL = 2
    DELTA = 3
    COMPTON = 4
    LOW_ENERGY = 5


@dataclass(frozen=True)
class Primary:
    """A particle handed from the generator to transport.

    Attributes:
        pdg: PDG code (11 e-, -11 e+, 13 mu-, -13 mu+, 211/-211 pi+-, 111 pi0, 2212 p, 22 gamma).
        kinetic_mev: kinetic energy in MeV.
        position_cm: (3,) start point in detector coordinates (cm; the box spans 0-230.4).
        direction: (3,) unit vector.
        interaction: id of the interaction (vertex) this primary belongs to.
        time_ns: start time.
    """

    pdg: int
    kinetic_mev: float
    position_cm: np.ndarray
    direction: np.ndarray
    interaction: int = 0
    time_ns: float = 0.0


@dataclass
class Fragments:
    """Truth table with one row per fragment (a connected piece of one particle's energy).

    A track-like particle is one fragment; an EM shower from one primary e/gamma is one
    fragment; each delta ray, Michel electron and Compton electron is its own fragment.
    ``group`` is the index of the primary the fragment descends from (the "instance").
    """

    role: np.ndarray          # (F,) int8, values of Role
    pid: np.ndarray           # (F,) int8, io.layout PID codes (0 gamma, 1 e, 2 mu, 3 pi, 4 p, 5 none)
    pdg: np.ndarray           # (F,) int32 PDG code of the particle that made it
    group: np.ndarray         # (F,) int32 primary index
    interaction: np.ndarray   # (F,) int32
    mass_mev: np.ndarray      # (F,) float32
    momentum_gev: np.ndarray  # (F,) float32 momentum magnitude at creation
    vertex_cm: np.ndarray     # (F, 3) float32 creation point
    energy_mev: np.ndarray    # (F,) float32 kinetic energy at creation
    # (F,) int32 fragment a delta ray, Compton/photo-electron or brem photon's conversion pair came
    # from, else -1 (None: all -1)
    parent: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.parent is None:
            self.parent = np.full(len(self.role), -1, np.int32)

    def __len__(self) -> int:
        return int(self.role.shape[0])


@dataclass
class Deposits:
    """Energy deposits from transport: one row per step (steps are at most ~3 mm long).

    A step is the segment of length ``dx_cm`` centred on ``pos_cm`` along ``direction``;
    the response stage shares its energy among the voxels that segment crosses. A deposit
    with ``dx_cm == 0`` or a zero direction is point-like (one voxel). ``direction`` may be
    omitted (``None``): every deposit is then point-like.
    """

    pos_cm: np.ndarray   # (K, 3) float64 step midpoint, detector coordinates
    de_mev: np.ndarray   # (K,) float64 energy deposited in the step
    dx_cm: np.ndarray    # (K,) float64 step length (0 for point-like deposits)
    time_ns: np.ndarray  # (K,) float64
    frag: np.ndarray     # (K,) int32 row in Fragments
    direction: np.ndarray | None = None  # (K, 3) float64 unit step direction (zeros: point-like)

    def __post_init__(self) -> None:
        if self.direction is None:
            self.direction = np.zeros((len(self.de_mev), 3))

    def __len__(self) -> int:
        return int(self.de_mev.shape[0])

    @property
    def dedx(self) -> np.ndarray:
        """Local dE/dx in MeV/cm (for recombination); point deposits use a MIP-like 2.1."""
        out = np.full(self.de_mev.shape, 2.1)
        ok = self.dx_cm > 1e-6
        out[ok] = self.de_mev[ok] / self.dx_cm[ok]
        return out


@dataclass
class TruthEvent:
    """Everything transport knows about one event: its primaries, fragments and deposits."""

    primaries: list[Primary]
    fragments: Fragments
    deposits: Deposits
    meta: dict[str, object] = field(default_factory=dict)

"""Particle species the simulator knows: PDG codes, masses, charges and label codes.

Masses are PDG values (MeV); ``tests/sim/test_particles.py`` cross-checks them against
the ``particle`` package.
"""

from __future__ import annotations

from dataclasses import dataclass

from detfm.errors import DetfmError
from detfm.io import layout


@dataclass(frozen=True)
class Species:
    name: str
    pdg: int
    mass_mev: float
    charge: int
    pid: int  # io.layout PID code


_SPECIES = (
    Species("gamma", 22, 0.0, 0, layout.PID_PHOTON),
    Species("e-", 11, 0.51099895, -1, layout.PID_ELECTRON),
    Species("e+", -11, 0.51099895, 1, layout.PID_ELECTRON),
    Species("mu-", 13, 105.6583755, -1, layout.PID_MUON),
    Species("mu+", -13, 105.6583755, 1, layout.PID_MUON),
    Species("pi+", 211, 139.57039, 1, layout.PID_PION),
    Species("pi-", -211, 139.57039, -1, layout.PID_PION),
    Species("pi0", 111, 134.9768, 0, layout.PID_NONE),
    Species("proton", 2212, 938.27208816, 1, layout.PID_PROTON),
)

BY_NAME: dict[str, Species] = {s.name: s for s in _SPECIES}
BY_NAME["p"] = BY_NAME["proton"]
BY_NAME["photon"] = BY_NAME["gamma"]
BY_PDG: dict[int, Species] = {s.pdg: s for s in _SPECIES}

ELECTRON_MASS_MEV = BY_NAME["e-"].mass_mev
MUON_MASS_MEV = BY_NAME["mu-"].mass_mev
PION_MASS_MEV = BY_NAME["pi+"].mass_mev
PI0_MASS_MEV = BY_NAME["pi0"].mass_mev
PROTON_MASS_MEV = BY_NAME["proton"].mass_mev


def species(name_or_pdg: str | int) -> Species:
    """Look up a species by name (``"mu-"``, ``"proton"``...) or PDG code."""
    if isinstance(name_or_pdg, int):
        if name_or_pdg in BY_PDG:
            return BY_PDG[name_or_pdg]
        raise DetfmError(f"unknown PDG code {name_or_pdg}; known: {sorted(BY_PDG)}")
    key = name_or_pdg.strip()
    if key in BY_NAME:
        return BY_NAME[key]
    raise DetfmError(f"unknown particle '{name_or_pdg}'; known names: {', '.join(sorted(BY_NAME))}")


# Exotic particles for anomaly studies (:mod:`detfm.sim.exotic`). They are not in the species
# table above: the standard generators never make them and ``--gun`` cannot shoot them.
# The masses are model choices. PDG numbers: 1000015 is the stau_1, the usual candidate for
# a slow, stable, singly charged massive particle; fractionally charged leptons have no PDG
# number, so 9913013 (charge 1/3) and 9923013 (charge 2/3) are this project's own.
HSIP_MASS_MEV = 50_000.0
HSIP_PDG = 1000015
HSIP_CHARGE = -1.0
LIP_MASS_MEV = MUON_MASS_MEV
LIP_THIRD_PDG = 9913013
LIP_TWO_THIRDS_PDG = 9923013

"""Per-particle truth for set prediction: kinetic energy and start point of each instance.

A particle instance is a ``group`` (the primary and its descendants, PILArNet-M's
"group"). Its clusters each carry a ``cluster_extra`` row (mass in MeV, momentum in GeV,
creation vertex in voxels) of the particle that made that cluster, so the instance's own
truth is read from one *primary row*:

* among the group's rows, those whose pid is the group's most common pid (counted over
  points, pid "none" does not vote; what the PID label of the instance is);
* of these, the one of largest kinetic energy ``sqrt((1000 p)^2 + m^2) - m`` (the primary:
  its delta rays, Michel electron or Compton pieces carry less), ties to the first row.

A group made by a pi0 holds two photons; its truth is the more energetic one.

Missing truth: a row whose five values are all 0 (files written without ``cluster_extra``
are read with zeros) or not finite is unknown; an instance whose primary row is unknown
gets NaN energy and start, and so do points in no instance (group < 0). Training skips
NaN targets; metrics count such particles apart.
"""

from __future__ import annotations

import numpy as np

from detfm.io import Event, layout

__all__ = ["instance_truth", "kinetic_energy_mev", "particle_truth"]


def kinetic_energy_mev(mass_mev: np.ndarray, momentum_gev: np.ndarray) -> np.ndarray:
    """Kinetic energy (MeV) from mass (MeV) and momentum magnitude (GeV)."""
    m = np.asarray(mass_mev, dtype=np.float64)
    p = 1000.0 * np.asarray(momentum_gev, dtype=np.float64)
    return np.sqrt(p * p + m * m) - m


def instance_truth(event: Event) -> dict[int, tuple[float, np.ndarray]]:
    """``{group id: (kinetic energy MeV, (3,) start in voxels)}`` of every group of ``event``
    (NaN where the primary row is unknown; see the module docstring)."""
    clusters, extra = event.clusters, event.cluster_extra
    group = clusters[:, layout.C_GROUP].astype(np.int64)
    pid = clusters[:, layout.C_PID].astype(np.int64)
    npts = clusters[:, layout.C_NPOINTS].astype(np.int64)
    known = np.isfinite(extra).all(axis=1) & (extra != 0).any(axis=1)
    ke = np.where(known, kinetic_energy_mev(extra[:, 0], extra[:, 1]), np.nan)
    out: dict[int, tuple[float, np.ndarray]] = {}
    for g in np.unique(group[group >= 0]):
        rows = np.flatnonzero(group == g)
        voting = rows[(pid[rows] >= 0) & (pid[rows] < layout.PID_NONE)]
        if len(voting):
            votes = np.bincount(pid[voting], weights=npts[voting], minlength=layout.PID_NONE)
            label = int(np.argmax(votes)) if votes.sum() > 0 else int(pid[voting[0]])
            rows = voting[pid[voting] == label]
        energy = np.where(np.isfinite(ke[rows]), ke[rows], -np.inf)
        best = int(rows[int(np.argmax(energy))])
        if known[best]:
            out[int(g)] = (float(ke[best]), extra[best, 2:5].astype(np.float64))
        else:
            out[int(g)] = (float("nan"), np.full(3, np.nan))
    return out


def particle_truth(event: Event) -> tuple[np.ndarray, np.ndarray]:
    """Per point of ``event``: (N,) float32 kinetic energy (MeV) and (N, 3) float32 start
    point (voxels) of the point's particle instance; NaN for points in none or unknown."""
    table = instance_truth(event)
    keys = np.array(sorted(table), dtype=np.int64)
    energy = np.array([table[g][0] for g in keys] + [np.nan], np.float32)
    start = np.array([table[g][1] for g in keys] + [np.full(3, np.nan)], np.float32).reshape(-1, 3)
    inst = event.instance
    row = np.searchsorted(keys, inst)
    found = (row < len(keys)) & (keys[np.minimum(row, max(len(keys) - 1, 0))] == inst) if len(keys) else \
        np.zeros(len(inst), dtype=bool)
    row = np.where(found, row, len(keys))
    return energy[row], start[row]

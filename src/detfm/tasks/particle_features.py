"""Particle measurements: what a physicist reads off a particle's points to name it.

Pooled backbone features describe a particle by its points' averages; what tells an
electron from a photon sits in a few of them. A photon of a pi0 comes with its partner in
one instance (two showers), a low-energy photon leaves separate Compton pieces, a photon's
shower starts with two overlapping tracks (twice a MIP's dE/dx) and an electron's with one,
and an electron from a vertex touches the other particles there. :func:`particle_features`
measures these per particle, from the voxels and energies alone (no truth):

* size: log points, log energy, log mean and maximum voxel energy, median voxel energy;
* shape: spreads along the principal axes and the length along the first;
* contact: how far the nearest point of another particle of the event lies
  (:func:`~detfm.tasks.set_pooling.contact_distance`, as ``log1p``);
* pieces: the particle's components when voxels up to 1.8 and 3.5 voxels apart count as
  joined: their number, the energy fractions of the largest two, and how many hold > 5 MeV;
* ends: seen from each end of the principal axis (the end nearer another particle first,
  else the narrower one), from the point nearest another particle, and from both ends of
  the largest piece (narrower first): the energy and voxel count per voxel of length within
  2.5 voxels of the line over the first 4, 8 and 16 voxels (dE/dx at the start), the
  transverse spread and the energy within 10 and 20 voxels, the median voxel energy of the
  first 8 voxels, and the contact at the end.

Every value is a ``sign(x) log1p(|x|)`` of the measurement, so that a head can read them
without fitted scales. Measured (docs/results/point_backbones.md, "Particle measurements"):
with these beside the pooled features of a frozen segmentation model, electron efficiency /
purity go from 0.563 / 0.579 to 0.755 / 0.724 (one view, same data and head otherwise).

The cost is a k-d tree per event and a few per particle, on CPU in numpy (~30 ms for an
event of ~8 particles). When the same events come back unchanged (a head trained on kept
backbone outputs), :class:`MeasurementStore` measures each event once.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from detfm.data import PackedBatch
from detfm.tasks.feature_cache import event_keys
from detfm.tasks.set_pooling import CONTACT_CLIP_VOXELS, contact_distance

__all__ = ["PARTICLE_FEATURE_NAMES", "MeasurementStore", "particle_features"]

_LENGTHS = (4, 8, 16)   # voxels along the start direction over which dE/dx is read
_RADII = (10, 20)       # voxels around an end for its transverse spread and energy
_LINE_RADIUS = 2.5      # voxels: what lies this close to the start direction counts as on it
_JOIN = (1.8, 3.5)      # voxels: pieces closer than this are one component
_BIG_PIECE_MEV = 5.0
_SPREAD_20 = 2 * len(_LENGTHS) + 2  # where _seen_from puts the spread within 20 voxels


def _end_names(prefix: str) -> list[str]:
    names = []
    for length in _LENGTHS:
        names += [f"{prefix}_dedx_{length}", f"{prefix}_density_{length}"]
    for radius in _RADII:
        names += [f"{prefix}_spread_{radius}", f"{prefix}_energy_{radius}"]
    return names + [f"{prefix}_median_energy_8"]


PARTICLE_FEATURE_NAMES: tuple[str, ...] = tuple(
    ["log_points", "log_energy", "log_mean_energy", "log_spread_1", "spread_2_over_1", "spread_3_over_1",
     "contact", "log_length", "max_energy", "median_energy", "start_contact", "end_contact"]
    + _end_names("start") + _end_names("end") + _end_names("nearest")
    + [f"{name}_{r}" for r in _JOIN for name in ("log_pieces", "largest_fraction", "second_fraction", "big_pieces")]
    + _end_names("piece_start") + _end_names("piece_end") + ["piece_start_centroid_fraction"])


def _principal(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spreads along the principal axes (descending), the first axis, and each point's
    position along it (from the centroid)."""
    d = x - x.mean(axis=0)
    val, vec = np.linalg.eigh(d.T @ d / len(x) + 1e-9 * np.eye(3))
    return np.sqrt(np.clip(val[::-1], 0.0, None)), vec[:, 2], d @ vec[:, 2]


def _seen_from(x: np.ndarray, e: np.ndarray, start: np.ndarray, fallback: np.ndarray) -> list[float]:
    """The end measurements (:func:`_end_names`) seen from the point ``start``."""
    dist = np.linalg.norm(x - start, axis=1)
    toward = x[dist <= 10].mean(axis=0) - start  # the local direction: to the centroid of what is near
    u = toward / np.linalg.norm(toward) if np.linalg.norm(toward) >= 1.0 else fallback
    rel = x - start
    along = rel @ u
    perp = np.linalg.norm(rel - along[:, None] * u, axis=1)
    out: list[float] = []
    for length in _LENGTHS:
        on = (along >= -1) & (along <= length) & (perp <= _LINE_RADIUS)
        out += [float(e[on].sum()) / length, float(on.sum()) / length]
    for radius in _RADII:
        near = dist <= radius
        out += [float(perp[near].std()) if near.sum() > 1 else 0.0, float(e[near].sum())]
    first = (along >= -1) & (along <= 8) & (perp <= _LINE_RADIUS)
    return out + [float(np.median(e[first])) if first.any() else 0.0]


def _both_ends(x: np.ndarray, e: np.ndarray, axis: np.ndarray, proj: np.ndarray
               ) -> tuple[list[np.ndarray], list[list[float]]]:
    """The two ends along the principal ``axis`` (``proj``: each point's position along it) and
    the end measurements seen from each."""
    ends = [x[int(np.argmin(proj))], x[int(np.argmax(proj))]]
    return ends, [_seen_from(x, e, ends[0], axis), _seen_from(x, e, ends[1], -axis)]


def _pieces(x: np.ndarray, join: float) -> tuple[int, np.ndarray]:
    pairs = cKDTree(x).query_pairs(join, output_type="ndarray")
    n = len(x)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    count, label = connected_components(graph, directed=False)
    return int(count), label


def _one_particle(x: np.ndarray, e: np.ndarray, contact: np.ndarray) -> list[float]:
    n = len(x)
    spread, axis, proj = _principal(x)
    ends, seen = _both_ends(x, e, axis, proj)
    end_contact = [float(contact[np.linalg.norm(x - end, axis=1) <= 6].min()) for end in ends]
    if min(end_contact) < CONTACT_CLIP_VOXELS and abs(end_contact[0] - end_contact[1]) > 2:
        first = int(np.argmin(end_contact))
    else:
        first = int(np.argmin([seen[0][_SPREAD_20], seen[1][_SPREAD_20]]))
    nearest = _seen_from(x, e, x[int(np.argmin(contact))], axis)
    total = float(e.sum())
    out = [np.log1p(n), np.log1p(total), np.log(total / n + 1e-3), np.log1p(spread[0]),
           spread[1] / (spread[0] + 1e-3), spread[2] / (spread[0] + 1e-3), float(contact.min()),
           np.log1p(np.ptp(proj)), float(e.max()), float(np.median(e)),
           end_contact[first], end_contact[1 - first], *seen[first], *seen[1 - first], *nearest]
    for join in _JOIN:
        count, label = _pieces(x, join)
        piece_energy = np.bincount(label, weights=e, minlength=count)
        order = np.argsort(-piece_energy, kind="stable")
        second = piece_energy[order[1]] / total if count > 1 else 0.0
        out += [np.log(count), piece_energy[order[0]] / total, second,
                np.log1p(float((piece_energy > _BIG_PIECE_MEV).sum()))]
    big = label == order[0]  # the largest piece at the wider join
    xb, eb = x[big], e[big]
    _, axis_b, proj_b = _principal(xb)
    piece_ends, piece_seen = _both_ends(xb, eb, axis_b, proj_b)
    first = int(np.argmin([piece_seen[0][_SPREAD_20], piece_seen[1][_SPREAD_20]]))
    centroid = (xb * eb[:, None]).sum(axis=0) / max(float(eb.sum()), 1e-9)
    to_centroid = [float(np.linalg.norm(end - centroid)) for end in piece_ends]
    return out + piece_seen[first] + piece_seen[1 - first] + [to_centroid[first] / (sum(to_centroid) + 1e-3)]


def particle_features(coord: torch.Tensor, energy: torch.Tensor, event: torch.Tensor, particle: torch.Tensor,
                      num_particles: int) -> torch.Tensor:
    """(num_particles, len(PARTICLE_FEATURE_NAMES)) float32 measurements of each particle.

    ``coord`` (P, 3) voxel coordinates, ``energy`` (P,) MeV, ``event`` (P,) each point's event,
    ``particle`` (P,) each point's particle (0..num_particles-1, numbered across the batch; -1:
    in none). A particle without points gets zeros. Computed without gradients, on CPU; the
    result is on ``coord``'s device."""
    width = len(PARTICLE_FEATURE_NAMES)
    out = np.zeros((num_particles, width), dtype=np.float64)
    if num_particles == 0 or coord.shape[0] == 0:
        return torch.zeros(num_particles, width, device=coord.device)
    contact = contact_distance(coord, event, particle).detach().cpu().double().numpy()
    x = coord.detach().cpu().double().numpy()
    e = energy.detach().cpu().double().numpy()
    part = particle.detach().cpu().numpy()
    inside = np.flatnonzero(part >= 0)
    order = inside[np.argsort(part[inside], kind="stable")]
    bounds = np.flatnonzero(np.r_[True, np.diff(part[order]) != 0, True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[a:b]
        out[part[rows[0]]] = _one_particle(x[rows], e[rows], contact[rows])
    out = np.sign(out) * np.log1p(np.abs(out))
    return torch.from_numpy(out).float().to(coord.device)


class MeasurementStore:
    """The measurements of each event of a batch, measured once per event.

    An event is known by its dataset number (``PackedBatch.index``) and, as in
    :mod:`detfm.tasks.feature_cache`, by a checksum of its points: an event whose points
    changed (rotated, cropped) is measured again. A particle's measurements depend only on its
    own event, so a batch assembled from the store equals :func:`particle_features` of the
    batch (tested)."""

    def __init__(self) -> None:
        self._store: dict[int, tuple[int, tuple[float, float], torch.Tensor]] = {}
        self.measured = 0  # events measured (not found in the store)

    def __len__(self) -> int:
        return len(self._store)

    def __call__(self, batch: PackedBatch, particle: torch.Tensor, num_particles: int) -> torch.Tensor:
        """(num_particles, len(PARTICLE_FEATURE_NAMES)): :func:`particle_features` of ``batch``
        with each point's ``particle`` (numbered across the batch, particles within one event)."""
        keys = event_keys(batch)
        if not keys:  # no event numbers: nothing to know the events by
            return particle_features(batch.coord, batch.energy, batch.batch_index(), particle, num_particles)
        inside = particle >= 0
        owner = torch.full((num_particles,), -1, dtype=torch.long, device=particle.device)
        owner.scatter_(0, particle[inside], batch.batch_index()[inside])
        out = torch.zeros(num_particles, len(PARTICLE_FEATURE_NAMES), device=batch.coord.device)
        for b, (event, a, end, checksum) in enumerate(keys):
            rows = (owner == b).nonzero().squeeze(1)
            stored = self._store.get(event)
            if stored is None or stored[:2] != (end - a, checksum) or len(stored[2]) != len(rows):
                own = particle[a:end]
                local = torch.where(own >= 0, torch.searchsorted(rows, own.clamp_min(0)), -1)
                values = particle_features(batch.coord[a:end], batch.energy[a:end],
                                           torch.zeros(end - a, dtype=torch.long, device=own.device), local, len(rows))
                stored = (end - a, checksum, values)
                self._store[event] = stored
                self.measured += 1
            out[rows] = stored[2]
        return out

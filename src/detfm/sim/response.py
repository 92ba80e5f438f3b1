"""Detector response: energy deposits (a ``TruthEvent``) -> labeled voxels (an ``io.Event``).

The last simulator stage. It never changes the physics, so one ``TruthEvent`` rendered
through two :class:`~detfm.sim.detector.DetectorModel` s gives exact twins. Steps:

1. Drift to the anode at x = 0: drift time t = x / v. Each deposit (a step segment) is
   moved as a whole by Gaussian diffusion, sigma_L = sqrt(2 D_L t) along x and
   sigma_T = sqrt(2 D_T t) in y, z (sigma < 2 mm: a rigid shift keeps tracks continuous).
   Its charge is dE / W x R(dE/dx) (recombination survival) x exp(-t / tau) (lifetime).
2. Voxelise (3 mm voxels, 768^3 box; charge leaving the box is lost) and add noise hits.
   Each shifted step segment is shared among all voxels it crosses in proportion to the
   path length in each (:mod:`detfm.sim._voxelize`), so a charged particle lights every
   voxel it passes through, as in Geant4-voxelized data.
   Per voxel: electrons and true dE summed, time = earliest deposit time (truth time in ns,
   not the drift time; 0 for a voxel made only of noise), dx = summed path length in mm,
   value = reconstructed energy from the fixed nominal :data:`~detfm.sim.detector.CALIBRATION`
   (MIP recombination, lifetime correction with the nominal lifetime) x energy scale.
3. Drop voxels below threshold and inside dead regions.
4. Label with the PILArNet rules (:mod:`detfm.sim.labels`: ownership, Supera's size and
   energy cuts, ownership again with low-energy fragments last) and build the event: points
   ordered by cluster, row 0 the low-energy bucket, voxels sorted by (x, y, z) in a cluster.

Random numbers: standard normals for x, y and z of every deposit are drawn first, whatever
the detector (then scaled by its sigmas), and noise after, so detectors that differ only
in diffusion see the same underlying draws ("common random numbers").
"""

from __future__ import annotations

import numpy as np

from detfm.errors import DataFormatError, DetfmError
from detfm.io import Event, layout
from detfm.sim.detector import CALIBRATION, DetectorModel
from detfm.sim.labels import label_owner, semantic_of
from detfm.sim import _voxelize
from detfm.sim.truth import Deposits, Role, TruthEvent

_N = layout.BOX_VOXELS


def drift_time_us(x_cm: np.ndarray, detector: DetectorModel) -> np.ndarray:
    """Drift time (us) from x (cm) to the anode at x = 0; negative x counts as 0."""
    return np.maximum(np.asarray(x_cm, np.float64), 0.0) / detector.drift_velocity_cm_us


def diffusion_sigma_cm(t_us: np.ndarray, detector: DetectorModel) -> tuple[np.ndarray, np.ndarray]:
    """(sigma_L, sigma_T) in cm after drifting ``t_us``: sqrt(2 D t), D in cm^2/s."""
    t_s = np.asarray(t_us, np.float64) * 1e-6
    return (np.sqrt(2.0 * detector.diffusion_long_cm2_s * t_s),
            np.sqrt(2.0 * detector.diffusion_trans_cm2_s * t_s))


def ionization_electrons(de_mev: np.ndarray, dedx_mev_cm: np.ndarray, t_us: np.ndarray,
                         detector: DetectorModel) -> np.ndarray:
    """Electrons reaching the anode: dE / W x R(dE/dx) x exp(-t / tau)."""
    produced = np.asarray(de_mev, np.float64) * 1e6 / detector.w_ion_ev
    return (produced * detector.survival_fraction(dedx_mev_cm)
            * np.exp(-np.asarray(t_us, np.float64) / detector.electron_lifetime_us))


def mev_per_electron(x_voxel: np.ndarray, detector: DetectorModel) -> np.ndarray:
    """Reconstructed MeV per collected electron in voxel column ``x_voxel``.

    Uses the fixed nominal calibration (W / R at a MIP, lifetime correction with the
    nominal lifetime at the voxel centre's drift time) and the detector's energy scale.
    """
    t_us = (np.asarray(x_voxel, np.float64) + 0.5) * layout.VOXEL_SIZE_CM / detector.drift_velocity_cm_us
    return (CALIBRATION.w_ion_ev * 1e-6 / CALIBRATION.r_mip
            * np.exp(t_us / CALIBRATION.lifetime_us) * detector.energy_scale)


def render(truth: TruthEvent, detector: DetectorModel, rng: np.random.Generator) -> Event:
    """The recorded, labeled event that ``detector`` makes of ``truth`` (see module docstring)."""
    if not isinstance(rng, np.random.Generator):
        raise DetfmError(f"render needs a numpy.random.Generator, got {type(rng).__name__}")
    _check_truth(truth)
    dep, frags = truth.deposits, truth.fragments

    # 1. Drift, diffusion (one standard normal per deposit and axis), charge.
    t_us = drift_time_us(dep.pos_cm[:, 0], detector)
    sigma_l, sigma_t = diffusion_sigma_cm(t_us, detector)
    shift = np.stack([sigma_l * rng.standard_normal(len(dep)), sigma_t * rng.standard_normal(len(dep)),
                      sigma_t * rng.standard_normal(len(dep))], axis=1)
    start, end = diffused_segments(dep, shift)
    electrons = ionization_electrons(dep.de_mev, dep.dedx, t_us, detector)

    # 2. Voxelise: each (shifted) step segment is shared among the voxels it crosses in
    # proportion to path length; int64 key (x * 768 + y) * 768 + z sorts by (x, y, z).
    p_key, p_frag, p_de, p_elec, p_dx, p_time = _voxel_entries(start, end, dep, electrons)
    noise_keys, noise_electrons = _noise(detector, rng)
    n_noise = len(noise_keys)
    keys = np.concatenate([p_key, noise_keys])
    frag = np.concatenate([p_frag, np.full(n_noise, -1)]).astype(np.int64)
    elec = np.concatenate([p_elec, noise_electrons])
    de = np.concatenate([p_de, np.zeros(n_noise)])
    dx_mm = np.concatenate([p_dx * 10.0, np.zeros(n_noise)])
    time = np.concatenate([p_time, np.full(n_noise, np.inf)])
    # One sort by (voxel, fragment) groups entries per voxel and per (voxel, fragment); the
    # combined key stays below 2^63 for up to ~2e10 fragments. The stable sort (timsort)
    # profits from the runs that deposits along a track make.
    order = np.argsort(keys * (len(frags) + 1) + (frag + 1), kind="stable")
    keys, frag, de = keys[order], frag[order], de[order]
    new_voxel = np.r_[True, keys[1:] != keys[:-1]] if len(keys) else np.zeros(0, bool)
    starts = np.flatnonzero(new_voxel)
    vkeys = keys[starts]
    vx, vy, vz = vkeys // (_N * _N), (vkeys // _N) % _N, vkeys % _N

    def per_voxel(values: np.ndarray, ufunc: np.ufunc = np.add) -> np.ndarray:
        return ufunc.reduceat(values, starts) if len(starts) else np.zeros(0)

    v_elec = per_voxel(elec[order])
    v_de = per_voxel(de)
    v_dx = per_voxel(dx_mm[order])
    v_time = per_voxel(time[order], np.minimum)
    v_time[np.isinf(v_time)] = 0.0  # voxels made only of noise
    v_value = v_elec * mev_per_electron(vx, detector)

    # 3. Threshold and dead regions.
    keep = v_value >= detector.threshold_mev
    for (x0, x1), (y0, y1), (z0, z1) in detector.dead_regions:
        keep &= ~((vx >= x0) & (vx < x1) & (vy >= y0) & (vy < y1) & (vz >= z0) & (vz < z1))

    # 4. Labels: owner fragment per voxel, the voxel-count and energy cuts on recorded voxels,
    # then ownership again with the fragments that became low-energy ranked last (Supera).
    role = frags.role.astype(np.int64)
    owner = label_owner(np.cumsum(new_voxel) - 1, frag, de, role, len(starts), keep, frags.parent,
                        np.stack([vx, vy, vz], axis=1))

    # 5. The event: cluster row 0 = low-energy bucket, then surviving fragments by id.
    survivors = np.flatnonzero(np.bincount(owner + 1, minlength=len(frags) + 1)[1:])
    row_of_fragment = np.zeros(len(frags) + 1, np.int64)  # index owner + 1; -1 -> row 0
    row_of_fragment[survivors + 1] = np.arange(1, len(survivors) + 1)
    row = row_of_fragment[owner + 1]
    voxel = np.flatnonzero(keep)[_stable_order(row)]  # sorted by key within a cluster
    columns = (vx, vy, vz, v_value, v_de, v_time, v_elec, v_dx)  # layout.POINT_COLUMNS order
    points = np.empty((len(voxel), layout.N_POINT), np.float32)
    for c, values in enumerate(columns):
        points[:, c] = values[voxel]
    return Event(points, *_cluster_tables(truth, survivors, row))


def diffused_segments(dep: Deposits, shift_cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) in cm of every step after diffusion moved it by ``shift_cm`` (K, 3).

    A step's start moves with its own shift. Its end moves with the shift of the next
    deposit when that deposit continues the same track (same fragment, both steps with a
    length, start = this end), else with its own; so a diffused track stays one connected
    line (independent rigid shifts of 3 mm steps by sigma ~ 2 mm would break it into a
    dotted one). Point-like deposits (no length or direction) just move.
    """
    direction = np.zeros((len(dep), 3)) if dep.direction is None else np.asarray(dep.direction, np.float64)
    return _voxelize.diffused_endpoints(np.ascontiguousarray(dep.pos_cm, np.float64),
                                        np.asarray(dep.dx_cm, np.float64), np.ascontiguousarray(direction),
                                        np.ascontiguousarray(shift_cm, np.float64), np.asarray(dep.frag, np.int64))


def _voxel_entries(start_cm: np.ndarray, end_cm: np.ndarray, dep: Deposits, electrons: np.ndarray
                   ) -> tuple[np.ndarray, ...]:
    """(key, fragment, dE, electrons, dx in cm, time) per (voxel, fragment) run of the segments."""
    start = np.ascontiguousarray(start_cm, np.float64) / layout.VOXEL_SIZE_CM
    end = np.ascontiguousarray(end_cm, np.float64) / layout.VOXEL_SIZE_CM
    bound = _voxelize.max_pieces(start, end) if len(start) else np.zeros(1, np.int64)
    return _voxelize.segment_deposits(start, end, dep.frag.astype(np.int64), dep.de_mev.astype(np.float64),
                                      electrons, dep.dx_cm.astype(np.float64), dep.time_ns.astype(np.float64),
                                      _N, int(bound.sum()), int(bound.max()))


def step_pieces(start_cm: np.ndarray, end_cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment row, voxel key, fraction of the segment) for every voxel each segment crosses.

    Segment ``k`` runs from ``start_cm[k]`` to ``end_cm[k]`` (equal: a point). Pieces
    outside the box are dropped, so the fractions of a segment leaving the box sum to < 1.
    """
    start = np.ascontiguousarray(start_cm, np.float64) / layout.VOXEL_SIZE_CM
    end = np.ascontiguousarray(end_cm, np.float64) / layout.VOXEL_SIZE_CM
    capacity = int(_voxelize.max_pieces(start, end).sum()) if len(start) else 0
    return _voxelize.segment_pieces(start, end, _N, capacity)


def _stable_order(row: np.ndarray) -> np.ndarray:
    """Stable argsort of small non-negative ints (int16 lets numpy use a radix sort)."""
    if len(row) and row.max() < np.iinfo(np.int16).max:
        row = row.astype(np.int16)
    return np.argsort(row, kind="stable")


def _noise(detector: DetectorModel, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Keys of noise voxels and their charge (reconstructing to threshold + Exp(mean), x scale)."""
    if detector.noise_hits_per_event <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    n = int(rng.poisson(detector.noise_hits_per_event))
    keys = rng.integers(0, _N**3, size=n, dtype=np.int64)
    value = detector.threshold_mev + rng.exponential(detector.noise_mean_mev, size=n)
    return keys, value * detector.energy_scale / mev_per_electron(keys // (_N * _N), detector)


def _cluster_tables(truth: TruthEvent, survivors: np.ndarray, row: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(clusters, cluster_extra) for the low-energy bucket plus one row per surviving fragment."""
    f = truth.fragments
    empty = Event.empty()
    clusters = np.concatenate([empty.clusters, np.zeros((len(survivors), layout.N_CLUSTER), np.float32)])
    extra = np.concatenate([empty.cluster_extra,
                            np.zeros((len(survivors), layout.N_CLUSTER_EXTRA), np.float32)])
    clusters[:, layout.C_NPOINTS] = np.bincount(row, minlength=len(survivors) + 1)
    clusters[1:, layout.C_FRAGMENT] = survivors
    clusters[1:, layout.C_GROUP] = f.group[survivors]
    clusters[1:, layout.C_INTERACTION] = f.interaction[survivors]
    clusters[1:, layout.C_SEMANTIC] = semantic_of(f.role[survivors])
    clusters[1:, layout.C_PID] = f.pid[survivors]
    extra[1:, 0] = f.mass_mev[survivors]
    extra[1:, 1] = f.momentum_gev[survivors]
    extra[1:, 2:5] = np.asarray(f.vertex_cm, np.float64)[survivors] / layout.VOXEL_SIZE_CM
    return clusters, extra


def _check_truth(truth: TruthEvent) -> None:
    """Raise a DataFormatError naming the field if the truth record is malformed."""
    dep, f = truth.deposits, truth.fragments
    k, n_frag = len(dep.de_mev), len(f.role)

    def bad(field: str, message: str) -> DataFormatError:
        return DataFormatError(message, field=field)

    if np.shape(dep.pos_cm) != (k, 3):
        raise bad("deposits.pos_cm", f"expected shape ({k}, 3), got {np.shape(dep.pos_cm)}")
    for name in ("dx_cm", "time_ns", "frag"):
        if np.shape(getattr(dep, name)) != (k,):
            raise bad(f"deposits.{name}", f"expected shape ({k},), got {np.shape(getattr(dep, name))}")
    for name in ("pid", "pdg", "group", "interaction", "mass_mev", "momentum_gev", "energy_mev"):
        if np.shape(getattr(f, name)) != (n_frag,):
            raise bad(f"fragments.{name}", f"expected shape ({n_frag},), got {np.shape(getattr(f, name))}")
    if np.shape(f.vertex_cm) != (n_frag, 3):
        raise bad("fragments.vertex_cm", f"expected shape ({n_frag}, 3), got {np.shape(f.vertex_cm)}")
    if dep.direction is not None and np.shape(dep.direction) != (k, 3):
        raise bad("deposits.direction", f"expected shape ({k}, 3), got {np.shape(dep.direction)}")
    if dep.direction is not None and not np.isfinite(dep.direction).all():
        raise bad("deposits.direction", "non-finite values (NaN/inf)")
    for name in ("pos_cm", "de_mev", "dx_cm", "time_ns"):
        if not np.isfinite(getattr(dep, name)).all():
            raise bad(f"deposits.{name}", "non-finite values (NaN/inf)")
    if (dep.de_mev < 0).any():
        raise bad("deposits.de_mev", f"negative energy deposit (min {dep.de_mev.min():g} MeV)")
    if (dep.dx_cm < 0).any():
        raise bad("deposits.dx_cm", f"negative step length (min {dep.dx_cm.min():g} cm)")
    if k and ((dep.frag < 0) | (dep.frag >= n_frag)).any():
        raise bad("deposits.frag", f"fragment index out of range [0, {n_frag}) "
                                   f"(min {dep.frag.min()}, max {dep.frag.max()})")
    if f.parent is not None and (np.shape(f.parent) != (n_frag,) or (n_frag and (
            (np.asarray(f.parent) < -1) | (np.asarray(f.parent) >= n_frag)).any())):
        raise bad("fragments.parent", f"expected shape ({n_frag},) with values in [-1, {n_frag})")
    if n_frag and not np.isin(f.role, [r.value for r in Role]).all():
        raise bad("fragments.role", f"unknown role value(s) {sorted(set(f.role.tolist()) - set(Role))}")

"""What `detfm compare` measures in one event file, and the two-sample tests between files.

:func:`collect` reads a file once and keeps, per distribution, the values the plots and
tests need (voxels above the energy threshold only):

* ``points_per_event``, ``energy_per_event`` (MeV), ``energy_per_voxel`` (MeV);
* with labels: voxels per semantic class, cluster sizes (voxels per fragment), the track
  dE/dx profile against residual range, and the longitudinal and lateral energy profiles
  of showers.

Track residual range (no truth needed, so data and simulation are treated alike): a track
cluster of at least :data:`MIN_TRACK_VOXELS` voxels that stays :data:`EDGE_VOXELS` voxels
away from the box walls (so it stops inside rather than leaving) is projected on its
principal axis; its stopping end is the end with more energy in the last 2 cm (the Bragg
peak), and a voxel's residual range is its distance along the axis from that end.

Shower profiles: a shower cluster of at least :data:`MIN_SHOWER_VOXELS` voxels and
:data:`MIN_SHOWER_MEV` MeV is
projected on its energy-weighted principal axis; it starts at the end nearer its
``cluster_extra`` vertex (or, without one, the end with less energy in its first fifth).
Longitudinal depth is in radiation lengths (14.0 cm), lateral distance in cm from the axis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from detfm.data.dataset import iter_file_events
from detfm.errors import DataFormatError, DetfmError
from detfm.io import EventFile, layout

MIN_TRACK_VOXELS = 10
MIN_SHOWER_VOXELS = 20
MIN_SHOWER_MEV = 50.0        # profiles of showers, not of Compton electrons
EDGE_VOXELS = 3
RESIDUAL_RANGE_MAX_CM = 30.0
RADIATION_LENGTH_CM = 14.0   # liquid argon, PDG
N_CLASSES = len(layout.SEMANTIC_CLASSES)


@dataclass
class FileStats:
    """The per-file samples behind every comparison (see the module docstring)."""

    path: str
    events: int = 0
    labeled: bool = False
    format_version: str | None = None
    points_per_event: list[int] = field(default_factory=list)
    energy_per_event: list[float] = field(default_factory=list)
    energy_per_voxel: list[np.ndarray] = field(default_factory=list)
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(N_CLASSES, np.int64))
    cluster_sizes: list[int] = field(default_factory=list)
    tracks: int = 0
    track_rr: list[np.ndarray] = field(default_factory=list)
    track_e: list[np.ndarray] = field(default_factory=list)
    showers: int = 0
    shower_t: list[np.ndarray] = field(default_factory=list)
    shower_r: list[np.ndarray] = field(default_factory=list)
    shower_e: list[np.ndarray] = field(default_factory=list)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def array(self, key: str) -> np.ndarray:
        """A sample as one array (lists of per-event arrays concatenated)."""
        value = getattr(self, key)
        if isinstance(value, list) and value and isinstance(value[0], np.ndarray):
            return np.concatenate(value)
        return np.asarray(value, dtype=np.float64)


def _principal_axis(xyz: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(centre, unit axis) of the largest spread of points ``xyz`` (optionally weighted)."""
    w = np.ones(len(xyz)) if w is None else w
    centre = np.average(xyz, axis=0, weights=w)
    d = xyz - centre
    cov = (d * w[:, None]).T @ d / w.sum()
    _, vecs = np.linalg.eigh(cov)
    return centre, vecs[:, -1]


def track_residual_range(xyz: np.ndarray, e: np.ndarray) -> np.ndarray | None:
    """Residual range (cm) of each voxel of one stopping track, or None if it does not qualify."""
    if len(xyz) < MIN_TRACK_VOXELS:
        return None
    if (xyz < EDGE_VOXELS).any() or (xyz >= layout.BOX_VOXELS - EDGE_VOXELS).any():
        return None  # may leave the box: its end is not a stopping point
    centre, axis = _principal_axis(xyz)
    s = (xyz - centre) @ axis * layout.VOXEL_SIZE_CM
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 3.0:
        return None
    end_lo = e[s < lo + 2.0].sum()
    end_hi = e[s > hi - 2.0].sum()
    return (s - lo) if end_lo >= end_hi else (hi - s)


def shower_profile(xyz: np.ndarray, e: np.ndarray, vertex: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """(depth in X0, lateral distance in cm) of each voxel of one shower, or None."""
    if len(xyz) < MIN_SHOWER_VOXELS or e.sum() < MIN_SHOWER_MEV:
        return None
    centre, axis = _principal_axis(xyz, e)
    s = (xyz - centre) @ axis * layout.VOXEL_SIZE_CM
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1.0:
        return None
    if vertex is not None and np.isfinite(vertex).all() and np.abs(vertex).sum() > 0:
        sv = float((vertex - centre) @ axis * layout.VOXEL_SIZE_CM)
        forward = abs(sv - lo) <= abs(sv - hi)
    else:
        fifth = 0.2 * (hi - lo)
        forward = e[s < lo + fifth].sum() <= e[s > hi - fifth].sum()
    depth = (s - lo) if forward else (hi - s)
    perp = (xyz - centre) - np.outer((xyz - centre) @ axis, axis)
    return depth / RADIATION_LENGTH_CM, np.linalg.norm(perp, axis=1) * layout.VOXEL_SIZE_CM


def _labeled(clusters: np.ndarray) -> bool:
    rows = clusters[clusters[:, layout.C_NPOINTS] > 0]
    sem = rows[:, layout.C_SEMANTIC]
    return bool(len(rows)) and bool(((sem >= 0) & (sem < N_CLASSES)).all())


def collect(path: str | os.PathLike[str], *, energy_threshold: float = layout.DEFAULT_ENERGY_THRESHOLD_MEV,
            max_events: int | None = None) -> FileStats:
    """Read ``path`` once and keep the samples of every distribution (module docstring).

    Raises a :class:`DataFormatError` naming the file and event for an unreadable event or
    one with NaN/inf values, and a :class:`DetfmError` for a file without events or without
    a single voxel above the threshold. A file is labeled if every event with points has
    valid semantic classes; label-based samples stay empty otherwise.
    """
    f = EventFile(path)  # DataFormatError for a missing or non-PILArNet file
    out = FileStats(path=str(path), format_version=_format_version(f.attrs))
    n = len(f) if max_events is None else min(len(f), max_events)
    if n == 0:
        raise DetfmError(f"{path}: the file holds no events")
    labeled = True
    for i, event in iter_file_events(f):
        if i >= n:
            break
        if isinstance(event, DataFormatError):
            raise event
        e = event.energy.astype(np.float64)
        keep = e >= energy_threshold
        out.points_per_event.append(int(keep.sum()))
        out.energy_per_event.append(float(e[keep].sum()))
        out.energy_per_voxel.append(e[keep])
        if event.n_points and not _labeled(event.clusters):
            labeled = False
        if labeled:
            _add_labeled(out, (event.coords[keep].astype(np.float64), e[keep], event.cluster_index[keep],
                               np.asarray(event.clusters)), np.asarray(event.cluster_extra))
    out.events = len(out.points_per_event)
    if sum(out.points_per_event) == 0:
        raise DetfmError(f"{path}: no voxel at or above {energy_threshold:g} MeV in {out.events} event(s)")
    out.labeled = labeled
    if not labeled:  # drop partial label samples of the events read before an unlabeled one
        out.class_counts[:] = 0
        for key in ("cluster_sizes", "track_rr", "track_e", "shower_t", "shower_r", "shower_e"):
            getattr(out, key).clear()
        out.tracks = out.showers = 0
    return out


def _add_labeled(out: FileStats, ev: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                 extra: np.ndarray) -> None:
    xyz, e, row, clusters = ev
    sem_of_row = clusters[:, layout.C_SEMANTIC].astype(np.int64)
    sem = sem_of_row[row]
    out.class_counts += np.bincount(sem, minlength=N_CLASSES)[:N_CLASSES]
    sizes = np.bincount(row, minlength=len(clusters))
    order = np.argsort(row, kind="stable")
    starts = np.r_[0, np.cumsum(sizes)]
    for r in range(1, len(clusters)):  # row 0 is the low-energy bucket, not a fragment
        if sizes[r] == 0:
            continue
        out.cluster_sizes.append(int(sizes[r]))
        idx = order[starts[r]:starts[r + 1]]
        if sem_of_row[r] == layout.TRACK:
            rr = track_residual_range(xyz[idx], e[idx])
            if rr is not None:
                near = rr < RESIDUAL_RANGE_MAX_CM
                out.track_rr.append(rr[near])
                out.track_e.append(e[idx][near])
                out.tracks += 1
        elif sem_of_row[r] == layout.SHOWER:
            vertex = extra[r, 2:5].astype(np.float64) if len(extra) > r else None
            prof = shower_profile(xyz[idx], e[idx], vertex)
            if prof is not None:
                out.shower_t.append(prof[0])
                out.shower_r.append(prof[1])
                out.shower_e.append(e[idx])
                out.showers += 1


def _format_version(attrs: dict[str, object]) -> str | None:
    value = attrs.get("format_version")
    return None if value is None else str(value)


def check_same_layout(files: list[FileStats]) -> None:
    """One clear error if the files declare different format versions of the layout."""
    declared = {f.name: f.format_version for f in files if f.format_version is not None}
    if len(set(declared.values())) > 1:
        listed = ", ".join(f"{name}: {v}" for name, v in declared.items())
        raise DetfmError(f"compare: the files use different layout versions ({listed}); "
                         f"convert them to one layout first")


# ----------------------------------------------------------------------------- tests
def ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: (statistic D, p-value)."""
    if len(a) == 0 or len(b) == 0:
        return float("nan"), float("nan")
    res = stats.ks_2samp(a, b)
    return float(res.statistic), float(res.pvalue)


def weighted_ks(a: np.ndarray, wa: np.ndarray, b: np.ndarray, wb: np.ndarray) -> tuple[float, float]:
    """KS test of two weighted samples (energy-weighted profiles): D between the weighted
    CDFs, p-value from the asymptotic Kolmogorov distribution with the effective sample
    sizes (sum w)^2 / sum w^2."""
    if len(a) == 0 or len(b) == 0 or wa.sum() <= 0 or wb.sum() <= 0:
        return float("nan"), float("nan")
    grid = np.union1d(a, b)

    def cdf(x: np.ndarray, w: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        cum = np.cumsum(w[order]) / w.sum()
        at = np.searchsorted(x[order], grid, side="right")
        return np.where(at > 0, cum[np.maximum(at - 1, 0)], 0.0)

    d = float(np.abs(cdf(a, wa) - cdf(b, wb)).max())
    na = wa.sum() ** 2 / (wa**2).sum()
    nb = wb.sum() ** 2 / (wb**2).sum()
    return d, float(stats.kstwobign.sf(d * np.sqrt(na * nb / (na + nb))))


def chi2_counts(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Chi-square test of homogeneity of two count vectors (classes with no count dropped)."""
    table = np.vstack([a, b]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return float("nan"), float("nan")
    res = stats.chi2_contingency(table)
    return float(res.statistic), float(res.pvalue)

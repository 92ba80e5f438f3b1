"""What is in a set of event files: counts, sizes, label make-up, energies (``detfm info``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from detfm.data.dataset import iter_file_events
from detfm.errors import ConfigError, DataFormatError
from detfm.io import EventFile, layout

N_SEMANTIC = len(layout.SEMANTIC_CLASSES)
N_PID = len(layout.PID_CLASSES) - 1  # pid "none" is not a particle type


@dataclass(frozen=True)
class FileSummary:
    """Summary of one or more event files.

    Point and energy numbers count voxels with value >= ``energy_threshold``. Events that
    cannot be read or fail the load-time check (:func:`detfm.io.event_problems`) are counted in ``bad_events``
    and left out of every other number.

    Attributes:
        files, events_per_file: the files and how many events each holds.
        events: total events; ``empty_events`` of them have no point above the threshold.
        points_min, points_median, points_max, points_total: points per event.
        semantic_points, semantic_energy_mev: per semantic class name; points with no class
            (unlabeled data, code -1 or unknown) are under ``"unlabeled"``.
        pid_counts: particles per pid name (photon ... proton). A particle is one group id
            within an event with at least one point above the threshold; pid "none" is not
            counted.
        energy_total_mev, energy_median_mev: summed voxel value, total and median per event.
    """

    files: tuple[str, ...]
    events_per_file: tuple[int, ...]
    energy_threshold: float
    events: int
    bad_events: int
    empty_events: int
    points_total: int
    points_min: int
    points_median: float
    points_max: int
    semantic_points: dict[str, int]
    semantic_energy_mev: dict[str, float]
    pid_counts: dict[str, int]
    energy_total_mev: float
    energy_median_mev: float

    @property
    def semantic_fractions(self) -> dict[str, float]:
        """Fraction of points per semantic class (point-weighted, sums to 1 if any point)."""
        total = sum(self.semantic_points.values())
        return {k: (v / total if total else 0.0) for k, v in self.semantic_points.items()}


def summarize(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *,
              energy_threshold: float = 0.0) -> FileSummary:
    """Read every event of ``paths`` once and summarise them (a progress bar shows if slow).

    ``energy_threshold`` (MeV) defaults to 0: the file as stored. Pass 0.13 to see what an
    :class:`~detfm.data.EventDataset` with default settings will see.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if len(paths) == 0:
        raise ConfigError("summarize needs at least one file")
    if not (np.isfinite(energy_threshold) and energy_threshold >= 0):
        raise ConfigError(f"energy_threshold must be a finite value >= 0 MeV, got {energy_threshold}")
    files = [EventFile(p) for p in paths]  # raises DataFormatError for missing/corrupt files

    points: list[int] = []
    energies: list[float] = []
    bad = 0
    sem_points = np.zeros(N_SEMANTIC + 1, dtype=np.int64)  # last bin: unlabeled
    sem_energy = np.zeros(N_SEMANTIC + 1, dtype=np.float64)
    pid_counts = np.zeros(N_PID, dtype=np.int64)
    total = sum(len(f) for f in files)
    with tqdm(total=total, desc="summarizing", unit="event", delay=2.0, leave=False) as bar:
        for f in files:
            for _, event in iter_file_events(f):
                bar.update(1)
                if isinstance(event, DataFormatError):
                    bad += 1
                    continue
                e = event.energy
                keep = e >= energy_threshold
                points.append(int(keep.sum()))
                energies.append(float(e[keep].sum(dtype=np.float64)))
                _add_labels(event.clusters, event.cluster_index[keep], e[keep],
                            sem_points, sem_energy, pid_counts)

    pts = np.asarray(points, dtype=np.int64)
    sem_names = [*layout.SEMANTIC_CLASSES, "unlabeled"]
    keep_sem = [k for k in range(N_SEMANTIC + 1) if k < N_SEMANTIC or sem_points[k] > 0]
    return FileSummary(
        files=tuple(str(Path(p)) for p in paths),
        events_per_file=tuple(len(f) for f in files),
        energy_threshold=float(energy_threshold),
        events=total,
        bad_events=bad,
        empty_events=int((pts == 0).sum()),
        points_total=int(pts.sum()),
        points_min=int(pts.min()) if pts.size else 0,
        points_median=float(np.median(pts)) if pts.size else 0.0,
        points_max=int(pts.max()) if pts.size else 0,
        semantic_points={sem_names[k]: int(sem_points[k]) for k in keep_sem},
        semantic_energy_mev={sem_names[k]: float(sem_energy[k]) for k in keep_sem},
        pid_counts={layout.PID_CLASSES[k]: int(pid_counts[k]) for k in range(N_PID)},
        energy_total_mev=float(np.sum(energies)),
        energy_median_mev=float(np.median(energies)) if energies else 0.0,
    )


def _add_labels(clusters: np.ndarray, row_of_point: np.ndarray, energy: np.ndarray,
                sem_points: np.ndarray, sem_energy: np.ndarray, pid_counts: np.ndarray) -> None:
    """Accumulate one event's points/energy per semantic class and its particles per pid."""
    sem = clusters[:, layout.C_SEMANTIC]
    known = (sem >= 0) & (sem < N_SEMANTIC) & (sem == np.round(sem))
    sem_bin = np.where(known, sem, N_SEMANTIC).astype(np.int64)
    point_bin = sem_bin[row_of_point]
    sem_points += np.bincount(point_bin, minlength=N_SEMANTIC + 1)
    sem_energy += np.bincount(point_bin, weights=energy, minlength=N_SEMANTIC + 1)

    # Particles: rows with points above threshold and a real pid, one per group id.
    rows_hit = np.bincount(row_of_point, minlength=len(clusters)) > 0
    pid = clusters[:, layout.C_PID]
    group = clusters[:, layout.C_GROUP].astype(np.int64)
    real = rows_hit & (pid >= 0) & (pid < N_PID) & (pid == np.round(pid))
    if not real.any():
        return
    grouped = real & (group >= 0)
    _, first = np.unique(group[grouped], return_index=True)
    pids = np.concatenate([pid[grouped][first], pid[real & (group < 0)]]).astype(np.int64)
    pid_counts += np.bincount(pids, minlength=N_PID)


def format_summary(summary: FileSummary) -> str:
    """A plain-text table of ``summary`` for the terminal."""
    s = summary
    lines = []
    if len(s.files) == 1:
        lines.append(f"file             {s.files[0]}")
    else:
        lines.append(f"files            {len(s.files)}")
        lines += [f"  {name}  ({n} events)" for name, n in zip(s.files, s.events_per_file, strict=True)]
    lines.append(f"events           {s.events}   (empty: {s.empty_events}, unusable: {s.bad_events}"
                 + (", see `detfm validate`)" if s.bad_events else ")"))
    if s.energy_threshold > 0:
        lines.append(f"threshold        {s.energy_threshold:g} MeV (voxels below are not counted)")
    lines.append(f"points / event   min {s.points_min}   median {s.points_median:g}   "
                 f"max {s.points_max}   total {s.points_total}")
    lines.append(f"energy / event   median {s.energy_median_mev:.1f} MeV   "
                 f"total {s.energy_total_mev:.1f} MeV")
    lines.append("")
    lines.append(f"{'semantic class':<16}{'points':>12}{'fraction':>10}{'energy (MeV)':>15}")
    fractions = s.semantic_fractions
    for name, n in s.semantic_points.items():
        lines.append(f"{name:<16}{n:>12}{fractions[name]:>10.3f}{s.semantic_energy_mev[name]:>15.1f}")
    lines.append("")
    lines.append(f"{'particle (pid)':<16}{'count':>12}")
    for name, n in s.pid_counts.items():
        lines.append(f"{name:<16}{n:>12}")
    return "\n".join(lines)

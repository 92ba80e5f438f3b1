"""Check a file against the PILArNet-M layout and list every violation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from detfm.errors import DataFormatError
from detfm.io import layout
from detfm.io.event import Event
from detfm.io.h5 import EventFile, event_from_raw


@dataclass(frozen=True)
class Violation:
    """One problem found in a file: where it is and what is wrong."""

    path: str
    event: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"event {self.event}" if self.event is not None else "file"
        return f"{self.path}: {where}: {self.field}: {self.message}"


def validate_file(path: str | os.PathLike[str], max_violations: int = 1000) -> list[Violation]:
    """Return every layout violation of ``path`` (empty list: the file is valid).

    Checks that the file opens, has the ``point``/``cluster`` datasets with one row per
    event, that each row reshapes to the documented widths, that cluster sizes add up,
    and that values are finite and in range (coordinates within the 768-voxel box,
    non-negative energies, known semantic and pid codes).
    """
    p = str(path)
    try:
        f = EventFile(path)
    except DataFormatError as exc:
        return [Violation(p, exc.event, exc.field or "file", str(exc).split(": ")[-1])]
    out: list[Violation] = []
    with f:
        if len(f) == 0:
            out.append(Violation(p, None, "point", "the file holds no events"))
        if not f._has_extra:
            out.append(Violation(p, None, "cluster_extra", "dataset missing (optional, but expected)"))
        for i in range(len(f)):
            if len(out) >= max_violations:
                break
            try:
                event = event_from_raw(f.read_raw(i), path=p, index=i)
            except DataFormatError as exc:
                out.append(Violation(p, i, exc.field or "event", str(exc).split(": ")[-1]))
                continue
            out.extend(_check_values(p, i, event.points, event.clusters))
    return out[:max_violations]


def event_problems(points: np.ndarray, clusters: np.ndarray) -> list[tuple[str, str]]:
    """What makes an event unusable by any reader, as ``(field, message)`` pairs (empty: usable).

    The one load-time check: :func:`validate_file` reports these, and every reader (through
    :func:`check_event`) refuses an event that has any. Not finite values, coordinates outside
    the 768-voxel box, negative energies, cluster sizes that are not counts, and semantic or
    pid codes outside their tables (-1 marks unlabeled data and is allowed).
    """
    out: list[tuple[str, str]] = []
    points = points[:, : layout.VALUE + 1]  # what readers use: coordinates and voxel value
    if not np.isfinite(points).all():
        bad = sorted({layout.POINT_COLUMNS[c] for c in np.nonzero(~np.isfinite(points))[1]})
        out.append(("point", f"non-finite values (NaN/inf) in column(s) {bad}"))
        points = np.where(np.isfinite(points), points, 0)
    coords = points[:, :3]
    outside = (coords < 0) | (coords >= layout.BOX_VOXELS)
    if outside.any():
        out.append(("point", (f"{int(outside.any(axis=1).sum())} point(s) with coordinates outside "
                              f"[0, {layout.BOX_VOXELS}) voxels (min {coords.min():.1f}, max {coords.max():.1f})")))
    negative = points[:, layout.VALUE] < 0
    if negative.any():
        out.append(("point", (f"{int(negative.sum())} point(s) with a negative voxel value (energy; "
                              f"min {points[:, layout.VALUE].min():.3g} MeV)")))
    if not np.isfinite(clusters).all():
        out.append(("cluster", "non-finite values (NaN/inf) in the cluster table"))
        return out
    n = clusters[:, layout.C_NPOINTS]
    if (n < 0).any() or (n != np.round(n)).any():
        out.append(("cluster", "n_points must be non-negative integers"))
    sem = clusters[:, layout.C_SEMANTIC]
    bad_sem = sorted(set(sem.tolist()) - set(range(len(layout.SEMANTIC_CLASSES))) - {-1})
    if bad_sem:
        out.append(("cluster", f"unknown semantic class(es) {_codes(bad_sem)} (expected 0-4, or -1 for unlabeled)"))
    pid = clusters[:, layout.C_PID]
    bad_pid = sorted(set(pid.tolist()) - set(range(len(layout.PID_CLASSES))) - {-1})
    if bad_pid:
        out.append(("cluster", f"unknown pid code(s) {_codes(bad_pid)} (expected 0-5, or -1 for unlabeled)"))
    return out


def _codes(values: list[float]) -> list[int | float]:
    return [int(v) if float(v).is_integer() else v for v in values]


def check_event(event: Event, path: str | os.PathLike[str] | None = None, index: int | None = None) -> Event:
    """Return ``event`` if usable; else raise :class:`DataFormatError` naming the file, event and the
    first problem :func:`event_problems` finds."""
    problems = event_problems(event.points, event.clusters)
    if problems:
        field, message = problems[0]
        raise DataFormatError(message, path=None if path is None else str(path), event=index, field=field)
    return event


def _check_values(path: str, i: int, points: np.ndarray, clusters: np.ndarray) -> list[Violation]:
    if len(points) == 0:
        return [Violation(path, i, "point", "event has no points")]
    out = [Violation(path, i, field, message) for field, message in event_problems(points, clusters)]
    rest = points[:, layout.VALUE + 1:]
    if not np.isfinite(rest).all():
        bad = sorted({layout.POINT_COLUMNS[layout.VALUE + 1 + c] for c in np.nonzero(~np.isfinite(rest))[1]})
        out.append(Violation(path, i, "point", f"non-finite values (NaN/inf) in column(s) {bad}"))
    sem = clusters[:, layout.C_SEMANTIC]
    if np.isfinite(sem).all() and (sem == -1).any():
        out.append(Violation(path, i, "cluster", "unlabeled cluster(s) (semantic class -1)"))
    return out

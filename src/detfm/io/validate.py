"""Check a file against the PILArNet-M layout and list every violation."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from detfm.errors import DataFormatError
from detfm.io import layout
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


def _check_values(path: str, i: int, points: np.ndarray, clusters: np.ndarray) -> list[Violation]:
    out: list[Violation] = []
    if len(points) == 0:
        out.append(Violation(path, i, "point", "event has no points"))
        return out
    if not np.isfinite(points).all():
        bad = sorted({layout.POINT_COLUMNS[c] for c in np.nonzero(~np.isfinite(points))[1]})
        out.append(Violation(path, i, "point", f"non-finite values (NaN/inf) in column(s) {bad}"))
    coords = points[:, : 3]
    if ((coords < 0) | (coords >= layout.BOX_VOXELS)).any():
        out.append(Violation(path, i, "point",
                             f"coordinates outside [0, {layout.BOX_VOXELS}) voxels "
                             f"(min {np.nanmin(coords):.1f}, max {np.nanmax(coords):.1f})"))
    if (points[:, layout.VALUE] < 0).any():
        out.append(Violation(path, i, "point", "negative voxel value (energy)"))
    if not np.isfinite(clusters).all():
        out.append(Violation(path, i, "cluster", "non-finite values"))
        return out
    n = clusters[:, layout.C_NPOINTS]
    if (n < 0).any() or (n != np.round(n)).any():
        out.append(Violation(path, i, "cluster", "n_points must be non-negative integers"))
    sem = clusters[:, layout.C_SEMANTIC]
    if not np.isin(sem, np.arange(len(layout.SEMANTIC_CLASSES))).all():
        out.append(Violation(path, i, "cluster", f"unknown semantic class(es) {sorted(set(sem.tolist()) - set(range(5)))}"))
    pid = clusters[:, layout.C_PID]
    if not np.isin(pid, np.arange(len(layout.PID_CLASSES))).all() and not (pid == -1).all():
        out.append(Violation(path, i, "cluster", f"unknown pid code(s) {sorted(set(pid.tolist()) - set(range(6)))}"))
    return out

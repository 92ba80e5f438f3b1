"""Lazy datasets over event files: one point cloud per item, ready for :func:`collate`.

:class:`EventDataset` reads events on demand through :class:`detfm.io.EventFile`, so it
works with DataLoader worker processes (each opens its own HDF5 handle) and never loads a
whole file into memory.

Item numbering. ``dataset[i]`` is the ``i``-th *kept* event (after ``min_points`` and
``subset``). Each sample also carries ``index``: the event's number in the concatenation of
all files *before* any filtering, which :meth:`EventDataset.locate` turns back into (file,
event-in-file). That number is what ``PackedBatch.index`` holds, so predictions can be
written next to the right event even after splitting and filtering.
"""

from __future__ import annotations

import copy
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from tqdm import tqdm

from detfm.data.collate import log_energy_feature
from detfm.data.particle_truth import particle_truth
from detfm.errors import ConfigError, DataFormatError
from detfm.io import Event, EventFile, check_event, event_from_raw, layout

Feature = Literal["log_energy", "energy"]
FEATURES: tuple[str, ...] = ("log_energy", "energy")

LABEL_FIELDS = ("semantic", "pid", "instance", "interaction")


@dataclass(frozen=True, eq=False)
class Sample:
    """One event as numpy arrays, the unit that transforms act on.

    Attributes:
        coord: (N, 3) float32 voxel coordinates (0-767 in the detector box; transforms such
            as rotation may make them non-integer).
        energy: (N,) float32 voxel value in MeV.
        semantic, pid, instance, interaction: (N,) int64 labels, or None when the dataset
            was opened with ``labels=False``.
        index: the event's global number across the dataset's files (see module docstring).
        feat: (N, C) float32 model input features, or None to let the dataset / collate
            compute them from ``energy``.
        particle_energy, particle_start: (N,) and (N, 3) float32 kinetic energy (MeV) and
            start point (voxels) of each point's particle instance, NaN where unknown
            (:mod:`detfm.data.particle_truth`); None without labels.
    """

    coord: np.ndarray
    energy: np.ndarray
    semantic: np.ndarray | None = None
    pid: np.ndarray | None = None
    instance: np.ndarray | None = None
    interaction: np.ndarray | None = None
    index: int = -1
    feat: np.ndarray | None = None
    particle_energy: np.ndarray | None = None
    particle_start: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = self.energy.shape[0] if self.energy.ndim == 1 else -1
        if n < 0 or self.coord.shape != (n, 3):
            raise ValueError(f"Sample needs coord (N, 3) and energy (N,), got {self.coord.shape} "
                             f"and {self.energy.shape}")
        for name in LABEL_FIELDS:
            v = getattr(self, name)
            if v is not None and v.shape != (n,):
                raise ValueError(f"Sample.{name} must have shape ({n},), got {v.shape}")
        if self.feat is not None and (self.feat.ndim != 2 or self.feat.shape[0] != n):
            raise ValueError(f"Sample.feat must have shape ({n}, C), got {self.feat.shape}")
        if self.particle_energy is not None and self.particle_energy.shape != (n,):
            raise ValueError(f"Sample.particle_energy must have shape ({n},), got {self.particle_energy.shape}")
        if self.particle_start is not None and self.particle_start.shape != (n, 3):
            raise ValueError(f"Sample.particle_start must have shape ({n}, 3), got {self.particle_start.shape}")

    @property
    def n_points(self) -> int:
        return int(self.energy.shape[0])

    @property
    def has_labels(self) -> bool:
        return self.semantic is not None

    def select(self, keep: np.ndarray) -> Sample:
        """A new sample with only the points ``keep`` (boolean mask or integer indices)."""
        changes: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                changes[f.name] = v[keep]
        return replace(self, **changes)


Transform = Callable[[Sample, np.random.Generator], Sample]


@dataclass(frozen=True)
class _FileScan:
    """What one pass over a file learns, per event (cached: see :func:`_scan_file`)."""

    counts: np.ndarray   # (E,) int64 points with energy >= threshold
    ok: np.ndarray       # (E,) bool: readable, all coordinates, energies and cluster entries finite
    labeled: np.ndarray  # (E,) bool: every non-empty cluster has a semantic class 0-4


# Per-process cache of scans, keyed by (resolved path, size, mtime, threshold), so that the
# train/val/test datasets over the same files, or a dataset re-created in a notebook, do not
# pass over the files again. A file rewritten in place changes size or mtime and is rescanned.
_SCAN_CACHE: dict[tuple[str, int, int, float], _FileScan] = {}


def _check_event(event: Event, path: Path, local: int) -> Event:
    """Raise :class:`DataFormatError` if the event is unusable (:func:`detfm.io.check_event`: not
    finite, coordinates outside the box, negative energies, unknown class or pid codes).

    The same check as ``detfm validate``, so every reader refuses what validation rejects. It
    comes before any threshold: a NaN or negative energy would otherwise be silently dropped.
    """
    return check_event(event, path, local)


def _read_checked(f: EventFile, local: int) -> Event:
    """Read one event and check it (see :func:`_check_event`)."""
    return _check_event(f[local], f.path, local)


def iter_file_events(f: EventFile, block: int = 64) -> Iterator[tuple[int, Event | DataFormatError]]:
    """Every event of ``f`` in order as ``(number, event)``, or ``(number, error)`` if unusable.

    Reads ``block`` events per HDF5 call (about 10x faster than one at a time) for whole-file
    passes (indexing, summaries). Errors are yielded, not raised, so the caller decides.
    """
    try:
        h5 = h5py.File(f.path, "r")
    except OSError as exc:
        raise DataFormatError(f"not a readable HDF5 file: {exc}", path=str(f.path)) from None
    with h5:
        names = [name for name in layout.DATASETS if name in h5]
        for a in range(0, len(f), block):
            b = min(a + block, len(f))
            try:
                columns = {name: h5[name][a:b] for name in names}
            except (OSError, ValueError, TypeError):
                # A damaged block: read its events one by one so each gets its own verdict.
                for i in range(a, b):
                    try:
                        yield i, _read_checked(f, i)
                    except DataFormatError as exc:
                        yield i, exc
                continue
            for k in range(b - a):
                raw = {name: np.asarray(columns[name][k], dtype=np.float32) for name in names}
                try:
                    event = event_from_raw(raw, path=str(f.path), index=a + k)
                    yield a + k, _check_event(event, f.path, a + k)
                except DataFormatError as exc:
                    yield a + k, exc


def _is_count(x: object) -> bool:
    """True for a non-negative integer (not a bool, not a float)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= 0


def _semantic_ok(event: Event) -> bool:
    rows = event.clusters[event.clusters[:, layout.C_NPOINTS] > 0]
    sem = rows[:, layout.C_SEMANTIC]
    return bool(((sem >= 0) & (sem < len(layout.SEMANTIC_CLASSES)) & (sem == np.round(sem))).all())


def _scan_file(f: EventFile, threshold: float) -> _FileScan:
    """Count each event's points above ``threshold`` and flag unreadable/unlabeled events.

    Reads every event once (the cost of one epoch without a model). A progress bar appears
    only if the pass takes longer than two seconds.
    """
    stat = f.path.stat()
    key = (str(f.path.resolve()), stat.st_size, stat.st_mtime_ns, float(threshold))
    if key in _SCAN_CACHE:
        return _SCAN_CACHE[key]
    n = len(f)
    counts = np.zeros(n, dtype=np.int64)
    ok = np.ones(n, dtype=bool)
    labeled = np.ones(n, dtype=bool)
    with tqdm(total=n, desc=f"indexing {f.path.name}", unit="event", delay=2.0, leave=False) as bar:
        for i, event in iter_file_events(f):
            if isinstance(event, DataFormatError):
                ok[i] = False
            else:
                counts[i] = int(np.count_nonzero(event.energy >= threshold))
                labeled[i] = _semantic_ok(event)
            bar.update(1)
    scan = _FileScan(counts, ok, labeled)
    _SCAN_CACHE[key] = scan
    return scan


def _unlabeled_error(f: EventFile, local: int, event: Event) -> DataFormatError:
    rows = event.clusters[event.clusters[:, layout.C_NPOINTS] > 0]
    codes = sorted({int(c) for c in rows[:, layout.C_SEMANTIC]} - set(range(len(layout.SEMANTIC_CLASSES))))
    return DataFormatError(
        f"no usable semantic labels (codes {codes}; expected 0-4, -1 marks unlabeled data); "
        "open the dataset with labels=False to use it without labels",
        path=str(f.path), event=local, field="cluster")


class EventDataset(torch.utils.data.Dataset[Sample]):
    """Events from one or more files in the PILArNet-M layout, read lazily.

    Args:
        paths: event files (a single path is accepted too).
        energy_threshold: voxels with a value below this (MeV) are dropped, as the reference
            loaders do (PHYSICS.md: 0.13 MeV).
        min_points: events with fewer points than this *after the threshold* are left out.
            Knowing this needs one pass over the files when the dataset is created (cached
            per process; a progress bar shows if it is slow). ``min_points=0`` skips the pass.
        transform: ``transform(sample, rng) -> sample`` applied to every item.
        labels: return per-point labels; raises :class:`DataFormatError` on unlabeled events.
        feature: input feature stored in ``Sample.feat`` when the transform sets none:
            ``"log_energy"`` (normalised to [-1, 1], see :func:`log_energy_feature`) or
            ``"energy"`` (raw MeV).
        seed: base seed of the per-item generators.
        skip_bad_events: leave out events that cannot be read or hold NaN/inf coordinates,
            energies or cluster entries (found by the pass over the files) instead of raising
            :class:`DataFormatError` naming the file, event and field.

    Randomness: item ``i`` is transformed with a generator seeded from
    ``(seed, epoch, sample.index)``, so results do not depend on worker count or order.
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *,
                 energy_threshold: float = layout.DEFAULT_ENERGY_THRESHOLD_MEV,
                 min_points: int = 1, transform: Transform | None = None, labels: bool = True,
                 feature: Feature = "log_energy", seed: int = 0,
                 skip_bad_events: bool = False) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if len(paths) == 0:
            raise ConfigError("EventDataset needs at least one file")
        if not (np.isfinite(energy_threshold) and energy_threshold >= 0):
            raise ConfigError(f"energy_threshold must be a finite value >= 0 MeV, got {energy_threshold}")
        if not _is_count(min_points):
            raise ConfigError(f"min_points must be an integer >= 0, got {min_points}")
        if feature not in FEATURES:
            raise ConfigError(f"unknown feature '{feature}'; choose one of {', '.join(FEATURES)}")
        if not _is_count(seed):
            raise ConfigError(f"seed must be an integer >= 0, got {seed}")
        if transform is not None and not callable(transform):
            raise ConfigError(f"transform must be callable as transform(sample, rng), got {transform!r}")

        self.paths: tuple[Path, ...] = tuple(Path(p) for p in paths)
        self.energy_threshold = float(energy_threshold)
        self.min_points = int(min_points)
        self.transform = transform
        self.labels = labels
        self.feature: Feature = feature
        self.seed = int(seed)
        self.skip_bad_events = skip_bad_events
        self._epoch = 0

        self._files = [EventFile(p) for p in self.paths]  # raises DataFormatError if unusable
        sizes = [len(f) for f in self._files]
        for f, size in zip(self._files, sizes, strict=True):
            if size == 0:
                raise DataFormatError("the file holds no events", path=str(f.path))
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._counts: np.ndarray | None = None

        if self.min_points == 0 and not skip_bad_events:
            self._ids = np.arange(self._starts[-1], dtype=np.int64)
            return
        keep: list[np.ndarray] = []
        counts: list[np.ndarray] = []
        for k, f in enumerate(self._files):
            scan = _scan_file(f, self.energy_threshold)
            if not skip_bad_events and not scan.ok.all():
                bad = int(np.argmin(scan.ok))
                _read_checked(f, bad)  # raises the specific error
                raise DataFormatError("unreadable event", path=str(f.path), event=bad)
            if labels and not scan.labeled[scan.ok].all():
                local = int(np.flatnonzero(scan.ok & ~scan.labeled)[0])
                raise _unlabeled_error(f, local, f[local])
            mask = scan.ok & (scan.counts >= self.min_points)
            keep.append(np.flatnonzero(mask) + self._starts[k])
            counts.append(scan.counts[mask])
        self._ids = np.concatenate(keep).astype(np.int64)
        self._counts = np.concatenate(counts)

    # -- size, epochs, subsets ----------------------------------------------------------

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations (and, with :func:`make_loader`, the order) of an epoch."""
        if not _is_count(epoch):
            raise ConfigError(f"epoch must be an integer >= 0, got {epoch}")
        self._epoch = int(epoch)

    @property
    def event_ids(self) -> np.ndarray:
        """(len,) global event number of each item (the ``index`` of its sample)."""
        return self._ids.copy()

    @property
    def point_counts(self) -> np.ndarray | None:
        """(len,) points per item after the threshold, before transforms (None if not scanned)."""
        return None if self._counts is None else self._counts.copy()

    def subset(self, indices: Sequence[int] | np.ndarray) -> EventDataset:
        """A dataset with only the items ``indices`` (or a boolean mask) of this one.

        Files and cached counts are shared, nothing is re-read. The subset starts at this
        dataset's epoch and has its own :meth:`set_epoch` from then on.
        """
        idx = np.asarray(indices)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"a boolean subset mask needs shape ({len(self)},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"subset indices must lie in [0, {len(self)}), got "
                             f"[{idx.min()}, {idx.max()}]")
        out = copy.copy(self)
        out._ids = self._ids[idx]
        out._counts = None if self._counts is None else self._counts[idx]
        return out

    def locate(self, event_id: int) -> tuple[Path, int]:
        """(file, event number in that file) of a global event number (``Sample.index``)."""
        event_id = operator.index(event_id)
        if not 0 <= event_id < self._starts[-1]:
            raise IndexError(f"event id {event_id} out of range [0, {self._starts[-1]})")
        k = self._file_of(event_id)
        return self.paths[k], int(event_id - self._starts[k])

    def _file_of(self, event_id: int) -> int:
        # Binary search over the cumulative file offsets: O(log files) per item.
        return int(np.searchsorted(self._starts, event_id, side="right")) - 1

    # -- items --------------------------------------------------------------------------

    def __getitem__(self, i: int | tuple[int, int]) -> Sample:
        """Item ``i``; ``dataset[(i, epoch)]`` uses that epoch's augmentations instead of
        :attr:`epoch` (for samplers that run many epochs through one set of workers)."""
        epoch = self._epoch
        if isinstance(i, tuple):
            i, epoch = operator.index(i[0]), operator.index(i[1])
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for a dataset of {len(self)} events")
        event_id = int(self._ids[i])
        k = self._file_of(event_id)
        f, local = self._files[k], event_id - int(self._starts[k])
        event = _read_checked(f, local)
        if self.labels and not _semantic_ok(event):
            raise _unlabeled_error(f, local, event)

        keep = event.energy >= self.energy_threshold
        labels = {}
        if self.labels:
            labels = {name: getattr(event, name)[keep] for name in LABEL_FIELDS}
            truth_energy, truth_start = particle_truth(event)
            labels["particle_energy"] = np.ascontiguousarray(truth_energy[keep])
            labels["particle_start"] = np.ascontiguousarray(truth_start[keep])
        sample = Sample(coord=np.ascontiguousarray(event.coords[keep], dtype=np.float32),
                        energy=np.ascontiguousarray(event.energy[keep], dtype=np.float32),
                        index=event_id, **labels)
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, epoch, event_id])
            sample = self.transform(sample, rng)
        if sample.feat is None:
            sample = replace(sample, feat=self._feature(sample.energy))
        return sample

    def _feature(self, energy: np.ndarray) -> np.ndarray:
        if self.feature == "log_energy":
            return log_energy_feature(energy)[:, None]
        return energy.astype(np.float32)[:, None]

    def __repr__(self) -> str:
        files = ", ".join(p.name for p in self.paths[:3]) + (", ..." if len(self.paths) > 3 else "")
        return (f"EventDataset({len(self)} events from {len(self.paths)} file(s) [{files}], "
                f"energy_threshold={self.energy_threshold}, min_points={self.min_points}, "
                f"labels={self.labels}, feature={self.feature!r})")


def split_indices(n: int, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Split ``range(n)`` at random into parts of the given fractions (e.g. train/val/test).

    The same ``(n, fractions, seed)`` always gives the same parts; each part is sorted
    (reads stay in file order). If the fractions sum to 1 the last part takes the rounding
    remainder; if they sum to less, the rest is left unused.
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    fr = [float(x) for x in fractions]
    if not fr or any(not np.isfinite(x) or x < 0 for x in fr) or sum(fr) > 1 + 1e-9:
        raise ConfigError(f"fractions must be >= 0 and sum to at most 1, got {list(fractions)}")
    order = np.random.default_rng([int(seed), n]).permutation(n)
    sizes = [int(np.floor(x * n + 1e-9)) for x in fr]
    if abs(sum(fr) - 1) <= 1e-9:
        sizes[-1] = n - sum(sizes[:-1])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

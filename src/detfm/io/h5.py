"""Read and write event files in the PILArNet-M HDF5 layout.

Writing goes through a temporary file that is renamed into place only when complete
(see :mod:`detfm.io.atomic`), so an interrupted writer never leaves a partial file.
Reading is lazy: :class:`EventFile` opens the HDF5 file on first access, which lets each
DataLoader worker hold its own handle.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from detfm.errors import DataFormatError
from detfm.io import layout
from detfm.io.atomic import atomic_path
from detfm.io.event import Event

_VLEN_F32 = h5py.vlen_dtype(np.dtype("float32"))


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise DataFormatError("file not found", path=str(path))
    if path.is_dir():
        raise DataFormatError("is a directory, expected an HDF5 file", path=str(path))
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataFormatError(f"not a readable HDF5 file (truncated or corrupt?): {exc}",
                              path=str(path)) from None


class EventFile:
    """Lazy, indexable view of one event file.

    ``len(f)`` is the number of events; ``f[i]`` returns an :class:`Event`. The HDF5 handle
    is opened on first use and re-opened after pickling (e.g. in a DataLoader worker).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        h5 = _open_h5(self.path)
        try:
            missing = [name for name in ("point", "cluster") if name not in h5]
            if missing:
                raise DataFormatError(f"missing dataset(s) {missing}; expected {list(layout.DATASETS)}",
                                      path=str(self.path), field=missing[0])
            self._len = int(h5["point"].shape[0])
            if int(h5["cluster"].shape[0]) != self._len:
                raise DataFormatError(
                    f"'cluster' has {h5['cluster'].shape[0]} events but 'point' has {self._len}",
                    path=str(self.path), field="cluster")
            self._has_extra = "cluster_extra" in h5
            self.attrs: dict[str, Any] = {k: _plain(v) for k, v in h5.attrs.items()}
        finally:
            h5.close()

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        return state

    def _handle(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = _open_h5(self.path)
            self._pid = os.getpid()
        return self._h5

    def close(self) -> None:
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None

    def __enter__(self) -> EventFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[Event]:
        for i in range(len(self)):
            yield self[i]

    def read_raw(self, index: int) -> dict[str, np.ndarray]:
        """The flat arrays of one event, unchecked (used by validation)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"event {index} out of range for {self.path} with {len(self)} events")
        index %= len(self)
        h5 = self._handle()
        out: dict[str, np.ndarray] = {}
        try:
            for name in layout.DATASETS:
                if name in h5:
                    out[name] = np.asarray(h5[name][index], dtype=np.float32)
        except (OSError, ValueError, TypeError) as exc:
            raise DataFormatError(f"cannot read: {exc}", path=str(self.path), event=index) from None
        return out

    def __getitem__(self, index: int) -> Event:
        raw = self.read_raw(index)
        return event_from_raw(raw, path=str(self.path), index=index % len(self))


def event_from_raw(raw: Mapping[str, np.ndarray], *, path: str | None = None,
                   index: int | None = None) -> Event:
    """Reshape flat per-event arrays into an :class:`Event`, checking shapes."""
    point = raw["point"]
    if point.size % layout.N_POINT:
        raise DataFormatError(f"length {point.size} is not a multiple of {layout.N_POINT}",
                              path=path, event=index, field="point")
    points = point.reshape(-1, layout.N_POINT)
    cluster = raw["cluster"]
    n_rows = None
    for width in (layout.N_CLUSTER, layout.N_CLUSTER_V5):
        if cluster.size % width == 0:
            n_rows = cluster.size // width
            if "cluster_extra" in raw and raw["cluster_extra"].size != n_rows * layout.N_CLUSTER_EXTRA:
                continue
            break
    else:
        width = 0
    if n_rows is None or width == 0:
        raise DataFormatError(f"length {cluster.size} is not a multiple of 6 (or 5 in the older layout)",
                              path=path, event=index, field="cluster")
    clusters = cluster.reshape(-1, width)
    if width == layout.N_CLUSTER_V5:
        clusters = np.concatenate(
            [clusters, np.full((len(clusters), 1), layout.PID_NONE, np.float32)], axis=1)
    extra = raw.get("cluster_extra")
    if extra is None:
        extra = np.zeros((len(clusters), layout.N_CLUSTER_EXTRA), np.float32)
    elif extra.size != len(clusters) * layout.N_CLUSTER_EXTRA:
        raise DataFormatError(
            f"length {extra.size} does not match {len(clusters)} clusters x {layout.N_CLUSTER_EXTRA}",
            path=path, event=index, field="cluster_extra")
    else:
        extra = extra.reshape(-1, layout.N_CLUSTER_EXTRA)
    n_from_clusters = int(clusters[:, layout.C_NPOINTS].sum()) if len(clusters) else 0
    if n_from_clusters != len(points):
        raise DataFormatError(
            f"cluster n_points sum to {n_from_clusters} but the event has {len(points)} points",
            path=path, event=index, field="cluster")
    return Event(points, clusters, extra)


class EventWriter:
    """Stream events into a new file in the PILArNet-M layout, atomically.

    Use as a context manager; the file appears under its final name only if the block
    finishes without an exception. A sha256 of all event arrays is stored as the
    ``content_sha256`` attribute so a dataset can be cited and verified.
    """

    def __init__(self, path: str | os.PathLike[str], attrs: Mapping[str, Any] | None = None,
                 chunk: int = 256) -> None:
        self.path = Path(path)
        self.attrs = dict(attrs or {})
        self.chunk = chunk
        self._buffer: list[Event] = []
        self._n = 0
        self._hash = hashlib.sha256()

    def __enter__(self) -> EventWriter:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._h5 = h5py.File(tmp, "w")
        for name in layout.DATASETS:
            self._h5.create_dataset(name, shape=(0,), maxshape=(None,), dtype=_VLEN_F32,
                                    chunks=(self.chunk,))
        return self

    def write(self, event: Event) -> None:
        _check_event_shapes(event)
        self._buffer.append(event)
        if len(self._buffer) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        n0, n1 = self._n, self._n + len(self._buffer)
        arrays = {
            "point": [np.ascontiguousarray(e.points, np.float32).ravel() for e in self._buffer],
            "cluster": [np.ascontiguousarray(e.clusters, np.float32).ravel() for e in self._buffer],
            "cluster_extra": [np.ascontiguousarray(e.cluster_extra, np.float32).ravel()
                              for e in self._buffer],
        }
        for e_idx in range(len(self._buffer)):
            for name in layout.DATASETS:
                self._hash.update(arrays[name][e_idx].tobytes())
        for name in layout.DATASETS:
            ds = self._h5[name]
            ds.resize((n1,))
            for k, arr in enumerate(arrays[name]):
                ds[n0 + k] = arr
        self._n = n1
        self._buffer.clear()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        error = exc
        try:
            if error is None:
                self._flush()
                attrs = {"format": "PILArNet-M", "format_version": layout.FORMAT_VERSION,
                         "n_events": self._n, **self.attrs,
                         "content_sha256": self._hash.hexdigest()}
                for key, value in attrs.items():
                    self._h5.attrs[key] = (value if isinstance(value, (int, float, str))
                                           else json.dumps(value, sort_keys=True))
        except BaseException as inner:
            error = inner
            raise
        finally:
            self._h5.close()
            # On error the temporary file is deleted and the target left untouched.
            self._ctx.__exit__(type(error) if error else None, error, None)

    @property
    def content_sha256(self) -> str:
        return self._hash.hexdigest()


def write_events(path: str | os.PathLike[str], events: Iterable[Event],
                 attrs: Mapping[str, Any] | None = None) -> int:
    """Write all ``events`` to ``path`` atomically; return the number written."""
    with EventWriter(path, attrs) as writer:
        for event in events:
            writer.write(event)
        return writer._n + len(writer._buffer)


def read_events(path: str | os.PathLike[str]) -> list[Event]:
    """Read every event of a file into memory (for small files and tests)."""
    with EventFile(path) as f:
        return list(f)


def content_hash(path: str | os.PathLike[str]) -> str:
    """Recompute the sha256 of all event arrays of a file (compare with ``content_sha256``)."""
    h = hashlib.sha256()
    with EventFile(path) as f:
        for i in range(len(f)):
            raw = f.read_raw(i)
            for name in layout.DATASETS:
                if name in raw:
                    h.update(np.ascontiguousarray(raw[name], np.float32).tobytes())
    return h.hexdigest()


def _check_event_shapes(event: Event) -> None:
    p, c, x = event.points, event.clusters, event.cluster_extra
    if p.ndim != 2 or p.shape[1] != layout.N_POINT:
        raise ValueError(f"points must be (N, {layout.N_POINT}), got {p.shape}")
    if c.ndim != 2 or c.shape[1] != layout.N_CLUSTER:
        raise ValueError(f"clusters must be (M, {layout.N_CLUSTER}), got {c.shape}")
    if x.shape != (c.shape[0], layout.N_CLUSTER_EXTRA):
        raise ValueError(f"cluster_extra must be ({c.shape[0]}, {layout.N_CLUSTER_EXTRA}), got {x.shape}")
    if int(c[:, layout.C_NPOINTS].sum()) != p.shape[0]:
        raise ValueError("cluster n_points do not sum to the number of points")


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value

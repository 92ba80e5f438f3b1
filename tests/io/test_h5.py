"""Round trips, bad files and atomic writes of the PILArNet-M layout."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from detfm.errors import DataFormatError
from detfm.io import Event, EventFile, EventWriter, content_hash, layout, read_events, validate_file, write_events


def make_event(rng: np.random.Generator, n_track: int = 20, n_le: int = 3) -> Event:
    n = n_track + n_le
    pts = np.zeros((n, layout.N_POINT), np.float32)
    pts[:, :3] = rng.integers(0, layout.BOX_VOXELS, size=(n, 3))
    pts[:, layout.VALUE] = rng.uniform(0.1, 5.0, n)
    clusters = np.array([[n_le, -1, -1, -1, layout.LOW_ENERGY, layout.PID_NONE],
                         [n_track, 0, 0, 0, layout.TRACK, layout.PID_MUON]], np.float32)
    extra = np.array([[0, 0, 0, 0, 0], [105.7, 0.3, 10, 20, 30]], np.float32)
    return Event(pts, clusters, extra)


def test_round_trip_preserves_arrays_and_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    events = [make_event(rng, n_track=k + 1) for k in range(5)]
    path = tmp_path / "a.h5"
    assert write_events(path, events, {"seed": 7}) == 5
    back = read_events(path)
    assert len(back) == 5
    for a, b in zip(events, back, strict=True):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.clusters, b.clusters)
    ev = back[2]
    assert ev.semantic.tolist() == [4] * 3 + [1] * 3
    assert ev.pid.tolist() == [5] * 3 + [2] * 3
    f = EventFile(path)
    assert f.attrs["seed"] == 7
    assert f.attrs["content_sha256"] == content_hash(path)
    assert validate_file(path) == []


def test_negative_index_and_out_of_range(tmp_path: Path) -> None:
    path = tmp_path / "a.h5"
    write_events(path, [make_event(np.random.default_rng(i), n_track=i + 1) for i in range(3)])
    f = EventFile(path)
    assert f[-1].n_points == f[2].n_points
    with pytest.raises(IndexError, match="out of range"):
        f[3]


def test_reads_older_five_column_cluster_layout(tmp_path: Path) -> None:
    ev = make_event(np.random.default_rng(1))
    path = tmp_path / "old.h5"
    vlen = h5py.vlen_dtype(np.float32)
    with h5py.File(path, "w") as h5:
        for name, arr in (("point", ev.points), ("cluster", ev.clusters[:, :5])):
            ds = h5.create_dataset(name, shape=(1,), dtype=vlen)
            ds[0] = arr.ravel()
    back = EventFile(path)[0]
    assert back.clusters.shape == (2, 6)
    assert (back.pid == layout.PID_NONE).all()
    assert back.semantic.tolist() == ev.semantic.tolist()


def test_interrupted_write_leaves_existing_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "keep.h5"
    write_events(path, [make_event(np.random.default_rng(0))])
    before = path.read_bytes()

    def events():
        yield make_event(np.random.default_rng(1))
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_events(path, events())
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.h5"]  # no temp file left


def test_failed_new_write_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new.h5"
    with pytest.raises(RuntimeError), EventWriter(path) as w:
        w.write(make_event(np.random.default_rng(0)))
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not an hdf5 file at all" * 10])
def test_corrupt_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.h5"
    path.write_bytes(content)
    with pytest.raises(DataFormatError, match="bad.h5.*not a readable HDF5"):
        EventFile(path)


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "t.h5"
    write_events(path, [make_event(np.random.default_rng(i)) for i in range(50)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="t.h5"):
        f = EventFile(path)
        for i in range(len(f)):
            f[i]


def test_missing_file_and_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="file not found"):
        EventFile(tmp_path / "nope.h5")
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as h5:
        h5.create_dataset("something", data=np.zeros(3))
    with pytest.raises(DataFormatError, match="missing dataset"):
        EventFile(path)


def _write_raw(path: Path, point_rows: list[np.ndarray], cluster_rows: list[np.ndarray]) -> None:
    vlen = h5py.vlen_dtype(np.float32)
    with h5py.File(path, "w") as h5:
        for name, rows in (("point", point_rows), ("cluster", cluster_rows)):
            ds = h5.create_dataset(name, shape=(len(rows),), dtype=vlen)
            for i, r in enumerate(rows):
                ds[i] = np.asarray(r, np.float32).ravel()


def test_validate_lists_every_violation_with_event_and_field(tmp_path: Path) -> None:
    good = make_event(np.random.default_rng(0))
    nan_pts = good.points.copy()
    nan_pts[0, layout.VALUE] = np.nan
    neg_pts = good.points.copy()
    neg_pts[1, layout.VALUE] = -1.0
    path = tmp_path / "v.h5"
    _write_raw(path,
               [good.points, nan_pts, neg_pts, good.points[:, :7], np.zeros((0, 8))],
               [good.clusters, good.clusters, good.clusters, good.clusters, np.array([[0, -1, -1, -1, 4, 5]])])
    violations = validate_file(path)
    by_event = {(v.event, v.field) for v in violations}
    assert (1, "point") in by_event and "non-finite" in str([v for v in violations if v.event == 1][0])
    assert (2, "point") in by_event and "negative" in str([v for v in violations if v.event == 2][0])
    assert (3, "point") in by_event  # width 7 is not a multiple of 8... or sums mismatch
    assert (4, "point") in by_event  # empty event
    assert all(v.event != 0 for v in violations if v.field != "cluster_extra")
    assert "v.h5" in str(violations[0])


def test_event_from_raw_rejects_mismatched_counts(tmp_path: Path) -> None:
    good = make_event(np.random.default_rng(0))
    bad_clusters = good.clusters.copy()
    bad_clusters[1, 0] += 5
    path = tmp_path / "m.h5"
    _write_raw(path, [good.points], [bad_clusters])
    with pytest.raises(DataFormatError, match=r"event 0.*cluster.*sum to"):
        EventFile(path)[0]

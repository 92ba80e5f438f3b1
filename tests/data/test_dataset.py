"""EventDataset: indexing, filtering, labels, seeding, subsets, and bad input."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from data_helpers import Files, make_event

from detfm.data import EventDataset, Sample, split_indices
from detfm.data import dataset as dataset_module
from detfm.data.collate import log_energy_feature
from detfm.data.transforms import Compose, RandomRotation, Subsample
from detfm.errors import ConfigError, DataFormatError, DetfmError
from detfm.io import Event, layout, write_events

THRESHOLD = 0.13


def expected_kept(files: Files, min_points: int = 1) -> list[tuple[int, Event]]:
    """(global id, event) of the events a dataset with ``min_points`` should keep."""
    return [(gid, e) for gid, e in enumerate(files.flat)
            if int((e.energy >= THRESHOLD).sum()) >= min_points]


def test_items_match_the_files_after_threshold(two_files: Files) -> None:
    ds = EventDataset(two_files.paths)
    kept = expected_kept(two_files)
    assert len(ds) == len(kept) == 21 - 2  # one empty event, one with all voxels below 0.13 MeV
    for i, (gid, event) in enumerate(kept):
        s = ds[i]
        keep = event.energy >= THRESHOLD
        assert s.index == gid
        assert s.coord.dtype == np.float32 and s.energy.dtype == np.float32
        np.testing.assert_array_equal(s.coord, event.coords[keep])
        np.testing.assert_array_equal(s.energy, event.energy[keep])
        assert s.energy.min() >= THRESHOLD
        for name in ("semantic", "pid", "instance", "interaction"):
            got = getattr(s, name)
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, getattr(event, name)[keep])
        np.testing.assert_allclose(s.feat[:, 0], log_energy_feature(s.energy))


def test_global_index_locates_file_and_event(two_files: Files) -> None:
    ds = EventDataset(two_files.paths, min_points=0)
    assert len(ds) == 21
    assert ds.locate(0) == (two_files.paths[0], 0)
    assert ds.locate(11) == (two_files.paths[0], 11)
    assert ds.locate(12) == (two_files.paths[1], 0)
    assert ds.locate(20) == (two_files.paths[1], 8)
    with pytest.raises(IndexError):
        ds.locate(21)
    with pytest.raises(IndexError):
        ds[21]
    assert ds[-1].index == 20


def test_min_points_filters_and_counts_are_cached(two_files: Files) -> None:
    ds = EventDataset(two_files.paths, min_points=70)
    kept = expected_kept(two_files, 70)
    assert 0 < len(ds) < 19
    assert ds.event_ids.tolist() == [gid for gid, _ in kept]
    assert ds.point_counts.tolist() == [int((e.energy >= THRESHOLD).sum()) for _, e in kept]
    assert all(ds[i].n_points >= 70 for i in range(len(ds)))


def test_scan_is_cached_and_refreshed_when_the_file_changes(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "c.h5"
    rng = np.random.default_rng(5)
    write_events(path, [make_event(rng) for _ in range(4)])
    calls = []
    real = dataset_module.iter_file_events

    def counting(f, block=64):
        for item in real(f, block):
            calls.append(item[0])
            yield item

    monkeypatch.setattr(dataset_module, "iter_file_events", counting)
    EventDataset(path)
    assert len(calls) == 4
    EventDataset(path, min_points=5)  # same threshold: the cached counts serve
    assert len(calls) == 4
    write_events(path, [make_event(rng) for _ in range(6)])
    os.utime(path, ns=(1, 1))  # make sure the mtime differs even on coarse clocks
    assert len(EventDataset(path, min_points=0, skip_bad_events=True)) == 6
    assert len(calls) == 10


def test_empty_events_are_kept_with_min_points_zero(two_files: Files) -> None:
    ds = EventDataset(two_files.paths, min_points=0, transform=Compose([RandomRotation(), Subsample(5)]))
    empty = ds[3]
    assert empty.n_points == 0 and empty.feat.shape == (0, 1) and empty.semantic.shape == (0,)
    assert ds[12 + 2].n_points == 0  # all voxels below threshold
    assert ds.point_counts is None


def test_labels_false_and_energy_feature(two_files: Files) -> None:
    ds = EventDataset(two_files.paths, labels=False, feature="energy")
    s = ds[0]
    assert s.semantic is None and s.pid is None and s.instance is None and s.interaction is None
    np.testing.assert_array_equal(s.feat[:, 0], s.energy)


def test_transform_randomness_depends_only_on_seed_epoch_and_event(two_files: Files) -> None:
    ds = EventDataset(two_files.paths, transform=RandomRotation(), seed=3)
    first = [ds[i].coord for i in range(len(ds))]
    again = [ds[i].coord for i in reversed(range(len(ds)))][::-1]  # other order, same result
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    ds.set_epoch(1)
    assert not np.allclose(ds[0].coord, first[0])
    np.testing.assert_array_equal(ds[(0, 1)].coord, ds[0].coord)  # explicit epoch in the key
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds[0].coord, first[0])
    assert not np.allclose(ds[(0, 1)].coord, first[0])
    other_seed = EventDataset(two_files.paths, transform=RandomRotation(), seed=4)
    assert not np.allclose(other_seed[0].coord, first[0])
    # A subset transforms an event exactly as the full dataset does (keyed by event id).
    sub = ds.subset([5, 2])
    np.testing.assert_array_equal(sub[0].coord, first[5])
    np.testing.assert_array_equal(sub[1].coord, first[2])


def test_subset_and_split_indices(two_files: Files) -> None:
    ds = EventDataset(two_files.paths)
    parts = split_indices(len(ds), [0.6, 0.2, 0.2], seed=1)
    assert [len(p) for p in parts] == [11, 3, 5]
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(ds)))  # disjoint and complete
    again = split_indices(len(ds), [0.6, 0.2, 0.2], seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    assert not np.array_equal(split_indices(len(ds), [0.6, 0.2, 0.2], seed=2)[0], parts[0])
    train = ds.subset(parts[0])
    assert len(train) == 11
    assert train.event_ids.tolist() == ds.event_ids[parts[0]].tolist()
    assert [train[i].index for i in range(len(train))] == train.event_ids.tolist()
    assert len(ds) == 19  # the parent is unchanged
    assert [len(p) for p in split_indices(100, [0.5, 0.25], seed=0)] == [50, 25]
    with pytest.raises(IndexError):
        ds.subset([19])
    mask = np.zeros(len(ds), bool)
    mask[[1, 4]] = True
    assert ds.subset(mask).event_ids.tolist() == ds.event_ids[[1, 4]].tolist()
    with pytest.raises(IndexError, match="mask"):
        ds.subset(mask[:-1])
    for bad in ([0.7, 0.5], [-0.1, 0.5], []):
        with pytest.raises(ConfigError, match="fractions"):
            split_indices(10, bad)


def test_single_path_is_accepted(two_files: Files) -> None:
    assert len(EventDataset(str(two_files.paths[1]))) == 8


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="file not found") as info:
        EventDataset([tmp_path / "nope.h5"])
    assert "nope.h5" in str(info.value)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 50)
    with pytest.raises(DataFormatError, match="corrupt.h5"):
        EventDataset([corrupt])


def _nan_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(9)
    events = [make_event(rng) for _ in range(3)]
    points = events[1].points.copy()
    points[2, layout.VALUE] = np.nan
    events[1] = Event(points, events[1].clusters, events[1].cluster_extra)
    path = tmp_path / "nan.h5"
    write_events(path, events)
    return path


def test_nan_energy_is_reported_or_skipped(tmp_path: Path) -> None:
    path = _nan_file(tmp_path)
    with pytest.raises(DataFormatError) as info:
        EventDataset([path])  # found by the indexing pass
    msg = str(info.value)
    assert "nan.h5" in msg and "event 1" in msg and "'point'" in msg and "value" in msg
    lazy = EventDataset([path], min_points=0)  # no pass: found when the event is read
    lazy[0]
    with pytest.raises(DataFormatError, match="event 1"):
        lazy[1]
    skipping = EventDataset([path], skip_bad_events=True)
    assert skipping.event_ids.tolist() == [0, 2]


def test_labels_on_unlabeled_data(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = tmp_path / "unlabeled.h5"
    write_events(path, [make_event(rng, labeled=False) for _ in range(3)])
    with pytest.raises(DataFormatError, match="labels=False") as info:
        EventDataset([path])
    assert "unlabeled.h5" in str(info.value) and "event 0" in str(info.value)
    with pytest.raises(DataFormatError, match="labels=False"):
        EventDataset([path], min_points=0)[2]
    ds = EventDataset([path], labels=False)
    assert len(ds) == 3 and ds[0].semantic is None


@pytest.mark.parametrize("kwargs, match", [
    ({"energy_threshold": -1.0}, "energy_threshold"),
    ({"energy_threshold": float("nan")}, "energy_threshold"),
    ({"min_points": -2}, "min_points"),
    ({"min_points": 1.5}, "min_points"),
    ({"feature": "charge"}, "feature"),
    ({"seed": -1}, "seed"),
    ({"transform": 3}, "transform"),
])
def test_bad_options(two_files: Files, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EventDataset(two_files.paths, **kwargs)


def test_no_files_and_bad_epoch(two_files: Files) -> None:
    with pytest.raises(DetfmError, match="at least one file"):
        EventDataset([])
    with pytest.raises(ConfigError, match="epoch"):
        EventDataset(two_files.paths).set_epoch(-1)


def test_sample_checks_shapes() -> None:
    with pytest.raises(ValueError, match="coord"):
        Sample(coord=np.zeros((3, 2), np.float32), energy=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="semantic"):
        Sample(coord=np.zeros((3, 3), np.float32), energy=np.zeros(3, np.float32),
               semantic=np.zeros(2, np.int64))


def test_whole_file_pass_survives_a_damaged_block(two_files: Files, monkeypatch) -> None:
    """If a block read fails, events are read one by one: same events, same verdicts."""
    from detfm.io import EventFile

    f = EventFile(two_files.paths[1])
    good = [(i, e.n_points) for i, e in dataset_module.iter_file_events(f, block=4)]
    real_getitem = h5py.Dataset.__getitem__

    def failing_slices(self, key):
        if isinstance(key, slice):
            raise OSError("simulated damaged chunk")
        return real_getitem(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", failing_slices)
    assert [(i, e.n_points) for i, e in dataset_module.iter_file_events(f, block=4)] == good
    assert len(good) == 9

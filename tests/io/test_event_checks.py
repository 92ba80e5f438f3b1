"""One load-time check: what ``validate`` rejects, every reader refuses, naming file, event and field."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from detfm.errors import DataFormatError
from detfm.io import Event, check_event, event_problems, layout, validate_file, write_events


def _event(n: int = 4) -> Event:
    points = np.zeros((n, layout.N_POINT), np.float32)
    points[:, :3] = np.arange(n * 3, dtype=np.float32).reshape(n, 3) + 10
    points[:, layout.VALUE] = 1.0
    clusters = np.array([[0, -1, -1, -1, 4, 5], [n, 0, 0, 0, 1, 2]], np.float32)
    return Event(points, clusters, np.zeros((2, layout.N_CLUSTER_EXTRA), np.float32))


def _set_point(column: int, value: float) -> Callable[[Event], Event]:
    def change(e: Event) -> Event:
        points = e.points.copy()
        points[1, column] = value
        return dataclasses.replace(e, points=points)
    return change


def _set_cluster(column: int, value: float) -> Callable[[Event], Event]:
    def change(e: Event) -> Event:
        clusters = e.clusters.copy()
        clusters[1, column] = value
        return dataclasses.replace(e, clusters=clusters)
    return change


BAD = {
    "nan energy": (_set_point(layout.VALUE, np.nan), r"non-finite values .*'value'"),
    "negative energy": (_set_point(layout.VALUE, -1.0), r"1 point\(s\) with a negative voxel value"),
    "x beyond the box": (_set_point(layout.X, 768.0), r"coordinates outside \[0, 768\)"),
    "negative y": (_set_point(layout.Y, -0.5), r"coordinates outside \[0, 768\)"),
    "semantic class 9": (_set_cluster(layout.C_SEMANTIC, 9), r"unknown semantic class\(es\) \[9\]"),
    "pid code 7": (_set_cluster(layout.C_PID, 7), r"unknown pid code\(s\) \[7\]"),
}


def test_a_good_event_has_no_problems() -> None:
    e = _event()
    assert event_problems(e.points, e.clusters) == []
    assert check_event(e, "f.h5", 0) is e
    unlabeled = _set_cluster(layout.C_SEMANTIC, -1)(_set_cluster(layout.C_PID, -1)(e))
    assert event_problems(unlabeled.points, unlabeled.clusters) == []  # -1: unlabeled data


@pytest.mark.parametrize("name", list(BAD))
def test_validate_and_every_reader_agree(name: str, tmp_path: Path) -> None:
    from detfm.data import EventDataset

    change, message = BAD[name]
    path = tmp_path / "bad.h5"
    write_events(path, [_event(), change(_event()), _event()])
    violations = validate_file(path)
    assert [(v.event, v.field) for v in violations if v.event is not None][:1] == \
        [(1, "cluster" if "code" in name or "class" in name else "point")]
    assert any(re.search(message, v.message) for v in violations)
    for min_points in (0, 1):  # with and without the pass over the file at creation
        with pytest.raises(DataFormatError, match=rf"bad\.h5, event 1, field '\w+': .*{message}"):
            ds = EventDataset([path], min_points=min_points, labels=False)
            [ds[i] for i in range(len(ds))]
    ds = EventDataset([path], min_points=1, labels=False, skip_bad_events=True)
    assert len(ds) == 2


def test_files_without_events_are_refused(tmp_path: Path) -> None:
    from detfm.data import EventDataset

    path = tmp_path / "empty.h5"
    write_events(path, [])
    assert [v.message for v in validate_file(path)] == ["the file holds no events"]
    with pytest.raises(DataFormatError, match=r"empty\.h5: the file holds no events"):
        EventDataset([path], min_points=0, labels=False)

"""summarize() / format_summary(): numbers checked against the events written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_helpers import Files, make_event

from detfm.data import format_summary, summarize
from detfm.errors import ConfigError, DataFormatError
from detfm.io import Event, layout, write_events


def _expected_particles(events: list[Event], threshold: float) -> dict[str, int]:
    counts = dict.fromkeys(layout.PID_CLASSES[:-1], 0)
    for e in events:
        seen = set()
        keep = e.energy >= threshold
        for row in np.unique(e.cluster_index[keep]):
            group, pid = int(e.clusters[row, layout.C_GROUP]), int(e.clusters[row, layout.C_PID])
            if pid != layout.PID_NONE and group not in seen:
                seen.add(group)
                counts[layout.PID_CLASSES[pid]] += 1
    return counts


@pytest.mark.parametrize("threshold", [0.0, 0.13])
def test_numbers_match_the_events(two_files: Files, threshold: float) -> None:
    s = summarize(two_files.paths, energy_threshold=threshold)
    events = two_files.flat
    n_points = np.array([int((e.energy >= threshold).sum()) for e in events])
    assert s.events == 21 and s.events_per_file == (12, 9) and s.bad_events == 0
    assert s.empty_events == int((n_points == 0).sum()) == (1 if threshold == 0 else 2)
    assert (s.points_min, s.points_max, s.points_total) == (n_points.min(), n_points.max(), n_points.sum())
    assert s.points_median == np.median(n_points)
    sem = np.concatenate([e.semantic[e.energy >= threshold] for e in events])
    assert s.semantic_points == {name: int((sem == k).sum()) for k, name in enumerate(layout.SEMANTIC_CLASSES)}
    assert sum(s.semantic_fractions.values()) == pytest.approx(1.0)
    energy = np.concatenate([e.energy[e.energy >= threshold] for e in events]).astype(np.float64)
    assert s.energy_total_mev == pytest.approx(energy.sum(), rel=1e-9)
    assert sum(s.semantic_energy_mev.values()) == pytest.approx(energy.sum(), rel=1e-9)
    assert s.pid_counts == _expected_particles(events, threshold)
    # Two fragments share each group id: particles are fewer than labelled clusters.
    n_rows = sum(int(((e.clusters[:, layout.C_PID] < 5) & (e.clusters[:, layout.C_NPOINTS] > 0)).sum())
                 for e in events)
    assert 0 < sum(s.pid_counts.values()) < n_rows


def test_format_summary_is_a_readable_table(two_files: Files) -> None:
    s = summarize(two_files.paths)
    text = format_summary(s)
    assert "a.h5  (12 events)" in text and "b.h5  (9 events)" in text
    assert f"events           21   (empty: {s.empty_events}" in text
    track_line = next(line for line in text.splitlines() if line.startswith("track"))
    assert track_line.split()[1] == str(s.semantic_points["track"])
    assert f"{s.semantic_fractions['track']:.3f}" in track_line
    muon_line = next(line for line in text.splitlines() if line.startswith("muon"))
    assert muon_line.split()[1] == str(s.pid_counts["muon"])
    single = format_summary(summarize(two_files.paths[0], energy_threshold=0.13))
    assert single.startswith("file ") and "threshold        0.13 MeV" in single


def test_bad_and_unlabeled_events_are_counted_not_fatal(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    events = [make_event(rng) for _ in range(3)] + [make_event(rng, labeled=False)]
    points = events[0].points.copy()
    points[0, layout.X] = np.inf
    events[0] = Event(points, events[0].clusters, events[0].cluster_extra)
    path = tmp_path / "mixed.h5"
    write_events(path, events)
    s = summarize([path])
    assert s.events == 4 and s.bad_events == 1
    assert s.semantic_points["unlabeled"] == events[3].n_points
    assert "unlabeled" in format_summary(s)
    assert s.points_total == sum(e.n_points for e in events[1:])


def test_bad_input(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="missing.h5"):
        summarize([tmp_path / "missing.h5"])
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataFormatError, match="text.h5"):
        summarize(tmp_path / "text.h5")
    with pytest.raises(ConfigError):
        summarize([])

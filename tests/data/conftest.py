"""Small synthetic event files for the data-layer tests (written with detfm.io.write_events)."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import Files, below_threshold_event, make_event

from detfm.io import Event, write_events


@pytest.fixture(scope="session")
def two_files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    """File a.h5: 12 events, event 3 empty. File b.h5: 9 events, event 2 all below threshold."""
    rng = np.random.default_rng(1234)
    a = [make_event(rng) for _ in range(12)]
    a[3] = Event.empty()
    b = [make_event(rng, n_clusters=6) for _ in range(9)]
    b[2] = below_threshold_event(rng)
    folder = tmp_path_factory.mktemp("events")
    paths = (folder / "a.h5", folder / "b.h5")
    write_events(paths[0], a)
    write_events(paths[1], b)
    return Files(paths, (tuple(a), tuple(b)))



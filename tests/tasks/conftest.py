"""Keep torch on few threads: the suite shares 2 cores with everything else."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from detfm.data import EventDataset
from detfm.sim.simulate import SimConfig, simulate_to_file


@pytest.fixture(autouse=True)
def _few_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def pid_events(tmp_path_factory: pytest.TempPathFactory) -> EventDataset:
    """Three small simulated events with labels (particle instances), for the PID heads."""
    path = tmp_path_factory.mktemp("pid_events") / "ev.h5"
    simulate_to_file(SimConfig(events=3, seed=4), path, progress=False)
    return EventDataset([path], min_points=32, labels=True)

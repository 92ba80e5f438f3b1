"""Fixtures shared by the whole suite: one torch thread per test, a tiny event file, a tiny pretraining run.

The builders and the tiny model sizes live in ``detfm_testing`` (importable from every test module, as
this folder is on ``sys.path`` once this file is loaded).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from detfm_testing import one_torch_thread, pretrain_tiny, simulate_events


@pytest.fixture(autouse=True)
def _single_torch_thread() -> Iterator[None]:
    """Keep torch on one intra-op thread during each test: the suite shares few cores.

    Only where torch is already loaded: tests that never use it do not pay for importing it.
    """
    if "torch" not in sys.modules:
        yield
        return
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 simulated events (seed 5), shared read-only by every test that asks for them."""
    return simulate_events(tmp_path_factory.mktemp("tiny_events") / "ev.h5")


@pytest.fixture(scope="session")
def tiny_pretrained(tiny_events: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A (barely) pretrained ``pointmae_micro`` run on :func:`tiny_events`: 2 steps of masked point
    modeling with the ``TINY`` model sizes. Shared read-only: copy it before changing anything."""
    return pretrain_tiny(tiny_events, tmp_path_factory.mktemp("tiny_pretrained") / "pre")

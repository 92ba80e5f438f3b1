"""Shared building blocks of the test suite: tiny model sizes, a tiny event file, a tiny pretraining run.

Test modules import the constants directly (``from detfm_testing import TINY``); ``tests/conftest.py``
puts this folder on ``sys.path`` and wraps the builders as session-scoped fixtures. The dictionaries
are shared between modules: pass them on, never change them in place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Two transformer blocks over 32 patches of 16 points: the backbone of the adaptation and audit runs.
TINY: dict[str, Any] = {"num_groups": 32, "radius": 12.0, "cover_radius": 12.0, "group_size": 16, "depth": 2}

# One block over 16 patches: fine-tune runs and task outputs that only need something to run.
TINY_SHALLOW: dict[str, Any] = {"num_groups": 16, "radius": 12.0, "cover_radius": 12.0, "group_size": 16,
                                "depth": 1}

# A small random-init backbone: one block, few patches, narrow (0.2 s for 8 events on 1 core).
TINY_NARROW: dict[str, Any] = {"depth": 1, "num_groups": 128, "embed_dim": 48, "pointnet_hidden": (32, 64)}

# The shared event file: 20 simulated events, simulation seed 5.
TINY_EVENTS = 20
TINY_EVENTS_SEED = 5

# The shared pretraining run: 2 steps of masked point modeling on the shared event file.
TINY_PRETRAIN_STEPS = 2


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the block with torch on one intra-op thread, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def simulate_events(path: Path, events: int = TINY_EVENTS, seed: int = TINY_EVENTS_SEED) -> Path:
    """Simulate ``events`` events with seed ``seed`` into ``path`` (no progress bar); return ``path``."""
    from detfm.sim.simulate import SimConfig, simulate_to_file

    simulate_to_file(SimConfig(events=events, seed=seed), path, progress=False)
    return path


def pretrain_tiny(events: Path, out: Path) -> Path:
    """A (barely) pretrained ``pointmae_micro`` run of size :data:`TINY` on ``events`` in ``out``:
    :data:`TINY_PRETRAIN_STEPS` steps of masked point modeling, batches of 2."""
    from detfm.engine import TrainConfig
    from detfm.pretrain import DataConfig, PretrainConfig, run_pretrain

    with one_torch_thread():
        train = TrainConfig(steps=TINY_PRETRAIN_STEPS, batch_size=2, warmup_steps=1, progress=False)
        run_pretrain(PretrainConfig(model="pointmae_micro", model_overrides=TINY,
                                    data=DataConfig(paths=(str(events),), rotate=False), train=train), out)
    return out

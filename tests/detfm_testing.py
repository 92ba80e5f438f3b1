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
    from detfm.recipes.pretrain import DataConfig, PretrainConfig, run_pretrain

    with one_torch_thread():
        train = TrainConfig(steps=TINY_PRETRAIN_STEPS, batch_size=2, warmup_steps=1, progress=False)
        run_pretrain(PretrainConfig(model="pointmae_micro", model_overrides=TINY,
                                    data=DataConfig(paths=(str(events),), rotate=False), train=train), out)
    return out


def tiny_finetune_config(events: Path, **kw: Any) -> Any:
    """A 2-step ``head`` fine-tune from scratch of size :data:`TINY_SHALLOW` on 4 labeled events of
    ``events`` (no rotation), with ``kw`` as further :class:`FinetuneConfig` fields."""
    from detfm.engine import TrainConfig
    from detfm.recipes.adapt import FinetuneConfig
    from detfm.recipes.pretrain import DataConfig

    train = TrainConfig(steps=2, batch_size=2, warmup_steps=1, lr=3e-3, progress=False, log_every=1)
    data = DataConfig(paths=(str(events),), rotate=False)
    return FinetuneConfig(backbone="scratch", model_overrides=TINY_SHALLOW, labels=4, mode="head", data=data,
                          train=train, **kw)


def energy_logits_task(weights: tuple[float, ...] = (1.0, 0.0, -1.0, 0.0, -2.0)) -> Any:
    """A point task whose logits are ``log(energy) * weights``: outputs known in advance, for the
    test-time steps that wrap a task (orientation average, fragment vote, fragment classifier)."""
    import torch
    from torch import nn

    class EnergyLogitsTask(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.tensor([list(weights)]))

        def forward_logits(self, batch: Any) -> Any:
            return batch.energy.unsqueeze(1).log() @ self.w

        def scored_items(self, batch: Any) -> Any:
            return batch.semantic, self.forward_logits(batch)

        def item_outputs(self, batch: Any) -> Any:
            return self.forward_logits(batch), batch.batch_index(), torch.arange(batch.num_points)

    return EnergyLogitsTask()


def check_point_step(step: Any, batch: Any, expected: Any) -> None:
    """``step`` (a :class:`~detfm.evaluate.fragments.PointProbabilityStep`) answers all three
    point-task questions with the log of ``expected`` (its probabilities for ``batch``), keeping
    the wrapped task's labels, events and positions."""
    import torch

    with torch.no_grad():
        logp = step.forward_logits(batch)
        labels, scored = step.scored_items(batch)
        items, event, position = step.item_outputs(batch)
    assert torch.allclose(torch.softmax(logp, dim=-1), expected, atol=1e-6)
    assert torch.equal(labels, batch.semantic) and torch.equal(scored, logp) and torch.equal(items, logp)
    assert torch.equal(event, batch.batch_index()) and torch.equal(position, torch.arange(batch.num_points))


# ----------------------------------------------------------------------------- test model families
# Two families registered only for the tests (``list_models("*_test")``): a tiny patch transformer
# and a trivial per-point network, so that every generic code path is exercised by two backbones
# that share nothing but the contract of ``detfm.models.contract``.
TEST_MODELS = ("pointmae_test", "pointwise_test")


def register_test_models() -> None:
    """Register the ``*_test`` models (idempotent)."""
    from detfm.models import PointMAE, PointMAEConfig, list_models, register_model

    if list_models("*_test"):
        return
    register_model("pointmae_test", PointMAEConfig(embed_dim=32, num_heads=2, pointnet_hidden=(16, 32))
                   .replace(**TINY_SHALLOW),
                   "tiny patch transformer for tests", PointMAE)
    register_model("pointwise_test", _pointwise_config()(width=16, depth=2),
                   "tiny per-point MLP for tests", _pointwise_class())


def _pointwise_config() -> Any:
    from dataclasses import dataclass

    from detfm.models.config import ModelConfig, config_class, register_arch

    try:
        return config_class("pointwise")
    except Exception:  # first call: define and register it
        pass

    @register_arch
    @dataclass(frozen=True)
    class PointwiseConfig(ModelConfig):
        """A per-point residual MLP on (normalised coordinates, input features)."""

        name: str = "pointwise"
        arch: str = "pointwise"
        width: int = 16
        depth: int = 2

    return PointwiseConfig


def _pointwise_class() -> Any:
    import torch
    from torch import nn

    from detfm.data.datasets import get_dataset
    from detfm.models.contract import BackboneOutput
    from detfm.models.layers import seeded_init

    class Pointwise(nn.Module):
        """Each point alone: no neighbours, no patches; the smallest thing the contract allows."""

        def __init__(self, cfg: Any) -> None:
            super().__init__()
            self.cfg = cfg
            self.spec = get_dataset(cfg.dataset)
            with seeded_init(cfg.seed):
                self.stem = nn.Linear(3 + cfg.in_channels, cfg.width)
                self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.width),
                                                          nn.GELU()) for _ in range(cfg.depth))
                self.norm = nn.LayerNorm(cfg.width)
                self.mask_token = nn.Parameter(torch.zeros(1, cfg.width))

        @property
        def default_cfg(self) -> Any:
            return self.cfg

        @property
        def num_features(self) -> int:
            return int(self.cfg.width)

        @property
        def num_local_features(self) -> int:
            return 0

        def group_matcher(self) -> list[tuple[str, tuple[int, ...]]]:
            return [(r"^(?:stem|mask_token)", (0,)), (r"^blocks\.(\d+)\.", (1,)), (r"^norm\.", (2,))]

        def lora_targets(self) -> list[str]:
            return [f"blocks.{i}.1" for i in range(self.cfg.depth)]

        def forward_intermediates(self, batch: Any, layers: Any = None, norm: bool = False,
                                  generator: torch.Generator | None = None, mask: Any = None
                                  ) -> tuple[BackboneOutput, list[Any]]:
            x = self.stem(torch.cat([self.spec.normalise(batch.coord.float()), batch.feat.float()], dim=1))
            if mask is not None:  # hidden points lose their inputs to the mask token
                x = torch.where(mask[:, None], self.stem.bias + self.mask_token, x)
            kept = []
            for block in self.blocks:
                x = x + block(x)
                kept.append(self.norm(x) if norm else x)
            out = BackboneOutput(point=self.norm(x), local=x.new_zeros(x.shape[0], 0), levels=tuple(kept))
            return out, kept

        def forward_features(self, batch: Any, generator: torch.Generator | None = None,
                             mask: Any = None) -> BackboneOutput:
            return self.forward_intermediates(batch, mask=mask)[0]

    return Pointwise


# ----------------------------------------------------------------------------- headless chromium
# The browser tests of detfm's HTML pages (the report, `detfm compare`) share these.
CHROMIUM_TIMEOUT_S = 60


def chromium_path() -> str | None:
    """Debian's chromium (``scripts/install_test_browser.sh``), or None when it is not installed."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def run_chromium(page: Path, profile: Path, *extra: str) -> Any:
    """Open ``page`` in headless chromium with a fresh profile and no network chatter."""
    import os
    import subprocess

    args = [chromium_path() or "chromium", "--headless", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-extensions", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
            *extra, page.as_uri()]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # chromium refuses to start its sandbox as root
    return subprocess.run(args, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S, check=False)


def console_messages(stderr: str) -> list[str]:
    """Lines of chromium's log that come from the page's console (detfm's pages log nothing)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def page_check_attributes(dom: str) -> Any:
    """The ``<body>`` and ``<html>`` attributes and element ids of a dumped DOM (what the pages'
    self-check script wrote)."""
    import html.parser

    class Attrs(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.body: dict[str, str | None] = {}
            self.root: dict[str, str | None] = {}
            self.ids: set[str] = set()

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "body":
                self.body = a
            elif tag == "html":
                self.root = a
            if a.get("id"):
                self.ids.add(a["id"] or "")

    parsed = Attrs()
    parsed.feed(dom)
    return parsed


def assert_events_scored_alone(task: Any, events: Any) -> None:
    """The logits of the first event's particles are the same in a batch of two events as alone."""
    import torch

    from detfm.data import collate

    with torch.no_grad():
        both, inst = task.forward_instances(collate([events[0], events[1]]))
        first, inst0 = task.forward_instances(collate([events[0]]))
    assert len(inst0) and (inst.event == 0).sum() == len(inst0)
    torch.testing.assert_close(both[inst.event == 0], first, rtol=1e-5, atol=1e-5)

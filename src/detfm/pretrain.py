"""The pretraining recipe: event files + backbone + masked point modeling + the engine.

This module sits right after :mod:`detfm.engine` in the flow: it only wires together
the public pieces above it. ``detfm pretrain`` is a thin wrapper around
:func:`run_pretrain`; :func:`load_backbone` gives the trained encoder back for probes,
fine-tuning and prediction.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detfm.data import EventDataset, collate
from detfm.data.transforms import Compose, RandomRotation, Subsample
from detfm.engine import TrainConfig, TrainResult, load_config, train
from detfm.errors import ConfigError, DetfmError
from detfm.models import PointMAE, create_model
from detfm.tasks import MaskedPointModeling, MPMConfig

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.safetensors"
BACKBONE_PREFIX = "backbone."


@dataclass(frozen=True)
class DataConfig:
    """Which events to train on and how they are prepared.

    Attributes:
        paths: event files in the PILArNet-M layout.
        energy_threshold: voxels below this value (MeV) are dropped (reference: 0.13).
        min_points: events with fewer points after the threshold are skipped.
        rotate: random 3D rotation of every event (augmentation).
        max_points: keep at most this many points per event (None: all).
    """

    paths: tuple[str, ...] = ()
    energy_threshold: float = 0.13
    min_points: int = 32
    rotate: bool = True
    max_points: int | None = None


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that defines a pretraining run (saved as ``config.yaml`` in the run)."""

    model: str = "pointmae_tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    task: MPMConfig = field(default_factory=MPMConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_dataset(data: DataConfig, seed: int, labels: bool = False) -> EventDataset:
    """The (lazy) dataset of a run, with its augmentations."""
    if not data.paths:
        raise ConfigError("no data files: pass --data FILE... (or data.paths in the config)")
    transforms: list[Any] = []
    if data.rotate:
        transforms.append(RandomRotation())
    if data.max_points:
        transforms.append(Subsample(data.max_points))
    return EventDataset(list(data.paths), energy_threshold=data.energy_threshold,
                        min_points=data.min_points, labels=labels, seed=seed,
                        transform=Compose(transforms) if transforms else None)


def build_task(cfg: PretrainConfig) -> MaskedPointModeling:
    """Backbone (from the registry) wrapped in the masked-point-modeling objective."""
    backbone = create_model(cfg.model, **cfg.model_overrides)
    return MaskedPointModeling(backbone, **dataclasses.asdict(cfg.task))


def run_pretrain(cfg: PretrainConfig, out_dir: str | os.PathLike[str], resume: bool = False) -> TrainResult:
    """Pretrain ``cfg.model`` on ``cfg.data.paths``; the run lands in ``out_dir``."""
    dataset = build_dataset(cfg.data, cfg.train.seed)
    if len(dataset) < cfg.train.batch_size:
        raise DetfmError(f"only {len(dataset)} usable events (min_points={cfg.data.min_points}) "
                         f"for a batch of {cfg.train.batch_size}: simulate more or lower --batch-size")
    task = build_task(cfg)
    return train(task, dataset, collate, cfg.train, out_dir, resume=resume, run_config=cfg)


def load_run_config(run_dir: str | os.PathLike[str]) -> PretrainConfig:
    """The :class:`PretrainConfig` of a pretraining run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise DetfmError(f"{run_dir}: not a pretraining run (no {CONFIG_FILE})")
    return load_config(PretrainConfig, path)


def load_backbone(run_dir: str | os.PathLike[str], *, map_location: str = "cpu") -> PointMAE:
    """The pretrained encoder of a run (final weights, else the last checkpoint).

    Weights are read from safetensors only; nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run = Path(run_dir)
    cfg = load_run_config(run)
    weights = run / MODEL_FILE
    if not weights.is_file():
        weights = run / "checkpoints" / "last" / MODEL_FILE
    if not weights.is_file():
        raise DetfmError(f"{run}: no weights ({MODEL_FILE}) in the run or its last checkpoint")
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise DetfmError(f"{weights}: cannot read weights ({exc})") from None
    backbone = create_model(cfg.model, **cfg.model_overrides)
    own = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    try:
        missing, unexpected = backbone.load_state_dict(own, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise DetfmError(f"{weights}: weights do not fit {cfg.model}: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise DetfmError(f"{weights}: weights do not fit {cfg.model} "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    backbone.eval()
    return backbone


def random_backbone(run_dir: str | os.PathLike[str], seed: int = 1234) -> PointMAE:
    """The same architecture as a run, randomly initialised (the baseline for probes)."""
    cfg = load_run_config(run_dir)
    with torch.no_grad():
        model = create_model(cfg.model, **{**cfg.model_overrides, "seed": seed})
    return model.eval()

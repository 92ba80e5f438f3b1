"""The pretraining recipe: event files + backbone + masked point modeling + the engine.

This module sits right after :mod:`detfm.engine` in the flow: it only wires together
the public pieces above it. ``detfm pretrain`` is a thin wrapper around
:func:`run_pretrain`; :func:`load_backbone` gives the trained encoder back for probes,
fine-tuning and prediction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detfm.data import EventDataset, collate
from detfm.data.transforms import Compose, RandomRotation, Subsample
from detfm.engine import TrainConfig, TrainResult, load_config, train
from detfm.engine.runs import BACKBONE_FILE, CONFIG_FILE, MODEL_FILE, load_backbone, random_backbone
from detfm.errors import ConfigError, DetfmError
from detfm.io import atomic_write_text
from detfm.models import create_model, model_config
from detfm.tasks import MPMConfig
from detfm.tasks.distill import DistillConfig
from detfm.tasks.registry import get_objective, list_objectives

__all__ = ["CONFIG_FILE", "MODEL_FILE", "DataConfig", "PretrainConfig", "build_dataset", "build_task",
           "load_backbone", "load_run_config", "random_backbone", "run_pretrain"]


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
    """Everything that defines a pretraining run (saved as ``config.yaml`` in the run).

    ``objective`` names a registered pretraining objective (``detfm.tasks.registry``); its
    settings are in ``task`` (masked modeling, ``mpm``) or ``distill`` (self-distillation).
    """

    model: str = "pointmae_tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    objective: str = "mpm"
    task: MPMConfig = field(default_factory=MPMConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
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


def build_task(cfg: PretrainConfig) -> torch.nn.Module:
    """Backbone (from the registry) wrapped in the run's pretraining objective."""
    spec = get_objective(cfg.objective)
    overrides = dict(cfg.model_overrides)
    if "mask_token" in model_config(cfg.model).to_dict():  # objectives that hide points need one
        overrides.setdefault("mask_token", True)
    backbone = create_model(cfg.model, **overrides)
    arch = backbone.default_cfg.arch
    if spec.families is not None and arch not in spec.families:
        raise ConfigError(f"objective '{cfg.objective}' does not work on {arch} backbones ({cfg.model}); "
                          f"objectives: {', '.join(list_objectives())}")
    return spec.build(backbone, getattr(cfg, spec.settings_field))


def run_pretrain(cfg: PretrainConfig, out_dir: str | os.PathLike[str], resume: bool = False) -> TrainResult:
    """Pretrain ``cfg.model`` on ``cfg.data.paths``; the run lands in ``out_dir``."""
    get_objective(cfg.objective)  # a wrong name or setting is named before any data is read
    model_config(cfg.model, **cfg.model_overrides)
    dataset = build_dataset(cfg.data, cfg.train.seed)
    if len(dataset) < cfg.train.batch_size:
        raise DetfmError(f"only {len(dataset)} usable events (min_points={cfg.data.min_points}) "
                         f"for a batch of {cfg.train.batch_size}: simulate more or lower --batch-size")
    task = build_task(cfg)
    result = train(task, dataset, collate, cfg.train, out_dir, resume=resume, run_config=cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        atomic_write_text(Path(out_dir) / BACKBONE_FILE, task.backbone.default_cfg.to_yaml())
    return result


def load_run_config(run_dir: str | os.PathLike[str]) -> PretrainConfig:
    """The :class:`PretrainConfig` of a pretraining run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise DetfmError(f"{run_dir}: not a pretraining run (no {CONFIG_FILE})")
    return load_config(PretrainConfig, path)

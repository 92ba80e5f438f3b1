"""Task and objective registries: what ``finetune``, ``predict``, ``evaluate``, ``study``,
``pretrain`` and the command line know about a task, in one place.

An adaptation task registers its config class, its builder, what it scores (points,
particle instances or events), its headline metric and class names; a pretraining
objective registers its config class and builder. Adding a task or an objective is one
file and one ``register_*`` call; no caller has an if/elif ladder over task names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from detfm.data import PackedBatch

from detfm.data.datasets import DEFAULT_DATASET, get_dataset
from detfm.errors import ConfigError
from detfm.tasks.distill import DistillConfig, SelfDistillation
from detfm.tasks.event import EventClassification, EventConfig, leading_particle_label
from detfm.tasks.heads import AdaptationTask, HeadConfig
from detfm.tasks.mpm import MaskedPointModeling, MPMConfig
from detfm.tasks.mvm import MaskedVoxelModeling
from detfm.tasks.particles import Particles, ParticlesConfig, older_particles_settings, particle_labels
from detfm.tasks.pid import ParticleID, PIDConfig, instance_labels
from detfm.tasks.segmentation import SegmentationConfig, SemanticSegmentation

__all__ = ["ObjectiveSpec", "TaskSpec", "get_objective", "get_task", "list_objectives", "list_tasks",
           "register_objective", "register_task"]

Unit = Literal["point", "instance", "event", "particle"]


@dataclass(frozen=True)
class TaskSpec:
    """An adaptation task.

    Attributes:
        name: what ``--task`` takes.
        config_cls: its :class:`~detfm.tasks.heads.HeadConfig` subclass.
        build: ``build(backbone, cfg) -> AdaptationTask``.
        unit: what one scored item is (a point, a particle instance, an event, a particle the
            task finds itself); the task's ``scored_items(batch)`` returns their labels (-1:
            not scored) and logits.
        headline: the metric a study summarises and a card shows first.
        per_class: the key of the per-class F1 table that goes with the headline.
        class_names: the classes, in label order.
        excluded_class: a class also left out in a second, headline view (semseg: the
            dataset's low-energy class), or None.
        description: one line for ``--help``.
        labels: ``labels(batch)`` gives the true class of every scored item without a model
            (-1: not scored), for class weights.
        prediction_prefix: prefix of the datasets ``detfm predict`` writes (``probs``, ``pred``).
        older_run_settings: for a default that changed: given the tensor names of a trained
            run's weights, the settings its config left out because they were the defaults
            when it was trained (None: no default of the task has changed).
        fragment_classes: the classes whose touching points the test-time fragment vote gives
            one class (:mod:`detfm.evaluate.fragments`); empty: the task has no fragment vote.
    """

    name: str
    config_cls: type[HeadConfig]
    build: Callable[[nn.Module, Any], AdaptationTask]
    unit: Unit
    headline: str
    per_class: str
    class_names: tuple[str, ...]
    excluded_class: int | None
    description: str
    labels: Callable[[PackedBatch], torch.Tensor]
    prediction_prefix: str
    older_run_settings: Callable[[set[str]], dict[str, Any]] | None = None
    fragment_classes: tuple[int, ...] = ()


@dataclass(frozen=True)
class ObjectiveSpec:
    """A pretraining objective: ``build(backbone, cfg)`` gives the task the engine trains;
    ``families`` lists the backbone families (``arch``) it works on (None: any backbone the
    builder accepts; it raises a clear error for the others); ``settings_field`` names the
    field of a pretraining run's config that holds its ``config_cls`` settings."""

    name: str
    config_cls: type
    build: Callable[[nn.Module, Any], nn.Module]
    families: tuple[str, ...] | None
    description: str
    settings_field: str


_TASKS: dict[str, TaskSpec] = {}
_OBJECTIVES: dict[str, ObjectiveSpec] = {}


def _lookup(table: dict[str, Any], name: str, what: str) -> Any:
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown {what} '{name}'{hint}; choose from {', '.join(sorted(table))}")
    return table[name]


def register_task(spec: TaskSpec) -> TaskSpec:
    if spec.name in _TASKS:
        raise ConfigError(f"task '{spec.name}' is already registered")
    _TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    return _lookup(_TASKS, name, "task")


def list_tasks() -> list[str]:
    return list(_TASKS)


def register_objective(spec: ObjectiveSpec) -> ObjectiveSpec:
    if spec.name in _OBJECTIVES:
        raise ConfigError(f"objective '{spec.name}' is already registered")
    _OBJECTIVES[spec.name] = spec
    return spec


def get_objective(name: str) -> ObjectiveSpec:
    return _lookup(_OBJECTIVES, name, "pretraining objective")


def list_objectives() -> list[str]:
    return list(_OBJECTIVES)


_LARTPC = get_dataset(DEFAULT_DATASET)

register_task(TaskSpec(
    name="semseg", config_cls=SegmentationConfig, build=SemanticSegmentation, unit="point",
    headline="macro_f1_4", per_class="f1_4", class_names=_LARTPC.semantic_classes,
    excluded_class=_LARTPC.excluded_semantic,
    description="per-point semantic segmentation (shower, track, Michel, delta, low-energy)",
    labels=lambda batch: batch.semantic, prediction_prefix="", fragment_classes=_LARTPC.fragment_classes))
register_task(TaskSpec(
    name="pid", config_cls=PIDConfig, build=ParticleID, unit="instance", headline="macro_f1", per_class="f1",
    class_names=_LARTPC.pid_classes, excluded_class=None,
    description="particle identification of the given particle instances",
    labels=instance_labels, prediction_prefix="pid_"))
register_task(TaskSpec(
    name="event", config_cls=EventConfig, build=EventClassification, unit="event", headline="macro_f1",
    per_class="f1", class_names=_LARTPC.pid_classes, excluded_class=None,
    description="event classification by the leading particle's type",
    labels=leading_particle_label, prediction_prefix="event_"))
register_task(TaskSpec(
    name="particles", config_cls=ParticlesConfig, build=Particles, unit="particle", headline="pq", per_class="f1",
    class_names=_LARTPC.pid_classes, excluded_class=None,
    description="particle finding and ID by set prediction (queries, masks, energy, start; Mask2Former-style)",
    labels=particle_labels, prediction_prefix="particle_", older_run_settings=older_particles_settings))


def _masked_modeling(backbone: nn.Module, cfg: MPMConfig) -> nn.Module:
    """Patches hidden whole for the patch transformer; grid cells of voxels for the others."""
    if backbone.default_cfg.arch == "pointmae":
        return MaskedPointModeling.from_config(backbone, cfg)
    return MaskedVoxelModeling(backbone, cfg)


register_objective(ObjectiveSpec(
    name="mpm", config_cls=MPMConfig, build=_masked_modeling, families=None,
    description="masked point modeling with energy infilling (PoLAr-MAE; voxel cells on point-resolution "
                "backbones)", settings_field="task"))
register_objective(ObjectiveSpec(
    name="distill", config_cls=DistillConfig, build=SelfDistillation.from_config, families=None,
    description="point-level self-distillation with an EMA teacher (Sonata / Panda)", settings_field="distill"))

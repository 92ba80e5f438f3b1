"""The adaptation recipe: a backbone + a task head, trained on N labeled events.

Sits next to :mod:`detfm.recipes.pretrain` (after the engine): it wires public pieces together.
``detfm finetune`` wraps :func:`run_finetune`, ``detfm predict`` wraps :func:`predict_file`.

Tasks: ``semseg`` (per-point semantic segmentation, :mod:`detfm.tasks.segmentation`),
``pid`` (particle identification of the given particle instances, :mod:`detfm.tasks.pid`),
``event`` (event classification by the leading particle, :mod:`detfm.tasks.event`) and
``particles`` (finding the particles by set prediction, :mod:`detfm.tasks.particles`).

Modes (one recipe, one switch):

============  =====================  ===========  ================================
mode          backbone               head         trains
============  =====================  ===========  ================================
``probe``     frozen                 linear       the linear head
``head``      frozen                 MLP          the MLP head
``finetune``  trains, layer-wise lr  MLP          everything
``lora``      frozen + LoRA updates  MLP          LoRA matrices and the head
============  =====================  ===========  ================================

``backbone="scratch"`` trains the same architecture from random initialisation: the
supervised baseline of a label-efficiency study.

Data protocol (fixed, so runs are comparable): the usable events of ``data.paths`` (after
the energy threshold and ``min_points``) are split once by
:func:`detfm.data.split_indices` with ``split`` fractions and ``split_seed`` (default
80/10/10). ``labels`` events are drawn from the *train* part only, as the first ``labels``
of a permutation seeded by ``label_seed``: the same seed gives nested label sets (the 10
events of a 10-label run are among the 100 of a 100-label run). Validation and test
events are never trained on; after training the model is scored on the test part and
``eval.json`` is written into the run.

Run directory: what :func:`detfm.engine.train` writes (config.yaml, metrics.jsonl,
checkpoints/, model.safetensors), plus ``backbone.yaml`` (the backbone architecture, so the
run reloads without the pretraining run), ``split.json`` (event ids of every part) and
``eval.json``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from detfm.data import EventDataset, collate, split_indices
from detfm.engine import TrainConfig, TrainResult, load_config, load_weights, stored_tensor_names, train
from detfm.engine.runs import (BACKBONE_FILE, CONFIG_FILE, EVAL_FILE, MODEL_FILE, PREDICTIONS_FORMAT, SPLIT_FILE,
                               backbone_config, last_checkpoint, load_backbone, weights_path)
from detfm.errors import ConfigError, DataFormatError, DetfmError
from detfm.evaluate.fragment_classifier import FragmentRelabel, FragmentStage, load_fragment_stage, stage_record
from detfm.evaluate.fragments import FragmentVote, check_fragment_steps
from detfm.evaluate.boosted_trees import BoostedTrees
from detfm.evaluate.orientations import OrientationAverage
from detfm.evaluate.particle_trees import TreeParticleID, load_pid_trees
from detfm.evaluate.scoring import score_task
from detfm.io import atomic_path, atomic_write_text
from detfm.models import ModelConfig, build_model, config_from_yaml, model_config
from detfm.models.lora import apply_lora, merge_lora
from detfm.recipes.particle_predict import write_particle_predictions
from detfm.recipes.pretrain import DataConfig, build_dataset
from detfm.tasks.heads import AdaptationTask
from detfm.tasks.registry import TaskSpec, get_task

__all__ = [
    "CPU_OVERRIDES", "EventSplit", "FinetuneConfig", "FinetuneResult", "Mode", "PredictReport",
    "build_backbone", "build_task", "class_balance_weights", "evaluate_segmentation", "load_finetune_config",
    "load_finetuned", "predict_file", "run_finetune", "run_split_events", "score_run", "split_events",
]

Mode = Literal["probe", "head", "finetune", "lora"]
TaskName = str  # a registered task (detfm.tasks.registry): semseg, pid, event, ...
MODES: tuple[str, ...] = get_args(Mode)
SCRATCH = "scratch"


# A CPU-sized tokenizer for scratch backbones: 128 patches of up to 32 points within 10
# voxels (3 cm) instead of PoLAr-MAE's 512 patches of 5 voxels (see GroupingConfig).
CPU_OVERRIDES: dict[str, Any] = {"num_groups": 128, "group_size": 32, "radius": 10.0, "cover_radius": 10.0}

# Layer-wise lr decay of MAE fine-tuning (He et al. 2021; facebookresearch/mae
# util/lr_decay.py and main_finetune.py default --layer_decay 0.75).
DEFAULT_LAYER_DECAY = 0.75

# LoRA rank 8 (Hu et al. 2021, arXiv 2106.09685, Sec. 7.2: ranks of 4-8 already match
# higher ones); alpha = 2 * rank, i.e. an update scale alpha / r = 2, is our choice.
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_ALPHA = 16.0

# Class weights: alpha_c = max(f_c, MIN_CLASS_FRACTION) ** -CLASS_WEIGHT_POWER with f_c the
# fraction of labeled points (semseg) or particles (pid) in class c; by default the inverse
# square root, with the floor capping a weight at 10.
MIN_CLASS_FRACTION = 0.01
CLASS_WEIGHT_POWER = 0.5


def _finetune_train_defaults() -> TrainConfig:
    return TrainConfig(steps=500, batch_size=8, lr=1e-3, warmup_steps=20, checkpoint_every=0)


# Task-config fields that FinetuneConfig sets from its own keys (see build_task).
MANAGED_TASK_SETTINGS = {
    "head": "mode", "hidden": "head_hidden", "point_dim": "point_dim", "focal_gamma": "focal_gamma",
    "class_weights": "class_balance", "freeze_backbone": "mode", "layer_decay": "layer_decay",
    "seed": "train.seed", "features": "head_features", "exclude_low_energy": "exclude_low_energy",
    "pooling": "pooling"}


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that defines an adaptation run (saved as ``config.yaml`` in the run).

    Attributes:
        backbone: a pretraining run directory, or ``"scratch"`` for random initialisation.
        model, model_overrides: the architecture for ``"scratch"`` (registry name and
            overrides); ignored for a pretrained backbone, whose run fixes it.
        task: ``"semseg"`` (per-point semantic segmentation), ``"pid"`` (particle ID per
            instance) or ``"event"`` (the leading particle's ID, one label per event).
        mode: ``probe`` | ``head`` | ``finetune`` | ``lora`` (see the module docstring).
        labels: labeled training events, drawn from the train split.
        label_seed: seed of the label draw (None: ``train.seed``).
        split, split_seed: train/val/test fractions and the seed of the fixed split.
        exclude_low_energy: semseg: ignore class 4 in the training loss.
        class_balance: weight the loss by the inverse class frequency, to the power
            ``class_weight_power``, of the labeled points (semseg) or particles (pid); False:
            all weights 1.
        class_weight_power, min_class_fraction: class weights ``max(f_c, min_class_fraction)
            ** -class_weight_power`` (0.5 and 0.01: inverse square root, at most 10; 1 and
            0.002 weigh a class of 0.3 % of the points, such as Michel electrons, 333 times
            a class of 100 %).
        focal_gamma: focal-loss exponent (0: cross-entropy).
        head_hidden, point_dim: widths of the MLP head and the per-point embedding.
        task_settings: further fields of the task's own config class, e.g. for ``particles``
            ``{num_queries: 16, decoder_blocks: 2}`` (see ``detfm.tasks``); the head settings
            above are set by their own keys, not here.
        pooling: pid and event: how a particle's (event's) point features are pooled,
            ``mean``, ``mean_max``, ``mean_attention`` or ``set`` (see :class:`~detfm.tasks.pid.PIDConfig`).
        head_features: ``point`` (the backbone's per-point output) or ``multilevel`` (its
            levels concatenated at the points: Panda's linear-probe protocol, and what a
            self-distilled backbone was trained on).
        layer_decay: layer-wise lr decay in ``finetune`` mode (1: none).
        lora_rank, lora_alpha: LoRA update rank and scale in ``lora`` mode.
        cache_features: probe and head modes: keep the frozen backbone's outputs of every
            training event after its first pass, so later passes run only the head (needs
            ``data.rotate: false`` and no ``data.max_points``; see
            :mod:`detfm.tasks.feature_cache`).
        eval_batch_size: events per batch when scoring the test split.
        max_eval_events: score only the first this many test events (None: all).
        test_views: score the test split with the class probabilities averaged over this many
            orientations of each event (1: the events as they are; see
            :mod:`detfm.evaluate.orientations`). Not for set-prediction tasks (particles).
        data: files and point preparation (energy threshold, min points, rotation).
        train: optimisation (steps, batch size, lr, seed, ...).
    """

    backbone: str = SCRATCH
    model: str = "pointmae_micro"
    model_overrides: dict[str, Any] = field(default_factory=lambda: dict(CPU_OVERRIDES))
    task: TaskName = "semseg"
    mode: Mode = "finetune"
    labels: int = 100
    label_seed: int | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    exclude_low_energy: bool = False
    class_balance: bool = True
    class_weight_power: float = CLASS_WEIGHT_POWER
    min_class_fraction: float = MIN_CLASS_FRACTION
    focal_gamma: float = 2.0
    head_hidden: int = 128
    point_dim: int = 32
    head_features: str = "point"
    pooling: str = "mean"
    task_settings: dict[str, Any] = field(default_factory=dict)
    layer_decay: float = DEFAULT_LAYER_DECAY
    lora_rank: int = DEFAULT_LORA_RANK
    lora_alpha: float = DEFAULT_LORA_ALPHA
    cache_features: bool = False
    eval_batch_size: int = 8
    max_eval_events: int | None = None
    test_views: int = 1
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=_finetune_train_defaults)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        spec = get_task(self.task)  # a clear error naming the registered tasks
        if not self.backbone:
            raise ConfigError(f"backbone must be a pretraining run directory or '{SCRATCH}'")
        if self.labels < 1:
            raise ConfigError(f"labels must be >= 1, got {self.labels}")
        if self.label_seed is not None and self.label_seed < 0:
            raise ConfigError(f"label_seed must be >= 0, got {self.label_seed}")
        if len(self.split) != 3 or any(not 0 <= f <= 1 for f in self.split) or sum(self.split) > 1 + 1e-9:
            raise ConfigError(f"split must be three fractions (train, val, test) summing to at most 1, "
                              f"got {list(self.split)}")
        if self.split[0] <= 0 or self.split[2] <= 0:
            raise ConfigError(f"split needs train and test fractions > 0, got {list(self.split)}")
        if not 0 <= self.class_weight_power <= 2 or not 0 < self.min_class_fraction <= 1:
            raise ConfigError(f"class_weight_power must lie in [0, 2] and min_class_fraction in (0, 1], got "
                              f"{self.class_weight_power} and {self.min_class_fraction}")
        if self.eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.max_eval_events is not None and self.max_eval_events < 1:
            raise ConfigError(f"max_eval_events must be >= 1 or None, got {self.max_eval_events}")
        if isinstance(self.test_views, bool) or not isinstance(self.test_views, int) or self.test_views < 1:
            raise ConfigError(f"test_views must be an integer >= 1, got {self.test_views!r}")
        if self.test_views > 1 and spec.unit == "particle":
            raise ConfigError(f"test_views applies to tasks scored per point, particle instance or event; "
                              f"'{self.task}' finds its own particles: use test_views: 1")
        if self.lora_rank < 1 or not self.lora_alpha > 0:
            raise ConfigError(f"lora_rank must be >= 1 and lora_alpha > 0, got {self.lora_rank}, "
                              f"{self.lora_alpha}")
        if self.head_hidden < 1 or self.point_dim < 1:
            raise ConfigError(f"head_hidden and point_dim must be >= 1, got {self.head_hidden}, {self.point_dim}")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.focal_gamma < 0:
            raise ConfigError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.head_features not in ("point", "multilevel"):
            raise ConfigError(f"head_features must be 'point' or 'multilevel', got {self.head_features!r}")
        task_fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        if self.pooling != "mean" and "pooling" not in task_fields:
            raise ConfigError(f"pooling applies to tasks that pool points (pid, event), not to '{self.task}'")
        if self.pooling != "mean" and self.mode == "probe":
            raise ConfigError(f"a linear probe pools by the mean; pooling={self.pooling!r} needs mode head, "
                              "finetune or lora")
        own = task_fields - set(MANAGED_TASK_SETTINGS)
        for key in self.task_settings:
            if key in MANAGED_TASK_SETTINGS:
                raise ConfigError(f"task_settings.{key} is set by the finetune config itself "
                                  f"({MANAGED_TASK_SETTINGS[key]}); remove it from task_settings")
            if key not in own:
                close = difflib.get_close_matches(str(key), sorted(own), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"unknown key task_settings.{key} for task '{self.task}'{hint}; its "
                                  f"settings are: {', '.join(sorted(own))}")
        if self.cache_features:
            if self.mode not in ("probe", "head"):
                raise ConfigError(f"cache_features keeps a frozen backbone's outputs: it needs mode probe or "
                                  f"head, not {self.mode!r}")
            if self.data.rotate or self.data.max_points:
                raise ConfigError("cache_features reuses each event's backbone outputs on every pass, so the "
                                  "events must not change between passes: set data.rotate: false and "
                                  "data.max_points: null")
        if self.exclude_low_energy and spec.excluded_class is None:
            raise ConfigError(f"exclude_low_energy applies to tasks with an excluded class (semseg), "
                              f"not to '{self.task}'")

    @property
    def scratch(self) -> bool:
        return self.backbone == SCRATCH

    @property
    def labels_seed(self) -> int:
        """The seed the labeled events are drawn with."""
        return self.train.seed if self.label_seed is None else self.label_seed


# ----------------------------------------------------------------------------- data split
@dataclass(frozen=True)
class EventSplit:
    """Dataset item indices (into the usable events) of each part; all sorted.

    ``labeled`` is a subset of ``train``; ``val`` and ``test`` are disjoint from ``train``.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    labeled: np.ndarray


def split_events(num_events: int, cfg: FinetuneConfig) -> EventSplit:
    """The fixed train/val/test split of ``num_events`` usable events and the labeled draw.

    Raises :class:`DetfmError` if ``cfg.labels`` exceeds the train part or a part is empty.
    """
    train_idx, val_idx, test_idx = split_indices(num_events, cfg.split, cfg.split_seed)
    fractions = "/".join(f"{round(100 * f)}" for f in cfg.split)
    if cfg.labels > len(train_idx):
        raise DetfmError(f"asked for {cfg.labels} labeled events, but the train split has only "
                         f"{len(train_idx)} of the {num_events} usable events (split {fractions}); "
                         f"lower --labels or add data")
    if len(test_idx) == 0:
        raise DetfmError(f"the test split of {num_events} usable events (split {fractions}) is empty; "
                         f"add data")
    order = np.random.default_rng([cfg.labels_seed, len(train_idx)]).permutation(train_idx)
    return EventSplit(train=train_idx, val=val_idx, test=test_idx, labeled=np.sort(order[:cfg.labels]))


def class_balance_weights(dataset: EventDataset, task: TaskName = "semseg", exclude_low_energy: bool = False,
                          min_fraction: float = MIN_CLASS_FRACTION,
                          power: float = CLASS_WEIGHT_POWER) -> tuple[float, ...]:
    """Loss weights ``max(f_c, min_fraction) ** -power`` from the class fractions ``f_c`` of
    the task's scored items in the dataset (points for semseg, with the excluded class left
    out when asked; particle instances for pid; events for event). Absent classes get weight 1."""
    spec = get_task(task)
    n = len(spec.class_names)
    counts = np.zeros(n, dtype=np.int64)
    for i in range(len(dataset)):
        sample = dataset[i]
        if sample.semantic is None or sample.pid is None or sample.instance is None:
            raise DataFormatError("class weights need labels", field="cluster")
        labels = spec.labels(collate([sample])).numpy()
        counts += np.bincount(labels[labels >= 0], minlength=n)[:n]
    if exclude_low_energy and spec.excluded_class is not None:
        counts[spec.excluded_class] = 0
    total = counts.sum()
    if total == 0:
        raise DetfmError(f"the labeled events have nothing to score for {task} (no labeled points or particles)")
    fraction = counts / total
    weights = np.where(counts > 0, np.maximum(fraction, min_fraction) ** -power, 1.0)
    return tuple(float(w) for w in weights)


# ----------------------------------------------------------------------------- model
def _backbone_config(cfg: FinetuneConfig) -> ModelConfig:
    """The backbone architecture a config asks for (checked, not built)."""
    if cfg.scratch:
        overrides = {"seed": cfg.train.seed, **cfg.model_overrides}
        return model_config(cfg.model, **overrides)
    return backbone_config(cfg.backbone)


def build_backbone(cfg: FinetuneConfig) -> nn.Module:
    """A random backbone (``scratch``) or the pretrained one of ``cfg.backbone``."""
    if cfg.scratch:
        return build_model(_backbone_config(cfg))
    if not Path(cfg.backbone).is_dir():
        raise DetfmError(f"backbone {cfg.backbone}: no such run directory (give a pretraining run "
                         f"or '{SCRATCH}')")
    return load_backbone(cfg.backbone)


def build_task(cfg: FinetuneConfig, backbone: nn.Module,
               class_weights: Sequence[float] | None = None) -> AdaptationTask:
    """The task of ``cfg.task`` and ``cfg.mode`` around ``backbone`` (LoRA layers added for ``lora``)."""
    if cfg.mode == "lora":
        apply_lora(backbone, rank=cfg.lora_rank, alpha=cfg.lora_alpha, seed=cfg.train.seed)
    spec = get_task(cfg.task)
    settings: dict[str, Any] = {
        "head": "linear" if cfg.mode == "probe" else "mlp", "hidden": cfg.head_hidden, "point_dim": cfg.point_dim,
        "focal_gamma": cfg.focal_gamma,
        "class_weights": None if class_weights is None else tuple(float(w) for w in class_weights),
        "freeze_backbone": cfg.mode in ("probe", "head"),
        "layer_decay": cfg.layer_decay if cfg.mode == "finetune" else 1.0, "seed": cfg.train.seed,
        "features": cfg.head_features}
    if cfg.exclude_low_energy:
        settings["exclude_low_energy"] = True
    if cfg.pooling != "mean":
        settings["pooling"] = cfg.pooling
    settings.update(cfg.task_settings)
    return spec.build(backbone, spec.config_cls(**settings))


# ----------------------------------------------------------------------------- run
@dataclass(frozen=True)
class FinetuneResult:
    """What :func:`run_finetune` produced: the training result and the test scores."""

    out_dir: Path
    train: TrainResult
    split: EventSplit
    eval: dict[str, Any]


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _labeled_dataset(cfg: FinetuneConfig) -> EventDataset:
    """All usable labeled events, without augmentation (for splitting and scoring)."""
    if not cfg.data.paths:
        raise ConfigError("no data files: pass --data FILE... (or data.paths in the config)")
    return EventDataset(list(cfg.data.paths), energy_threshold=cfg.data.energy_threshold,
                        min_points=cfg.data.min_points, labels=True, seed=cfg.train.seed)


def run_finetune(cfg: FinetuneConfig, out_dir: str | os.PathLike[str], resume: bool = False,
                 progress: bool | None = None) -> FinetuneResult:
    """Adapt a backbone to ``cfg.task`` on ``cfg.labels`` events; score on the test split.

    Every input is checked (backbone, files, labels, split sizes) before anything is
    written to ``out_dir``. ``progress`` (default ``cfg.train.progress``) shows a bar while
    scoring.
    """
    backbone = build_backbone(cfg)
    arch = backbone.default_cfg
    spec = get_task(cfg.task)
    events = _labeled_dataset(cfg)
    split = split_events(len(events), cfg)
    if cfg.train.batch_size > cfg.labels:
        raise DetfmError(f"batch size {cfg.train.batch_size} is larger than the {cfg.labels} labeled "
                         f"events: lower --batch-size")
    weights = (class_balance_weights(events.subset(split.labeled), cfg.task, cfg.exclude_low_energy,
                                     cfg.min_class_fraction, cfg.class_weight_power)
               if cfg.class_balance else None)
    checkpoint = last_checkpoint(out_dir) / MODEL_FILE
    task = build_task(_with_older_defaults(cfg, checkpoint) if resume and checkpoint.is_file() else cfg,
                      backbone, weights)
    cache = task.cache_features() if cfg.cache_features else None
    train_set = build_dataset(cfg.data, cfg.train.seed, labels=True).subset(split.labeled)
    result = train(task, train_set, collate, cfg.train, out_dir, resume=resume, run_config=cfg)

    out = Path(out_dir)
    test = events.subset(split.test[:cfg.max_eval_events] if cfg.max_eval_events else split.test)
    show = cfg.train.progress if progress is None else progress
    scores = score_task(task, spec, test, batch_size=cfg.eval_batch_size, progress=show, views=cfg.test_views)
    scores = {"task": cfg.task, "mode": cfg.mode, "backbone": cfg.backbone, "labels": cfg.labels,
              "class_weights": None if weights is None else list(weights), **scores}
    if cache is not None:
        scores["feature_cache"] = {"events": len(cache), "bytes": cache.stats.stored_bytes,
                                   "events_served": cache.stats.hits, "events_computed": cache.stats.misses}
    if result.stopped_early:  # scores of the weights reached within train.time_limit_s
        scores["stopped_at_step"] = {"step": result.steps, "of": cfg.train.steps}
    if _is_main_process():
        atomic_write_text(out / BACKBONE_FILE, arch.to_yaml())
        ids = {name: events.event_ids[getattr(split, name)].tolist()
               for name in ("labeled", "train", "val", "test")}
        atomic_write_text(out / SPLIT_FILE, json.dumps(
            {"files": list(cfg.data.paths), "usable_events": len(events), "split": list(cfg.split),
             "split_seed": cfg.split_seed, "label_seed": cfg.labels_seed,
             "note": "global event numbers over the files, in order (see EventDataset.locate)", **ids}) + "\n")
        atomic_write_text(out / EVAL_FILE, json.dumps(scores, indent=2) + "\n")
    return FinetuneResult(out_dir=out, train=result, split=split, eval=scores)


# ----------------------------------------------------------------------------- scoring
def evaluate_segmentation(task: AdaptationTask, dataset: EventDataset, batch_size: int = 8,
                          progress: bool = False) -> dict[str, Any]:
    """Semseg scores: 5 classes and the 4 without low-energy deposits (``macro_f1_4``)."""
    return score_task(task, get_task("semseg"), dataset, batch_size=batch_size, progress=progress)


def run_split_events(run_dir: str | os.PathLike[str], events: EventDataset, part: str,
                     hint: str = "") -> EventDataset:
    """The events of one part of a run's ``split.json`` ("labeled", "train", "val" or "test")
    among ``events`` (the usable events of the run's files)."""
    run = Path(run_dir)
    split_file = run / SPLIT_FILE
    if not split_file.is_file():
        raise DetfmError(f"{run}: no {SPLIT_FILE} (an unfinished run?){hint}")
    wanted = np.asarray(json.loads(split_file.read_text(encoding="utf-8"))[part], dtype=np.int64)
    ids = events.event_ids
    where = np.searchsorted(ids, wanted)
    found = (where < len(ids)) & (ids[np.minimum(where, len(ids) - 1)] == wanted)
    if not found.all():
        raise DetfmError(f"{run}: {int((~found).sum())} {part} events of {SPLIT_FILE} are not among the usable "
                         f"events of {', '.join(map(str, events.paths))}: the files changed since the run")
    return events.subset(where)


def labeled_run_events(run_dir: str | os.PathLike[str], data: str | os.PathLike[str] | None = None
                       ) -> EventDataset:
    """The labeled training events of a fine-tuning run (its ``split.json``), read with the run's
    energy threshold and minimum points from ``data`` (the run's data file where it lives now)
    or from the paths in its config."""
    cfg = load_finetune_config(run_dir)
    paths = [Path(p) for p in (cfg.data.paths if data is None else [data])]
    for path in paths:
        if not path.is_file():
            raise DetfmError(f"{path}: no such file (the run's data file: pass --data FILE where it lives now)")
    events = EventDataset(paths, energy_threshold=cfg.data.energy_threshold, min_points=cfg.data.min_points,
                          labels=True, seed=cfg.train.seed)
    return run_split_events(run_dir, events, "labeled")


def score_run(run_dir: str | os.PathLike[str], data: Sequence[str | os.PathLike[str]] | None = None, *,
              own_split: bool = False, views: int = 1, view_seed: int = 0, max_events: int | None = None,
              batch_size: int | None = None, device: str = "cpu", progress: bool = False,
              pid_run: str | os.PathLike[str] | None = None, fragment_vote: bool = False,
              fragment_classifier: bool = False, pid_trees: bool = False) -> dict[str, Any]:
    """Score a fine-tuned run again: on its own test split (``data`` None: the run's files and
    the test events of its ``split.json``; or ``data`` with ``own_split``: the run's files
    where they are now) or on every usable event of the labeled files ``data`` (the run's
    energy threshold and minimum points).

    ``views > 1`` averages the class probabilities over that many orientations of each event
    (:class:`~detfm.evaluate.orientations.OrientationAverage`). ``max_events``: only the first
    this many events. ``pid_run`` (a ``particles`` run only): a ``pid`` run whose head names
    the particles the decoder finds (:class:`~detfm.evaluate.particles.ParticlesWithPid`).
    ``fragment_vote`` (``semseg`` runs): each connected fragment of shower-like points takes one
    class (:class:`~detfm.evaluate.fragments.FragmentVote`). ``fragment_classifier`` (semseg
    runs, after ``detfm fragments``): the run's fitted fragment classifier names each fragment
    instead (:class:`~detfm.evaluate.fragment_classifier.FragmentRelabel`). ``pid_trees`` (semseg
    runs, after ``detfm pid-trees``): score particle ID on truth instances with the run's fitted
    trees (:class:`~detfm.evaluate.particle_trees.TreeParticleID`); the scores are then a ``pid``
    task's.
    The scores are those of ``eval.json``, with what was scored under ``scored``.
    """
    run = Path(run_dir)
    cfg = load_finetune_config(run)
    spec = get_task(cfg.task)
    stage, stage_info = _fragment_stage(run, spec, fragment_vote, fragment_classifier)
    trees = _pid_trees(run, cfg.task, fragment_vote or fragment_classifier, pid_run) if pid_trees else None
    if pid_run is not None:  # before reading any events
        _check_pid_stage(cfg.task, run, pid_run)
    paths = [Path(p) for p in (cfg.data.paths if data is None else data)]
    for path in paths:
        if not path.is_file():
            hint = " (the run's data file: pass --data FILE where it lives now)" if data is None else ""
            raise DetfmError(f"{path}: no such file{hint}")
    events = EventDataset(paths, energy_threshold=cfg.data.energy_threshold, min_points=cfg.data.min_points,
                          labels=True, seed=cfg.train.seed)
    if data is None or own_split:
        events = run_split_events(run, events, "test", hint="; pass --data FILE to score other events")
    if max_events is not None:
        if max_events < 1:
            raise ConfigError(f"max_events must be >= 1, got {max_events}")
        events = events.subset(np.arange(min(max_events, len(events))))
    task: nn.Module = load_finetuned(run, map_location=device)
    merge_lora(task)
    if pid_run is not None:
        task = _with_pid_stage(task, pid_run, device)
    if trees is not None:
        task, spec = TreeParticleID(task, trees[0].to(device), trees[1].to(device)), get_task("pid")
    scores = score_task(task, spec, events, batch_size=batch_size or cfg.eval_batch_size, progress=progress,
                        views=views, view_seed=view_seed, fragment_vote=fragment_vote, fragment_stage=stage)
    if stage is not None:
        scores["fragment_classifier"] = stage_record(stage, spec.class_names, stage_info)
    scored = {"files": [str(p) for p in paths],
              "events": "test split of the run" if data is None or own_split else "all usable"}
    if pid_run is not None:
        scored["pid_run"] = str(pid_run)
    if trees is not None:
        info = trees[2]
        scored["pid_trees"] = {"fitted_views": info.get("views"), "working_point": info.get("working_point"),
                               "offsets": info.get("offsets")}
    return {"task": spec.name, "run": str(run), "scored": scored, **scores}


def _pid_trees(run: Path, task: str, fragment_steps: bool, pid_run: str | os.PathLike[str] | None
               ) -> tuple[BoostedTrees, torch.Tensor, dict[str, Any]]:
    """The semseg run's particle-ID trees (``detfm pid-trees``), checked against the request
    before any event is read."""
    if task != "semseg":
        raise ConfigError(f"particle-ID trees read a semseg run's outputs; {run} is a {task} run")
    if fragment_steps or pid_run is not None:
        raise ConfigError("the particle-ID trees score particles: they do not combine with the fragment vote, "
                          "the fragment classifier or a pid run")
    return load_pid_trees(run)


def _check_pid_stage(task: str, run: str | os.PathLike[str], pid_run: str | os.PathLike[str]) -> None:
    """Refuse a second (pid) stage on anything but a particles run, a missing directory, or one
    that is not a pid run."""
    if not Path(pid_run).is_dir():
        raise DetfmError(f"{pid_run}: no such run directory")
    if task != "particles":
        raise ConfigError(f"a pid run names the particles a particles run finds; {run} is a {task} run")
    pid_task = load_finetune_config(pid_run).task
    if pid_task != "pid":
        raise ConfigError(f"{pid_run} is a {pid_task} run; the second stage must be a pid run")


def _fragment_stage(run: Path, spec: TaskSpec, fragment_vote: bool, fragment_classifier: bool
                    ) -> tuple[FragmentStage | None, dict[str, Any] | None]:
    """The run's fitted fragment classifier and its info when asked for (else ``(None, None)``),
    after checking the request against the task; before any event is read."""
    check_fragment_steps(spec, fragment_vote, fragment_classifier)
    return load_fragment_stage(run) if fragment_classifier else (None, None)


def _with_pid_stage(task: nn.Module, pid_run: str | os.PathLike[str], device: str) -> nn.Module:
    """``task`` (a particles task) whose found particles the ``pid_run``'s head names (the pair
    checked by :func:`_check_pid_stage` first)."""
    from detfm.evaluate.particles import ParticlesWithPid

    pid = load_finetuned(pid_run, map_location=device)
    merge_lora(pid)
    return ParticlesWithPid(task, pid)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- reload
def load_finetune_config(run_dir: str | os.PathLike[str]) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of a fine-tuning run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise DetfmError(f"{run_dir}: not a fine-tuning run (no {CONFIG_FILE})")
    first = path.read_text(encoding="utf-8").split("\n", 1)[0].strip()
    if first.startswith("#") and first != f"# {FinetuneConfig.__name__}":
        raise DetfmError(f"{run_dir}: not a fine-tuning run ({CONFIG_FILE} holds a {first[1:].strip()}); "
                         f"pass the directory written by `detfm finetune`")
    return load_config(FinetuneConfig, path)


def load_finetuned(run_dir: str | os.PathLike[str], *, map_location: str = "cpu") -> AdaptationTask:
    """The trained task of a fine-tuning run (final weights, else the last checkpoint), in eval mode.

    The backbone architecture comes from the run's ``backbone.yaml`` (the pretraining run
    is not needed). Weights are read from safetensors only.
    """
    run = Path(run_dir)
    cfg = load_finetune_config(run)
    arch_file = run / BACKBONE_FILE
    if arch_file.is_file():
        arch = config_from_yaml(arch_file.read_text(encoding="utf-8"))
    else:  # an unfinished run: rebuild the architecture from its config
        arch = _backbone_config(cfg)
    weights = weights_path(run)
    task = build_task(_with_older_defaults(cfg, weights), build_model(arch))
    load_weights(task, weights, strict=True, device=map_location)
    return task.eval()


def _with_older_defaults(cfg: FinetuneConfig, weights: Path) -> FinetuneConfig:
    """``cfg`` with the task settings its run left out because they were the defaults then
    (a task whose default changed says which, from the run's tensor names)."""
    older = get_task(cfg.task).older_run_settings
    if older is None:
        return cfg
    implied = {k: v for k, v in older(stored_tensor_names(weights)).items() if k not in cfg.task_settings}
    return dataclasses.replace(cfg, task_settings={**cfg.task_settings, **implied}) if implied else cfg


# ----------------------------------------------------------------------------- predict
@dataclass(frozen=True)
class PredictReport:
    """What :func:`predict_file` wrote."""

    path: Path
    events: int
    points: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / max(self.seconds, 1e-9)


def predict_file(run_dir: str | os.PathLike[str], data: str | os.PathLike[str],
                 out_h5: str | os.PathLike[str], *, batch_size: int = 8,
                 dtype: Literal["float16", "float32"] = "float16", device: str = "cpu",
                 progress: bool = False, views: int = 1, view_seed: int = 0,
                 pid_run: str | os.PathLike[str] | None = None, fragment_vote: bool = False,
                 fragment_classifier: bool = False, pid_trees: bool = False) -> PredictReport:
    """Run a fine-tuned model on every event of ``data`` and write its outputs to ``out_h5``.

    One row per input event, in file order (written atomically). Common datasets:
    ``event_index`` (int64, the event's number in ``data``) and ``n_points`` (int64).

    * ``semseg`` runs: ``probs`` (variable-length ``dtype`` rows of ``n_points * 5`` values;
      reshape to (n_points, 5)) and ``pred`` (variable-length uint8, the argmax class of each
      point). The points of a row are the event's points with value >= the run's energy
      threshold (attribute ``energy_threshold``), in stored order. ``data`` needs no labels.
    * ``pid`` runs: per particle instance (the ``group`` label of ``data``, which must
      therefore carry instance labels): ``pid_probs`` (rows of ``n_particles * 5`` values),
      ``pid_pred`` (uint8) and ``group`` (int64 group id of each particle).
    * ``event`` runs: ``event_probs`` ((events, 5) ``dtype``) and ``event_pred`` (int16); an
      event with no point above the threshold gets NaN probabilities and class -1.
    * ``particles`` runs: per particle the model found, class probabilities, point
      indices, kinetic energy and start (:mod:`detfm.recipes.particle_predict`); ``data``
      needs no labels. ``pid_run``: a ``pid`` run's head names the particles
      (:class:`~detfm.evaluate.particles.ParticlesWithPid`; attribute ``pid_run``).

    Events with no point above the threshold get empty rows. ``views > 1`` (all but
    ``particles`` runs): the probabilities are averaged over that many orientations of each
    event (:class:`~detfm.evaluate.orientations.OrientationAverage`, drawn from
    ``view_seed``; attribute ``orientation_views``). ``fragment_vote`` (``semseg`` runs): each
    connected fragment of shower-like points takes one class, after the views are averaged
    (:class:`~detfm.evaluate.fragments.FragmentVote`; attribute ``fragment_vote``).
    ``fragment_classifier`` (``semseg`` runs, after ``detfm fragments``): the run's fitted
    fragment classifier instead (attribute ``fragment_classifier``). ``pid_trees`` (``semseg``
    runs, after ``detfm pid-trees``): the rows of a ``pid`` run instead, from the run's boosted
    trees (attribute ``pid_trees``).
    """
    if dtype not in ("float16", "float32"):
        raise ConfigError(f"dtype must be 'float16' or 'float32', got {dtype!r}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    src, dst = Path(data), Path(out_h5)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise DetfmError(f"{dst}: the output would overwrite the input file")
    cfg = load_finetune_config(run_dir)
    if pid_run is not None:
        _check_pid_stage(cfg.task, run_dir, pid_run)
    spec = get_task(cfg.task)
    stage, stage_info = _fragment_stage(Path(run_dir), spec, fragment_vote, fragment_classifier)
    trees = (_pid_trees(Path(run_dir), cfg.task, fragment_vote or fragment_classifier, pid_run) if pid_trees
             else None)
    task = load_finetuned(run_dir, map_location=device)
    merge_lora(task)  # inference only: fold LoRA updates into the weights (no-op otherwise)
    if trees is not None:
        task, spec = TreeParticleID(task, trees[0].to(device), trees[1].to(device)), get_task("pid")
    if views != 1 and spec.unit == "particle":
        raise ConfigError(f"averaging over orientations applies to tasks that score given items; '{cfg.task}' "
                          f"finds its own particles: predict with views=1")
    if pid_run is not None:
        task = _with_pid_stage(task, pid_run, device)
    outputs = OrientationAverage(task, views, view_seed) if views != 1 else task
    if fragment_vote:
        outputs = FragmentVote(outputs, spec.fragment_classes, spec.excluded_class)
    if stage is not None:
        outputs = FragmentRelabel(outputs, stage)
    per_event = spec.unit == "event"  # one fixed row per event, else variable-length rows
    by_instance = spec.unit == "instance"  # rows carry the group id of each particle
    dataset = EventDataset([src], energy_threshold=cfg.data.energy_threshold, min_points=0, labels=by_instance)
    if by_instance and len(dataset) and dataset[0].instance is None:
        raise DataFormatError(f"{src}: {cfg.task} needs the particle instances (the cluster 'group' column)",
                              path=str(src), field="cluster")
    num_classes = len(spec.class_names)
    prefix = spec.prediction_prefix
    import h5py

    t0 = time.perf_counter()
    if spec.unit == "particle":  # set prediction: rows per found particle (recipes.particle_predict)
        attrs = {"format": PREDICTIONS_FORMAT, "task": cfg.task, "classes": json.dumps(list(spec.class_names)),
                 "num_classes": num_classes, "energy_threshold": dataset.energy_threshold,
                 "model_run": str(Path(run_dir).resolve()), "source_file": str(src.resolve()),
                 "point_order": "points with value >= energy_threshold, in stored order"}
        if pid_run is not None:
            attrs["pid_run"] = str(Path(pid_run).resolve())
        points = write_particle_predictions(task, dataset, dst, attrs, batch_size=batch_size, dtype=dtype,
                                            device=device, progress=progress)
        return PredictReport(path=dst, events=len(dataset), points=points, seconds=time.perf_counter() - t0)
    total_points = 0
    n = len(dataset)
    with atomic_path(dst) as tmp, h5py.File(tmp, "w") as h5, torch.no_grad(), \
            tqdm(total=n, desc="predicting", unit="event", delay=2.0, leave=False, disable=not progress) as bar:
        if per_event:  # one row of num_classes values per event
            probs_ds = h5.create_dataset(f"{prefix}probs", (n, num_classes), dtype=np.dtype(dtype))
            pred_ds = h5.create_dataset(f"{prefix}pred", (n,), dtype=np.int16)
        else:
            probs_ds = h5.create_dataset(f"{prefix}probs", (n,), dtype=h5py.vlen_dtype(np.dtype(dtype)))
            pred_ds = h5.create_dataset(f"{prefix}pred", (n,), dtype=h5py.vlen_dtype(np.uint8))
        group_ds = h5.create_dataset("group", (n,), dtype=h5py.vlen_dtype(np.int64)) if by_instance else None
        index_ds = h5.create_dataset("event_index", (n,), dtype=np.int64)
        count_ds = h5.create_dataset("n_points", (n,), dtype=np.int64)
        h5.attrs.update({"format": PREDICTIONS_FORMAT, "task": spec.name, "classes": json.dumps(list(spec.class_names)),
                         "num_classes": num_classes, "energy_threshold": dataset.energy_threshold,
                         "model_run": str(Path(run_dir).resolve()), "source_file": str(src.resolve()),
                         "point_order": "points with value >= energy_threshold, in stored order"})
        if views != 1:
            h5.attrs["orientation_views"] = json.dumps({"views": views, "seed": view_seed})
        if fragment_vote:
            h5.attrs["fragment_vote"] = json.dumps([spec.class_names[c] for c in spec.fragment_classes])
        if stage is not None and stage_info is not None:
            h5.attrs["fragment_classifier"] = json.dumps(stage_record(stage, spec.class_names, stage_info))
        if trees is not None:
            h5.attrs["pid_trees"] = json.dumps({"fitted_views": trees[2].get("views"),
                                                "working_point": trees[2].get("working_point")})
        for a in range(0, n, batch_size):
            samples = [dataset[i] for i in range(a, min(a + batch_size, n))]
            full = [s for s in samples if s.n_points > 0]
            rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # event -> (probs, item ids)
            if full:
                logits, event, ids = outputs.item_outputs(collate(full).to(device))
                probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
                event, ids = event.cpu().numpy(), ids.cpu().numpy()
                for j, s in enumerate(full):
                    rows[s.index] = (probs[event == j], ids[event == j])
            for k, s in enumerate(samples):
                p, groups = rows.get(s.index, (np.zeros((0, num_classes), np.float32), np.zeros(0, np.int64)))
                if per_event:  # an empty event: probabilities NaN, class -1
                    probs_ds[a + k] = p[0].astype(dtype) if len(p) else np.full(num_classes, np.nan, dtype)
                    pred_ds[a + k] = int(p[0].argmax()) if len(p) else -1
                else:
                    probs_ds[a + k] = p.astype(dtype).reshape(-1)
                    pred_ds[a + k] = p.argmax(axis=1).astype(np.uint8) if len(p) else np.zeros(0, np.uint8)
                if group_ds is not None:
                    group_ds[a + k] = groups.astype(np.int64)
                index_ds[a + k] = s.index
                count_ds[a + k] = s.n_points
                total_points += s.n_points
            bar.update(len(samples))
    return PredictReport(path=dst, events=n, points=total_points, seconds=time.perf_counter() - t0)

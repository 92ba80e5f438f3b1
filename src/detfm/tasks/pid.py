"""Particle identification per particle instance (photon, electron, muon, pion, proton).

The particle instances are given (the ``instance`` label: the group id of the primary
each point descends from, PILArNet-M's "group"); the task says what each one is. Per-point
features come from the same head as segmentation (:class:`~detfm.tasks.heads.PointHead`),
are mean-pooled over the points of each instance, and a classifier maps the pooled feature
to 5 classes.

Instance label: an instance holds the points of a primary *and* its descendants (a muon's
delta rays and Michel electron are electrons), so its PID is the most common PID among its
points (ties: the lower id); points with PID "none" (5) do not vote, and instances with
no voting point, or the low-energy bucket (group id < 0), are not scored.

Loss: the focal loss of :mod:`detfm.tasks.segmentation` over instances, averaged within an
event and then over events (the engine's DDP requirement). With ``head="linear"`` (probe)
the logits are a linear map of the pooled features (mean pooling is linear, so pooling the
linear head's per-point outputs is the same thing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from detfm.data import PackedBatch
from detfm.data.datasets import DEFAULT_DATASET, get_dataset
from detfm.errors import ConfigError, DataFormatError
from detfm.models.layers import init_weights, seeded_init
from detfm.models.packing import group_max, group_mean, local_index
from detfm.tasks.base import TaskOutput
from detfm.tasks.heads import AdaptationTask, HeadConfig
from detfm.tasks.particle_features import PARTICLE_FEATURE_NAMES, MeasurementStore, particle_features
from detfm.tasks.segmentation import event_mean_focal_loss
from detfm.tasks.set_pooling import SetPooling, contact_distance

__all__ = ["Instances", "PIDConfig", "ParticleID", "PooledClassifier", "find_instances", "group_softmax"]

NUM_PID = len(get_dataset(DEFAULT_DATASET).pid_classes)  # photon, electron, muon, pion, proton
POOLINGS = ("mean", "mean_max", "mean_attention", "set")


@dataclass(frozen=True)
class PIDConfig(HeadConfig):
    """Settings of :class:`ParticleID`: the head settings of :class:`~detfm.tasks.heads.HeadConfig`
    with the 5 particle classes.

    ``pooling`` says how the per-point head outputs of a particle become one feature:
    ``mean``, or ``mean_max`` (the mean and the per-channel maximum side by side, so that a
    feature only a few points carry, such as the dE/dx of a shower's first centimetres that
    tells an electron from a photon, is not averaged away), or ``mean_attention`` (the mean and
    an attention-weighted mean side by side: a learned score per point, normalised by a softmax
    over the particle's points, so the head can learn which points to read, e.g. a shower's
    start), or ``set`` (a two-stage point-set encoder that also reads where each point lies in
    its particle and how far the nearest other particle is: :mod:`detfm.tasks.set_pooling`).
    A linear probe keeps ``mean``.

    ``measurements``: also read the particle's measurements of
    :mod:`detfm.tasks.particle_features` (dE/dx at its ends, its pieces, its contact with the
    other particles, ...), through a small layer of their own, beside the pooled feature.
    """

    num_classes: int = NUM_PID
    pooling: str = "mean"
    measurements: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes != NUM_PID:
            raise ConfigError(f"the PID classifiers have {NUM_PID} classes (photon ... proton), "
                              f"got num_classes={self.num_classes}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.pooling != "mean" and self.head == "linear":
            raise ConfigError("a linear probe pools by the mean (a linear map of the point features); "
                              f"pooling={self.pooling!r} needs the MLP head (mode head, finetune or lora)")
        if self.measurements and self.head == "linear":
            raise ConfigError("a linear probe reads only the pooled point features; measurements: true needs the "
                              "MLP head (mode head, finetune or lora)")


@dataclass(frozen=True)
class Instances:
    """The particle instances of a batch.

    Attributes:
        point_instance: (P,) int64 instance of each point, -1 for points in none (group < 0).
        event: (M,) int64 event of each instance; group: (M,) int64 its group id.
        label: (M,) int64 PID (majority vote of its points), -1 when none voted.
        size: (M,) int64 points per instance.
    """

    point_instance: torch.Tensor
    event: torch.Tensor
    group: torch.Tensor
    label: torch.Tensor
    size: torch.Tensor

    def __len__(self) -> int:
        return int(self.event.numel())


def find_instances(offsets: torch.Tensor, instance: torch.Tensor, pid: torch.Tensor) -> Instances:
    """Number the (event, group) pairs of a batch in order and give each its majority PID."""
    event, _ = local_index(offsets)
    valid = instance >= 0
    width = int(instance.max()) + 1 if instance.numel() and bool(valid.any()) else 1
    key = torch.where(valid, event * width + instance, -1)
    uniq, inverse = torch.unique(key, return_inverse=True)
    if uniq.numel() and int(uniq[0]) == -1:  # drop the "no instance" key
        uniq, inverse = uniq[1:], inverse - 1
    point_instance = torch.where(valid, inverse, -1)
    m = uniq.numel()
    votes = torch.zeros(m, NUM_PID + 1, dtype=torch.long, device=offsets.device)
    voting = valid & (pid >= 0) & (pid < NUM_PID)
    votes.index_put_((point_instance[voting], pid[voting]), torch.ones_like(pid[voting]), accumulate=True)
    label = torch.where(votes[:, :NUM_PID].sum(dim=1) > 0, votes[:, :NUM_PID].argmax(dim=1), -1)
    size = torch.bincount(point_instance[valid], minlength=m)
    return Instances(point_instance=point_instance, event=uniq // width, group=uniq % width, label=label,
                     size=size)


def instance_labels(batch: PackedBatch) -> torch.Tensor:
    """(M,) PID of every particle instance of the batch (-1: not scored)."""
    if batch.instance is None or batch.pid is None:
        raise DataFormatError("particle identification needs per-point instance and pid labels", field="instance")
    return find_instances(batch.offsets, batch.instance, batch.pid).label


class PooledClassifier(AdaptationTask):
    """What particle ID and event classification share: per-point head outputs to be
    mean-pooled over groups of points, and a classifier of the pooled feature (identity for
    ``head="linear"``)."""

    def __init__(self, backbone: nn.Module, cfg: PIDConfig) -> None:
        super().__init__(backbone, cfg, head_outputs=cfg.num_classes if cfg.head == "linear" else cfg.hidden)
        with seeded_init(cfg.seed + 1):
            self.set_pool = SetPooling(cfg.hidden) if cfg.pooling == "set" else None
            width = (self.set_pool.out_features if self.set_pool is not None
                     else cfg.hidden * (1 if cfg.pooling == "mean" else 2))
            self.measure: nn.Module | None = None
            self.measurement_store: MeasurementStore | None = None  # used while training on kept outputs
            if cfg.measurements:
                self.measurement_store = MeasurementStore()
                self.measure = nn.Sequential(nn.Linear(len(PARTICLE_FEATURE_NAMES), cfg.hidden), nn.GELU())
                self.measure.apply(init_weights)
                width += cfg.hidden
            self.classifier: nn.Module = (nn.Identity() if cfg.head == "linear" else
                                          nn.Sequential(nn.LayerNorm(width), nn.GELU(),
                                                        nn.Linear(width, cfg.num_classes)))
            self.classifier.apply(init_weights)
            # mean_attention: one score per point from its head output
            self.attention_score = nn.Linear(cfg.hidden, 1) if cfg.pooling == "mean_attention" else None
            if self.attention_score is not None:
                self.attention_score.apply(init_weights)

    def pooled_logits(self, batch: PackedBatch, group: torch.Tensor, num_groups: int,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """(num_groups, num_classes) logits of the pooled point features of each group
        (``config.pooling``); ``group`` gives each point's group (-1: in none). A group without
        points pools to zeros."""
        point = self.point_outputs(batch, generator)
        inside = group >= 0
        index, values = group[inside], point[inside]
        if self.set_pool is not None:
            contact = contact_distance(batch.coord, batch.batch_index(), group)[inside]
            pooled = self.set_pool(values, batch.coord[inside], batch.energy[inside].to(values.dtype), contact,
                                   index, num_groups)
        else:
            pooled = group_mean(values, index, num_groups)
        if self.config.pooling == "mean_max":
            pooled = torch.cat([pooled, group_max(values, index, num_groups)], dim=1)
        elif self.attention_score is not None:
            weight = group_softmax(self.attention_score(values).squeeze(1), index, num_groups)
            attended = point.new_zeros(num_groups, point.shape[1]).index_add(0, index, weight[:, None] * values)
            pooled = torch.cat([pooled, attended], dim=1)
        if self.measure is not None:
            store = self.measurement_store if self.training and self.feature_cache is not None else None
            if store is not None:  # the same events, unchanged, every pass
                measured = store(batch, group, num_groups)
            else:
                measured = particle_features(batch.coord, batch.energy, batch.batch_index(), group, num_groups)
            pooled = torch.cat([pooled, self.measure(measured.to(pooled.dtype))], dim=1)
        return self.classifier(pooled)


def group_softmax(score: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Softmax of (P,) ``score`` within each group of (P,) ``index`` (0..num_groups-1): the
    weights of a group's points sum to 1."""
    top = score.new_full((num_groups,), float("-inf")).scatter_reduce(0, index, score, reduce="amax",
                                                                        include_self=True)
    e = torch.exp(score - top[index].detach())
    total = score.new_zeros(num_groups).index_add(0, index, e)
    return e / total[index]


class ParticleID(PooledClassifier):
    """Backbone + per-point features + mean pooling per instance + classifier."""

    def __init__(self, backbone: nn.Module, cfg: PIDConfig | None = None) -> None:
        super().__init__(backbone, cfg or PIDConfig())

    def scored_items(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every instance's PID (-1: not scored) and logits (what the scoring loop counts)."""
        logits, inst = self.forward_instances(batch)
        return inst.label, logits

    def item_outputs(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of every instance, the event it belongs to, and its group id (for predictions)."""
        logits, inst = self.forward_instances(batch)
        return logits, inst.event, inst.group

    def forward_instances(self, batch: PackedBatch, generator: torch.Generator | None = None
                          ) -> tuple[torch.Tensor, Instances]:
        """(M, 5) logits of every instance of the batch, and the instances."""
        if batch.instance is None or batch.pid is None:
            raise DataFormatError("particle identification needs per-point instance and pid labels; this "
                                  "batch has none (open the dataset with labels=True)", field="instance")
        inst = find_instances(batch.offsets, batch.instance, batch.pid)
        return self.pooled_logits(batch, inst.point_instance, len(inst), generator), inst

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TaskOutput:
        logits, inst = self.forward_instances(batch, generator)
        scored = inst.label >= 0
        loss = event_mean_focal_loss(logits, inst.label, inst.event, len(batch), self.class_weights,
                                     self.config.focal_gamma, scored)
        with torch.no_grad():
            correct = ((logits.argmax(dim=-1) == inst.label) & scored).sum().float()
            n_scored = scored.sum().float()
        return {"loss": loss, "outputs": {"accuracy": correct / n_scored.clamp(min=1.0), "instances": n_scored}}

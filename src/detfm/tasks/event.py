"""Event-level classification: what kind of particle leads the event.

The label of an event is the PID (photon, electron, muon, pion, proton) of its *leading
particle*: the particle instance (see :func:`detfm.tasks.pid.find_instances`) with the
largest deposited energy among those with a PID label. It is the event-level question of a
neutrino analysis (is this a muon-neutrino or an electron-neutrino interaction, judged by
the leading lepton) asked of the built-in simulator's events. Events without any labeled
instance are not scored.

Model: the same per-point head outputs as segmentation and PID
(:class:`~detfm.tasks.heads.PointHead`), mean-pooled over all points of the event,
then a classifier (for ``head="linear"`` the pooled linear outputs are the logits). Loss:
the focal loss over events (class weights optional).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detfm.data import PackedBatch
from detfm.errors import ConfigError, DataFormatError
from detfm.models.packing import local_index
from detfm.tasks.base import TaskOutput
from detfm.tasks.pid import PIDConfig, PooledClassifier, find_instances
from detfm.tasks.segmentation import DEFAULT_FOCAL_GAMMA

__all__ = ["EventClassification", "EventConfig", "event_focal_loss", "leading_particle_label"]


@dataclass(frozen=True)
class EventConfig(PIDConfig):
    """Settings of :class:`EventClassification`: the fields of :class:`~detfm.tasks.pid.PIDConfig`
    (5 classes: the leading particle's PID), without ``measurements`` (they measure particles)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.measurements:
            raise ConfigError("measurements: true measures particle instances (task pid), not whole events")


def leading_particle_label(batch: PackedBatch) -> torch.Tensor:
    """(B,) PID of the highest-energy labeled particle instance of each event; -1 if none."""
    if batch.instance is None or batch.pid is None:
        raise DataFormatError("event classification needs per-point instance and pid labels; this batch "
                              "has none (open the dataset with labels=True)", field="instance")
    inst = find_instances(batch.offsets, batch.instance, batch.pid)
    label = torch.full((len(batch),), -1, dtype=torch.long, device=batch.offsets.device)
    if len(inst) == 0:
        return label
    inside = inst.point_instance >= 0
    energy = torch.zeros(len(inst), dtype=torch.float64, device=label.device).index_add(
        0, inst.point_instance[inside], batch.energy[inside].double())
    energy = torch.where(inst.label >= 0, energy, -1.0)
    # per event, the instance of largest energy: sort by (event, energy) and take each event's last
    order = torch.argsort(energy, stable=True)
    order = order[torch.argsort(inst.event[order], stable=True)]
    last = torch.ones(len(order), dtype=torch.bool, device=label.device)
    last[:-1] = inst.event[order][1:] != inst.event[order][:-1]
    best = order[last]
    label[inst.event[best]] = torch.where(energy[best] >= 0, inst.label[best], -1)
    return label


def event_focal_loss(logits: torch.Tensor, label: torch.Tensor, class_weights: torch.Tensor | None = None,
                     gamma: float = DEFAULT_FOCAL_GAMMA) -> torch.Tensor:
    """Mean over the events of ``alpha_y (1 - p_y)^gamma (-log p_y)``; unscored events (label -1)
    add 0 and still count, so the loss is a mean over events (what DDP and accumulation need)."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    safe = label.clamp(0, logits.shape[-1] - 1)
    log_py = log_p.gather(1, safe[:, None]).squeeze(1)
    loss = -((1.0 - log_py.exp()) ** gamma) * log_py if gamma else -log_py
    alpha = (torch.ones(logits.shape[-1], device=logits.device) if class_weights is None
             else class_weights.to(logits.device, torch.float32))
    return torch.where(label >= 0, alpha[safe] * loss, 0.0).mean()


class EventClassification(PooledClassifier):
    """Backbone + per-point features + mean pooling over the event + classifier."""

    def __init__(self, backbone: nn.Module, cfg: EventConfig | None = None) -> None:
        super().__init__(backbone, cfg or EventConfig())

    def scored_items(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every event's leading-particle PID (-1: not scored) and logits."""
        return leading_particle_label(batch), self.forward_logits(batch)

    def item_outputs(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One row of logits per event, its event number, and the event number as its id."""
        event = torch.arange(len(batch), device=batch.offsets.device)
        return self.forward_logits(batch), event, event

    def forward_logits(self, batch: PackedBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 5) logits, one row per event."""
        event, _ = local_index(batch.offsets)
        return self.pooled_logits(batch, event, len(batch), generator)

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TaskOutput:
        label = leading_particle_label(batch)
        logits = self.forward_logits(batch, generator)
        scored = label >= 0
        loss = event_focal_loss(logits, label, self.class_weights, self.config.focal_gamma)
        with torch.no_grad():
            correct = ((logits.argmax(dim=-1) == label) & scored).sum().float()
            n_scored = scored.sum().float()
        return {"loss": loss, "outputs": {"accuracy": correct / n_scored.clamp(min=1.0), "events": n_scored}}

"""Per-point semantic segmentation (shower, track, Michel, delta, low-energy) on a backbone.

``task(batch) -> {"loss", "outputs"}`` like every task. The backbone gives per-point
features, :class:`~detfm.tasks.heads.PointHead` maps them to class logits, and the loss is
a class-weighted focal loss.

Loss (why focal, and how it is averaged)
    Classes are very unbalanced (tracks and showers hold most points, Michel and delta
    electrons a few percent), and the reported metric is macro-F1. The focal loss (Lin et
    al. 2017, "Focal Loss for Dense Object Detection", gamma = 2) down-weights points the
    model already gets right, which are mostly of the big classes; PoLAr-MAE also fine-tunes
    segmentation with a softmax focal loss. Optional per-class weights ``alpha`` (the
    recipe sets them from the labeled events' class frequencies) add explicit balancing.
    ``focal_gamma = 0`` with unit weights is plain cross-entropy.

    Per event, the loss is the ``alpha``-weighted mean over its scored points; the batch
    loss is the mean over the batch's events (an event with no scored point adds 0). A loss
    that is a mean over events is what makes the engine's DDP / accumulation gradient equal
    the single-process one.

``exclude_low_energy`` leaves the dataset's excluded class (LArTPC: class 4, low-energy
deposits) out of the loss and the logged accuracy, as the PoLAr-MAE evaluation does; the
model still outputs 5 logits.

Freezing the backbone, the head and layer-wise learning rates come from
:class:`~detfm.tasks.heads.AdaptationTask`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detfm.data import PackedBatch
from detfm.data.datasets import DEFAULT_DATASET, get_dataset
from detfm.errors import ConfigError, DataFormatError
from detfm.tasks.base import TaskOutput
from detfm.tasks.heads import DEFAULT_FOCAL_GAMMA, AdaptationTask, HeadConfig

__all__ = ["SegmentationConfig", "SemanticSegmentation", "event_mean_focal_loss", "segmentation_loss"]

NUM_SEMANTIC = len(get_dataset(DEFAULT_DATASET).semantic_classes)


@dataclass(frozen=True)
class SegmentationConfig(HeadConfig):
    """Settings of :class:`SemanticSegmentation`: the head settings of
    :class:`~detfm.tasks.heads.HeadConfig`, and

    Attributes:
        exclude_low_energy: leave the dataset's excluded class (LArTPC: low-energy
            deposits) out of the loss and logged accuracy.
        dataset: the kind of events (class names and the excluded class).
    """

    num_classes: int = NUM_SEMANTIC
    exclude_low_energy: bool = False
    dataset: str = DEFAULT_DATASET

    def __post_init__(self) -> None:
        super().__post_init__()
        excluded = get_dataset(self.dataset).excluded_semantic
        if self.exclude_low_energy and (excluded is None or self.num_classes <= excluded):
            raise ConfigError(f"exclude_low_energy needs the {self.dataset} semantic classes with an excluded class")

    @property
    def ignore_class(self) -> int | None:
        """The class left out of the loss, or None."""
        return get_dataset(self.dataset).excluded_semantic if self.exclude_low_energy else None


def event_mean_focal_loss(logits: torch.Tensor, target: torch.Tensor, event: torch.Tensor, num_events: int,
                          class_weights: torch.Tensor | None = None, gamma: float = DEFAULT_FOCAL_GAMMA,
                          scored: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar focal loss of items (points, particles) grouped into events.

    ``-alpha_y (1 - p_y)^gamma log p_y`` per item; per event the ``alpha``-weighted mean over
    its ``scored`` items (default: all); then the mean over the ``num_events`` events. An
    event without scored items contributes 0 (and still counts in the mean).
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    safe = target.clamp(0, logits.shape[-1] - 1)
    log_py = log_p.gather(1, safe[:, None]).squeeze(1)
    item_loss = -((1.0 - log_py.exp()) ** gamma) * log_py if gamma else -log_py
    alpha = (torch.ones(logits.shape[-1], device=logits.device) if class_weights is None
             else class_weights.to(logits.device, torch.float32))
    w = alpha[safe]
    if scored is not None:
        w = torch.where(scored, w, 0.0)
    num = torch.zeros(num_events, device=logits.device).index_add(0, event, w * item_loss)
    den = torch.zeros(num_events, device=logits.device).index_add(0, event, w)
    per_event = torch.where(den > 0, num / den.clamp(min=1e-12), 0.0)
    return per_event.mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor,
                      class_weights: torch.Tensor | None = None, gamma: float = DEFAULT_FOCAL_GAMMA,
                      ignore_class: int | None = None) -> torch.Tensor:
    """Scalar focal loss: weighted mean over each event's scored points, then mean over events.

    Points of ``ignore_class`` are not scored (see :func:`event_mean_focal_loss`).
    """
    batch = offsets.numel() - 1
    event = torch.repeat_interleave(torch.arange(batch, device=logits.device), offsets[1:] - offsets[:-1])
    scored = None if ignore_class is None else target != ignore_class
    return event_mean_focal_loss(logits, target, event, batch, class_weights, gamma, scored)


class SemanticSegmentation(AdaptationTask):
    """Backbone + per-point head + focal loss; ``task(batch) -> {"loss", "outputs"}``."""

    config: SegmentationConfig

    def __init__(self, backbone: nn.Module, cfg: SegmentationConfig | None = None) -> None:
        super().__init__(backbone, cfg or SegmentationConfig())

    def forward_logits(self, batch: PackedBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """(P, num_classes) logits for every point of the batch."""
        return self.point_outputs(batch, generator)

    def scored_items(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every point's true class and logits (what the scoring loop counts)."""
        if batch.semantic is None:
            raise DataFormatError("segmentation needs per-point semantic labels", field="semantic")
        return batch.semantic, self.forward_logits(batch)

    def item_outputs(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of every point, the event it belongs to, and its position in the batch."""
        return self.forward_logits(batch), batch.batch_index(), torch.arange(batch.num_points)

    @torch.no_grad()
    def predict_proba(self, batch: PackedBatch) -> torch.Tensor:
        """(P, num_classes) class probabilities (no gradients; call ``eval()`` first for
        deterministic results)."""
        return torch.softmax(self.forward_logits(batch).float(), dim=-1)

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TaskOutput:
        if batch.semantic is None:
            raise DataFormatError("segmentation needs per-point semantic labels; this batch has none "
                                  "(open the dataset with labels=True)", field="semantic")
        target = batch.semantic
        if bool(((target < 0) | (target >= self.config.num_classes)).any()):
            raise DataFormatError(f"semantic labels must lie in 0..{self.config.num_classes - 1}",
                                  field="semantic")
        logits = self.forward_logits(batch, generator)
        ignore = self.config.ignore_class
        loss = segmentation_loss(logits, target, batch.offsets, self.class_weights, self.config.focal_gamma,
                                 ignore)
        with torch.no_grad():
            scored = target != ignore if ignore is not None else torch.ones_like(target, dtype=torch.bool)
            pred = logits.argmax(dim=-1)
            correct = ((pred == target) & scored).sum().float()
            n_scored = scored.sum().float()
        outputs = {"accuracy": correct / n_scored.clamp(min=1.0), "scored_points": n_scored}
        return {"loss": loss, "outputs": outputs}

"""Per-point semantic segmentation (shower, track, Michel, delta, low-energy) on a backbone.

``task(batch) -> {"loss", "outputs"}`` like every task. The backbone encodes the event into
patch tokens, :class:`~detfm.tasks.heads.SegmentationHead` carries them back to every
point, and the loss is a class-weighted focal loss.

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

``exclude_low_energy`` leaves class 4 (low-energy deposits) out of the loss and the logged
accuracy, as the PoLAr-MAE evaluation does; the model still outputs 5 logits.

Freezing the backbone and layer-wise learning rates come from
:class:`~detfm.tasks.heads.AdaptationTask`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from detfm.data import PackedBatch
from detfm.errors import ConfigError, DataFormatError
from detfm.io import layout
from detfm.models.encoder import PointMAE
from detfm.tasks.base import TaskOutput
from detfm.tasks.heads import DEFAULT_K, AdaptationTask, HeadKind, SegmentationHead, check_head_settings

__all__ = ["SegmentationConfig", "SemanticSegmentation", "event_mean_focal_loss", "segmentation_loss"]

NUM_SEMANTIC = len(layout.SEMANTIC_CLASSES)

# Focal-loss focusing parameter of Lin et al. 2017 (RetinaNet), their best setting.
DEFAULT_FOCAL_GAMMA = 2.0


@dataclass(frozen=True)
class SegmentationConfig:
    """Settings of :class:`SemanticSegmentation`.

    Attributes:
        num_classes: output classes (5 semantic classes).
        head: ``"linear"`` (probe) or ``"mlp"``.
        hidden, point_dim, k: head widths and interpolation neighbours (see ``SegmentationHead``).
        focal_gamma: focal-loss exponent (0: cross-entropy).
        class_weights: per-class loss weights ``alpha`` (None: all 1).
        exclude_low_energy: ignore class 4 in the loss and logged accuracy.
        freeze_backbone: backbone weights fixed (probe / head modes).
        layer_decay: layer-wise learning-rate decay for fine-tuning (1: none); see
            :meth:`~detfm.tasks.heads.AdaptationTask.param_lr_scales`.
        seed: seed of the head's initial weights.
    """

    num_classes: int = NUM_SEMANTIC
    head: HeadKind = "mlp"
    hidden: int = 128
    point_dim: int = 32
    k: int = DEFAULT_K
    focal_gamma: float = DEFAULT_FOCAL_GAMMA
    class_weights: tuple[float, ...] | None = None
    exclude_low_energy: bool = False
    freeze_backbone: bool = False
    layer_decay: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        object.__setattr__(self, "class_weights", check_head_settings(
            self.head, self.focal_gamma, self.class_weights, self.num_classes))
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.exclude_low_energy and self.num_classes <= layout.LOW_ENERGY:
            raise ConfigError("exclude_low_energy needs the 5 semantic classes")


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
    """Backbone + :class:`SegmentationHead` + focal loss; ``task(batch) -> {"loss", "outputs"}``."""

    def __init__(self, backbone: PointMAE, cfg: SegmentationConfig | None = None) -> None:
        cfg = cfg or SegmentationConfig()
        super().__init__(backbone, cfg.freeze_backbone, cfg.layer_decay)
        self.config = cfg
        self.head = SegmentationHead(backbone.num_features, backbone.default_cfg.in_channels, cfg.num_classes,
                                     cfg.head, cfg.hidden, cfg.point_dim, cfg.k, cfg.seed)
        weights = torch.ones(cfg.num_classes) if cfg.class_weights is None else torch.tensor(cfg.class_weights)
        # A buffer, so the weights a run trained with are saved with (and restored from) its weights.
        self.register_buffer("class_weights", weights.float())

    def forward_logits(self, batch: PackedBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """(P, num_classes) logits for every point of the batch."""
        return self.head(batch, self.encode(batch, generator))

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
        ignore = layout.LOW_ENERGY if self.config.exclude_low_energy else None
        loss = segmentation_loss(logits, target, batch.offsets, self.class_weights, self.config.focal_gamma,
                                 ignore)
        with torch.no_grad():
            scored = target != ignore if ignore is not None else torch.ones_like(target, dtype=torch.bool)
            pred = logits.argmax(dim=-1)
            correct = ((pred == target) & scored).sum().float()
            n_scored = scored.sum().float()
        outputs = {"accuracy": correct / n_scored.clamp(min=1.0), "scored_points": n_scored}
        return {"loss": loss, "outputs": outputs}

"""What every adaptation task shares: the head config, the per-point head, and a backbone
that may be frozen, with layer-wise learning rates.

Heads see only the backbone contract (:class:`~detfm.models.contract.BackboneOutput`):
per-point features ``point`` (P, D) and the per-point inputs ``local`` (P, L) the backbone
passes through. A linear layer (``probe``) or an MLP (``head``, fine-tuning, LoRA) maps them
to outputs:

* ``linear``: ``Linear(point) + Linear(local)``, one linear map of ``[point, local]``;
* ``mlp``: ``local`` goes through a small embedding (``point_dim`` wide) first, then
  ``Linear(point) + Linear(embedding)`` through LayerNorm, GELU and two more layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from detfm.errors import ConfigError
from detfm.models.contract import BackboneOutput, layer_ids, multilevel_width
from detfm.models.layers import init_weights, seeded_init
from detfm.tasks.feature_cache import DEFAULT_CACHE_BYTES, FeatureCache

__all__ = ["AdaptationTask", "HeadConfig", "HeadKind", "PointHead"]

HeadKind = Literal["linear", "mlp"]
HeadFeatures = Literal["point", "multilevel"]

# Focal-loss focusing parameter of Lin et al. 2017 (RetinaNet), their best setting.
DEFAULT_FOCAL_GAMMA = 2.0


@dataclass(frozen=True)
class HeadConfig:
    """Settings every adaptation task shares (task configs extend it).

    Attributes:
        head: ``"linear"`` (probe) or ``"mlp"``.
        hidden, point_dim: widths of the MLP head and of the embedding of ``local``.
        focal_gamma: focal-loss exponent (0: cross-entropy).
        class_weights: per-class loss weights ``alpha`` (None: all 1).
        freeze_backbone: backbone weights fixed (probe / head modes).
        layer_decay: layer-wise learning-rate decay for fine-tuning (1: none); see
            :meth:`AdaptationTask.param_lr_scales`.
        seed: seed of the head's initial weights.
        features: what the head reads: the backbone's per-point output (``point``), or the
            concatenation of its levels carried to the points (``multilevel``: what Panda's
            linear probe reads, and what self-distillation trains).
    """

    num_classes: int = 5
    head: HeadKind = "mlp"
    hidden: int = 128
    point_dim: int = 32
    focal_gamma: float = DEFAULT_FOCAL_GAMMA
    class_weights: tuple[float, ...] | None = None
    freeze_backbone: bool = False
    layer_decay: float = 1.0
    seed: int = 0
    features: HeadFeatures = "point"

    def __post_init__(self) -> None:
        if self.features not in ("point", "multilevel"):
            raise ConfigError(f"features must be 'point' or 'multilevel', got {self.features!r}")
        if self.head not in ("linear", "mlp"):
            raise ConfigError(f"head must be 'linear' or 'mlp', got {self.head!r}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.hidden < 1 or self.point_dim < 1:
            raise ConfigError(f"hidden and point_dim must be >= 1, got {self.hidden}, {self.point_dim}")
        if self.focal_gamma < 0:
            raise ConfigError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.class_weights is not None:
            w = tuple(float(x) for x in self.class_weights)
            if len(w) != self.num_classes or any(not x >= 0 for x in w) or not any(x > 0 for x in w):
                raise ConfigError(f"class_weights must be {self.num_classes} values >= 0, not all 0, "
                                  f"got {list(self.class_weights)}")
            object.__setattr__(self, "class_weights", w)

    def class_weight_tensor(self) -> torch.Tensor:
        return (torch.ones(self.num_classes) if self.class_weights is None
                else torch.tensor(self.class_weights)).float()


class PointHead(nn.Module):
    """Per-point outputs from a :class:`BackboneOutput` (see the module docstring)."""

    def __init__(self, num_features: int, num_local: int, out_features: int, kind: HeadKind = "mlp",
                 hidden: int = 128, point_dim: int = 32, seed: int = 0) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ConfigError(f"head kind must be 'linear' or 'mlp', got {kind!r}")
        for name, value in (("num_features", num_features), ("out_features", out_features),
                            ("hidden", hidden), ("point_dim", point_dim)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if num_local < 0:
            raise ConfigError(f"num_local must be >= 0, got {num_local}")
        self.kind = kind
        self.num_local = num_local
        with seeded_init(seed):
            if kind == "linear":
                self.point_embed: nn.Module = nn.Identity()
                self.token_proj = nn.Linear(num_features, out_features)
                self.point_proj: nn.Module | None = (nn.Linear(num_local, out_features, bias=False)
                                                     if num_local else None)
                self.classifier: nn.Module = nn.Identity()
            else:
                self.point_embed = nn.Sequential(nn.Linear(num_local, point_dim), nn.GELU()) if num_local \
                    else nn.Identity()
                self.token_proj = nn.Linear(num_features, hidden)
                self.point_proj = nn.Linear(point_dim, hidden, bias=False) if num_local else None
                self.classifier = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                                nn.GELU(), nn.Linear(hidden, out_features))
            self.apply(init_weights)

    def forward(self, out: BackboneOutput, features: HeadFeatures = "point") -> torch.Tensor:
        """(P, out_features) for every point of the batch ``out`` came from, read from its
        ``point`` features or its ``multilevel`` concatenation."""
        if out.local.shape[-1] != self.num_local:
            raise ConfigError(f"the head expects {self.num_local} local features per point, the backbone "
                              f"gave {out.local.shape[-1]}: build the head from this backbone")
        fused = self.token_proj(out.point if features == "point" else out.multilevel())
        if self.point_proj is not None:
            fused = fused + self.point_proj(self.point_embed(out.local))
        return self.classifier(fused)


class AdaptationTask(nn.Module):
    """What adaptation tasks share: a backbone that may be frozen, a :class:`PointHead`, class
    weights, and layer-wise lr scales.

    Frozen backbone (``probe`` / ``head`` modes): its parameters do not require gradients,
    it runs in eval mode (no drop-path) under ``no_grad``, and :meth:`train` keeps it there,
    so neither its weights nor its outputs can change. Such a task can keep the backbone's
    outputs of the training events (:meth:`cache_features`), so that later passes skip it.
    """

    def __init__(self, backbone: nn.Module, cfg: HeadConfig, head_outputs: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = cfg
        self.freeze_backbone = cfg.freeze_backbone
        self.layer_decay = cfg.layer_decay
        if cfg.freeze_backbone:
            for param in self.backbone.parameters():
                param.requires_grad_(False)
            self.backbone.eval()
        width = backbone.num_features if cfg.features == "point" else multilevel_width(backbone)
        self.head = PointHead(width, backbone.num_local_features,
                              head_outputs or cfg.num_classes, cfg.head, cfg.hidden, cfg.point_dim, cfg.seed)
        # A buffer, so the weights a run trained with are saved with (and restored from) its weights.
        self.register_buffer("class_weights", cfg.class_weight_tensor())
        self.feature_cache: FeatureCache | None = None

    def cache_features(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> FeatureCache:
        """Keep the frozen backbone's outputs of the events seen in training mode (see
        :mod:`detfm.tasks.feature_cache`); the events' points must not change between passes
        (no random rotation or subsampling). Scoring in eval mode never uses the cache."""
        if not self.freeze_backbone:
            raise ConfigError("only a frozen backbone's features can be kept (modes probe and head); "
                              "a fine-tuned backbone changes every step")
        self.feature_cache = FeatureCache(max_bytes, keep_levels=self.config.features == "multilevel")
        return self.feature_cache

    def train(self, mode: bool = True) -> AdaptationTask:
        """Set training mode; a frozen backbone always stays in eval mode."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def encode(self, batch, generator: torch.Generator | None = None) -> BackboneOutput:  # type: ignore[no-untyped-def]
        """The backbone's per-point features (without gradients when it is frozen)."""
        if self.freeze_backbone:
            if self.feature_cache is not None and self.training:
                return self.feature_cache.encode(self.backbone, batch)
            with torch.no_grad():
                return self.backbone.forward_features(batch)
        return self.backbone.forward_features(batch, generator=generator)

    def point_outputs(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:  # type: ignore[no-untyped-def]
        """(P, head outputs): the head on every point of the batch."""
        return self.head(self.encode(batch, generator), self.config.features)

    def param_lr_scales(self) -> dict[str, float]:
        """Learning-rate multiplier per parameter name (the engine's optimiser hook).

        Layer-wise decay as in BEiT / MAE fine-tuning (MAE ``util/lr_decay.py``): the
        backbone's ``group_matcher()`` numbers its parameters' layers 0..L (an unmatched
        parameter is an error); the task's own parameters join the last (output) layer L;
        layer l trains at ``layer_decay ** (L - l)`` times the base rate.
        """
        names = [n for n, _ in self.backbone.named_parameters()]
        ids = layer_ids(names, self.backbone.group_matcher())
        top = max(ids.values(), default=0)
        scales = {}
        for name, _ in self.named_parameters():
            inner = name.removeprefix("backbone.")
            layer = ids[inner] if name.startswith("backbone.") and inner in ids else top
            scales[name] = self.layer_decay ** (top - layer)
        return scales

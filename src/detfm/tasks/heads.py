"""Heads on backbone tokens: per-point segmentation by feature propagation.

A backbone gives one token per patch; segmentation needs one prediction per point. As in
PointNet++ "feature propagation" (Qi et al. 2017, Eq. 2), each point takes the inverse
squared-distance weighted mean of the tokens of its ``k = 3`` nearest patch centres,
looking only at centres of its own event. That is concatenated with a small per-point
embedding of what the tokens cannot know: the point's offset from its own patch centre
and its energy feature. A linear layer (``probe``) or an MLP (``head``, fine-tuning, LoRA)
maps the result to class logits.

One shortcut keeps memory low: the first layer after the concatenation is linear, and
interpolation is a weighted mean with weights summing to 1, so
``Linear([interp(tokens), point]) == interp(Linear_t(tokens)) + Linear_p(point)``. The
head projects the (B, G, D) tokens first and interpolates the narrow projection, never
materialising (P, D) per-point token features.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from torch import nn

from detfm.data import PackedBatch
from detfm.errors import ConfigError
from detfm.models.encoder import PointMAE, TokenOutput
from detfm.models.interpolation import (
    DEFAULT_K,
    Interpolation,
    interpolate,
    knn_interpolation,
)
from detfm.models.layers import init_weights, seeded_init

__all__ = ["DEFAULT_K", "AdaptationTask", "HeadKind", "Interpolation", "SegmentationHead", "interpolate",
           "knn_interpolation", "local_point_features"]

HeadKind = Literal["linear", "mlp"]

def check_head_settings(head: str, focal_gamma: float, class_weights: tuple[float, ...] | None,
                        num_classes: int) -> tuple[float, ...] | None:
    """Validate the settings every adaptation head shares; return ``class_weights`` as floats."""
    if head not in ("linear", "mlp"):
        raise ConfigError(f"head must be 'linear' or 'mlp', got {head!r}")
    if focal_gamma < 0:
        raise ConfigError(f"focal_gamma must be >= 0, got {focal_gamma}")
    if class_weights is None:
        return None
    w = tuple(float(x) for x in class_weights)
    if len(w) != num_classes or any(not x >= 0 for x in w) or not any(x > 0 for x in w):
        raise ConfigError(f"class_weights must be {num_classes} values >= 0, not all 0, "
                          f"got {list(class_weights)}")
    return w


def local_point_features(batch: PackedBatch, out: TokenOutput) -> torch.Tensor:
    """(P, 3 + C): each point's offset from its own patch centre (in patch radii) and its
    input features (``batch.feat``, by default the normalised log energy)."""
    centre = out.centers.reshape(-1, 3)[out.point_patch]
    rel = (batch.coord.float() - centre) / out.patches.radius
    return torch.cat([rel, batch.feat.float()], dim=-1)


class SegmentationHead(nn.Module):
    """Per-point logits from patch tokens: feature propagation + point embedding + classifier.

    ``kind="linear"``: logits are one linear map of ``[interpolated token, offset, energy]``
    (a linear probe). ``kind="mlp"``: the offset and energy go through a small embedding
    (``point_dim`` wide), and the concatenation through an MLP with ``hidden`` units.
    """

    def __init__(self, token_dim: int, in_channels: int, num_classes: int, kind: HeadKind = "mlp",
                 hidden: int = 128, point_dim: int = 32, k: int = DEFAULT_K, seed: int = 0) -> None:
        super().__init__()
        if kind not in ("linear", "mlp"):
            raise ConfigError(f"head kind must be 'linear' or 'mlp', got {kind!r}")
        for name, value in (("token_dim", token_dim), ("in_channels", in_channels),
                            ("num_classes", num_classes), ("hidden", hidden), ("point_dim", point_dim),
                            ("k", k)):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        self.kind = kind
        self.k = k
        local = 3 + in_channels
        with seeded_init(seed):
            if kind == "linear":
                self.point_embed: nn.Module = nn.Identity()
                self.token_proj = nn.Linear(token_dim, num_classes)
                self.point_proj = nn.Linear(local, num_classes, bias=False)
                self.classifier: nn.Module = nn.Identity()
            else:
                self.point_embed = nn.Sequential(nn.Linear(local, point_dim), nn.GELU())
                self.token_proj = nn.Linear(token_dim, hidden)
                self.point_proj = nn.Linear(point_dim, hidden, bias=False)
                self.classifier = nn.Sequential(nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                                nn.GELU(), nn.Linear(hidden, num_classes))
            self.apply(init_weights)

    def forward(self, batch: PackedBatch, out: TokenOutput) -> torch.Tensor:
        """(P, num_classes) logits for every point of ``batch`` (the batch ``out`` came from)."""
        if out.point_patch.shape[0] != batch.num_points:
            raise ConfigError(f"token output covers {out.point_patch.shape[0]} points, batch has "
                              f"{batch.num_points}: pass the batch the tokens were computed from")
        interp = knn_interpolation(batch.coord, batch.offsets, out.centers, out.mask, self.k)
        fused = interpolate(self.token_proj(out.tokens), interp)
        fused = fused + self.point_proj(self.point_embed(local_point_features(batch, out)))
        return self.classifier(fused)


_BLOCK_RE = re.compile(r"^backbone\.encoder\.blocks\.(\d+)\.")


class AdaptationTask(nn.Module):
    """What adaptation tasks share: a backbone that may be frozen, and layer-wise lr scales.

    Frozen backbone (``probe`` / ``head`` modes): its parameters do not require gradients,
    it runs in eval mode (no drop-path) under ``no_grad``, and :meth:`train` keeps it there,
    so neither its weights nor its outputs can change.
    """

    def __init__(self, backbone: PointMAE, freeze_backbone: bool = False, layer_decay: float = 1.0) -> None:
        super().__init__()
        if not 0.0 < layer_decay <= 1.0:
            raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay}")
        self.backbone = backbone
        self.freeze_backbone = freeze_backbone
        self.layer_decay = layer_decay
        if freeze_backbone:
            for param in self.backbone.parameters():
                param.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> AdaptationTask:
        """Set training mode; a frozen backbone always stays in eval mode."""
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def encode(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TokenOutput:
        """The backbone's tokens (without gradients when it is frozen)."""
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone.forward_features(batch)
        return self.backbone.forward_features(batch, generator=generator)

    def param_lr_scales(self) -> dict[str, float]:
        """Learning-rate multiplier per parameter name (the engine's optimiser hook).

        Layer-wise decay as in BEiT / MAE fine-tuning (MAE ``util/lr_decay.py``): with L
        blocks, the tokenizer and position embedding are layer 0, block i is layer i + 1,
        everything after the blocks (final norm, heads) is layer L + 1, and layer l trains
        at ``layer_decay ** (L + 1 - l)`` times the base rate. All 1 when ``layer_decay == 1``.
        """
        depth = self.backbone.default_cfg.depth
        scales = {}
        for name, _ in self.named_parameters():
            if name.startswith(("backbone.tokenizer.", "backbone.pos_embed.")):
                layer = 0
            elif match := _BLOCK_RE.match(name):
                layer = int(match.group(1)) + 1
            else:
                layer = depth + 1
            scales[name] = self.layer_decay ** (depth + 1 - layer)
        return scales

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

from dataclasses import dataclass
from typing import Literal

import re

import torch
from torch import nn

from detfm.data import PackedBatch
from detfm.errors import ConfigError, DataFormatError
from detfm.models.encoder import PointMAE, TokenOutput
from detfm.models.layers import init_weights, seeded_init
from detfm.models.packing import local_index

__all__ = ["DEFAULT_K", "AdaptationTask", "HeadKind", "Interpolation", "SegmentationHead", "interpolate",
           "knn_interpolation", "local_point_features"]

HeadKind = Literal["linear", "mlp"]

# PointNet++ feature propagation (Qi et al. 2017, "PointNet++", Sec. 3.4, Eq. 2): k = 3
# neighbours, weights 1 / d^p with p = 2. EPS keeps a point sitting on a centre finite.
DEFAULT_K = 3
_EPS_VOXEL2 = 1e-8

# Point x centre distances computed at once (bounds the temporary memory to ~100 MB).
_MAX_PAIRS = 1 << 22


@dataclass(frozen=True)
class Interpolation:
    """Which tokens each point mixes, and how.

    Attributes:
        index: (P, k) int64 flat index into the (B * G) tokens of the point's own event.
        weight: (P, k) float32, non-negative, each row sums to 1 (0 for unused slots when
            an event has fewer than k patches).
    """

    index: torch.Tensor
    weight: torch.Tensor


def knn_interpolation(coord: torch.Tensor, offsets: torch.Tensor, centers: torch.Tensor,
                      mask: torch.Tensor, k: int = DEFAULT_K) -> Interpolation:
    """Inverse squared-distance weights of the ``k`` nearest real centres of each point's event.

    Args:
        coord: (P, 3) packed point coordinates; offsets: (B + 1,) event boundaries.
        centers: (B, G, 3) patch centres; mask: (B, G) True for real patches (every event
            needs at least one).

    Geometry only: computed without gradients, in chunks of points so that memory stays
    bounded for events of any size. Deterministic (ties go to the lower patch index).
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    batch, groups = mask.shape
    if centers.shape != (batch, groups, 3) or offsets.numel() != batch + 1:
        raise DataFormatError(f"centres {tuple(centers.shape)}, mask {tuple(mask.shape)} and "
                              f"{offsets.numel() - 1} events do not match", field="centers")
    if not bool(mask.any(dim=1).all()):
        raise DataFormatError("every event needs at least one real patch centre", field="mask")
    with torch.no_grad():
        event, _ = local_index(offsets)
        coord = coord.float()
        centers = centers.float()
        kk = min(k, groups)
        index = torch.empty(coord.shape[0], kk, dtype=torch.long, device=coord.device)
        weight = torch.empty(coord.shape[0], kk, dtype=torch.float32, device=coord.device)
        step = max(1, _MAX_PAIRS // max(groups, 1))
        for a in range(0, coord.shape[0], step):
            ev = event[a:a + step]
            d2 = ((coord[a:a + step, None, :] - centers[ev]) ** 2).sum(dim=-1)  # (n, G)
            d2 = d2.masked_fill(~mask[ev], float("inf"))
            near_d2, near = torch.topk(d2, kk, dim=1, largest=False, sorted=True)
            w = torch.where(torch.isfinite(near_d2), 1.0 / (near_d2 + _EPS_VOXEL2), 0.0)
            weight[a:a + step] = w / w.sum(dim=1, keepdim=True)
            index[a:a + step] = ev[:, None] * groups + near
    return Interpolation(index=index, weight=weight)


def interpolate(values: torch.Tensor, interp: Interpolation) -> torch.Tensor:
    """(P, C) per-point mix of per-patch ``values`` (B, G, C); differentiable in ``values``."""
    flat = values.reshape(-1, values.shape[-1])
    return (flat[interp.index] * interp.weight[..., None].to(values.dtype)).sum(dim=1)


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

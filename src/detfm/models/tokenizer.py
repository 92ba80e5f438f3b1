"""Patch tokenizer: group points into patches, embed each patch with a mini-PointNet.

The embedding follows Point-MAE's ``Encoder`` (Pang et al., ECCV 2022): a shared MLP per
point, max-pool, concatenate the pooled feature to every point, a second shared MLP, and a
final max-pool. Differences: LayerNorm instead of BatchNorm (no batch statistics, so a
token does not depend on the other events of a batch) and max-pools that skip padded points.
"""

from __future__ import annotations

import torch
from torch import nn

from detfm.data import PackedBatch
from detfm.errors import DataFormatError
from detfm.models.grouping import GroupingConfig, Patches, group_points


def masked_max(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Max over dim -2 of (..., K, C) ignoring entries where ``mask`` (..., K) is False."""
    return x.masked_fill(~mask[..., None], float("-inf")).amax(dim=-2)


class PatchEmbed(nn.Module):
    """Mini-PointNet: (M, K, C_in) points of M patches -> (M, D) tokens."""

    def __init__(self, in_channels: int, embed_dim: int, hidden: tuple[int, int] = (128, 256)) -> None:
        super().__init__()
        h1, h2 = hidden
        self.first = nn.Sequential(nn.Linear(in_channels, h1), nn.LayerNorm(h1), nn.ReLU(),
                                   nn.Linear(h1, h2))
        self.second = nn.Sequential(nn.Linear(2 * h2, 2 * h2), nn.LayerNorm(2 * h2), nn.ReLU(),
                                    nn.Linear(2 * h2, embed_dim))
        self.embed_dim = embed_dim

    def forward(self, points: torch.Tensor, point_mask: torch.Tensor,
                patch_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Embed patches.

        Args:
            points: (..., K, C_in) point inputs; point_mask: (..., K) real points.
            patch_mask: (...) which patches to embed (default: all); the others get zeros
                and cost nothing.

        Returns:
            (..., D) tokens.
        """
        lead, k = points.shape[:-2], points.shape[-2]
        flat_points = points.reshape(-1, k, points.shape[-1])
        flat_mask = point_mask.reshape(-1, k)
        if patch_mask is not None:
            chosen = patch_mask.reshape(-1)
            flat_points, flat_mask = flat_points[chosen], flat_mask[chosen]
        h = self.first(flat_points)
        pooled = masked_max(h, flat_mask)
        h = torch.cat([pooled[:, None, :].expand(-1, k, -1), h], dim=-1)
        tokens = masked_max(self.second(h), flat_mask)
        if patch_mask is not None:
            full = tokens.new_zeros(patch_mask.numel(), self.embed_dim)
            full[patch_mask.reshape(-1)] = tokens
            tokens = full
        return tokens.reshape(*lead, self.embed_dim)


class Tokenizer(nn.Module):
    """Grouping (geometry, no parameters) + :class:`PatchEmbed` (learned)."""

    def __init__(self, grouping: GroupingConfig, in_channels: int, embed_dim: int,
                 hidden: tuple[int, int] = (128, 256)) -> None:
        super().__init__()
        self.grouping = grouping
        self.in_channels = in_channels
        self.embed = PatchEmbed(3 + in_channels, embed_dim, hidden)

    def group(self, batch: PackedBatch) -> Patches:
        """Cut the batch into patches (see :mod:`detfm.models.grouping` for the policy)."""
        if batch.feat.ndim != 2 or batch.feat.shape[1] != self.in_channels:
            raise DataFormatError(f"the model expects {self.in_channels} feature channel(s) per "
                                  f"point, got shape {tuple(batch.feat.shape)}", field="feat")
        return group_points(batch.coord, batch.feat, batch.offsets, self.grouping)

    def forward(self, patches: Patches, select: torch.Tensor | None = None) -> torch.Tensor:
        """(B, G, D) tokens of ``patches``; only patches in ``select`` (default: the real
        ones) are embedded, the others are zero."""
        return self.embed(patches.points(), patches.point_mask,
                          patches.mask if select is None else select)

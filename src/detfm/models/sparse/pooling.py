"""Stride-2 grid pooling and unpooling of serialized voxels.

A coarse voxel is a 2x2x2 cell of the finer level. The cells are found from the
space-filling-curve codes: dropping the lowest 3 bits of a voxel's code gives its cell's
code on every curve (the curves are hierarchical), so the coarse level's codes come for
free and stay consistent with the fine ones. Coarse voxels are numbered in ascending code
of the first order (events stay contiguous: the event index is in the high bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["PoolMap", "grid_pool_map", "max_pool", "unpool"]


@dataclass(frozen=True)
class PoolMap:
    """How the voxels of one level fall into the cells of the next.

    Attributes:
        cluster: (N,) int64 coarse voxel of each fine voxel.
        head: (M,) int64 one fine voxel of each coarse voxel.
        code: (O, M) int64 codes of the coarse voxels (fine codes >> 3).
    """

    cluster: torch.Tensor
    head: torch.Tensor
    code: torch.Tensor

    @property
    def num_coarse(self) -> int:
        return int(self.head.shape[0])


def grid_pool_map(code: torch.Tensor) -> PoolMap:
    """The stride-2 cells of voxels with codes ``code`` (O, N)."""
    coarse = code >> 3
    _, cluster = torch.unique(coarse[0], sorted=True, return_inverse=True)
    m = int(cluster.max()) + 1 if cluster.numel() else 0
    head = torch.empty(m, dtype=torch.long, device=code.device)
    head.scatter_(0, cluster, torch.arange(cluster.numel(), device=code.device))
    return PoolMap(cluster=cluster, head=head, code=coarse[:, head])


def max_pool(feat: torch.Tensor, pool: PoolMap) -> torch.Tensor:
    """(M, C) per-cell maximum of (N, C) features."""
    index = pool.cluster[:, None].expand(-1, feat.shape[1])
    out = feat.new_zeros(pool.num_coarse, feat.shape[1])
    return out.scatter_reduce(0, index, feat, reduce="amax", include_self=False)


def unpool(coarse: torch.Tensor, pool: PoolMap) -> torch.Tensor:
    """(N, C): every fine voxel takes its cell's features."""
    return coarse.index_select(0, pool.cluster)

"""Losses on padded point sets."""

from __future__ import annotations

import torch


def pairwise_sq_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, N, K) squared distances between (M, N, 3) and (M, K, 3) point sets.

    Uses |a|^2 + |b|^2 - 2 a.b (one batched matmul), clamped at 0 against rounding.
    """
    dot = torch.bmm(a, b.transpose(1, 2))
    return ((a * a).sum(-1)[:, :, None] + (b * b).sum(-1)[:, None, :] - 2.0 * dot).clamp(min=0.0)


def chamfer_distance(pred: torch.Tensor, target: torch.Tensor, pred_mask: torch.Tensor | None = None,
                     target_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric L2 Chamfer distance of each of M pairs of point sets, (M,).

    ``mean_i min_j |p_i - t_j|^2 + mean_j min_i |p_i - t_j|^2`` over real points only
    (masks (M, N) / (M, K), True = real), as pytorch3d's ``chamfer_distance`` with
    ``point_reduction="mean"`` computes it (the loss of Point-MAE and PoLAr-MAE).
    Every set must hold at least one real point.
    """
    m, n, _ = pred.shape
    k = target.shape[1]
    if pred_mask is None:
        pred_mask = torch.ones(m, n, dtype=torch.bool, device=pred.device)
    if target_mask is None:
        target_mask = torch.ones(m, k, dtype=torch.bool, device=target.device)
    d = pairwise_sq_dist(pred, target)
    inf = torch.tensor(float("inf"), device=d.device, dtype=d.dtype)
    to_target = torch.where(target_mask[:, None, :], d, inf).amin(dim=2)  # (M, N)
    to_pred = torch.where(pred_mask[:, :, None], d, inf).amin(dim=1)  # (M, K)
    fwd = torch.where(pred_mask, to_target, 0.0).sum(1) / pred_mask.sum(1).clamp(min=1)
    bwd = torch.where(target_mask, to_pred, 0.0).sum(1) / target_mask.sum(1).clamp(min=1)
    return fwd + bwd


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Mean of ``values`` over ``dim`` counting only entries where ``mask`` is True."""
    weight = mask.to(values.dtype)
    return (values * weight).sum(dim) / weight.sum(dim).clamp(min=1.0)

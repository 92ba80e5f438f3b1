"""Feature propagation from patch centres to points (PointNet++, Qi et al. 2017, Eq. 2).

Each point mixes the tokens of the ``k`` nearest patch centres of its own event with
weights ``1 / d**power``, normalised to sum to 1. Used by the segmentation heads
(``power=2``, as in PointNet++) and by the linear probe (``power=1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detfm.errors import ConfigError, DataFormatError
from detfm.models.packing import local_index

__all__ = ["DEFAULT_K", "Interpolation", "interpolate", "knn_interpolation"]

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
                      mask: torch.Tensor, k: int = DEFAULT_K, power: int = 2,
                      eps: float = _EPS_VOXEL2) -> Interpolation:
    """Weights ``1 / (d**power + eps)`` of the ``k`` nearest real centres of each point's event.

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
            near_d = near_d2 if power == 2 else near_d2.sqrt() ** power
            w = torch.where(torch.isfinite(near_d2), 1.0 / (near_d + eps), 0.0)
            weight[a:a + step] = w / w.sum(dim=1, keepdim=True)
            index[a:a + step] = ev[:, None] * groups + near
    return Interpolation(index=index, weight=weight)


def interpolate(values: torch.Tensor, interp: Interpolation) -> torch.Tensor:
    """(P, C) per-point mix of per-patch ``values`` (B, G, C); differentiable in ``values``."""
    flat = values.reshape(-1, values.shape[-1])
    return (flat[interp.index] * interp.weight[..., None].to(values.dtype)).sum(dim=1)



"""Group points into patches: centres by FPS, neighbours by ball query, fixed points per patch.

Policy (PoLAr-MAE-style volumetric patches, arXiv 2502.02558, and Point-MAE):

* Centres: farthest-point sampling, at most ``num_groups`` per event (the context length),
  stopping once every point lies within ``cover_radius`` of a centre. Small events
  therefore get few patches (the rest is padding, flagged by ``Patches.mask``); events
  needing more patches than the context get exactly ``num_groups``, spread evenly.
* Neighbours: the points within ``radius`` of a centre (the centre itself included). When
  there are more than ``group_size`` of them, ``reduction="fps"`` keeps a farthest-point
  subsample of the nearest ``upscale_points`` (spans the whole ball, as the reference
  implementation does), ``"nearest"`` keeps the ``group_size`` nearest. Patches with
  fewer points are padded; the real points of every patch come first.
* Points farther than ``radius`` from every centre belong to no patch; a dense event
  covered by ``num_groups`` centres, or a dense ball holding more than ``group_size``
  points, leaves some. :func:`assign_points` still maps every point to a patch.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch

from detfm.errors import ConfigError, DataFormatError
from detfm.models.fps import BACKENDS, FPSBackend, farthest_point_sampling, fps_padded
from detfm.models.packing import check_points, local_index

# Most ball-query candidates expanded at once (a few hundred MB of temporaries).
_MAX_CANDIDATES = 1 << 22


@dataclass(frozen=True)
class GroupingConfig:
    """How an event is cut into patches. Lengths are in voxels (3 mm).

    Defaults follow the PoLAr-MAE "5-voxel" tokenizer (polarmae/layers/tokenizer.py,
    ``_5voxel_tokenizer``: context 512, 32 points per group, radius 5 voxels, FPS reduction
    of an upscaled neighbourhood). Differences, for CPU cost and simplicity: centres are
    chosen by FPS with a covering rule instead of FPS seeds + centrality NMS, and the
    neighbourhood is upscaled to 128 rather than 256 points before the FPS reduction.
    """

    num_groups: int = 512
    group_size: int = 32
    radius: float = 5.0
    cover_radius: float | None = 5.0
    reduction: Literal["fps", "nearest"] = "fps"
    upscale_points: int = 128
    backend: FPSBackend = "torch"

    def __post_init__(self) -> None:
        if self.num_groups < 1:
            raise ConfigError(f"num_groups must be >= 1, got {self.num_groups}")
        if self.group_size < 1:
            raise ConfigError(f"group_size must be >= 1, got {self.group_size}")
        if not self.radius > 0:
            raise ConfigError(f"radius must be > 0 voxels, got {self.radius}")
        if self.cover_radius is not None and not self.cover_radius >= 0:
            raise ConfigError(f"cover_radius must be >= 0 voxels or None, got {self.cover_radius}")
        if self.reduction not in ("fps", "nearest"):
            raise ConfigError(f"reduction must be 'fps' or 'nearest', got '{self.reduction}'")
        if self.reduction == "fps" and self.upscale_points < self.group_size:
            raise ConfigError(f"upscale_points ({self.upscale_points}) must be >= group_size "
                              f"({self.group_size})")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown FPS backend '{self.backend}'; choose one of {', '.join(BACKENDS)}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(frozen=True)
class Patches:
    """A batch cut into patches (padded to the largest patch count G of the batch).

    Attributes:
        centers: (B, G, 3) float32 centre coordinates (voxels), 0 where padded.
        center_index: (B, G) int64 packed index of each centre point, -1 where padded.
        mask: (B, G) bool, True for real patches.
        index: (B, G, K) int64 packed index of each patch point, -1 where padded.
        point_mask: (B, G, K) bool, True for real points; they come first in each patch.
        xyz: (B, G, K, 3) float32 point offsets from the centre in units of ``radius``.
        feat: (B, G, K, C) float32 point features (``PackedBatch.feat``), 0 where padded.
        nearest: (P,) int64 flat patch index (b * G + g) of the centre nearest each point.
        radius: the ball radius in voxels.
    """

    centers: torch.Tensor
    center_index: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor
    point_mask: torch.Tensor
    xyz: torch.Tensor
    feat: torch.Tensor
    nearest: torch.Tensor
    radius: float

    @property
    def counts(self) -> torch.Tensor:
        """(B,) number of real patches per event."""
        return self.mask.sum(dim=1)

    def points(self) -> torch.Tensor:
        """(B, G, K, 3 + C) PointNet input: centred, radius-scaled xyz and the features."""
        return torch.cat([self.xyz, self.feat], dim=-1)


def _cell_keys(cells: torch.Tensor, event: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """One int64 key per (event, cell x, cell y, cell z); cells must lie in [0, dims)."""
    return ((event * dims[0] + cells[:, 0]) * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]


def ball_query(coord: torch.Tensor, offsets: torch.Tensor, center_index: torch.Tensor,
               radius: float, k: int) -> torch.Tensor:
    """The up to ``k`` nearest points within ``radius`` (inclusive) of each centre.

    Args:
        coord: (P, 3) packed coordinates; offsets: (B + 1,) event boundaries.
        center_index: (B, G) packed index of each centre, -1 for none.
        radius: ball radius (same units as ``coord``); k: most points per ball.

    Returns:
        (B, G, k) packed point indices, nearest first (ties: lower index first), -1 after
        the last one found. The order does not depend on the other events of the batch.

    Points are binned into cubic cells of side ``radius``, so a ball only needs the 27 cells
    around its centre's cell: cost O(P log P + candidates), not O(G x P).
    """
    batch, groups = center_index.shape
    device = coord.device
    out = torch.full((batch, groups, k), -1, dtype=torch.long, device=device)
    has_centre = center_index >= 0
    if not bool(has_centre.any()):
        return out
    coord = coord.float()
    event, _ = local_index(offsets)
    cells = torch.floor(coord / radius).long()
    cells = cells - cells.min(dim=0).values + 1  # margin of one cell on each side
    dims = cells.max(dim=0).values + 2
    if float(batch) * float(dims.prod()) >= 2.0 ** 62:
        raise DataFormatError(f"coordinates span {tuple(dims.tolist())} cells of {radius} voxels: "
                              "too large a box for this ball radius", field="coord")
    sorted_keys, order = torch.sort(_cell_keys(cells, event, dims), stable=True)

    # Candidate points: the contents of the 27 cells around each centre.
    slot = torch.nonzero(has_centre.flatten()).flatten()  # flat (b * G + g) of real centres
    centre_point = center_index.flatten()[slot]
    steps = torch.tensor([-1, 0, 1], device=device)
    around = torch.cartesian_prod(steps, steps, steps)  # (27, 3)
    near_cells = (cells[centre_point][:, None, :] + around[None]).reshape(-1, 3)
    near_keys = _cell_keys(near_cells, (slot // groups).repeat_interleave(27), dims)
    first = torch.searchsorted(sorted_keys, near_keys, side="left").view(-1, 27)
    count = (torch.searchsorted(sorted_keys, near_keys, side="right").view(-1, 27) - first)
    # Expand candidates for a run of centres at a time, to bound memory for large radii.
    per_centre = count.sum(dim=1)
    chunk = (torch.cumsum(per_centre, 0) - per_centre) // _MAX_CANDIDATES
    r2 = float(radius) ** 2
    hits = []
    for c in torch.unique_consecutive(chunk).tolist():
        sel = torch.nonzero(chunk == c).flatten()
        cnt = count[sel].flatten()
        owner = torch.repeat_interleave(torch.arange(cnt.numel(), device=device), cnt)
        rank_in_cell = torch.arange(owner.numel(), device=device) - (torch.cumsum(cnt, 0) - cnt)[owner]
        point = order[first[sel].flatten()[owner] + rank_in_cell]
        ball = sel[owner // 27]  # index into `slot`
        delta = coord[point] - coord[centre_point[ball]]
        dist = delta[:, 0] * delta[:, 0] + delta[:, 1] * delta[:, 1] + delta[:, 2] * delta[:, 2]
        inside = dist <= r2
        hits.append((point[inside], ball[inside], dist[inside]))
    point, ball, dist = (torch.cat(parts) for parts in zip(*hits, strict=True))

    # Order by (ball, distance, point index) with stable sorts, last key first.
    perm = torch.sort(point, stable=True).indices
    perm = perm[torch.sort(dist[perm], stable=True).indices]
    perm = perm[torch.sort(ball[perm], stable=True).indices]
    point, ball = point[perm], ball[perm]
    per_ball = torch.bincount(ball, minlength=slot.numel())
    rank = torch.arange(ball.numel(), device=device) - (torch.cumsum(per_ball, 0) - per_ball)[ball]
    keep = rank < k
    flat = out.view(batch * groups, k)
    flat[slot[ball[keep]], rank[keep]] = point[keep]
    return out


def _reduce_by_fps(coord: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """Keep a farthest-point subsample of ``k`` of each (nearest-first) neighbourhood.

    Sampling starts at slot 0, the point nearest the centre (the centre itself).
    """
    batch, groups, up = index.shape
    flat = index.reshape(-1, up)
    lengths = (flat >= 0).sum(dim=1)
    pts = coord.float()[flat.clamp(min=0)]  # (M, up, 3)
    pos, _ = fps_padded(pts[..., 0].contiguous(), pts[..., 1].contiguous(),
                        pts[..., 2].contiguous(), lengths, k)
    kept = torch.where(pos >= 0, flat.gather(1, pos.clamp(min=0)), -1)
    return kept.reshape(batch, groups, k)


def group_points(coord: torch.Tensor, feat: torch.Tensor, offsets: torch.Tensor,
                 cfg: GroupingConfig) -> Patches:
    """Cut a packed batch into patches (no gradients: geometry only)."""
    check_points(coord, offsets)
    if feat.ndim != 2 or feat.shape[0] != coord.shape[0]:
        raise DataFormatError(f"expected shape ({coord.shape[0]}, C), got {tuple(feat.shape)}",
                              field="feat")
    if not bool(torch.isfinite(feat).all()):
        raise DataFormatError("non-finite point feature", field="feat")
    with torch.no_grad():
        coord = coord.float()
        offsets = offsets.long()
        centres = farthest_point_sampling(coord, offsets, cfg.num_groups,
                                          cover_radius=cfg.cover_radius, backend=cfg.backend)
        center_index = centres.index
        if cfg.reduction == "fps":
            index = ball_query(coord, offsets, center_index, cfg.radius, cfg.upscale_points)
            index = _reduce_by_fps(coord, index, cfg.group_size)
        else:
            index = ball_query(coord, offsets, center_index, cfg.radius, cfg.group_size)
        event, _ = local_index(offsets)
        nearest = event * center_index.shape[1] + centres.nearest
        mask = center_index >= 0
        point_mask = index >= 0
        safe = index.clamp(min=0)
        centers = torch.where(mask[..., None], coord[center_index.clamp(min=0)], 0.0)
        xyz = (coord[safe] - centers[:, :, None, :]) / cfg.radius
        xyz = torch.where(point_mask[..., None], xyz, 0.0)
        pfeat = torch.where(point_mask[..., None], feat.float()[safe], 0.0)
    return Patches(centers=centers, center_index=center_index, mask=mask, index=index,
                   point_mask=point_mask, xyz=xyz, feat=pfeat, nearest=nearest,
                   radius=float(cfg.radius))


def assign_points(patches: Patches) -> torch.Tensor:
    """(P,) flat patch index (into B x G) for every point, to carry token features back.

    A point takes the patch that contains it; if several do, the one with the nearest
    centre (then the lowest index); a point in no patch takes the nearest centre of its
    event. Deterministic (only min-reductions).
    """
    with torch.no_grad():
        batch, groups, k = patches.index.shape
        big = batch * groups  # larger than any flat patch index
        flat_patch = torch.arange(big, device=patches.index.device).reshape(batch, groups, 1)
        real = patches.point_mask
        point = patches.index[real]
        patch = flat_patch.expand(-1, -1, k)[real]
        d2 = (patches.xyz[real] ** 2).sum(dim=-1)
        best = torch.full_like(patches.nearest, float("inf"), dtype=d2.dtype)
        best = best.scatter_reduce(0, point, d2, reduce="amin")
        candidate = torch.where(d2 == best[point], patch, big)
        owner = torch.full_like(patches.nearest, big)
        owner = owner.scatter_reduce(0, point, candidate, reduce="amin")
        return torch.where(owner == big, patches.nearest, owner)

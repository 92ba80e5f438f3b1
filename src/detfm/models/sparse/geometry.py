"""The voxel hierarchy of a packed batch, built once per forward pass and shared by layers.

Points become voxels (integer cells: the detector's own voxels, or the reference's finer
grid); voxels get space-filling-curve codes; stride-2 grid pooling builds coarser levels
from the codes. Every level keeps its
3x3x3 kernel map and its attention windows in caches, so all convolutions and attention
blocks of a level reuse one neighbour search and one window table.

Points that share a voxel (duplicates, or non-integer coordinates after a rotation that
floor to the same cell) are merged: the voxel's input is the mean of its points' inputs,
and every point gets its voxel's output features. Coordinates outside the dataset's box
([0, 768) for LArTPC) or not finite are an error naming the event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.profiler import record_function

from detfm.data.batch import PackedBatch
from detfm.data.datasets import DEFAULT_DATASET, get_dataset
from detfm.errors import ConfigError, DataFormatError
from detfm.models.sparse.hashing import (
    MAX_BOX,
    KernelMap,
    decode_keys,
    kernel_map,
    voxel_keys,
)
from detfm.models.sparse.pooling import PoolMap, grid_pool_map
from detfm.models.sparse.serialization import (
    DEPTH,
    bit_length,
    encode,
    inverse_permutation,
)

# Coordinate extent when a caller names none: the default dataset kind's box.
_DEFAULT_BOX = get_dataset(DEFAULT_DATASET).box_size

__all__ = ["Geometry", "Level", "Windows", "build_geometry", "check_coordinates", "grid_coordinates",
           "normalised_coordinates"]


@dataclass(frozen=True)
class Windows:
    """Fixed-size attention windows over one serialized order of a level.

    Attributes:
        gather: (W, K) voxel indices of each window (every window holds one event only).
        mask: (W, K) bool, True for real slots; None when every window is full. Events with
            fewer than K voxels form one short window; an event with n > K voxels gets
            ceil(n / K) windows, the last one covering its last K voxels (the reference's
            padding), so only events smaller than K need a mask.
        rows: (N,) row of each voxel's output in the flattened (W * K) window output.
    """

    gather: torch.Tensor
    mask: torch.Tensor | None
    rows: torch.Tensor

    @property
    def num_windows(self) -> int:
        return int(self.gather.shape[0])


def _windows(order: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor, k: int) -> Windows:
    device = order.device
    n = counts
    start = torch.cumsum(n, 0) - n
    nw = torch.where(n > k, (n + k - 1) // k, (n > 0).long())
    wbase = torch.cumsum(nw, 0) - nw
    events = torch.arange(n.numel(), device=device)
    ev = torch.repeat_interleave(events, nw)
    local = torch.arange(ev.numel(), device=device) - wbase[ev]
    n_ev = n[ev]
    first = torch.where(n_ev > k, torch.minimum(local * k, n_ev - k), torch.zeros_like(n_ev))
    slots = torch.arange(k, device=device)
    valid = slots[None, :] < torch.clamp(n_ev, max=k)[:, None]
    seq = torch.where(valid, start[ev][:, None] + first[:, None] + slots[None, :], start[ev][:, None])
    gather = order[seq]
    # where each sorted position's output lands
    ev_pos = torch.repeat_interleave(events, n)
    pos = torch.arange(ev_pos.numel(), device=device) - start[ev_pos]
    n_pos, nw_pos = n[ev_pos], nw[ev_pos]
    w = torch.minimum(pos // k, nw_pos - 1)
    in_last = (pos // k >= nw_pos - 1) & (n_pos > k)
    slot = torch.where(in_last, pos - (n_pos - k), pos - w * k)
    rows_sorted = (wbase[ev_pos] + w) * k + slot
    return Windows(gather=gather, mask=None if bool(valid.all()) else valid,
                   rows=rows_sorted[inverse])


@dataclass
class Level:
    """The voxels of one level: coordinates, events, and cached orders, neighbours, windows.

    Serialization codes of an order are computed on first use (with a fixed depth D at
    D - level, which equals the level-0 codes shifted right by 3 bits per level; with
    per-event depths at the depth the reference picks for the level's own cells), so orders
    no block uses cost nothing.
    """

    grid: torch.Tensor  # (N, 3) int64
    batch: torch.Tensor  # (N,) int64
    code0: torch.Tensor  # (N,) int64 code of the first order (pooling uses it)
    orders: tuple[str, ...]
    depth: int
    num_events: int
    shallower: torch.Tensor | None = None  # (N,) per-voxel depth reduction (per-event depths)
    counts: torch.Tensor = field(init=False)  # (B,) voxels per event
    _sorted: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False, repr=False)
    _kmap: KernelMap | None = field(default=None, init=False, repr=False)
    _windows: dict[tuple[int, int], Windows] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.counts = torch.bincount(self.batch, minlength=self.num_events)

    @property
    def num_voxels(self) -> int:
        return int(self.grid.shape[0])

    def code(self, order_index: int) -> torch.Tensor:
        """(N,) codes of order ``order_index`` (event index in the high bits)."""
        if order_index == 0:
            return self.code0
        return encode(self.grid, self.orders[order_index], self.batch, self.depth, self.shallower)

    def order(self, order_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The sorting permutation of an order and its inverse (cached)."""
        if order_index not in self._sorted:
            perm = torch.argsort(self.code(order_index))
            self._sorted[order_index] = (perm, inverse_permutation(perm))
        return self._sorted[order_index]

    def kmap(self) -> KernelMap:
        """The 3x3x3 neighbour pairs (computed on first use, then shared)."""
        if self._kmap is None:
            with record_function("sparse.kernel_map"):
                self._kmap = kernel_map(self.grid, self.batch)
        return self._kmap

    def windows(self, order_index: int, patch_size: int) -> Windows:
        """Windows of ``patch_size`` voxels along order ``order_index`` (cached)."""
        key = (order_index, patch_size)
        if key not in self._windows:
            with record_function("sparse.windows"):
                perm, inverse = self.order(order_index)
                self._windows[key] = _windows(perm, inverse, self.counts, patch_size)
        return self._windows[key]


@dataclass
class Geometry:
    """The hierarchy of a batch: levels 0 (voxels) to L-1 and the pooling maps between them.

    Attributes:
        point_to_voxel: (P,) voxel of each point, or None when every point is its own
            voxel (no duplicates; voxel i is point i).
        levels: level s has the stride-2^s voxels.
        pools: ``pools[s]`` maps level s onto level s + 1.
    """

    point_to_voxel: torch.Tensor | None
    levels: list[Level]
    pools: list[PoolMap]
    _point_index: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    def point_index(self, level: int) -> torch.Tensor | None:
        """(P,) index of each point's voxel at ``level`` (None: identity at level 0)."""
        if level == 0:
            return self.point_to_voxel
        if level not in self._point_index:
            idx = self.pools[level - 1].cluster
            prev = self.point_index(level - 1)
            self._point_index[level] = idx if prev is None else idx[prev]
        return self._point_index[level]

    def to_points(self, feat: torch.Tensor, level: int) -> torch.Tensor:
        """(P, C): features of level ``level`` carried to the input points."""
        idx = self.point_index(level)
        return feat if idx is None else feat.index_select(0, idx)

    def voxel_mean(self, point_feat: torch.Tensor) -> torch.Tensor:
        """(N, C) mean of (P, C) point features over each voxel's points."""
        if self.point_to_voxel is None:
            return point_feat
        n = self.levels[0].num_voxels
        total = point_feat.new_zeros(n, point_feat.shape[1]).index_add_(0, self.point_to_voxel, point_feat)
        count = torch.bincount(self.point_to_voxel, minlength=n).clamp_(min=1)
        return total / count[:, None].to(point_feat.dtype)


def check_coordinates(batch: PackedBatch, box_size: float = _DEFAULT_BOX) -> None:
    """Raise :class:`DataFormatError` naming the event of a non-finite or out-of-box point."""
    coord = batch.coord
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise DataFormatError(f"coordinates must be (P, 3), got {tuple(coord.shape)}", field="coord")
    if int(batch.offsets[-1]) != coord.shape[0] or int(batch.offsets[0]) != 0:
        raise DataFormatError(f"offsets {batch.offsets.tolist()[:4]}... do not cover "
                              f"{coord.shape[0]} points", field="offsets")
    box = box_size
    bad = ~torch.isfinite(coord).all(1) | (coord < 0).any(1) | (coord >= box).any(1)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        event = int(torch.searchsorted(batch.offsets, torch.tensor(i, device=coord.device),
                                       right=True)) - 1
        raise DataFormatError(f"point {i - int(batch.offsets[event])} has coordinate "
                              f"{coord[i].tolist()} outside the detector box [0, {box:g}) "
                              f"(crop or clip events before the backbone)", event=event, field="coord")


def normalised_coordinates(coord: torch.Tensor, box_size: float = _DEFAULT_BOX) -> torch.Tensor:
    """Panda's input coordinates: ``(x - box / 2) / (box sqrt(3) / 2)`` (for the 768-voxel
    box ``(x - 384) / 665.1``): the box's corners land on the unit sphere."""
    return (coord - box_size / 2.0) / (box_size * math.sqrt(3.0) / 2.0)


def grid_coordinates(batch: PackedBatch, box_size: float, grid_size: float | None) -> torch.Tensor:
    """(P, 3) int64 grid cell of every point.

    ``grid_size`` None: the voxel itself (``floor`` of the voxel coordinate). A float: the
    reference's grid sampling (Panda: 0.001), cells of ``grid_size`` in normalised
    coordinates, shifted so that each event's smallest cell index is 0 on every axis.
    """
    if grid_size is None:
        return batch.coord.floor().long()
    scaled = torch.floor(normalised_coordinates(batch.coord, box_size) / grid_size).long()
    events = batch.batch_index()
    low = torch.full((len(batch), 3), torch.iinfo(torch.int64).max, dtype=torch.long, device=scaled.device)
    low = low.scatter_reduce(0, events[:, None].expand(-1, 3), scaled, reduce="amin")
    return scaled - low.index_select(0, events)


def build_geometry(batch: PackedBatch, orders: tuple[str, ...], num_levels: int,
                   box_size: float = _DEFAULT_BOX, grid_size: float | None = None,
                   depth: int | None = DEPTH) -> Geometry:
    """Voxelize ``batch`` and build ``num_levels`` levels serialized along ``orders``.

    Coordinates are in voxel units inside ``[0, box_size)``; ``grid_size`` picks the cells
    (:func:`grid_coordinates`). ``depth``: bits per axis of the codes; None gives every event
    the depth the reference would pick for it alone, ``bit_length(max cell index + 1)``
    (the reference takes the batch's maximum, which makes its Hilbert orders depend on the
    batch; per event, results match it for one event per batch and never depend on the batch).
    Like the reference, every coarser level picks its depth anew from its own cells.
    """
    if not 0 < box_size <= MAX_BOX:
        raise ConfigError(f"the voxel hierarchy handles boxes of up to {MAX_BOX} voxels per axis, "
                          f"got {box_size:g}")
    if num_levels < 1:
        raise ConfigError(f"need at least one level, got {num_levels}")
    if batch.num_points == 0:
        raise DataFormatError("the batch has no points", field="coord")
    check_coordinates(batch, box_size)
    with torch.no_grad():
        grid = grid_coordinates(batch, box_size, grid_size)
        events = batch.batch_index()
        if int(grid.max()) >= MAX_BOX:
            raise ConfigError(f"grid_size {grid_size} makes {int(grid.max()) + 1} cells per axis; at most "
                              f"{MAX_BOX} fit (use a coarser grid)")
        keys = voxel_keys(grid, events)
        unique, inverse = torch.unique(keys, return_inverse=True)
        point_to_voxel: torch.Tensor | None = None
        if unique.numel() != keys.numel():
            point_to_voxel = inverse
            grid, events = decode_keys(unique)
        top: torch.Tensor | None = None  # (B,) largest cell index of each event (per-event depths)
        if depth is None:
            top = torch.zeros(len(batch), dtype=torch.long, device=grid.device)
            top = top.scatter_reduce(0, events, grid.max(dim=1).values, reduce="amax")
        else:
            if int(grid.max()) >= (1 << depth):
                raise ConfigError(f"serialization depth {depth} covers cells 0..{(1 << depth) - 1}, but the "
                                  f"batch has cell {int(grid.max())}")
            # a fixed depth is coarsened by one bit per level; per-event depths are picked anew
            # at every level (at least 1), so any event, one voxel included, has every level
            if num_levels > depth + 1:
                raise ConfigError(f"{num_levels} levels need a serialization depth of at least {num_levels - 1}")

        def level_depth(s: int, level_batch: torch.Tensor) -> tuple[int, torch.Tensor | None]:
            """Code depth of level ``s`` and each voxel's depth reduction below it (None: none).

            A fixed depth gives depth - s (the level-0 curve coarsened). Per-event depths are
            the reference's choice for the level's own cells, ``bit_length(max cell + 1)``: the
            level's largest cell is ``top >> s``, and ``bit_length((top >> s) + 1)`` is one
            more than the level-0 depth minus s when ``top`` lies in ``[2^D - 2^s, 2^D - 2]``
            (a different Hilbert curve, not the level-0 one coarsened)."""
            if top is None:
                return max(depth - s, 1), None
            event_depth = bit_length((top >> s) + 1)
            at = int(event_depth.max())
            return at, (at - event_depth).index_select(0, level_batch)

        depth0, shallower0 = level_depth(0, events)
        code0 = encode(grid, orders[0], events, depth0, shallower0)
        levels = [Level(grid=grid, batch=events, code0=code0, orders=tuple(orders), depth=depth0,
                        num_events=len(batch), shallower=shallower0)]
        pools: list[PoolMap] = []
        for s in range(1, num_levels):
            prev = levels[-1]
            pool = grid_pool_map(prev.code0[None])
            pools.append(pool)
            level_batch = prev.batch[pool.head]
            level_grid = prev.grid[pool.head] >> 1
            depth_s, shallower_s = level_depth(s, level_batch)
            # a fixed depth's codes are the finer level's shifted by 3 bits; per-event depths
            # are encoded anew (an event's depth may drop by less than one per level)
            code_s = pool.code[0] if top is None else encode(level_grid, orders[0], level_batch, depth_s, shallower_s)
            levels.append(Level(grid=level_grid, batch=level_batch, code0=code_s, orders=tuple(orders),
                                depth=depth_s, num_events=len(batch), shallower=shallower_s))
    return Geometry(point_to_voxel=point_to_voxel, levels=levels, pools=pools)

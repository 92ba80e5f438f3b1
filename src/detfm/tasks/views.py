"""Views of events for self-supervised objectives: crops, grid-cell masks, coordinate jitter.

A view keeps a subset of each event's points (a ball around a random point holding a drawn
fraction of them) and remembers which original point each row came from (``origin``), so
that the points two views share can be matched by their original coordinates. All draws
come from the generator passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from detfm.data import PackedBatch
from detfm.errors import ConfigError

__all__ = ["View", "crop_views", "grid_mask", "match_rows", "ramp"]


@dataclass(frozen=True)
class View:
    """A packed batch of crops (one per source event) and, per row, the row of the source
    batch it came from."""

    batch: PackedBatch
    origin: torch.Tensor  # (P_view,) int64 row in the source batch


def ramp(step: int, total: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at ``total`` steps (and after), along a half cosine."""
    if total <= 0 or step >= total:
        return end
    t = step / total
    return end + (start - end) * 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * t)).item())


def _ball(coord: torch.Tensor, keep: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of the ``keep`` points nearest a random point of ``coord`` (sorted)."""
    centre = coord[torch.randint(len(coord), (1,), generator=generator, device=generator.device).to(coord.device)]
    d2 = ((coord - centre) ** 2).sum(dim=1)
    return torch.sort(torch.topk(d2, keep, largest=False).indices).values


def crop_views(batch: PackedBatch, fraction: tuple[float, float], generator: torch.Generator,
               min_points: int = 1, jitter: float = 0.0, box_size: float | None = None) -> View:
    """One ball crop per event holding a fraction drawn from ``fraction`` of its points (at
    least ``min_points``, at most all), coordinates jittered by Gaussian noise of std
    ``jitter`` voxels (kept inside ``[0, box_size)`` when given)."""
    lo, hi = fraction
    if not 0.0 < lo <= hi <= 1.0:
        raise ConfigError(f"a crop fraction range must satisfy 0 < low <= high <= 1, got {fraction}")
    rows, counts = [], []
    for i in range(len(batch)):
        a, b = int(batch.offsets[i]), int(batch.offsets[i + 1])
        n = b - a
        if n == 0:
            counts.append(0)
            continue
        f = lo + (hi - lo) * torch.rand((), generator=generator, device=generator.device).item()
        keep = min(n, max(min_points, round(f * n)))
        rows.append(a + _ball(batch.coord[a:b].float(), keep, generator))
        counts.append(keep)
    origin = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=batch.coord.device)
    offsets = torch.zeros(len(batch) + 1, dtype=torch.long, device=batch.offsets.device)
    offsets[1:] = torch.cumsum(torch.tensor(counts, device=batch.offsets.device), dim=0)
    coord = batch.coord[origin]
    if jitter > 0:
        noise = torch.randn(coord.shape, generator=generator, device=generator.device).to(coord.device)
        coord = coord + jitter * noise
        if box_size is not None:
            coord = coord.clamp(0.0, box_size - 1e-3)
    view = replace(batch, coord=coord, feat=batch.feat[origin], offsets=offsets, energy=batch.energy[origin],
                   **{name: None if getattr(batch, name) is None else getattr(batch, name)[origin]
                      for name in ("semantic", "pid", "instance", "interaction")})
    return View(batch=view, origin=origin)


def grid_mask(coord: torch.Tensor, offsets: torch.Tensor, cell: float, ratio: float,
              generator: torch.Generator) -> torch.Tensor:
    """(P,) bool: the points of a random ``ratio`` of each event's occupied grid cells of
    ``cell`` voxels (at least one cell hidden and one kept when an event has two or more)."""
    if cell <= 0 or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"mask cell must be > 0 and ratio in [0, 1), got {cell}, {ratio}")
    event = torch.repeat_interleave(torch.arange(len(offsets) - 1, device=coord.device), offsets[1:] - offsets[:-1])
    cells = torch.floor(coord.float() / cell).long()
    cells = cells - cells.min(dim=0).values if len(cells) else cells
    span = cells.max(dim=0).values + 1 if len(cells) else torch.ones(3, dtype=torch.long)
    key = ((event * span[0] + cells[:, 0]) * span[1] + cells[:, 1]) * span[2] + cells[:, 2]
    uniq, inverse = torch.unique(key, return_inverse=True)
    cell_event = torch.zeros(len(uniq), dtype=torch.long, device=coord.device).scatter_(0, inverse, event)
    noise = torch.rand(len(uniq), generator=generator, device=generator.device).to(coord.device)
    # rank cells within their event by noise; hide the first floor(ratio * n) (clamped to [1, n - 1])
    order = torch.argsort(noise)
    order = order[torch.argsort(cell_event[order], stable=True)]
    per_event = torch.bincount(cell_event, minlength=len(offsets) - 1)
    start = torch.cumsum(per_event, 0) - per_event
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=coord.device) - start[cell_event[order]]
    hidden = torch.floor(ratio * per_event.double()).long().clamp(min=1)
    hidden = torch.minimum(hidden, per_event - 1).clamp(min=0)
    return (rank < hidden[cell_event])[inverse]


def match_rows(origin_a: torch.Tensor, origin_b: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of view a and of view b that come from the same source point (source batch of
    ``size`` points)."""
    where_b = torch.full((size,), -1, dtype=torch.long, device=origin_b.device)
    where_b[origin_b] = torch.arange(len(origin_b), device=origin_b.device)
    rows_b = where_b[origin_a]
    found = rows_b >= 0
    return torch.nonzero(found).squeeze(1), rows_b[found]

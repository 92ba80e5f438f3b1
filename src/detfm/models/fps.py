"""Farthest-point sampling (FPS) of patch centres, vectorised over a batch of events.

FPS (Qi et al., PointNet++, NeurIPS 2017) picks centres that spread evenly over a point
cloud: each new centre is the point farthest from all centres chosen so far.

Convention (identical in both back ends, so they agree index for index):

* the first centre of every event is its first point (position 0 within the event);
* the next centre is the point with the largest squared distance to its nearest chosen
  centre; ties go to the lowest position;
* sampling stops after ``num_samples`` centres, when every point of the event has been
  chosen, or - when ``cover_radius`` is given - as soon as every point lies within
  ``cover_radius`` of a centre (the largest remaining distance is <= ``cover_radius``).

The last rule makes the number of centres follow the volume an event occupies
("volumetric" tokenization): a short track gets a few centres, a shower many, and an event
that would need more than ``num_samples`` is still covered evenly by ``num_samples``
centres, just farther apart.

Distances are computed in float32 as ``dx*dx + dy*dy + dz*dz`` in that order in both back
ends, so the choices agree exactly (voxel coordinates are integers below 2^24 / 3, whose
squared distances float32 holds exactly anyway).

Back ends: ``"torch"`` loops over the centres and is vectorised over points and events (runs
wherever the tensors are, CPU or GPU); ``"numba"`` is a compiled per-event loop on CPU that
skips the padding the torch version has to carry for ragged batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numba
import numpy as np
import torch

from detfm.errors import ConfigError
from detfm.models.packing import check_points, packed_to_padded

FPSBackend = Literal["torch", "numba"]
BACKENDS: tuple[str, ...] = ("torch", "numba")


@dataclass(frozen=True)
class FPSResult:
    """Chosen centres.

    Attributes:
        index: (B, G) int64 packed point index of each centre, -1 where an event has fewer
            than G centres (G is the largest count in the batch).
        counts: (B,) int64 number of centres of each event.
        nearest: (P,) int64 slot (0..G-1) of the centre nearest to each point, within its
            event (ties: the earlier centre). FPS computes these distances anyway.
    """

    index: torch.Tensor
    counts: torch.Tensor
    nearest: torch.Tensor


def _threshold(cover_radius: float | None) -> float:
    """The float32 squared-distance threshold; -1 disables the covering rule."""
    if cover_radius is None:
        return -1.0
    if not cover_radius >= 0:
        raise ConfigError(f"cover_radius must be >= 0 or None, got {cover_radius}")
    return float(np.float32(cover_radius) ** 2)


def fps_padded(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, lengths: torch.Tensor,
               num_samples: int, threshold: float = -1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """FPS on padded (B, N) coordinate planes.

    ``lengths`` (B,) counts the real points of each row (they come first). ``threshold`` is
    the squared covering distance (-1: none). Returns (B, num_samples) chosen positions (-1
    padded) and (B, N) the slot of each point's nearest centre. This is the core shared by
    event-level sampling and the in-patch reduction of :mod:`detfm.models.grouping`.
    """
    batch, n = x.shape
    device = x.device
    rows = torch.arange(batch, device=device)
    real = torch.arange(n, device=device)[None, :] < lengths[:, None]
    # Squared distance to the nearest chosen centre; -1 marks padding so argmax never picks it.
    nearest = torch.where(real, torch.tensor(float("inf"), device=device),
                          torch.tensor(-1.0, device=device))
    owner = torch.zeros((batch, n), dtype=torch.long, device=device)
    out = torch.full((batch, num_samples), -1, dtype=torch.long, device=device)
    current = torch.zeros(batch, dtype=torch.long, device=device)
    active = lengths > 0
    for g in range(num_samples):
        if g > 0:
            current = nearest.argmax(dim=1)  # first maximum on ties
            farthest = nearest[rows, current]
            active = active & (farthest > threshold) & (lengths > g)
            if not bool(active.any()):
                break
            # Finished rows re-measure from their first centre: changes nothing (strict <).
            current = torch.where(active, current, 0)
        out[:, g] = torch.where(active, current, -1)
        dx = x - x[rows, current][:, None]
        dy = y - y[rows, current][:, None]
        dz = z - z[rows, current][:, None]
        dist = dx * dx + dy * dy + dz * dz
        closer = dist < nearest
        owner.masked_fill_(closer, g)
        torch.where(closer, dist, nearest, out=nearest)
    return out, owner


@numba.njit(cache=True, nogil=True)
def _fps_numba_kernel(coord: np.ndarray, offsets: np.ndarray, num_samples: int,
                      threshold: np.float32, out: np.ndarray, owner: np.ndarray
                      ) -> None:  # pragma: no cover - compiled
    for b in range(offsets.shape[0] - 1):
        start, n = offsets[b], offsets[b + 1] - offsets[b]
        if n == 0:
            continue
        nearest = np.full(n, np.inf, dtype=np.float32)
        current = 0
        for g in range(num_samples):
            if g > 0:
                if g >= n:
                    break
                best = np.float32(-1.0)
                current = 0
                for i in range(n):
                    if nearest[i] > best:
                        best = nearest[i]
                        current = i
                if not best > threshold:
                    break
            out[b, g] = start + current
            cx = coord[start + current, 0]
            cy = coord[start + current, 1]
            cz = coord[start + current, 2]
            for i in range(n):
                dx = coord[start + i, 0] - cx
                dy = coord[start + i, 1] - cy
                dz = coord[start + i, 2] - cz
                d = dx * dx + dy * dy + dz * dz
                if d < nearest[i]:
                    nearest[i] = d
                    owner[start + i] = g


def farthest_point_sampling(coord: torch.Tensor, offsets: torch.Tensor, num_samples: int, *,
                            cover_radius: float | None = None, backend: FPSBackend = "torch"
                            ) -> FPSResult:
    """Choose up to ``num_samples`` centres per event by farthest-point sampling.

    Args:
        coord: (P, 3) packed coordinates (voxel units).
        offsets: (B + 1,) event boundaries; every event must have at least one point.
        num_samples: most centres per event (the context length).
        cover_radius: stop early once every point lies within this distance of a centre.
        backend: ``"torch"`` (any device) or ``"numba"`` (CPU, compiled loop).

    Returns:
        :class:`FPSResult` with packed indices, identical for both back ends.
    """
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown FPS backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    check_points(coord, offsets)
    threshold = _threshold(cover_radius)
    offsets = offsets.long()
    coord = coord.float()
    if backend == "numba":
        out = np.full((offsets.numel() - 1, num_samples), -1, dtype=np.int64)
        owner = np.zeros(coord.shape[0], dtype=np.int64)
        _fps_numba_kernel(coord.detach().cpu().contiguous().numpy(), offsets.cpu().numpy(),
                          num_samples, np.float32(threshold), out, owner)
        index = torch.from_numpy(out).to(coord.device)
        nearest = torch.from_numpy(owner).to(coord.device)
    else:
        padded, valid = packed_to_padded(coord, offsets)
        lengths = offsets[1:] - offsets[:-1]
        position, slot = fps_padded(padded[..., 0].contiguous(), padded[..., 1].contiguous(),
                                    padded[..., 2].contiguous(), lengths, num_samples, threshold)
        index = torch.where(position >= 0, position + offsets[:-1, None], -1)
        nearest = slot[valid]
    counts = (index >= 0).sum(dim=1)
    return FPSResult(index=index[:, : int(counts.max())].contiguous(), counts=counts, nearest=nearest)

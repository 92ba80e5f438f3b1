"""Keep a frozen backbone's outputs of the training events, so a head trains without re-running it.

In ``probe`` and ``head`` modes the backbone never changes, and without random augmentation
its output for an event is the same on every pass. Running it once per event, instead of
once per event and pass, makes a head of many passes several times faster (the backbone is
most of the cost of a head-mode step).

The cache is keyed by the event's dataset number (``PackedBatch.index``). A batch whose
events are all stored is assembled from the store; otherwise the backbone runs on the whole
batch and every event of it is stored. A stored event is used only if its points are the
ones it was stored with (same count, same position-weighted sums of coordinates and energies); otherwise it is
computed again. Events are stored until ``max_bytes`` is reached; later events are computed
every time.

Outputs are stored per event, so a batch assembled from the store equals the backbone run on
that batch up to the backbone's batch independence (float rounding, ~1e-6). Only what heads
read is kept: ``point``, ``local`` and, when the head reads them, ``levels`` (never
``extras``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from detfm.data import PackedBatch
from detfm.models.contract import BackboneOutput

__all__ = ["DEFAULT_CACHE_BYTES", "CacheStats", "FeatureCache", "event_keys"]

DEFAULT_CACHE_BYTES = 6 << 30  # 6 GiB: 1 000 events of ~5 000 points with ~300 features each


@dataclass
class CacheStats:
    """Counts since the cache was made: events served from it, events computed, bytes held."""

    hits: int = 0
    misses: int = 0
    stored_bytes: int = 0


@dataclass(frozen=True)
class _Entry:
    n: int
    checksum: tuple[float, float]
    point: torch.Tensor
    local: torch.Tensor
    levels: tuple[torch.Tensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.point, self.local, *self.levels))


EventKey = tuple[int, int, int, tuple[float, float]]  # event number, first and end point, checksum


def _checksum(batch: PackedBatch, a: int, b: int) -> tuple[float, float]:
    """Sums of the event's coordinates and energies, each point weighted by its place in the
    event and each axis by its number, so that moved, changed, reordered or mirrored points
    (axes swapped) give other sums."""
    weight = 1.0 + torch.arange(b - a, dtype=torch.float64, device=batch.coord.device) % 97
    axes = torch.arange(1, batch.coord.shape[1] + 1, dtype=torch.float64, device=batch.coord.device)
    return (float(((batch.coord[a:b].double() * axes).sum(1) * weight).sum()),
            float((batch.energy[a:b].double() * weight).sum()))


def event_keys(batch: PackedBatch) -> list[EventKey]:
    """The batch's events with their point ranges and checksums (none without event numbers)."""
    if batch.index is None:
        return []
    bounds = batch.offsets.tolist()
    return [(int(event), bounds[i], bounds[i + 1], _checksum(batch, bounds[i], bounds[i + 1]))
            for i, event in enumerate(batch.index.tolist())]


class FeatureCache:
    """Per-event store of a frozen backbone's outputs (see the module docstring).

    Args:
        max_bytes: most bytes of features to hold (0: hold nothing, compute every time).
        keep_levels: also store the per-level features (needed when the head reads
            ``multilevel`` features).
    """

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES, keep_levels: bool = False) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.keep_levels = keep_levels
        self.stats = CacheStats()
        self._store: dict[int, _Entry] = {}

    def __len__(self) -> int:
        return len(self._store)

    def _keep(self, events: list[EventKey], out: BackboneOutput) -> None:
        for event, a, b, checksum in events:
            entry = _Entry(n=b - a, checksum=checksum, point=out.point[a:b].clone(), local=out.local[a:b].clone(),
                           levels=tuple(t[a:b].clone() for t in out.levels) if self.keep_levels else ())
            old = self._store.pop(event, None)
            if old is not None:
                self.stats.stored_bytes -= old.nbytes
            if self.stats.stored_bytes + entry.nbytes <= self.max_bytes:
                self._store[event] = entry
                self.stats.stored_bytes += entry.nbytes

    def encode(self, backbone: nn.Module, batch: PackedBatch) -> BackboneOutput:
        """The backbone's output for ``batch``: from the store when every event is in it,
        else computed (under ``no_grad``) and stored."""
        events = event_keys(batch)
        stored = ((self._store.get(event), b - a, checksum) for event, a, b, checksum in events)
        found = [e for e, n, checksum in stored if e is not None and e.n == n and e.checksum == checksum]
        if events and len(found) == len(events):  # every event stored, with the same points
            self.stats.hits += len(found)
            levels = tuple(torch.cat([e.levels[k] for e in found]) for k in range(len(found[0].levels)))
            return BackboneOutput(point=torch.cat([e.point for e in found]),
                                  local=torch.cat([e.local for e in found]), levels=levels)
        with torch.no_grad():
            out = backbone.forward_features(batch)
        self.stats.misses += len(batch)
        self._keep(events, out)
        return BackboneOutput(point=out.point, local=out.local, levels=out.levels if self.keep_levels else ())

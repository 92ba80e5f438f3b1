"""The packed point batch: all points of a batch concatenated, with per-event offsets.

Events range from ~10^2 to ~10^5 points, so batches are ragged rather than padded:
``coord[offsets[i]:offsets[i+1]]`` are the points of event ``i``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class PackedBatch:
    """A batch of point clouds.

    Attributes:
        coord: (P, 3) float32 voxel coordinates.
        feat: (P, C) float32 per-point input features (by default the log-normalised energy).
        offsets: (B + 1,) int64, ``offsets[0] == 0`` and ``offsets[-1] == P``.
        energy: (P,) float32 raw voxel value in MeV (regression target for energy infilling).
        semantic, pid, instance, interaction: (P,) int64 labels, or None for unlabeled data.
        index: (B,) int64 dataset index of each event (to align predictions with files).
        particle_energy, particle_start: (P,) and (P, 3) float32 kinetic energy (MeV) and
            start point (voxels) of each point's particle instance (NaN: unknown), or None.
    """

    coord: torch.Tensor
    feat: torch.Tensor
    offsets: torch.Tensor
    energy: torch.Tensor
    semantic: torch.Tensor | None = None
    pid: torch.Tensor | None = None
    instance: torch.Tensor | None = None
    interaction: torch.Tensor | None = None
    index: torch.Tensor | None = None
    particle_energy: torch.Tensor | None = None
    particle_start: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def num_points(self) -> int:
        return int(self.coord.shape[0])

    @property
    def counts(self) -> torch.Tensor:
        """(B,) number of points per event."""
        return self.offsets[1:] - self.offsets[:-1]

    def batch_index(self) -> torch.Tensor:
        """(P,) event number (0..B-1) of every point."""
        return torch.repeat_interleave(torch.arange(len(self), device=self.offsets.device),
                                       self.counts)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedBatch:
        """A copy with every tensor moved to ``device``."""
        moved = {f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
                 for f in fields(self) for v in [getattr(self, f.name)]}
        return replace(self, **moved)

    def event(self, i: int) -> dict[str, torch.Tensor]:
        """The tensors of event ``i`` (views, not copies)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and f.name not in ("offsets", "index") and v.shape[:1] == (self.num_points,):
                out[f.name] = v[a:b]
        return out

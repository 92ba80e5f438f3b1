"""Voxel hashing and 3x3x3 neighbour tables (kernel maps) for submanifold sparse convolution.

A voxel's key packs its event index and integer coordinates into one int64
(``b << 30 | x << 20 | y << 10 | z``). Keys are sorted once per level; the 27 neighbours of
every voxel are found by binary search of ``key + offset``. Coordinates lie in [0, 768), so
an offset that steps off the box wraps into the never-used value 1023 of a neighbouring bit
field and never matches a real voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detfm.errors import ConfigError

__all__ = ["KernelMap", "voxel_keys", "kernel_map", "KERNEL_OFFSETS"]

_BITS = 10
_LIMIT = 768  # coordinates must stay below this so 1023 never occurs in a field

# (27, 3) offsets in kernel order k = k0 * 9 + k1 * 3 + k2, offset (k0 - 1, k1 - 1, k2 - 1)
# along the (x, y, z) columns: the layout (out, k0, k1, k2, in) of the reference weights.
KERNEL_OFFSETS = torch.stack(torch.meshgrid(*(torch.arange(-1, 2),) * 3, indexing="ij"),
                             dim=-1).reshape(27, 3)


def voxel_keys(grid: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """(N,) int64 keys of (N, 3) integer voxel coordinates in events ``batch``."""
    if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= _LIMIT):
        raise ConfigError(f"voxel coordinates must lie in [0, {_LIMIT}), got "
                          f"[{int(grid.min())}, {int(grid.max())}]")
    g = grid.long()
    return ((batch.long() << (3 * _BITS)) | (g[:, 0] << (2 * _BITS)) | (g[:, 1] << _BITS)
            | g[:, 2])


@dataclass(frozen=True)
class KernelMap:
    """Neighbour table of one level, shared by every convolution of that level.

    Attributes:
        nbr: (N, 27) int64; ``nbr[p, k]`` is the index of the voxel at ``p + offset_k``, or
            ``N`` where there is none.
        num_active: total number of real (voxel, offset) pairs, the centre included.
        pair_in, pair_out: (M,) the off-centre pairs: voxel ``pair_in[j]`` feeds output voxel
            ``pair_out[j]``, grouped by offset (kernel index ascending, centre skipped).
        counts: 27 pair counts per kernel index (0 for the centre, which is every voxel).
    """

    nbr: torch.Tensor
    num_active: int
    pair_in: torch.Tensor
    pair_out: torch.Tensor
    counts: tuple[int, ...]

    @property
    def num_points(self) -> int:
        return int(self.nbr.shape[0])


def kernel_map(grid: torch.Tensor, batch: torch.Tensor) -> KernelMap:
    """The 3x3x3 neighbour table of unique voxels ``grid`` (N, 3) in events ``batch`` (N,).

    Duplicate keys are a caller error (:class:`ConfigError`): merge points that share a
    voxel before building the map.
    """
    n = int(grid.shape[0])
    keys = voxel_keys(grid, batch)
    sorted_keys, order = torch.sort(keys)
    if n > 1 and bool((sorted_keys[1:] == sorted_keys[:-1]).any()):
        raise ConfigError("kernel_map got duplicate voxels; merge points sharing a voxel first")
    offs = KERNEL_OFFSETS.to(grid.device)
    delta = (offs[:, 0] << (2 * _BITS)) + (offs[:, 1] << _BITS) + offs[:, 2]  # (27,)
    query = keys[:, None] + delta[None, :]  # (N, 27)
    pos = torch.searchsorted(sorted_keys, query.reshape(-1)).clamp_(max=max(n - 1, 0))
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long, device=grid.device)
        return KernelMap(nbr=empty.reshape(0, 27), num_active=0, pair_in=empty, pair_out=empty,
                         counts=(0,) * 27)
    found = sorted_keys[pos] == query.reshape(-1)
    nbr = torch.where(found, order[pos], torch.full_like(pos, n)).reshape(n, 27)
    active = found.reshape(n, 27).t().clone()  # (27, N): pairs come out grouped by offset
    active[13] = False
    k_idx, p_idx = active.nonzero(as_tuple=True)
    counts = torch.bincount(k_idx, minlength=27)
    return KernelMap(nbr=nbr, num_active=int(found.sum()), pair_in=nbr[p_idx, k_idx],
                     pair_out=p_idx, counts=tuple(int(c) for c in counts.tolist()))

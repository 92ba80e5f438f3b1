"""Voxel hashing and 3x3x3 neighbour tables (kernel maps) for submanifold sparse convolution.

A voxel's key packs its event index and integer coordinates into one int64
(``b << 33 | x << 22 | y << 11 | z``). Keys are sorted once per level; the 27 neighbours of
every voxel are found by binary search of ``key + offset``. Coordinates lie in [0, 2047), so
an offset that steps off the box wraps into the never-used value 2047 of a neighbouring bit
field and never matches a real voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detfm.errors import ConfigError

__all__ = ["KERNEL_OFFSETS", "MAX_BOX", "KernelMap", "decode_keys", "kernel_map", "voxel_keys"]

_BITS = 11
MAX_BOX = (1 << _BITS) - 1  # coordinates stay below this, so 2047 never occurs in a field

# (27, 3) offsets in kernel order k = k0 * 9 + k1 * 3 + k2, offset (k0 - 1, k1 - 1, k2 - 1)
# along the (x, y, z) columns: the layout (out, k0, k1, k2, in) of the reference weights.
KERNEL_OFFSETS = torch.stack(torch.meshgrid(*(torch.arange(-1, 2),) * 3, indexing="ij"),
                             dim=-1).reshape(27, 3)


def voxel_keys(grid: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
    """(N,) int64 keys of (N, 3) integer voxel coordinates in events ``batch``."""
    if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= MAX_BOX):
        raise ConfigError(f"voxel coordinates must lie in [0, {MAX_BOX}), got "
                          f"[{int(grid.min())}, {int(grid.max())}]")
    g = grid.long()
    return ((batch.long() << (3 * _BITS)) | (g[:, 0] << (2 * _BITS)) | (g[:, 1] << _BITS)
            | g[:, 2])


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`voxel_keys`: (N, 3) coordinates and (N,) events."""
    mask = (1 << _BITS) - 1
    grid = torch.stack([(keys >> (2 * _BITS)) & mask, (keys >> _BITS) & mask, keys & mask], dim=1)
    return grid, keys >> (3 * _BITS)


@dataclass(frozen=True)
class KernelMap:
    """Neighbour pairs of one level, shared by every convolution of that level.

    Attributes:
        num_points: N, the voxels of the level.
        pair_in, pair_out: (M,) the off-centre pairs: voxel ``pair_in[j]`` sits at offset k
            of output voxel ``pair_out[j]``; grouped by kernel index k ascending (centre
            skipped: every voxel is its own centre), spatially ordered within a group.
        counts: 27 pair counts per kernel index (0 for the centre).
    """

    num_points: int
    pair_in: torch.Tensor
    pair_out: torch.Tensor
    counts: tuple[int, ...]

    @property
    def num_active(self) -> int:
        """Real (voxel, offset) pairs, the centre included."""
        return self.num_points + int(self.pair_in.numel())

    def table(self) -> torch.Tensor:
        """(N, 27) int64: ``[p, k]`` is the voxel at offset k of p, or N where none (for checks)."""
        out = torch.full((self.num_points, 27), self.num_points, dtype=torch.long,
                         device=self.pair_in.device)
        out[:, 13] = torch.arange(self.num_points, device=out.device)
        k = torch.repeat_interleave(torch.arange(27, device=out.device),
                                    torch.tensor(self.counts, device=out.device))
        out[self.pair_out, k] = self.pair_in
        return out


def kernel_map(grid: torch.Tensor, batch: torch.Tensor) -> KernelMap:
    """The 3x3x3 neighbour pairs of unique voxels ``grid`` (N, 3) in events ``batch`` (N,).

    Keys are sorted once; for each of the 4 (dx, dy) columns after the centre one binary
    search finds the first key >= ``key + (dx, dy, -1)``, and the dz = -1, 0, +1 neighbours
    are then the next at most three sorted keys; the (0, 0, +1) neighbour is the next key.
    The 13 offsets before the centre are the mirror images of those after it. Duplicate keys are a caller error
    (:class:`ConfigError`): merge points that share a voxel first.
    """
    n = int(grid.shape[0])
    device = grid.device
    keys = voxel_keys(grid, batch)
    sk, order = torch.sort(keys)
    if n > 1 and bool((sk[1:] == sk[:-1]).any()):
        raise ConfigError("kernel_map got duplicate voxels; merge points sharing a voxel first")
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n == 0:
        return KernelMap(num_points=0, pair_in=empty, pair_out=empty, counts=(0,) * 27)
    # a sentinel above every key keeps the lookahead gathers in range
    padded = torch.cat([sk, sk.new_full((3,), torch.iinfo(torch.int64).max)])
    found_pos: list[torch.Tensor] = [empty] * 27
    found_out: list[torch.Tensor] = [empty] * 27
    # Only the 13 offsets after the centre are searched: q is p's neighbour at offset k exactly
    # when p is q's neighbour at offset 26 - k, so the other 13 groups are these, mirrored.
    nxt = padded[1:n + 1] == sk + 1  # (0, 0, +1): the next key
    found_out[14] = nxt.nonzero().squeeze(1)
    found_pos[14] = found_out[14] + 1
    for dx, dy in ((0, 1), (1, -1), (1, 0), (1, 1)):
        base = sk + ((dx << (2 * _BITS)) + (dy << _BITS) - 1)
        pos = torch.searchsorted(sk, base)
        for dz in (-1, 0, 1):
            k = (dx + 1) * 9 + (dy + 1) * 3 + (dz + 1)
            hit = padded[pos] == base + (dz + 1)
            sel = hit.nonzero().squeeze(1)
            found_pos[k] = pos[sel]
            found_out[k] = sel
            pos = pos + hit.long()  # the next target, if present, is one further on
    for k in range(14, 27):
        found_pos[26 - k], found_out[26 - k] = found_out[k], found_pos[k]
    counts = tuple(int(t.numel()) for t in found_pos)
    pair_in = order[torch.cat(found_pos)]
    pair_out = order[torch.cat(found_out)]
    return KernelMap(num_points=n, pair_in=pair_in, pair_out=pair_out, counts=counts)

"""Space-filling-curve codes of integer voxel coordinates (z-order, Hilbert, transposed).

Sorting the points of an event by one of these codes puts spatial neighbours next to each
other, so fixed-size windows of the sorted sequence are local neighbourhoods (PTv3 / Panda).
The codes reproduce the reference encoder of Pointcept / pimm bit for bit (pinned by
``shared/reference/serialization_codes.tsv``): per bit level, from the most significant,
the bits of (x, y, z) are interleaved with x highest; the Hilbert code is Skilling's
transform of the same bits followed by a Gray-to-binary decode of the interleaved word.
"""

from __future__ import annotations

import torch

from detfm.errors import ConfigError

__all__ = [
    "DEPTH",
    "ORDERS",
    "bit_length",
    "encode",
    "hilbert_encode",
    "inverse_permutation",
    "serialize",
    "z_order_encode",
]

ORDERS = ("z", "z-trans", "hilbert", "hilbert-trans")
# Bits per axis: the 768-voxel box needs 10 (the depth the reference picks for it).
DEPTH = 10


def _check(grid: torch.Tensor, depth: int) -> None:
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ConfigError(f"grid coordinates must be (N, 3), got {tuple(grid.shape)}")
    if grid.dtype not in (torch.int32, torch.int64):
        raise ConfigError(f"grid coordinates must be integers, got {grid.dtype}")
    if not 1 <= depth <= 16:
        raise ConfigError(f"depth must be in 1..16, got {depth}")
    if grid.numel() and (int(grid.min()) < 0 or int(grid.max()) >= (1 << depth)):
        raise ConfigError(f"grid coordinates must lie in [0, {1 << depth}) for depth {depth}, "
                          f"got [{int(grid.min())}, {int(grid.max())}]")


def _interleave(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, depth: int) -> torch.Tensor:
    """Bits of x, y, z interleaved, x highest in each triple: (x_b y_b z_b) for b = depth-1..0."""
    code = torch.zeros_like(x)
    for b in range(depth):
        triple = (((x >> b) & 1) << 2) | (((y >> b) & 1) << 1) | ((z >> b) & 1)
        code |= triple << (3 * b)
    return code


def z_order_encode(grid: torch.Tensor, depth: int = DEPTH) -> torch.Tensor:
    """(N,) int64 z-order (Morton) code of (N, 3) integer coordinates."""
    _check(grid, depth)
    g = grid.long()
    return _interleave(g[:, 0], g[:, 1], g[:, 2], depth)


def hilbert_encode(grid: torch.Tensor, depth: int = DEPTH) -> torch.Tensor:
    """(N,) int64 Hilbert code of (N, 3) integer coordinates (Skilling's transform)."""
    _check(grid, depth)
    g = grid.long()
    axes = [g[:, 0].clone(), g[:, 1].clone(), g[:, 2].clone()]
    q = 1 << (depth - 1)
    while q > 1:
        low = q - 1
        for i in range(3):
            on = (axes[i] & q) != 0
            # bit set: invert the low bits of axis 0; bit clear: swap low bits of 0 and i
            swap = torch.where(on, torch.zeros_like(axes[0]), (axes[0] ^ axes[i]) & low)
            axes[0] = axes[0] ^ torch.where(on, torch.full_like(axes[0], low), swap)
            if i:
                axes[i] = axes[i] ^ swap
        q >>= 1
    gray = _interleave(axes[0], axes[1], axes[2], depth)
    code = gray
    shift = 1
    while shift < 3 * depth:  # Gray -> binary: prefix XOR from the most significant bit
        code = code ^ (code >> shift)
        shift <<= 1
    return code


# Axis rotations that turn a depth-D Hilbert code into the depth-(D - t) one: for points
# below 2^(D - t), hilbert(v, D - t) == hilbert(v[:, _TURNS[t % 3]], D) (each extra top level
# of Skilling's transform only rotates the axes (x, y, z) -> (z, x, y)).
_TURNS = ([0, 1, 2], [1, 2, 0], [2, 0, 1])


def encode(grid: torch.Tensor, order: str, batch: torch.Tensor | None = None,
           depth: int = DEPTH, shallower: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) int64 code of ``order`` ("z", "z-trans", "hilbert", "hilbert-trans").

    "-trans" encodes the (y, x, z)-transposed coordinates. With ``batch`` (N,) the event
    index goes into the bits above ``3 * depth``, so sorting keeps events contiguous.
    ``shallower`` (N,) int: encode point i at depth ``depth - shallower[i]`` instead (the
    same code for z-order; a rotated curve for Hilbert), so events of one batch can each
    have their own depth.
    """
    if order not in ORDERS:
        raise ConfigError(f"unknown serialization order {order!r}; valid: {', '.join(ORDERS)}")
    g = grid[:, [1, 0, 2]] if order.endswith("-trans") else grid
    if order.startswith("hilbert") and shallower is not None:
        turns = torch.as_tensor(_TURNS, device=g.device)[shallower % 3]  # (N, 3)
        g = torch.gather(g, 1, turns)
    code = hilbert_encode(g, depth) if order.startswith("hilbert") else z_order_encode(g, depth)
    if batch is not None:
        code = code | (batch.long() << (3 * depth))
    return code


def bit_length(values: torch.Tensor) -> torch.Tensor:
    """Python's ``int.bit_length`` of every element of a non-negative integer tensor."""
    _, exponent = torch.frexp(values.double())
    return exponent.long()


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` with ``inv[perm[i]] == i``: gathers a sorted sequence back to the input order."""
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def serialize(grid: torch.Tensor, batch: torch.Tensor, orders: tuple[str, ...] | list[str],
              depth: int = DEPTH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes, sorting permutations and their inverses for several orders.

    Returns ``code`` (O, N), ``order`` (O, N) with ``code[o, order[o]]`` ascending, and
    ``inverse`` (O, N) with ``order[o, inverse[o]] == arange(N)``.
    """
    code = torch.stack([encode(grid, o, batch, depth) for o in orders])
    order = torch.argsort(code, dim=1)
    inverse = torch.empty_like(order)
    inverse.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return code, order, inverse

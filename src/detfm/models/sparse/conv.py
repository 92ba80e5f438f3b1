"""Submanifold 3x3x3 sparse convolution in plain PyTorch.

Output voxel p gets ``sum_k W[:, k0, k1, k2, :] @ x[p + (k0-1, k1-1, k2-1)]`` over the
neighbours that exist (torch ``conv3d``'s cross-correlation convention, offsets along the
stored (x, y, z) columns; weight layout (out, k0, k1, k2, in) as in the Panda reference).

How, and why: a voxel of a LArTPC event has only ~4-6 of its 27 neighbours, so an im2col
table of 27 slots multiplies mostly zeros and spends its time writing them (measured on
default-mix events: 4-7x slower than the scheme below). Here the centre tap is one dense
matmul over all voxels; the off-centre (voxel, neighbour) pairs of the level's kernel map,
grouped by offset, are gathered once, multiplied by their offset's weight (one matmul per
offset into one buffer) and added to the outputs with a single ``index_add_``. The
backward pass does the same with one gather of the output gradient.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from detfm.errors import ConfigError
from detfm.models.sparse.hashing import KernelMap

__all__ = ["SubMConv3d", "per_offset", "submanifold_conv3d", "submanifold_conv3d_per_offset"]


def per_offset(weight: torch.Tensor) -> torch.Tensor:
    """(27, in, out) contiguous copy of an (out, 3, 3, 3, in) kernel: one matrix per offset."""
    return weight.permute(1, 2, 3, 4, 0).reshape(27, weight.shape[-1], weight.shape[0]).contiguous()


class _SubMConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                pair_in: torch.Tensor, pair_out: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
        out = torch.addmm(bias, x, w[13]) if bias is not None else x @ w[13]
        gathered = x.index_select(0, pair_in)
        if pair_in.numel():
            products = x.new_empty(pair_in.numel(), w.shape[2])
            start = 0
            for k, count in enumerate(counts):
                if count:
                    torch.mm(gathered[start:start + count], w[k], out=products[start:start + count])
                    start += count
            out.index_add_(0, pair_out, products)
        ctx.save_for_backward(x, w, gathered, pair_in, pair_out)
        ctx.counts = counts
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w, gathered, pair_in, pair_out = ctx.saved_tensors
        c_in = w.shape[1]
        grad = grad.contiguous()
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_x = grad @ w[13].t() if need_x else None
        grad_w = torch.zeros_like(w) if need_w else None
        if grad_w is not None:
            torch.mm(x.t(), grad, out=grad_w[13])
        if pair_in.numel() and (need_x or need_w):
            g_out = grad.index_select(0, pair_out)
            g_in = x.new_empty(pair_in.numel(), c_in) if need_x else None
            start = 0
            for k, count in enumerate(ctx.counts):
                if count:
                    rows = slice(start, start + count)
                    if g_in is not None:
                        torch.mm(g_out[rows], w[k].t(), out=g_in[rows])
                    if grad_w is not None:
                        torch.mm(gathered[rows].t(), g_out[rows], out=grad_w[k])
                    start += count
            if grad_x is not None and g_in is not None:
                grad_x.index_add_(0, pair_in, g_in)
        grad_b = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


def submanifold_conv3d(x: torch.Tensor, kmap: KernelMap, weight: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """(N, out) submanifold convolution of (N, in) features ``x`` on the voxels of ``kmap``."""
    if x.shape[0] != kmap.num_points:
        raise ConfigError(f"features have {x.shape[0]} rows but the kernel map {kmap.num_points}")
    if weight.ndim != 5 or weight.shape[1:4] != (3, 3, 3) or weight.shape[-1] != x.shape[1]:
        raise ConfigError(f"weight must be (out, 3, 3, 3, {x.shape[1]}), got {tuple(weight.shape)}")
    return submanifold_conv3d_per_offset(x, kmap, per_offset(weight), bias)


def submanifold_conv3d_per_offset(x: torch.Tensor, kmap: KernelMap, w: torch.Tensor,
                                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same convolution with the kernel given as (27, in, out), one matrix per offset
    (what :func:`per_offset` makes; lets callers fold a following Linear into the kernel)."""
    if w.ndim != 3 or w.shape[0] != 27 or w.shape[1] != x.shape[1]:
        raise ConfigError(f"per-offset kernel must be (27, {x.shape[1]}, out), got {tuple(w.shape)}")
    device = x.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    # one dtype for the matmuls (autocast's, as for nn.Linear); gradients flow back through .to()
    x, w = x.to(dtype).contiguous(), w.to(dtype).contiguous()
    bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False):
        return _SubMConv.apply(x, w, bias, kmap.pair_in, kmap.pair_out, kmap.counts)


class SubMConv3d(nn.Module):
    """A submanifold 3x3x3 convolution module with reference weight layout (out, 3, 3, 3, in)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self._cache: tuple[Any, torch.Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform in +-1/sqrt(27 * in), as conv3d initialises."""
        bound = 1.0 / math.sqrt(27 * self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def kernel(self) -> torch.Tensor:
        """The weight as (27, in, out), one matrix per offset. Without autograd (inference)
        the rearranged copy is kept until the weight changes."""
        if torch.is_grad_enabled():
            return per_offset(self.weight)
        key = (self.weight.data_ptr(), self.weight._version, self.weight.device, self.weight.dtype)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, per_offset(self.weight.detach()))
        return self._cache[1]

    def forward(self, x: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        if x.shape[0] != kmap.num_points:
            raise ConfigError(f"features have {x.shape[0]} rows but the kernel map {kmap.num_points}")
        return submanifold_conv3d_per_offset(x, kmap, self.kernel(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel=3x3x3, bias={self.bias is not None}"

"""Submanifold 3x3x3 sparse convolution in plain PyTorch: one gather and one matmul.

Output voxel p gets ``sum_k W[:, k0, k1, k2, :] @ x[p + (k0-1, k1-1, k2-1)]`` over the
neighbours that exist (torch ``conv3d``'s cross-correlation convention, offsets along the
stored (x, y, z) columns; weight layout (out, k0, k1, k2, in) as in the Panda reference).

Why this shape: the neighbour features are gathered into a (N, 27 * in) table with a zero
row for missing neighbours, and the whole convolution is a single large matmul. A voxel
has only ~4-6 of its 27 neighbours, so most of those FLOPs multiply zeros, but one large
matmul runs far closer to the peak than 27 small gather-matmul-scatter steps, and it
needs no ``index_add_``. The backward pass uses the symmetry of a submanifold kernel map
(q is p's neighbour at offset k exactly when p is q's neighbour at offset 26 - k): the
input gradient is the same gather-matmul with the flipped, transposed kernel, so no
scatter appears in the backward pass either.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from detfm.errors import ConfigError
from detfm.models.sparse.hashing import KernelMap

__all__ = ["SubMConv3d", "submanifold_conv3d"]


def _gather_cols(x: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """(N, 27 * C): the features of the 27 neighbours of every voxel, zeros where none."""
    padded = torch.cat([x, x.new_zeros(1, x.shape[1])], dim=0)
    return padded.index_select(0, nbr.reshape(-1)).reshape(nbr.shape[0], -1)


class _SubMConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, nbr: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        c_out, c_in = weight.shape[0], weight.shape[-1]
        cols = _gather_cols(x, nbr)
        w = weight.reshape(c_out, 27 * c_in).t()
        out = torch.addmm(bias, cols, w) if bias is not None else cols @ w
        ctx.save_for_backward(cols if weight.requires_grad else None, nbr, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        cols, nbr, weight = ctx.saved_tensors
        c_out, c_in = weight.shape[0], weight.shape[-1]
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            flipped = weight.reshape(c_out, 27, c_in).flip(1).transpose(0, 1).reshape(27 * c_out, c_in)
            grad_x = _gather_cols(grad, nbr) @ flipped
        if ctx.needs_input_grad[2]:
            grad_w = (grad.t() @ cols).reshape(weight.shape)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            grad_b = grad.sum(0)
        return grad_x, None, grad_w, grad_b


def submanifold_conv3d(x: torch.Tensor, kmap: KernelMap, weight: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
    """(N, out) submanifold convolution of (N, in) features ``x`` on the voxels of ``kmap``."""
    if x.shape[0] != kmap.num_points:
        raise ConfigError(f"features have {x.shape[0]} rows but the kernel map {kmap.num_points}")
    if weight.shape[1:4] != (3, 3, 3) or weight.shape[-1] != x.shape[1]:
        raise ConfigError(f"weight must be (out, 3, 3, 3, {x.shape[1]}), got {tuple(weight.shape)}")
    return _SubMConv.apply(x, kmap.nbr, weight, bias)


class SubMConv3d(nn.Module):
    """A submanifold 3x3x3 convolution module with reference weight layout (out, 3, 3, 3, in)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, 3, 3, 3, in_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform over the fan-in 27 * in (as conv3d initialises)."""
        bound = 1.0 / math.sqrt(27 * self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
        return submanifold_conv3d(x, kmap, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel=3x3x3, bias={self.bias is not None}"

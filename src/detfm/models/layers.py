"""Transformer building blocks over padded token tensors with a padding mask.

Pre-norm ViT blocks (as in Point-MAE / PoLAr-MAE): ``x + DropPath(Attn(LN(x)))`` then
``x + DropPath(MLP(LN(x)))``. Tokens are dense (B, G, D) tensors; a (B, G) bool mask marks
real tokens, and attention never looks at padded keys, so a real event's output does not
depend on what else is in the batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detfm.errors import ConfigError
from detfm.data.datasets import DEFAULT_DATASET, get_dataset


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Build modules inside this block to draw their initial weights from ``seed``.

    torch's initialisers use the default CPU generator; this forks it, seeds the fork and
    restores it afterwards, so the caller's random state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def init_weights(module: nn.Module) -> None:
    """ViT initialisation (timm): truncated normal(0.02) weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class DropPath(nn.Module):
    """Stochastic depth: drop a whole residual branch per sample with probability ``p``.

    The random draws come from the ``torch.Generator`` passed to ``forward`` (on any device;
    the draws move to the data's device), never from the global RNG.
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"drop-path rate must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        if generator is None:
            raise ValueError("DropPath in training mode needs an explicit torch.Generator")
        keep = torch.rand(x.shape[0], generator=generator, device=generator.device) >= self.p
        scale = keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.p)
        return x * scale.view(-1, *([1] * (x.ndim - 1)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention`` with a key mask."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        batch, n, dim = x.shape
        qkv = self.qkv(x).view(batch, n, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        attn_mask = None if mask is None else mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(y.transpose(1, 2).reshape(batch, n, dim))


class Mlp(nn.Sequential):
    """Linear - GELU - Linear."""

    def __init__(self, dim: int, hidden: int, out: int | None = None) -> None:
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim))


class Block(nn.Module):
    """One pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), mask), generator)
        return x + self.drop_path(self.mlp(self.norm2(x)), generator)


class Transformer(nn.Module):
    """A stack of blocks plus a final LayerNorm; the position embedding is added before
    every block (Point-MAE, PoLAr-MAE ``add_pos_at_every_layer``) or only the first."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, pos_every_layer: bool = True
                 ) -> None:
        super().__init__()
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        rates = [drop_path_rate * i / max(1, depth - 1) for i in range(depth)]  # linear, as timm
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias, r) for r in rates)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pos_every_layer = pos_every_layer

    def forward(self, x: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None, keep: Sequence[int] = ()
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run all blocks; returns the normed output and the raw outputs of blocks ``keep``."""
        kept = []
        for i, block in enumerate(self.blocks):
            if i == 0 or self.pos_every_layer:
                x = x + pos
            x = block(x, mask, generator)
            if i in keep:
                kept.append(x)
        return self.norm(x), kept


class PositionEmbedding(nn.Module):
    """Learned embedding of patch centres: MLP on xyz scaled by the dataset to [-1, 1]."""

    def __init__(self, dim: int, hidden: int = 128, dataset: str = DEFAULT_DATASET) -> None:
        super().__init__()
        self.mlp = Mlp(3, hidden, dim)
        self.spec = get_dataset(dataset)

    def forward(self, centers: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.spec.normalise(centers))

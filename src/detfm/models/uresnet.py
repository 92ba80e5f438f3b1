"""UResNet: the sparse-convolution U-Net of LArTPC reconstruction (SPINE chain), plain torch.

The supervised workhorse and the from-scratch reference: submanifold 3x3x3 convolutions in
pre-activation residual blocks at every level, 2x2x2 stride-2 convolutions down, 2x2x2
transposed convolutions up, skip connections concatenated and fused by a convolution. One
feature per voxel at full resolution. Normalisation is LayerNorm over channels (per voxel),
so an event's output never depends on the other events of its batch, in training too.
Shares the voxel hierarchy, kernel maps and pooling of :mod:`detfm.models.sparse`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from detfm.data.batch import PackedBatch
from detfm.data.datasets import get_dataset
from detfm.errors import ConfigError, DataFormatError
from detfm.models.config import ModelConfig, register_arch
from detfm.models.contract import BackboneOutput, GroupRules
from detfm.models.layers import seeded_init
from detfm.models.sparse.conv import SubMConv3d
from detfm.models.sparse.geometry import (
    Geometry,
    Level,
    build_geometry,
    normalised_coordinates,
)
from detfm.models.sparse.pooling import PoolMap
from detfm.models.sparse.serialization import inverse_permutation

__all__ = ["URESNET_SIZES", "UResNet", "UResNetConfig", "register_all"]


@register_arch
@dataclass(frozen=True)
class UResNetConfig(ModelConfig):
    """A sparse-convolution U-Net.

    Attributes:
        name: registry name it was built from (provenance only).
        arch: family tag, always "uresnet".
        in_channels: per-point channels of ``PackedBatch.feat`` (1: log energy).
        seed: seed of the initial weights.
        dataset: the kind of events; its box size bounds the coordinates.
        coord_features: also feed normalised coordinates to the stem (as PTv3 does).
        channels: width of each level, full resolution first (SPINE: 16, 32, 48, 64, 80).
        reps: residual blocks per level in the encoder and in the decoder.
        leaky_slope: negative slope of the LeakyReLU activations (SPINE: 0.33).
    """

    name: str = "uresnet"
    arch: str = "uresnet"
    coord_features: bool = False
    channels: tuple[int, ...] = (16, 32, 48, 64, 80)
    reps: int = 2
    leaky_slope: float = 0.33

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.channels, (str, bytes)) or not hasattr(self.channels, "__iter__"):
            raise ConfigError(f"channels must be a list, got {self.channels!r}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if self.arch != "uresnet":
            raise ConfigError(f"a UResNet config has arch 'uresnet', got {self.arch!r} (a config "
                              f"of another model family?)")
        if not self.channels or min(self.channels) < 1:
            raise ConfigError(f"channels must be positive widths, got {list(self.channels)}")
        if len(self.channels) > 10:
            raise ConfigError(f"at most 10 levels fit a voxel box, got {len(self.channels)}")
        if self.reps < 1:
            raise ConfigError(f"reps must be >= 1, got {self.reps}")
        if not 0.0 <= self.leaky_slope < 1.0:
            raise ConfigError(f"leaky_slope must be in [0, 1), got {self.leaky_slope}")

    @property
    def stem_channels(self) -> int:
        return self.in_channels + (3 if self.coord_features else 0)


def _child_groups(level: Level) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Voxels of a level sorted by their position (0..7) inside their stride-2 cell."""
    g = level.grid
    child = ((g[:, 0] & 1) << 2) | ((g[:, 1] & 1) << 1) | (g[:, 2] & 1)
    order = torch.argsort(child, stable=True)
    counts = torch.bincount(child, minlength=8)
    return order, tuple(int(c) for c in counts.tolist())


class CellConv(nn.Module):
    """2x2x2 stride-2 convolution (``down``) or its transpose (``up``) over the cells of a
    :class:`PoolMap`: one matmul per position inside the cell, weight (out, 2, 2, 2, in)."""

    def __init__(self, c_in: int, c_out: int, transpose: bool) -> None:
        super().__init__()
        self.transpose = transpose
        self.weight = nn.Parameter(torch.empty(c_out, 2, 2, 2, c_in))
        nn.init.uniform_(self.weight, -1 / math.sqrt(8 * c_in), 1 / math.sqrt(8 * c_in))

    def forward(self, x: torch.Tensor, fine: Level, pool: PoolMap) -> torch.Tensor:
        order, counts = _child_groups(fine)
        w = self.weight.permute(1, 2, 3, 4, 0).reshape(8, self.weight.shape[-1], self.weight.shape[0])
        cluster = pool.cluster.index_select(0, order)
        src = x.index_select(0, cluster) if self.transpose else x.index_select(0, order)
        parts = [chunk @ w[c] for c, chunk in enumerate(torch.split(src, counts)) if counts[c]]
        products = torch.cat(parts)
        if self.transpose:  # every fine voxel gets its cell's features through its own weight
            return products.index_select(0, inverse_permutation(order))
        out = products.new_zeros(pool.num_coarse, products.shape[1])
        return out.index_add(0, cluster, products)


class ResBlock(nn.Module):
    """Pre-activation residual block: (LN, LeakyReLU, conv) twice, plus the input."""

    def __init__(self, c: int, slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.norm1 = nn.LayerNorm(c)
        self.conv1 = SubMConv3d(c, c, bias=False)
        self.norm2 = nn.LayerNorm(c)
        self.conv2 = SubMConv3d(c, c, bias=False)

    def forward(self, x: torch.Tensor, level: Level) -> torch.Tensor:
        kmap = level.kmap()
        h = self.conv1(F.leaky_relu(self.norm1(x), self.slope), kmap)
        h = self.conv2(F.leaky_relu(self.norm2(h), self.slope), kmap)
        return x + h


class _Level(nn.Module):
    def __init__(self, blocks: list[ResBlock]) -> None:
        super().__init__()
        for i, block in enumerate(blocks):
            self.add_module(f"block{i}", block)
        self.depth = len(blocks)

    def run(self, x: torch.Tensor, level: Level) -> torch.Tensor:
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x, level)
        return x


class UResNet(nn.Module):
    """The UResNet backbone (see the module docstring); build with ``UResNet(cfg)``."""

    def __init__(self, cfg: UResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        with seeded_init(cfg.seed):
            self.stem = SubMConv3d(cfg.stem_channels, c[0])
            self.enc = nn.Module()
            for s in range(len(c)):
                stage = _Level([ResBlock(c[s], cfg.leaky_slope) for _ in range(cfg.reps)])
                if s > 0:
                    stage.down_norm = nn.LayerNorm(c[s - 1])
                    stage.down = CellConv(c[s - 1], c[s], transpose=False)
                self.enc.add_module(f"enc{s}", stage)
            self.dec = nn.Module()
            for s in reversed(range(len(c) - 1)):
                stage = _Level([ResBlock(c[s], cfg.leaky_slope) for _ in range(cfg.reps)])
                stage.up_norm = nn.LayerNorm(c[s + 1])
                stage.up = CellConv(c[s + 1], c[s], transpose=True)
                stage.fuse = SubMConv3d(2 * c[s], c[s], bias=False)
                self.dec.add_module(f"dec{s}", stage)
            self.norm = nn.LayerNorm(c[0])

    @property
    def default_cfg(self) -> UResNetConfig:
        return self.cfg

    @property
    def num_features(self) -> int:
        return self.cfg.channels[0]

    @property
    def num_local_features(self) -> int:
        return self.cfg.in_channels

    def group_matcher(self) -> GroupRules:
        """Stem first, then each level's blocks (encoder, then decoder coarse to fine), the
        output norm last."""
        n = len(self.cfg.channels)
        rules: list[tuple[str, tuple[int, ...]]] = [(r"^stem\.", (0, 0, 0))]
        for s in range(n):
            rules.append((rf"^enc\.enc{s}\.down", (1 + s, 0, 0)))
            rules += [(rf"^enc\.enc{s}\.block{i}\.", (1 + s, 1 + i, 0)) for i in range(self.cfg.reps)]
        for j, s in enumerate(reversed(range(n - 1))):
            rules.append((rf"^dec\.dec{s}\.(?:up|fuse)", (1 + n + j, 0, 0)))
            rules += [(rf"^dec\.dec{s}\.block{i}\.", (1 + n + j, 1 + i, 0)) for i in range(self.cfg.reps)]
        rules.append((r"^norm\.", (2 * n + 1, 0, 0)))
        return rules

    def lora_targets(self) -> list[str]:
        """None: a UResNet has no Linear layers (LoRA would need a convolution adapter)."""
        return []

    def geometry(self, batch: PackedBatch) -> Geometry:
        if batch.feat.ndim != 2 or batch.feat.shape[1] != self.cfg.in_channels:
            raise DataFormatError(f"the model expects feat of shape (P, {self.cfg.in_channels}), "
                                  f"got {tuple(batch.feat.shape)}", field="feat")
        return build_geometry(batch, ("z",), len(self.cfg.channels), get_dataset(self.cfg.dataset).box_size)

    def _forward(self, batch: PackedBatch, keep: set[int]) -> tuple[BackboneOutput, dict[int, torch.Tensor]]:
        batch = batch.to(self.stem.weight.device)
        geo = self.geometry(batch)
        inputs = batch.feat
        if self.cfg.coord_features:
            inputs = torch.cat([normalised_coordinates(batch.coord, get_dataset(self.cfg.dataset).box_size), inputs], dim=1)
        x = self.stem(geo.voxel_mean(inputs), geo.levels[0].kmap())
        slope = self.cfg.leaky_slope
        n = len(self.cfg.channels)
        skips: list[torch.Tensor] = []
        kept: dict[int, tuple[torch.Tensor, int]] = {}
        for s in range(n):
            stage = getattr(self.enc, f"enc{s}")
            if s > 0:
                x = stage.down(F.leaky_relu(stage.down_norm(x), slope), geo.levels[s - 1], geo.pools[s - 1])
            x = stage.run(x, geo.levels[s])
            if s in keep:
                kept[s] = (x, s)
            skips.append(x)
        for j, s in enumerate(reversed(range(n - 1))):
            stage = getattr(self.dec, f"dec{s}")
            up = stage.up(F.leaky_relu(stage.up_norm(x), slope), geo.levels[s], geo.pools[s])
            x = stage.fuse(torch.cat([skips[s], up], dim=1), geo.levels[s].kmap())
            x = stage.run(x, geo.levels[s])
            if n + j in keep:
                kept[n + j] = (x, s)
        x = F.leaky_relu(self.norm(x), slope)
        levels = tuple(geo.to_points(f, s) for s, f in enumerate(skips))
        out = BackboneOutput(point=geo.to_points(x, 0), local=batch.feat, levels=levels,
                             extras={"geometry": geo})
        return out, {i: geo.to_points(f, s) for i, (f, s) in kept.items()}

    def forward_features(self, batch: PackedBatch, generator: torch.Generator | None = None
                         ) -> BackboneOutput:
        """Per-point features (the contract); ``generator`` is unused (nothing is random)."""
        return self._forward(batch, set())[0]

    def forward_intermediates(self, batch: PackedBatch, layers: int | Sequence[int] | None = None,
                              norm: bool = False, generator: torch.Generator | None = None
                              ) -> tuple[BackboneOutput, list[torch.Tensor]]:
        """Features plus the outputs of chosen levels (encoder levels 0..n-1, then decoder
        levels coarse to fine), carried to the points; ``norm`` changes nothing."""
        total = 2 * len(self.cfg.channels) - 1
        if layers is None:
            wanted = list(range(total))
        elif isinstance(layers, int):
            if not 0 <= layers <= total:
                raise ConfigError(f"asked for the last {layers} levels of a {total}-level model")
            wanted = list(range(total - layers, total))
        else:
            wanted = []
            for i in layers:
                if not -total <= i < total:
                    raise ConfigError(f"level index {i} out of range for a {total}-level model")
                wanted.append(i % total)
        out, kept = self._forward(batch, set(wanted))
        return out, [kept[i] for i in wanted]

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.forward_features(batch).point


URESNET_SIZES: dict[str, tuple[UResNetConfig, str]] = {
    "uresnet_micro": (UResNetConfig(name="uresnet_micro", channels=(16, 32, 48, 64), reps=1),
                      "UResNet micro (widths 16-64, 4 levels, 1 block each): 2-core CPU training"),
    "uresnet_small": (UResNetConfig(name="uresnet_small", channels=(16, 32, 48, 64, 80), reps=2),
                      "UResNet small = SPINE's default (widths 16-80, 5 levels, 2 blocks each)"),
}


def register_all() -> None:
    """Register every UResNet size with the model registry (call once)."""
    from detfm.models.registry import register_model

    for name, (cfg, description) in URESNET_SIZES.items():
        register_model(name, cfg, description, UResNet)

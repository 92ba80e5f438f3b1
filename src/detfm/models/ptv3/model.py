"""Point Transformer V3 in plain PyTorch: serialized window attention over voxels.

Structure and parameter names follow the Panda / Sonata encoder (pimm "PT-v3m2") so that
its checkpoints map 1:1 (:mod:`detfm.models.convert_panda`): an embedding stem, encoder
stages of blocks (stage s > 0 starts with a stride-2 grid pooling), an optional decoder of
unpooling + blocks back to full resolution. A block is

    x = x + LN(Linear(SubMConv3x3x3(x)))                 conditional positional encoding
    x = x + DropPath(LayerScale(Attn(LN(x))))            attention inside serialized windows
    x = x + DropPath(LayerScale(MLP(LN(x))))

Attention windows never mix events (see :class:`detfm.models.sparse.geometry.Windows`),
and drop-path drops whole events, so an event's output does not depend on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from detfm.data.batch import PackedBatch
from detfm.data.datasets import get_dataset
from detfm.errors import ConfigError, DataFormatError
from detfm.models.contract import BackboneOutput, GroupRules
from detfm.models.layers import init_weights, seeded_init
from detfm.models.ptv3.config import PTv3Config
from detfm.models.sparse.conv import SubMConv3d, submanifold_conv3d_per_offset
from detfm.models.sparse.geometry import (
    Geometry,
    Level,
    build_geometry,
    normalised_coordinates,
)
from detfm.models.sparse.pooling import PoolMap, max_pool

__all__ = ["EventDropPath", "PTv3", "normalised_coordinates"]


class EventDropPath(nn.Module):
    """Stochastic depth per event: a residual branch is dropped for all voxels of an event.

    Draws come from the generator passed to ``forward``, never from the global RNG.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, batch: torch.Tensor, num_events: int,
                generator: torch.Generator | None) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        if generator is None:
            raise ConfigError("drop-path in training mode needs an explicit torch.Generator")
        keep = torch.rand(num_events, generator=generator, device=generator.device) >= self.p
        scale = keep.to(device=x.device, dtype=x.dtype) / (1.0 - self.p)
        return x * scale.index_select(0, batch)[:, None]

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LayerScale(nn.Module):
    """Per-channel scale ``gamma`` of a residual branch (CaiT), initialised small."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside the windows of one serialized order."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, level: Level, order_index: int, patch_size: int) -> torch.Tensor:
        win = level.windows(order_index, patch_size)
        c = x.shape[1]
        h = self.num_heads
        w, k = win.gather.shape
        with record_function("ptv3.attention"):
            # gather the inputs (not q, k, v: a third of the bytes) into window order
            windowed = x.index_select(0, win.gather.reshape(-1))
        qkv = self.qkv(windowed).reshape(w, k, 3, h, c // h)
        with record_function("ptv3.attention"):
            q, key, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            mask = None if win.mask is None else win.mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, key, v, attn_mask=mask)
            out = out.transpose(1, 2).reshape(w * k, c).index_select(0, win.rows)
        return self.proj(out)


class Block(nn.Module):
    """CPE + pre-norm window attention + MLP (parameter names as in the Panda reference)."""

    def __init__(self, dim: int, num_heads: int, patch_size: int, order_index: int,
                 cfg: PTv3Config, drop_path: float) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.order_index = order_index
        # registration order = the reference's parameter order (cpe, norm1, ls1, attn, ...)
        def scale() -> nn.Module:
            return LayerScale(dim, cfg.layer_scale) if cfg.layer_scale is not None else nn.Identity()

        self.cpe = nn.ModuleList([SubMConv3d(dim, dim), nn.Linear(dim, dim), nn.LayerNorm(dim)])
        self.norm1 = nn.ModuleList([nn.LayerNorm(dim)])
        self.ls1 = nn.ModuleList([scale()])
        self.attn = WindowAttention(dim, num_heads, cfg.qkv_bias)
        self.norm2 = nn.ModuleList([nn.LayerNorm(dim)])
        self.ls2 = nn.ModuleList([scale()])
        self.mlp = nn.ModuleList([Mlp(dim, int(dim * cfg.mlp_ratio))])
        self.drop_path = EventDropPath(drop_path)

    def forward(self, x: torch.Tensor, level: Level, orders: Sequence[int],
                generator: torch.Generator | None) -> torch.Tensor:
        kmap = level.kmap()
        conv, linear = self.cpe[0], self.cpe[1]
        with record_function("ptv3.sparse_conv"):
            if kmap.num_points > 27 * conv.in_channels:
                # Linear(conv(x)) as one convolution with the Linear folded into each offset's
                # matrix: 27 C^3 FLOPs once instead of N C^2 per pass, a saving when N > 27 C
                kernel = conv.kernel() @ linear.weight.t()
                bias = linear(conv.bias) if conv.bias is not None else linear.bias
                cpe = submanifold_conv3d_per_offset(x, kmap, kernel, bias)
            else:
                cpe = linear(conv(x, kmap))
        x = x + self.cpe[2](cpe)
        order = orders[self.order_index % len(orders)]
        branch = self.ls1[0](self.attn(self.norm1[0](x), level, order, self.patch_size))
        x = x + self.drop_path(branch, level.batch, level.num_events, generator)
        branch = self.ls2[0](self.mlp[0](self.norm2[0](x)))
        return x + self.drop_path(branch, level.batch, level.num_events, generator)


class Stage(nn.Module):
    """A stage: an optional resampling module (encoder "down", decoder "up"), then blocks
    ``block0``, ``block1``, ... ."""

    def __init__(self, blocks: list[Block], resample: nn.Module | None, name: str = "down") -> None:
        super().__init__()
        if resample is not None:
            self.add_module(name, resample)
        for i, block in enumerate(blocks):
            self.add_module(f"block{i}", block)
        self.depth = len(blocks)

    def blocks(self) -> list[Block]:
        return [getattr(self, f"block{i}") for i in range(self.depth)]


class Down(nn.Module):
    """Grid pooling: Linear, max over each stride-2 cell, LayerNorm, GELU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(c_in, c_out)
        self.norm = nn.ModuleList([nn.LayerNorm(c_out)])

    def forward(self, x: torch.Tensor, pool: PoolMap) -> torch.Tensor:
        h = self.proj(x)
        with record_function("ptv3.pooling"):
            h = max_pool(h, pool)
        return F.gelu(self.norm[0](h))


class Up(nn.Module):
    """Unpooling: the coarse features carried to the fine voxels plus the skip connection."""

    def __init__(self, c_coarse: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(c_coarse, c_out), nn.LayerNorm(c_out)])
        self.proj_skip = nn.ModuleList([nn.Linear(c_skip, c_out), nn.LayerNorm(c_out)])

    def forward(self, coarse: torch.Tensor, skip: torch.Tensor, pool: PoolMap) -> torch.Tensor:
        up = F.gelu(self.proj[1](self.proj[0](coarse)))
        with record_function("ptv3.pooling"):
            up = up.index_select(0, pool.cluster)
        return F.gelu(self.proj_skip[1](self.proj_skip[0](skip))) + up


class Embedding(nn.Module):
    """Stem: Linear + LayerNorm + GELU of the input channels; optional mask token."""

    def __init__(self, c_in: int, c_out: int, mask_token: bool) -> None:
        super().__init__()
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(1, c_out))
        self.stem = nn.Module()
        self.stem.linear = nn.Linear(c_in, c_out)
        self.stem.norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = F.gelu(self.stem.norm(self.stem.linear(x)))
        if mask is not None:
            if not hasattr(self, "mask_token"):
                raise ConfigError("this model has no mask token (build it with mask_token=True)")
            h = torch.where(mask[:, None], self.mask_token.to(h.dtype), h)
        return h


class PTv3(nn.Module):
    """The PTv3 backbone (see the module docstring); build with ``PTv3(PTv3Config(...))``."""

    def __init__(self, cfg: PTv3Config) -> None:
        super().__init__()
        self.cfg = cfg
        total = sum(cfg.enc_depths) + sum(cfg.dec_depths)
        rates = [cfg.drop_path * i / max(total - 1, 1) for i in range(total)]
        with seeded_init(cfg.seed):
            self.embedding = Embedding(cfg.stem_channels, cfg.enc_channels[0], cfg.mask_token)
            self.enc = nn.Module()
            r = 0
            for s in range(cfg.num_stages):
                c = cfg.enc_channels[s]
                blocks = [Block(c, cfg.enc_num_head[s], cfg.enc_patch_size[s], i, cfg, rates[r + i])
                          for i in range(cfg.enc_depths[s])]
                r += cfg.enc_depths[s]
                down = Down(cfg.enc_channels[s - 1], c) if s > 0 else None
                self.enc.add_module(f"enc{s}", Stage(blocks, down))
            if cfg.dec_depths:
                self.dec = nn.Module()
                for s in reversed(range(cfg.num_stages - 1)):
                    c = cfg.dec_channels[s]
                    c_coarse = cfg.dec_channels[s + 1] if s + 1 < cfg.num_stages - 1 else cfg.enc_channels[-1]
                    blocks = [Block(c, cfg.dec_num_head[s], cfg.dec_patch_size[s], i, cfg, rates[r + i])
                              for i in range(cfg.dec_depths[s])]
                    r += cfg.dec_depths[s]
                    self.dec.add_module(f"dec{s}", Stage(blocks, Up(c_coarse, cfg.enc_channels[s], c), "up"))
            self.apply(init_weights)
        self.generator = torch.Generator().manual_seed(cfg.seed)

    # -- the backbone contract -------------------------------------------------------
    @property
    def default_cfg(self) -> PTv3Config:
        return self.cfg

    @property
    def num_features(self) -> int:
        """D: the decoder's full-resolution width, or the stages concatenated (encoder only)."""
        if self.cfg.dec_depths:
            return self.cfg.dec_channels[0]
        return sum(self.cfg.enc_channels)

    @property
    def num_local_features(self) -> int:
        """Width of ``local``: the input features ``batch.feat`` passed through."""
        return self.cfg.in_channels

    def _stages(self) -> list[tuple[str, Stage]]:
        out = [(f"enc.enc{s}", getattr(self.enc, f"enc{s}")) for s in range(self.cfg.num_stages)]
        if self.cfg.dec_depths:
            out += [(f"dec.dec{s}", getattr(self.dec, f"dec{s}"))
                    for s in reversed(range(self.cfg.num_stages - 1))]
        return out

    def group_matcher(self) -> GroupRules:
        """One layer group per block in execution order: embedding, each encoder stage's
        pooling and blocks, then the decoder from coarse to fine."""
        rules: list[tuple[str, tuple[int, ...]]] = [(r"^embedding\.", (0, 0, 0))]
        for j, (prefix, stage) in enumerate(self._stages()):
            esc = prefix.replace(".", r"\.")
            rules.append((rf"^{esc}\.(?:down|up)\.", (1 + j, 0, 0)))
            rules += [(rf"^{esc}\.block{i}\.", (1 + j, 1 + i, 0)) for i in range(stage.depth)]
        return rules

    def lora_targets(self) -> list[str]:
        """The attention and MLP linears of every block."""
        return [f"{prefix}.block{i}.{leaf}" for prefix, stage in self._stages()
                for i in range(stage.depth)
                for leaf in ("attn.qkv", "attn.proj", "mlp.0.fc1", "mlp.0.fc2")]

    # -- forward ---------------------------------------------------------------------
    def geometry(self, batch: PackedBatch) -> Geometry:
        """The voxel hierarchy of ``batch`` (no gradients; reused by every layer)."""
        if batch.feat.ndim != 2 or batch.feat.shape[1] != self.cfg.in_channels:
            raise DataFormatError(f"the model expects feat of shape (P, {self.cfg.in_channels}), "
                                  f"got {tuple(batch.feat.shape)}", field="feat")
        with record_function("ptv3.serialization"):
            return build_geometry(batch, self.cfg.orders, self.cfg.num_stages, self.box_size,
                                  self.cfg.grid_size, self.cfg.serialization_depth)

    @property
    def box_size(self) -> float:
        """Extent of the coordinates (voxels per axis) of the config's dataset kind."""
        return get_dataset(self.cfg.dataset).box_size

    def _order_map(self, generator: torch.Generator | None) -> list[int]:
        count = len(self.cfg.orders)
        if self.training and self.cfg.shuffle_orders and count > 1:
            if generator is None:
                raise ConfigError("shuffled orders in training need an explicit torch.Generator")
            return torch.randperm(count, generator=generator, device=generator.device).tolist()
        return list(range(count))

    def _forward(self, batch: PackedBatch, generator: torch.Generator | None,
                 mask: torch.Tensor | None, keep: set[int]) -> tuple[BackboneOutput, dict[int, torch.Tensor]]:
        device = self.embedding.stem.linear.weight.device
        batch = batch.to(device)
        geo = self.geometry(batch)
        generator = generator if generator is not None else (self.generator if self.training else None)
        # which order each block uses, drawn per stage as the reference re-shuffles at every
        # pooling; a decoder stage reuses its encoder stage's draw (same voxels)
        orders = [self._order_map(generator) for _ in range(self.cfg.num_stages)]
        inputs = batch.feat
        if self.cfg.coord_features:
            inputs = torch.cat([normalised_coordinates(batch.coord, self.box_size), inputs], dim=1)
        voxel_mask = None
        if mask is not None:
            if mask.shape != (batch.num_points,) or mask.dtype != torch.bool:
                raise ConfigError(f"mask must be a ({batch.num_points},) bool tensor, got "
                                  f"{tuple(mask.shape)} {mask.dtype}")
            voxel_mask = mask.to(device)
            if geo.point_to_voxel is not None:  # a voxel is masked if any of its points is
                voxel_mask = torch.zeros(geo.levels[0].num_voxels, dtype=torch.bool, device=device)
                voxel_mask[geo.point_to_voxel[mask.to(device)]] = True
        x = self.embedding(geo.voxel_mean(inputs), voxel_mask)
        kept: dict[int, tuple[torch.Tensor, int]] = {}
        skips: list[torch.Tensor] = []
        block_id = 0
        for s in range(self.cfg.num_stages):
            stage: Stage = getattr(self.enc, f"enc{s}")
            if s > 0:
                x = stage.down(x, geo.pools[s - 1])
            for block in stage.blocks():
                x = block(x, geo.levels[s], orders[s], generator)
                if block_id in keep:
                    kept[block_id] = (x, s)
                block_id += 1
            skips.append(x)
        levels = tuple(geo.to_points(f, s) for s, f in enumerate(skips))
        if self.cfg.dec_depths:
            for s in reversed(range(self.cfg.num_stages - 1)):
                stage = getattr(self.dec, f"dec{s}")
                x = stage.up(x, skips[s], geo.pools[s])
                for block in stage.blocks():
                    x = block(x, geo.levels[s], orders[s], generator)
                    if block_id in keep:
                        kept[block_id] = (x, s)
                    block_id += 1
            point = geo.to_points(x, 0)
        else:
            point = torch.cat(levels, dim=1)
        out = BackboneOutput(point=point, local=batch.feat, levels=levels,
                             extras={"geometry": geo})
        return out, {i: geo.to_points(f, s) for i, (f, s) in kept.items()}

    @property
    def num_blocks(self) -> int:
        return sum(self.cfg.enc_depths) + sum(self.cfg.dec_depths)

    def forward_features(self, batch: PackedBatch, generator: torch.Generator | None = None,
                         mask: torch.Tensor | None = None) -> BackboneOutput:
        """Per-point features (the contract). ``mask`` (P,) bool replaces the embedding of
        those points' voxels by the mask token (masked point modelling)."""
        return self._forward(batch, generator, mask, set())[0]

    def forward_intermediates(self, batch: PackedBatch, layers: int | Sequence[int] | None = None,
                              norm: bool = False, generator: torch.Generator | None = None
                              ) -> tuple[BackboneOutput, list[torch.Tensor]]:
        """Features plus the outputs of chosen blocks (execution order: encoder, then
        decoder), each carried to the points, (P, C_block). ``layers``: indices (negative
        from the end), an int n for the last n, or None for all. PTv3 has no final norm,
        so ``norm`` changes nothing."""
        total = self.num_blocks
        if layers is None:
            wanted = list(range(total))
        elif isinstance(layers, int):
            if not 0 <= layers <= total:
                raise ConfigError(f"asked for the last {layers} blocks of a {total}-block model")
            wanted = list(range(total - layers, total))
        else:
            wanted = []
            for i in layers:
                if not -total <= i < total:
                    raise ConfigError(f"block index {i} out of range for a {total}-block model")
                wanted.append(i % total)
        out, kept = self._forward(batch, generator, None, set(wanted))
        return out, [kept[i] for i in wanted]

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.forward_features(batch).point

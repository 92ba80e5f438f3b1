"""Configuration of the patch transformer family (``pointmae_*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from detfm.errors import ConfigError
from detfm.models.config import ModelConfig, register_arch
from detfm.models.grouping import GroupingConfig

__all__ = ["PointMAEConfig"]


@register_arch
@dataclass(frozen=True)
class PointMAEConfig(ModelConfig):
    """A Point-MAE / PoLAr-MAE backbone: tokenizer + pre-norm transformer encoder.

    Attributes:
        name, arch, in_channels, seed: see :class:`~detfm.models.config.ModelConfig`.
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size (ViT naming).
        drop_path_rate: stochastic depth at the last block (linear from 0).
        pos_every_layer: add the centre embedding before every block (Point-MAE), or once.
        pointnet_hidden: widths of the patch PointNet's first MLP (Point-MAE: 128, 256).
        num_classes: event-level head outputs (0: no head, ``forward`` returns pooled features).
        interp_k: patch centres each point's feature is interpolated from (PointNet++
            feature propagation, Qi et al. 2017: k = 3).
        grouping: how events are cut into patches.
    """

    name: str = "pointmae"
    arch: str = "pointmae"
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    pos_every_layer: bool = True
    pointnet_hidden: tuple[int, int] = (128, 256)
    num_classes: int = 0
    interp_k: int = 3
    grouping: GroupingConfig = field(default_factory=GroupingConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("embed_dim", "depth", "num_heads", "interp_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ConfigError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if len(self.pointnet_hidden) != 2 or min(self.pointnet_hidden) < 1:
            raise ConfigError(f"pointnet_hidden must be two positive widths, got {self.pointnet_hidden}")
        object.__setattr__(self, "pointnet_hidden", tuple(int(v) for v in self.pointnet_hidden))

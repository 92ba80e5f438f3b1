"""PTv3 backbone configuration (a frozen dataclass, checked, to and from plain dicts)."""

from __future__ import annotations

from dataclasses import dataclass

from detfm.errors import ConfigError
from detfm.models.config import ModelConfig, register_arch
from detfm.models.sparse.serialization import ORDERS

__all__ = ["PTv3Config"]

_TUPLES = ("enc_depths", "enc_channels", "enc_num_head", "enc_patch_size", "dec_depths",
           "dec_channels", "dec_num_head", "dec_patch_size", "orders")


@register_arch
@dataclass(frozen=True)
class PTv3Config(ModelConfig):
    """A Point Transformer V3 backbone (Wu et al. 2024; the Panda / Sonata encoder).

    Attributes:
        name: registry name it was built from (provenance only).
        arch: family tag, always "ptv3".
        in_channels: per-point channels of ``PackedBatch.feat`` (1: log energy).
        seed: seed of the initial weights and of the generator used when none is passed.
        dataset: the kind of events; its box size bounds the coordinates.
        coord_features: also feed the coordinates, scaled as Panda does
            (``(x - box / 2) / (box sqrt(3) / 2)``), to the stem (Panda's 4 inputs x, y, z, log E).
        enc_depths, enc_channels, enc_num_head, enc_patch_size: per encoder stage; stage
            s > 0 starts with a stride-2 grid pooling.
        dec_depths, dec_channels, dec_num_head, dec_patch_size: per decoder stage (one fewer
            than the encoder, index 0 = full resolution); empty = encoder only (Panda's
            enc_mode), whose per-point feature is the concatenation of the stages.
        orders: serialization orders; block i of a stage uses order i mod len(orders).
        shuffle_orders: in training, permute which order each block uses, anew at every stage
            (drawn from the generator of the forward pass); evaluation uses the listed order.
        mlp_ratio, qkv_bias: transformer block sizes.
        layer_scale: initial layer-scale value (Panda 1e-5); None for no layer scale.
        drop_path: stochastic depth at the last block (linear from 0), per event.
        mask_token: a learned (1, C0) token replacing the embedding of masked points.
        grid_size: None: one cell per voxel. A float: the reference's grid sampling, cells of
            this size in normalised coordinates, per-event minimum at 0 (Panda: 0.001, about
            2/3 of a voxel). Points sharing a cell are merged (mean input, shared output).
        serialization_depth: bits per axis of the space-filling-curve codes; None: per event,
            the depth the reference picks for that event alone.
    """

    name: str = "ptv3"
    arch: str = "ptv3"
    coord_features: bool = True
    enc_depths: tuple[int, ...] = (2, 2, 2, 6, 2)
    enc_channels: tuple[int, ...] = (32, 64, 128, 256, 512)
    enc_num_head: tuple[int, ...] = (2, 4, 8, 16, 32)
    enc_patch_size: tuple[int, ...] = (1024, 1024, 1024, 1024, 1024)
    dec_depths: tuple[int, ...] = (2, 2, 2, 2)
    dec_channels: tuple[int, ...] = (64, 64, 128, 256)
    dec_num_head: tuple[int, ...] = (4, 4, 8, 16)
    dec_patch_size: tuple[int, ...] = (1024, 1024, 1024, 1024)
    orders: tuple[str, ...] = ORDERS
    shuffle_orders: bool = True
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_scale: float | None = None
    drop_path: float = 0.3
    mask_token: bool = False
    grid_size: float | None = None
    serialization_depth: int | None = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in _TUPLES:
            value = getattr(self, key)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise ConfigError(f"{key} must be a list, got {value!r}")
            object.__setattr__(self, key, tuple(str(v) if key == "orders" else int(v) for v in value))
        if self.arch != "ptv3":
            raise ConfigError(f"a PTv3 config has arch 'ptv3', got {self.arch!r} (a config of "
                              f"another model family?)")
        stages = len(self.enc_depths)
        if stages < 1:
            raise ConfigError("enc_depths needs at least one stage")
        for key in ("enc_channels", "enc_num_head", "enc_patch_size"):
            if len(getattr(self, key)) != stages:
                raise ConfigError(f"{key} has {len(getattr(self, key))} entries, enc_depths {stages}")
        dec = len(self.dec_depths)
        if dec not in (0, stages - 1):
            raise ConfigError(f"dec_depths must have {stages - 1} entries (one per encoder stage "
                              f"but the coarsest) or none, got {dec}")
        for key in ("dec_channels", "dec_num_head", "dec_patch_size"):
            if len(getattr(self, key)) != dec:
                raise ConfigError(f"{key} has {len(getattr(self, key))} entries, dec_depths {dec}")
        for prefix in ("enc", "dec"):
            for c, h in zip(getattr(self, f"{prefix}_channels"), getattr(self, f"{prefix}_num_head"),
                            strict=True):
                if c < 1 or h < 1 or c % h:
                    raise ConfigError(f"{prefix}_channels {c} must be positive and divisible by "
                                      f"{prefix}_num_head {h}")
            if any(d < 0 for d in getattr(self, f"{prefix}_depths")):
                raise ConfigError(f"{prefix}_depths must be >= 0")
            if any(k < 1 for k in getattr(self, f"{prefix}_patch_size")):
                raise ConfigError(f"{prefix}_patch_size must be >= 1")
        if not self.orders or any(o not in ORDERS for o in self.orders):
            raise ConfigError(f"orders must be a non-empty list of {', '.join(ORDERS)}; got {list(self.orders)}")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ConfigError(f"drop_path must be in [0, 1), got {self.drop_path}")
        if self.grid_size is not None and not self.grid_size > 0:
            raise ConfigError(f"grid_size must be > 0 or None, got {self.grid_size}")
        if self.serialization_depth is not None and not 1 <= self.serialization_depth <= 16:
            raise ConfigError(f"serialization_depth must be in 1..16 or None, got {self.serialization_depth}")
        if self.layer_scale is not None and not self.layer_scale > 0:
            raise ConfigError(f"layer_scale must be > 0 or None, got {self.layer_scale}")

    @property
    def num_stages(self) -> int:
        return len(self.enc_depths)

    @property
    def stem_channels(self) -> int:
        """Input channels of the stem: coordinates (if used) and ``feat``."""
        return self.in_channels + (3 if self.coord_features else 0)

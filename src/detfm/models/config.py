"""Backbone configuration: a frozen dataclass, to and from plain dicts / YAML, with checks."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import yaml

from detfm.errors import ConfigError
from detfm.models.grouping import GroupingConfig


def check_keys(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    """Raise :class:`ConfigError` naming every unknown key and its closest valid spelling."""
    valid = sorted(valid)
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(f"unknown option(s) for {what}: {', '.join(parts)}; "
                      f"valid options: {', '.join(valid)}")


@dataclass(frozen=True)
class PointMAEConfig:
    """A Point-MAE / PoLAr-MAE backbone: tokenizer + pre-norm transformer encoder.

    Attributes:
        name: registry name it was built from (provenance only).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: transformer size (ViT naming).
        drop_path_rate: stochastic depth at the last block (linear from 0).
        pos_every_layer: add the centre embedding before every block (Point-MAE), or once.
        in_channels: per-point feature channels of ``PackedBatch.feat`` (1: log energy).
        pointnet_hidden: widths of the patch PointNet's first MLP (Point-MAE: 128, 256).
        num_classes: event-level head outputs (0: no head, ``forward`` returns pooled features).
        seed: seed of the generator the backbone uses for drop-path when none is passed.
        grouping: how events are cut into patches.
    """

    name: str = "pointmae"
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    pos_every_layer: bool = True
    in_channels: int = 1
    pointnet_hidden: tuple[int, int] = (128, 256)
    num_classes: int = 0
    seed: int = 0
    grouping: GroupingConfig = field(default_factory=GroupingConfig)

    def __post_init__(self) -> None:
        for key in ("embed_dim", "depth", "num_heads", "in_channels"):
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

    def replace(self, **overrides: Any) -> PointMAEConfig:
        """A copy with ``overrides``; grouping fields may be given flat (``radius=4.0``)."""
        own = {f.name for f in fields(self)}
        group_keys = set(GroupingConfig.field_names())
        check_keys(overrides, own | group_keys, f"model '{self.name}'")
        top = {k: v for k, v in overrides.items() if k in own}
        flat_group = {k: v for k, v in overrides.items() if k in group_keys}
        grouping = top.pop("grouping", self.grouping)
        if isinstance(grouping, Mapping):
            check_keys(grouping, group_keys, "grouping")
            grouping = dataclasses.replace(self.grouping, **grouping)
        if flat_group:
            grouping = dataclasses.replace(grouping, **flat_group)
        return dataclasses.replace(self, grouping=grouping, **top)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), ready for YAML/JSON."""
        out = dataclasses.asdict(self)
        out["pointnet_hidden"] = list(self.pointnet_hidden)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PointMAEConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model config must be a mapping, got {type(data).__name__}")
        return cls().replace(**dict(data))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> PointMAEConfig:
        return cls.from_dict(yaml.safe_load(text) or {})

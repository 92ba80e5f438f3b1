"""Named models, timm-style: ``create_model("pointmae_small", depth=6)``.

Every backbone family registers its sizes here with :func:`register_model` (name, config,
description, builder); :func:`create_model` builds any of them with overrides, and
:func:`build_model` rebuilds any family from a saved config (its ``arch`` picks the builder).

Patch transformers follow ViT naming (Dosovitskiy et al. 2021; DeiT, Touvron et al. 2021),
as PoLAr-MAE's ``vit_tiny`` / ``vit_small`` / ``vit_base`` do (polarmae/layers/transformer.py):

==================  =========  =====  =====  ==========================================
name                embed dim  depth  heads  note
==================  =========  =====  =====  ==========================================
pointmae_micro         96         4      3   CPU smoke tests and laptop quick starts
pointmae_tiny         192        12      3   ViT-Tiny
pointmae_small        384        12      6   ViT-Small, the PoLAr-MAE pretraining size
pointmae_base         768        12     12   ViT-Base (GPU)
==================  =========  =====  =====  ==========================================

All use the PoLAr-MAE 5-voxel patches by default (:class:`GroupingConfig`).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from detfm.errors import ConfigError
from detfm.models.config import ModelConfig
from detfm.models.encoder import PointMAE
from detfm.models.pointmae_config import PointMAEConfig

Builder = Callable[[Any], nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its default config, what builds it, a description."""

    cfg: ModelConfig
    builder: Builder
    description: str


_REGISTRY: dict[str, ModelEntry] = {}
_BUILDERS: dict[str, Builder] = {}  # arch -> builder, for configs of unregistered names


def register_model(name: str, cfg: ModelConfig, description: str, builder: Builder) -> None:
    """Add a named model of any family; names are unique, and one family has one builder."""
    if name in _REGISTRY:
        raise ConfigError(f"model '{name}' is already registered")
    if not isinstance(cfg, ModelConfig) or not cfg.arch:
        raise ConfigError(f"model '{name}': the config must be a ModelConfig with an arch")
    _REGISTRY[name] = ModelEntry(cfg=cfg.replace(name=name), builder=builder, description=description)
    _BUILDERS.setdefault(cfg.arch, builder)


def unregister_model(name: str) -> None:
    """Remove a named model (tests register throw-away ones)."""
    _REGISTRY.pop(name, None)


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def _entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1, cutoff=0.0)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown model '{name}'{hint} Available: {', '.join(list_models())}")
    return _REGISTRY[name]


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The config ``create_model(name, **overrides)`` would build (checked, not built)."""
    return _entry(name).cfg.replace(**overrides)


def model_description(name: str) -> str:
    return _entry(name).description


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace config fields (nested fields flat,
    e.g. ``num_groups=128``). Unknown names or keys raise :class:`ConfigError` naming the
    closest valid spelling."""
    entry = _entry(name)
    return entry.builder(entry.cfg.replace(**overrides))


def build_model(cfg: ModelConfig) -> nn.Module:
    """Rebuild a model of any family from a saved config (e.g. ``config_from_yaml``)."""
    entry = _REGISTRY.get(cfg.name)
    if entry is not None and entry.cfg.arch == cfg.arch:
        return entry.builder(cfg)
    if cfg.arch not in _BUILDERS:
        raise ConfigError(f"no registered model builds arch '{cfg.arch}' (model '{cfg.name}')")
    return _BUILDERS[cfg.arch](cfg)


register_model("pointmae_micro", PointMAEConfig(embed_dim=96, depth=4, num_heads=3),
               "Point-MAE micro (96 wide, 4 blocks, 3 heads): CPU smoke tests and quick starts", PointMAE)
register_model("pointmae_tiny", PointMAEConfig(embed_dim=192, depth=12, num_heads=3),
               "Point-MAE ViT-Tiny (192 wide, 12 blocks, 3 heads)", PointMAE)
register_model("pointmae_small", PointMAEConfig(embed_dim=384, depth=12, num_heads=6),
               "Point-MAE ViT-Small (384 wide, 12 blocks, 6 heads), the PoLAr-MAE size", PointMAE)
register_model("pointmae_base", PointMAEConfig(embed_dim=768, depth=12, num_heads=12),
               "Point-MAE ViT-Base (768 wide, 12 blocks, 12 heads), for GPUs", PointMAE)


def _register_point_resolution_families() -> None:
    """The hierarchical sparse point transformer (ptv3_*) and the sparse-conv U-Net (uresnet_*)."""
    from detfm.models.ptv3.sizes import register_all as register_ptv3
    from detfm.models.uresnet import register_all as register_uresnet

    register_ptv3()
    register_uresnet()


_register_point_resolution_families()

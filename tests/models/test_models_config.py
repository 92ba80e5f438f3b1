"""Model configs: the shared base, nested fields given flat, and rebuilding any family by its arch."""

from __future__ import annotations

import pytest

from detfm.errors import ConfigError
from detfm.models import PointMAEConfig, config_from_dict, config_from_yaml, model_config
from detfm.models.config import LEGACY_ARCH, config_class


def test_replace_takes_nested_fields_flat_or_as_a_mapping_and_names_typos() -> None:
    cfg = PointMAEConfig()
    assert cfg.replace(radius=4.0).grouping.radius == 4.0
    assert cfg.replace(grouping={"group_size": 8}).grouping.group_size == 8
    assert cfg.replace(pointnet_hidden=[8, 16]).pointnet_hidden == (8, 16)
    with pytest.raises(ConfigError, match="'embed_dimm' \\(did you mean 'embed_dim'\\?\\)"):
        cfg.replace(embed_dimm=3)
    with pytest.raises(ConfigError, match="a config of arch 'ptv3' does not fit"):
        cfg.replace(arch="ptv3")
    with pytest.raises(ConfigError, match="unknown dataset kind"):
        cfg.replace(dataset="lartcp")


def test_yaml_round_trip_and_arch_dispatch() -> None:
    cfg = model_config("pointmae_micro", num_groups=64, seed=3)
    again = config_from_yaml(cfg.to_yaml())
    assert again == cfg and type(again) is PointMAEConfig
    # configs saved before the arch field existed are patch transformers
    legacy = {k: v for k, v in cfg.to_dict().items() if k != "arch"}
    assert config_from_dict(legacy) == cfg and LEGACY_ARCH == "pointmae"
    with pytest.raises(ConfigError, match="unknown backbone family \\(arch\\) 'nope'"):
        config_from_dict({"arch": "nope"})
    assert config_class("pointmae") is PointMAEConfig

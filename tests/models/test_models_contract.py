"""The backbone contract: layer groups resolved from a backbone's rules, and BackboneOutput."""

from __future__ import annotations

import pytest
import torch

from detfm.errors import ConfigError
from detfm.models.contract import BackboneOutput, layer_ids

RULES = [(r"^stem\.", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)\.", (1,)), (r"^norm\.", (2,))]


def test_hierarchical_keys_are_numbered_densely_in_order() -> None:
    names = ["norm.weight", "stages.1.blocks.0.w", "stem.w", "stages.0.blocks.1.w", "stages.0.blocks.0.w",
             "stages.0.blocks.0.b"]
    ids = layer_ids(names, RULES)
    assert ids == {"stem.w": 0, "stages.0.blocks.0.w": 1, "stages.0.blocks.0.b": 1, "stages.0.blocks.1.w": 2,
                   "stages.1.blocks.0.w": 3, "norm.weight": 4}


def test_the_first_matching_rule_wins_and_an_unmatched_parameter_is_an_error() -> None:
    rules = [(r"^stem\.", (5,)), (r"^stem\.w", (0,))]
    assert layer_ids(["stem.w"], rules) == {"stem.w": 0}
    with pytest.raises(ConfigError, match="'head.bias' matches no rule"):
        layer_ids(["stem.w", "head.bias"], rules)
    with pytest.raises(ConfigError, match="must capture integers"):
        layer_ids(["blocks.a.w"], [(r"^blocks\.(\w)\.", (0,))])


def test_multilevel_concatenates_levels_or_falls_back_to_point() -> None:
    point = torch.randn(5, 3)
    out = BackboneOutput(point=point, local=point[:, :0])
    assert out.multilevel() is point and out.num_points == 5
    levels = (torch.ones(5, 2), torch.zeros(5, 4))
    assert BackboneOutput(point=point, local=point[:, :0], levels=levels).multilevel().shape == (5, 6)

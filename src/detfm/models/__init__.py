"""Models: backbones of several families behind one contract (:mod:`detfm.models.contract`),
built from one registry (:func:`create_model`)."""

from detfm.models.config import ModelConfig, config_from_dict, config_from_yaml
from detfm.models.contract import Backbone, BackboneOutput, layer_ids
from detfm.models.encoder import PointMAE, TokenOutput, pool_tokens
from detfm.models.fps import FPSResult, farthest_point_sampling
from detfm.models.grouping import GroupingConfig, Patches, assign_points, ball_query, group_points
from detfm.models.pointmae_config import PointMAEConfig
from detfm.models.registry import (
    build_model,
    create_model,
    list_models,
    model_config,
    model_description,
    register_model,
    unregister_model,
)
from detfm.models.tokenizer import PatchEmbed, Tokenizer

__all__ = [
    "Backbone", "BackboneOutput", "FPSResult", "GroupingConfig", "ModelConfig", "PatchEmbed", "Patches",
    "PointMAE", "PointMAEConfig", "TokenOutput", "Tokenizer", "assign_points", "ball_query", "build_model",
    "config_from_dict", "config_from_yaml", "create_model", "farthest_point_sampling", "group_points",
    "layer_ids", "list_models", "model_config", "model_description", "pool_tokens", "register_model",
    "unregister_model",
]

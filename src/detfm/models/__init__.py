"""Models: tokenizer (FPS + ball query + PointNet) -> transformer encoder -> heads, registry."""

from detfm.models.config import PointMAEConfig
from detfm.models.encoder import PointMAE, TokenOutput, interpolate_tokens, point_features, pool_tokens
from detfm.models.fps import FPSResult, farthest_point_sampling
from detfm.models.grouping import GroupingConfig, Patches, assign_points, ball_query, group_points
from detfm.models.registry import (
    build_model,
    create_model,
    list_models,
    model_config,
    model_description,
    register_model,
)
from detfm.models.tokenizer import PatchEmbed, Tokenizer

__all__ = [
    "interpolate_tokens",
    "FPSResult", "GroupingConfig", "PatchEmbed", "Patches", "PointMAE", "PointMAEConfig",
    "TokenOutput", "Tokenizer", "assign_points", "ball_query", "build_model", "create_model",
    "farthest_point_sampling", "group_points", "list_models", "model_config",
    "model_description", "point_features", "pool_tokens", "register_model",
]

"""The Point-MAE / PoLAr-MAE backbone: patch tokens -> pre-norm transformer.

It offers the backbone contract of :mod:`detfm.models.contract`, so probes, fine-tuning and
LoRA need no model-specific code: ``forward_features(batch)`` gives per-point features,
the tokens carried back to every point by PointNet++ feature propagation (inverse squared
distance mean of the ``interp_k`` nearest patch centres of the point's own event), and as
``local`` what the tokens cannot know: each point's offset from its own patch centre (in
patch radii) and its input features.

Patch-level pieces stay available to this family's pretraining objective (masked point
modeling): ``encode_tokens(batch) -> TokenOutput``, ``group`` (geometry), ``tokenizer``
(PointNet embedding of chosen patches) and ``forward_tokens`` (the transformer on any token
subset); ``forward_head`` / ``reset_head(num_classes)`` give an event-level head on pooled
tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from detfm.data import PackedBatch
from detfm.errors import ConfigError
from detfm.models.contract import BackboneOutput, GroupRules
from detfm.models.grouping import Patches, assign_points
from detfm.models.interpolation import interpolate, knn_interpolation
from detfm.models.pointmae_config import PointMAEConfig
from detfm.models.layers import (
    PositionEmbedding,
    Transformer,
    init_weights,
    seeded_init,
)
from detfm.models.tokenizer import Tokenizer, masked_max


@dataclass(frozen=True)
class TokenOutput:
    """Encoded tokens of a batch.

    Attributes:
        tokens: (B, G, D) encoder output (after the final norm); zero-padded rows are junk.
        mask: (B, G) bool, True for real patches.
        centers: (B, G, 3) patch centres in voxels.
        patches: the grouping (point indices, offsets, features) the tokens came from.
        point_patch: (P,) int64 flat index into B x G of the patch each point belongs to
            (see :func:`detfm.models.grouping.assign_points`).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    centers: torch.Tensor
    patches: Patches
    point_patch: torch.Tensor


def local_point_features(batch: PackedBatch, out: TokenOutput) -> torch.Tensor:
    """(P, 3 + C): each point's offset from its own patch centre (in patch radii) and its
    input features (``batch.feat``, by default the normalised log energy)."""
    centre = out.centers.reshape(-1, 3)[out.point_patch]
    rel = (batch.coord.float() - centre) / out.patches.radius
    return torch.cat([rel, batch.feat.float()], dim=-1)


def pool_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 2D) event feature: mean and max over the real tokens, concatenated."""
    weight = mask[..., None].to(tokens.dtype)
    mean = (tokens * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)
    return torch.cat([mean, masked_max(tokens, mask)], dim=-1)


class PointMAE(nn.Module):
    """Tokenizer + transformer encoder + optional event head. Build with
    :func:`detfm.models.create_model` (``"pointmae_tiny"``, ``"pointmae_small"``, ...)."""

    def __init__(self, cfg: PointMAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        with seeded_init(cfg.seed):  # same config, same initial weights
            self.tokenizer = Tokenizer(cfg.grouping, cfg.in_channels, cfg.embed_dim,
                                       cfg.pointnet_hidden)
            self.pos_embed = PositionEmbedding(cfg.embed_dim, dataset=cfg.dataset)
            self.encoder = Transformer(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio,
                                       cfg.qkv_bias, cfg.drop_path_rate, cfg.pos_every_layer)
            self.apply(init_weights)
        self.head: nn.Module = nn.Identity()
        self.reset_head(cfg.num_classes)
        # Drop-path draws from this owned generator unless the caller passes one.
        self.generator = torch.Generator().manual_seed(cfg.seed)

    # -- interface shared by all backbones -------------------------------------------
    @property
    def default_cfg(self) -> PointMAEConfig:
        return self.cfg

    @property
    def num_features(self) -> int:
        """Width D of a token (and of the per-point features)."""
        return self.cfg.embed_dim

    @property
    def num_local_features(self) -> int:
        """Width of ``BackboneOutput.local``: the offset from the patch centre and the inputs."""
        return 3 + self.cfg.in_channels

    def group_matcher(self) -> GroupRules:
        """Layer groups for layer-wise lr decay (MAE fine-tuning): tokenizer and position
        embedding first, then one group per block, then the final norm and event head (the
        output group, where task heads join)."""
        return [(r"^(?:tokenizer|pos_embed)\.", (0,)),
                (r"^encoder\.blocks\.(\d+)\.", (1,)),
                (r"^(?:encoder\.norm|head)\.", (2,))]

    def lora_targets(self) -> list[str]:
        """The attention and MLP linears of every block (not the position-embedding MLP)."""
        return [f"encoder.blocks.{i}.{leaf}" for i in range(self.cfg.depth)
                for leaf in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")]

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    def reset_head(self, num_classes: int, seed: int | None = None) -> None:
        """Replace the event head: a fresh Linear(2D, num_classes), or none for 0.

        Its initial weights come from ``seed`` (default: the config seed + 1).
        """
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        self.cfg = PointMAEConfig.replace(self.cfg, num_classes=num_classes)
        head: nn.Module = nn.Identity()
        if num_classes:
            with seeded_init(self.cfg.seed + 1 if seed is None else seed):
                head = nn.Linear(2 * self.cfg.embed_dim, num_classes)
                init_weights(head)
        self.head = head.to(self.pos_embed.mlp[0].weight.device)

    def group(self, batch: PackedBatch) -> Patches:
        """Cut the batch into patches (no parameters, no gradients)."""
        return self.tokenizer.group(batch.to(self.pos_embed.mlp[0].weight.device))

    def forward_tokens(self, tokens: torch.Tensor, centers: torch.Tensor, mask: torch.Tensor,
                       generator: torch.Generator | None = None, keep: Sequence[int] = ()
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the transformer on (B, N, D) tokens at ``centers`` with padding ``mask``.

        Returns the normed output and the raw outputs of the blocks listed in ``keep``.
        """
        pos = self.pos_embed(centers)
        return self.encoder(tokens, pos, mask, generator or self.generator, keep)

    def encode_tokens(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TokenOutput:
        """The patch tokens of a batch (what this family's pretraining objective works on)."""
        return self.token_intermediates(batch, [], generator=generator)[0]

    def to_points(self, batch: PackedBatch, out: TokenOutput, *tokens: torch.Tensor) -> list[torch.Tensor]:
        """(P, D) per-point features of each (B, G, D) ``tokens`` (default ``out.tokens``): the
        inverse squared-distance mean of the ``interp_k`` nearest patch centres of the event."""
        weights = knn_interpolation(batch.coord, batch.offsets, out.centers, out.mask, self.cfg.interp_k)
        return [interpolate(t, weights) for t in (tokens or (out.tokens,))]

    def forward_features(self, batch: PackedBatch, generator: torch.Generator | None = None
                         ) -> BackboneOutput:
        """Per-point features (the contract): tokens carried to the points, plus ``local``."""
        tok = self.encode_tokens(batch, generator)
        return BackboneOutput(point=self.to_points(batch, tok)[0], local=local_point_features(batch, tok),
                              extras={"tokens": tok})

    def forward_intermediates(self, batch: PackedBatch, layers: int | Sequence[int] | None = None,
                              norm: bool = False, generator: torch.Generator | None = None
                              ) -> tuple[BackboneOutput, list[torch.Tensor]]:
        """Per-point features plus the chosen blocks' outputs carried to the points, (P, D) each
        (``layers`` and ``norm`` as in :meth:`token_intermediates`)."""
        tok, blocks = self.token_intermediates(batch, layers, norm, generator)
        point, *per_block = self.to_points(batch, tok, tok.tokens, *blocks)
        return BackboneOutput(point=point, local=local_point_features(batch, tok), extras={"tokens": tok}), per_block

    def token_intermediates(self, batch: PackedBatch, layers: int | Sequence[int] | None = None,
                            norm: bool = False, generator: torch.Generator | None = None
                            ) -> tuple[TokenOutput, list[torch.Tensor]]:
        """Tokens plus the (B, G, D) outputs of chosen blocks.

        ``layers``: block indices (negative counts from the end) or an int n for the last n
        blocks (timm convention); None for all. ``norm`` applies the final LayerNorm to them.
        """
        depth = self.cfg.depth
        if layers is None:
            wanted = list(range(depth))
        elif isinstance(layers, int):
            if not 0 <= layers <= depth:
                raise ConfigError(f"asked for the last {layers} blocks of a {depth}-block encoder")
            wanted = list(range(depth - layers, depth))
        else:
            wanted = []
            for i in layers:
                if not -depth <= i < depth:
                    raise ConfigError(f"block index {i} out of range for a {depth}-block encoder")
                wanted.append(i % depth)
        patches = self.group(batch)
        tokens = self.tokenizer(patches)
        out, kept = self.forward_tokens(tokens, patches.centers, patches.mask, generator,
                                        keep=sorted(set(wanted)))
        by_block = dict(zip(sorted(set(wanted)), kept, strict=True))
        inter = [self.encoder.norm(by_block[i]) if norm else by_block[i] for i in wanted]
        result = TokenOutput(tokens=out, mask=patches.mask, centers=patches.centers,
                             patches=patches, point_patch=assign_points(patches))
        return result, inter

    def forward_head(self, out: TokenOutput, pre_logits: bool = False) -> torch.Tensor:
        """(B, num_classes) logits, or the (B, 2D) pooled feature if ``pre_logits``/no head."""
        pooled = pool_tokens(out.tokens, out.mask)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        return self.forward_head(self.encode_tokens(batch))

"""Masked point modeling with energy infilling (PoLAr-MAE, arXiv 2502.02558; Point-MAE).

One training step, in named stages:

1. ``backbone.group``: cut each event into patches (FPS centres, ball-query neighbours).
2. :meth:`MaskedPointModeling.random_masking`: hide ``mask_ratio`` of each event's real
   patches, chosen at random.
3. :meth:`~MaskedPointModeling.forward_encoder`: embed and encode the visible patches only.
4. :meth:`~MaskedPointModeling.forward_decoder`: a light transformer over the encoded
   visible tokens plus one learned mask token per hidden patch (at its centre's position
   embedding) predicts, for every hidden patch, its points (offsets from the centre) and
   the energy of each of its true points given their positions (energy infilling).
5. :meth:`~MaskedPointModeling.forward_loss`: Chamfer distance (squared L2, in units of the
   patch radius) between predicted and true points + Huber loss on the energies, each
   averaged first within a patch and then over all real hidden patches of the batch, so
   padding never changes the loss.

Randomness: the task owns a seed. Every training call draws masks (and the backbone's
drop-path) from a fresh ``torch.Generator`` seeded by ``SeedSequence([seed, rank, step])``,
where ``step`` is a buffer saved with the task's state dict and ``rank`` the DDP rank. So
runs are reproducible, resume bit for bit from a checkpoint, and DDP ranks draw different
masks. In eval mode the seed is ``SeedSequence([seed, rank, EVAL_STREAM])`` for every call,
so validation losses do not depend on how long the model trained. A generator passed to
``forward`` (on any device; the detfm engine passes one seeded per step and rank) overrides
both and leaves ``step`` alone.
"""

from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detfm.data import PackedBatch
from detfm.errors import ConfigError
from detfm.models.grouping import Patches
from detfm.models.layers import Mlp, PositionEmbedding, Transformer, init_weights, seeded_init
from detfm.tasks.base import TaskOutput
from detfm.tasks.losses import chamfer_distance, masked_mean

EVAL_STREAM = 2**32 - 1


@dataclass(frozen=True)
class MPMConfig:
    """Settings of :class:`MaskedPointModeling` (defaults: PoLAr-MAE ``polarmae_128_1m.yml``).

    Attributes:
        mask_ratio: fraction of each event's real patches hidden (PoLAr-MAE: 0.6).
        decoder_depth: decoder blocks (PoLAr-MAE: 4).
        decoder_dim: decoder width (None: the backbone's; PoLAr-MAE uses the encoder's).
        decoder_heads: decoder heads (None: the backbone's).
        chamfer_weight, energy_weight: loss weights (PoLAr-MAE: 1 and 1).
        energy_channel: channel of ``PackedBatch.feat`` holding the normalised log energy.
        huber_delta: Huber threshold of the energy loss (PoLAr-MAE: 0.2, in feature units).
        energy_hidden: width of the energy head.
        seed: seed of the masking / drop-path streams.
        mask_cell: point-resolution backbones only (:mod:`detfm.tasks.mvm`): the grid cell, in
            voxels, whose points are hidden together.
    """

    mask_ratio: float = 0.6
    decoder_depth: int = 4
    decoder_dim: int | None = None
    decoder_heads: int | None = None
    chamfer_weight: float = 1.0
    energy_weight: float = 1.0
    energy_channel: int = 0
    huber_delta: float = 0.2
    energy_hidden: int = 128
    seed: int = 0
    mask_cell: float = 8.0

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"mask_ratio must be in (0, 1), got {self.mask_ratio}")
        if self.decoder_depth < 1:
            raise ConfigError(f"decoder_depth must be >= 1, got {self.decoder_depth}")
        if self.decoder_dim is not None and self.decoder_dim < 1:
            raise ConfigError(f"decoder_dim must be >= 1, got {self.decoder_dim}")
        if self.chamfer_weight < 0 or self.energy_weight < 0 or self.chamfer_weight + self.energy_weight == 0:
            raise ConfigError("loss weights must be >= 0 and not both 0, got "
                              f"chamfer_weight={self.chamfer_weight}, energy_weight={self.energy_weight}")
        if not self.huber_delta > 0:
            raise ConfigError(f"huber_delta must be > 0, got {self.huber_delta}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class EncodedVisible:
    """Encoder output for the visible patches, compacted to the front: (B, V, ...)."""

    latent: torch.Tensor  # (B, V, D) encoded tokens
    index: torch.Tensor  # (B, V) patch index into G
    mask: torch.Tensor  # (B, V) real entries
    centers: torch.Tensor  # (B, V, 3)


@dataclass(frozen=True)
class Reconstruction:
    """Predictions and targets for the M real hidden patches of a batch (flattened)."""

    pred_points: torch.Tensor  # (M, K, 3) predicted offsets, units of the patch radius
    pred_energy: torch.Tensor  # (M, K) predicted feature of each true point
    target_points: torch.Tensor  # (M, K, 3)
    target_energy: torch.Tensor  # (M, K)
    point_mask: torch.Tensor  # (M, K) real target points (the first n of each patch)
    event: torch.Tensor  # (M,) event of each patch


def compact(select: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True entries of each row of (B, G) ``select``, moved to the front.

    Returns (B, S) indices (S = most True in a row; order kept) and a (B, S) validity mask.
    """
    order = torch.sort((~select).to(torch.uint8), dim=1, stable=True).indices
    count = select.sum(dim=1)
    width = int(count.max()) if count.numel() else 0
    valid = torch.arange(width, device=select.device)[None, :] < count[:, None]
    return order[:, :width], valid


def take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, S) of per-patch ``values`` (B, G, ...) -> (B, S, ...)."""
    rows = torch.arange(values.shape[0], device=values.device)[:, None]
    return values[rows, index]


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def call_generator(seed: int, step: torch.Tensor, training: bool) -> torch.Generator:
    """A fresh generator for one call of a pretraining objective: seeded by
    ``SeedSequence([seed, rank, step])`` in training (and ``step``, a buffer saved with the
    task, advanced), by ``[seed, rank, EVAL_STREAM]`` in eval mode (see the module docstring)."""
    stream = int(step) if training else EVAL_STREAM
    state = np.random.SeedSequence([seed, _rank(), stream]).generate_state(1, np.uint64)[0]
    if training:
        with torch.no_grad():
            step += 1
    return torch.Generator().manual_seed(int(state) >> 1)


class MaskedPointModeling(nn.Module):
    """PoLAr-MAE pre-training task around a backbone; ``task(batch) -> {"loss", "outputs"}``."""

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.6, decoder_depth: int = 4,
                 decoder_dim: int | None = None, decoder_heads: int | None = None,
                 chamfer_weight: float = 1.0, energy_weight: float = 1.0, energy_channel: int = 0,
                 huber_delta: float = 0.2, energy_hidden: int = 128, seed: int = 0) -> None:
        super().__init__()
        if getattr(backbone.default_cfg, "arch", "") != "pointmae":
            raise ConfigError(f"masked point modeling works on patch backbones (pointmae_*); "
                              f"{backbone.default_cfg.name} is a {backbone.default_cfg.arch} backbone")
        cfg = MPMConfig(mask_ratio, decoder_depth, decoder_dim, decoder_heads, chamfer_weight,
                        energy_weight, energy_channel, huber_delta, energy_hidden, seed)
        bcfg = backbone.default_cfg
        if not 0 <= energy_channel < bcfg.in_channels:
            raise ConfigError(f"energy_channel {energy_channel} is not one of the backbone's "
                              f"{bcfg.in_channels} feature channel(s)")
        dim = decoder_dim or bcfg.embed_dim
        heads = decoder_heads or bcfg.num_heads
        if dim % heads:
            raise ConfigError(f"decoder_dim {dim} must be divisible by decoder_heads {heads}")
        self.config = cfg
        self.backbone = backbone
        self.group_size = bcfg.grouping.group_size
        with seeded_init(seed):  # the decoder's initial weights follow the task seed
            self.decoder_embed: nn.Module = (nn.Identity() if dim == bcfg.embed_dim
                                             else nn.Linear(bcfg.embed_dim, dim))
            self.mask_token = nn.Parameter(torch.zeros(dim))
            self.decoder_pos = PositionEmbedding(dim, dataset=backbone.default_cfg.dataset)
            self.decoder = Transformer(dim, decoder_depth, heads, bcfg.mlp_ratio, bcfg.qkv_bias,
                                       bcfg.drop_path_rate, pos_every_layer=True)
            self.point_head = nn.Linear(dim, 3 * self.group_size)
            self.energy_token = nn.Linear(dim, energy_hidden)
            self.energy_point = Mlp(3, 64, energy_hidden)
            self.energy_out = nn.Sequential(nn.GELU(), nn.Linear(energy_hidden, 1))
            for module in (self.decoder_embed, self.decoder_pos, self.decoder, self.point_head,
                           self.energy_token, self.energy_point, self.energy_out):
                module.apply(init_weights)
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: MPMConfig) -> MaskedPointModeling:
        settings = dataclasses.asdict(cfg)
        settings.pop("mask_cell")  # patches are hidden whole
        return cls(backbone, **settings)

    # -- randomness -----------------------------------------------------------------
    def make_generator(self) -> torch.Generator:
        """The generator of this call (see the module docstring); advances ``step`` in training."""
        return call_generator(self.config.seed, self.step, self.training)

    # -- stages ---------------------------------------------------------------------
    def random_masking(self, patch_mask: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(B, G) bool, True for hidden patches: ``floor(mask_ratio * n)`` of each event's n
        real patches, at least 1 and at most n - 1 (an event with one patch hides none)."""
        count = patch_mask.sum(dim=1)
        hidden = torch.floor(self.config.mask_ratio * count.double()).long()
        hidden = torch.minimum(hidden.clamp(min=1), count - 1).clamp(min=0)
        noise = torch.rand(patch_mask.shape, generator=generator, device=generator.device)
        noise = noise.to(patch_mask.device)
        noise = noise.masked_fill(~patch_mask, 2.0)  # padding sorts last
        rank = noise.argsort(dim=1).argsort(dim=1)
        return rank < hidden[:, None]

    def forward_encoder(self, patches: Patches, masked: torch.Tensor,
                        generator: torch.Generator | None = None) -> EncodedVisible:
        """Embed and encode the visible patches only (compacted: less padding, less work)."""
        index, valid = compact(patches.mask & ~masked)
        tokens = self.backbone.tokenizer.embed(take(patches.points(), index),
                                               take(patches.point_mask, index), valid)
        centers = take(patches.centers, index)
        latent, _ = self.backbone.forward_tokens(tokens, centers, valid, generator)
        return EncodedVisible(latent=latent, index=index, mask=valid, centers=centers)

    def forward_decoder(self, encoded: EncodedVisible, patches: Patches, masked: torch.Tensor,
                        generator: torch.Generator | None = None) -> Reconstruction:
        """Decode the hidden patches' points and energies."""
        index, valid = compact(masked)
        batch, n_hidden = index.shape
        n_visible = encoded.latent.shape[1]
        centers = take(patches.centers, index)
        x = torch.cat([self.decoder_embed(encoded.latent),
                       self.mask_token.expand(batch, n_hidden, -1)], dim=1)
        pos = torch.cat([self.decoder_pos(encoded.centers), self.decoder_pos(centers)], dim=1)
        h, _ = self.decoder(x, pos, torch.cat([encoded.mask, valid], dim=1), generator)
        h = h[:, n_visible:][valid]  # (M, dim): real hidden patches only
        target_points = take(patches.xyz, index)[valid]
        target_energy = take(patches.feat[..., self.config.energy_channel], index)[valid]
        point_mask = take(patches.point_mask, index)[valid]
        pred_points = self.point_head(h).view(-1, self.group_size, 3)
        # Energy infilling: each true point's energy from its position and the patch token.
        pred_energy = self.energy_out(self.energy_token(h)[:, None, :]
                                      + self.energy_point(target_points)).squeeze(-1)
        event = torch.arange(batch, device=index.device)[:, None].expand(-1, n_hidden)[valid]
        return Reconstruction(pred_points=pred_points, pred_energy=pred_energy,
                              target_points=target_points, target_energy=target_energy,
                              point_mask=point_mask, event=event)

    def forward_loss(self, rec: Reconstruction) -> dict[str, torch.Tensor]:
        """``loss`` and its parts, each a mean over real hidden patches.

        Chamfer compares the first n predicted points with the n real points of a patch (as
        PoLAr-MAE passes equal lengths to pytorch3d's ``chamfer_distance``).
        """
        if rec.pred_points.shape[0] == 0:  # nothing hidden (every event has one patch)
            zero = rec.pred_points.sum() + rec.pred_energy.sum()
            return {"loss": zero, "chamfer": zero.detach(), "energy": zero.detach()}
        chamfer = chamfer_distance(rec.pred_points, rec.target_points, rec.point_mask,
                                   rec.point_mask).mean()
        huber = F.huber_loss(rec.pred_energy, rec.target_energy, reduction="none",
                             delta=self.config.huber_delta)
        energy = masked_mean(huber, rec.point_mask, dim=1).mean()
        loss = self.config.chamfer_weight * chamfer + self.config.energy_weight * energy
        return {"loss": loss, "chamfer": chamfer, "energy": energy}

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TaskOutput:
        generator = generator or self.make_generator()
        patches = self.backbone.group(batch)
        masked = self.random_masking(patches.mask, generator)
        encoded = self.forward_encoder(patches, masked, generator)
        rec = self.forward_decoder(encoded, patches, masked, generator)
        losses = self.forward_loss(rec)
        outputs = {
            "chamfer": losses["chamfer"].detach(),
            "energy": losses["energy"].detach(),
            "hidden_patches": masked.sum().float(),
            "visible_patches": encoded.mask.sum().float(),
            "patches_per_event": patches.mask.sum(dim=1).float().mean(),
            "points_per_patch": patches.point_mask.sum().float() / patches.mask.sum().clamp(min=1),
        }
        return {"loss": losses["loss"], "outputs": outputs}

"""Masked voxel modeling with energy infilling: masked point modeling for point-resolution
backbones.

A point-resolution backbone keeps one feature per voxel, so the patch objective (hide whole
patches, reconstruct their points) becomes: hide a random ``mask_ratio`` of each event's
occupied grid cells of ``mask_cell`` voxels (:func:`detfm.tasks.views.grid_mask`; the
backbone replaces their points by its learned mask token), keep the voxel positions, and
predict each hidden voxel's energy feature from the features around it. The loss is the
Huber loss on the energy feature, averaged over each event's hidden points and then over
events (what the engine's DDP and accumulation need). As in the patch objective, the
energy feature is ``batch.feat[:, energy_channel]`` (the normalised log energy).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from detfm.data import PackedBatch
from detfm.errors import ConfigError
from detfm.models.layers import init_weights, seeded_init
from detfm.tasks.base import TaskOutput
from detfm.tasks.mpm import MPMConfig, call_generator
from detfm.tasks.views import grid_mask

__all__ = ["MaskedVoxelModeling"]


class MaskedVoxelModeling(nn.Module):
    """Backbone with a mask token + a per-point energy head; ``task(batch) -> {"loss", "outputs"}``."""

    def __init__(self, backbone: nn.Module, cfg: MPMConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MPMConfig()
        if "mask" not in inspect.signature(backbone.forward_features).parameters:
            raise ConfigError(f"masked voxel modeling needs a backbone with a mask token; "
                              f"{backbone.default_cfg.name} has none")
        if not 0 <= cfg.energy_channel < backbone.default_cfg.in_channels:
            raise ConfigError(f"energy_channel {cfg.energy_channel} is not one of the backbone's "
                              f"{backbone.default_cfg.in_channels} feature channel(s)")
        self.config = cfg
        self.backbone = backbone
        with seeded_init(cfg.seed):
            self.energy_head = nn.Sequential(nn.Linear(backbone.num_features, cfg.energy_hidden), nn.GELU(),
                                             nn.Linear(cfg.energy_hidden, 1))
            self.energy_head.apply(init_weights)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def make_generator(self) -> torch.Generator:
        """The generator of this call when the engine passes none (as the patch objective)."""
        return call_generator(self.config.seed, self.step, self.training)

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TaskOutput:
        generator = generator or self.make_generator()
        mask = grid_mask(batch.coord, batch.offsets, self.config.mask_cell, self.config.mask_ratio, generator)
        per_event, _ = self.event_losses(batch, mask, generator)
        loss = per_event.mean()
        return {"loss": loss, "outputs": {"energy": loss.detach(), "masked_fraction": mask.float().mean()}}

    def event_losses(self, batch: PackedBatch, mask: torch.Tensor, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, hidden)`` per event under the (P,) bool ``mask``: the Huber loss of the
        infilled energy averaged over the event's hidden voxels (0 when none is hidden), and
        how many are hidden. Training averages the first over events; anomaly scores read it
        event by event."""
        out = self.backbone.forward_features(batch, generator=generator, mask=mask)
        pred = self.energy_head(out.point).squeeze(-1)
        target = batch.feat[:, self.config.energy_channel]
        huber = F.huber_loss(pred, target, reduction="none", delta=self.config.huber_delta)
        event = batch.batch_index()
        w = mask.float()
        num = torch.zeros(len(batch), device=pred.device).index_add(0, event, huber * w)
        den = torch.zeros(len(batch), device=pred.device).index_add(0, event, w)
        return torch.where(den > 0, num / den.clamp(min=1.0), 0.0), den

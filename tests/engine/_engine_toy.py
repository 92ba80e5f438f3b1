"""A toy task and dataset for the engine tests: per-point energy regression with a small MLP.

Events have 3-7 points with 4 features; the target is a fixed linear function of the
features plus a little noise, so the loss falls quickly and every number is reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from detfm.data.batch import PackedBatch

FEATURES = 4


class ToyEvents:
    """A map-style dataset of small random point clouds; ``set_epoch`` changes a jitter.

    The jitter is seeded by (epoch, index) like detfm's EventDataset augmentations, so the
    items of an epoch do not depend on the order or the worker that reads them.
    """

    def __init__(self, n: int = 20, seed: int = 0, jitter: float = 0.0) -> None:
        self.n, self.seed, self.jitter, self.epoch = n, seed, jitter, 0
        self.reads: list[int] = []   # indices read in this process (for order checks)

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.reads.append(i)
        rng = np.random.default_rng([self.seed, i])
        n_points = 3 + i % 5
        feat = rng.normal(size=(n_points, FEATURES)).astype(np.float32)
        if self.jitter:
            feat = feat + self.jitter * np.random.default_rng([self.seed, i, self.epoch, 7]).normal(
                size=feat.shape).astype(np.float32)
        energy = (feat @ np.array([0.5, -1.0, 0.25, 2.0], dtype=np.float32) + 0.3
                  + 0.05 * rng.normal(size=n_points).astype(np.float32))
        coord = rng.integers(0, 768, size=(n_points, 3)).astype(np.float32)
        return {"coord": coord, "feat": feat, "energy": energy.astype(np.float32), "index": i}


def toy_collate(items: list[dict[str, Any]]) -> PackedBatch:
    counts = [len(it["energy"]) for it in items]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.int64)
    return PackedBatch(coord=torch.from_numpy(np.concatenate([it["coord"] for it in items])),
                       feat=torch.from_numpy(np.concatenate([it["feat"] for it in items])),
                       offsets=offsets,
                       energy=torch.from_numpy(np.concatenate([it["energy"] for it in items])),
                       index=torch.tensor([it["index"] for it in items], dtype=torch.int64))


class ToyTask(nn.Module):
    """MLP (Linear-LayerNorm-GELU-Dropout-Linear) regressing per-point energy.

    The loss is the mean over events of each event's mean squared error, so a DDP or
    accumulated gradient equals the single-batch one. ``noise`` adds input noise drawn
    from the ``generator`` the engine passes in.
    """

    def __init__(self, hidden: int = 16, dropout: float = 0.0, noise: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(FEATURES, hidden), nn.LayerNorm(hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.noise = noise
        self.seen: list[int] = []    # dataset indices of the batches it trained on
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.ndim == 2:
                    p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)
                elif name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> dict[str, Any]:
        if batch.index is not None:
            self.seen.extend(batch.index.tolist())
        x = batch.feat
        if self.noise and generator is not None:
            x = x + self.noise * torch.randn(x.shape, generator=generator, device=x.device)
        pred = self.net(x).squeeze(-1)
        err = (pred - batch.energy) ** 2
        events = batch.batch_index()
        per_event = torch.zeros(len(batch), device=err.device).index_add_(0, events, err)
        per_event = per_event / batch.counts.to(err.dtype)
        loss = per_event.mean()
        return {"loss": loss, "outputs": {"mse": loss.detach(), "mean_pred": pred.mean().detach(),
                                          "pred": pred.detach()}}

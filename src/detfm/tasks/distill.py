"""Point-level self-distillation (the Sonata / Panda recipe) for point-resolution backbones.

One training step, in named stages:

1. :meth:`SelfDistillation.make_views`: per event, ``global_views`` large ball crops and
   ``local_views`` small ones (:mod:`detfm.tasks.views`); the student's copies of the global
   crops get coordinate jitter and a grid-cell mask (cell size and ratio ramp up over
   ``schedule_steps``), whose points the backbone replaces by its learned mask token.
2. :meth:`~SelfDistillation.forward_student`: every student view through the backbone in one
   packed batch; the multi-level per-point features (coarse stages carried to the points,
   concatenated: the loss reaches the coarse levels, which guards against features that
   only encode position) go through a projection MLP, are L2-normalised and scored against
   ``prototypes`` learned unit vectors, at temperature ``student_temp``.
3. :meth:`~SelfDistillation.forward_teacher`: the unmasked, unjittered global crops through
   the teacher (an exponential moving average of the student, momentum ramped towards 1
   in :meth:`~SelfDistillation.after_step`), its prototype scores at the ramped
   ``teacher_temp`` balanced over the batch's points by Sinkhorn-Knopp.
4. :meth:`~SelfDistillation.forward_loss`: cross-entropy between the teacher's assignment of
   a point and the student's prediction for the same point in another view, the views'
   points matched by their original coordinates: each masked global view against its own
   teacher view and against the other global view, each local view against every global
   one. Pairs are averaged with equal weight.

Every step also logs the health of the student's features (:mod:`detfm.tasks.feature_monitor`:
spread, effective rank, fraction explained by position), so a collapsed or position-only
run shows in ``metrics.jsonl``. The teacher is part of the task's state dict and the
schedules follow the ``step`` buffer, so a resumed run continues exactly. Under DDP each
rank balances its own points (the Sinkhorn sums are not all-reduced).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detfm.data import PackedBatch
from detfm.data.datasets import get_dataset
from detfm.errors import ConfigError
from detfm.models.contract import multilevel_width
from detfm.models.layers import init_weights, seeded_init
from detfm.tasks.base import TaskOutput
from detfm.tasks.feature_monitor import feature_health
from detfm.tasks.views import View, crop_views, grid_mask, match_rows, ramp

__all__ = ["DistillConfig", "PrototypeHead", "SelfDistillation", "sinkhorn_knopp"]


@dataclass(frozen=True)
class DistillConfig:
    """Settings of :class:`SelfDistillation` (ranges are ``(start, end)`` of a schedule over
    ``schedule_steps`` optimiser steps).

    Defaults follow the Sonata recipe where it carries over to CPU sizes (teacher temperature
    0.04 -> 0.07, momentum 0.994 -> 1, student temperature 0.1); the prototype count and head
    widths are smaller than Sonata's so that a 2-core CPU can train it.
    """

    global_views: int = 2
    local_views: int = 2
    global_crop: tuple[float, float] = (0.4, 1.0)
    local_crop: tuple[float, float] = (0.05, 0.2)
    mask_cell: tuple[float, float] = (4.0, 16.0)
    mask_ratio: tuple[float, float] = (0.3, 0.7)
    jitter: float = 0.5
    prototypes: int = 256
    head_hidden: int = 256
    head_dim: int = 64
    student_temp: float = 0.1
    teacher_temp: tuple[float, float] = (0.04, 0.07)
    momentum: tuple[float, float] = (0.994, 1.0)
    schedule_steps: int = 1000
    sinkhorn_iters: int = 3
    monitor_points: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.global_views < 2 or self.local_views < 0:
            raise ConfigError(f"distill needs >= 2 global views and >= 0 local views, got "
                              f"{self.global_views}, {self.local_views}")
        for name in ("global_crop", "local_crop", "mask_cell", "mask_ratio", "teacher_temp", "momentum"):
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2:
                raise ConfigError(f"{name} must be a (start, end) pair, got {getattr(self, name)}")
            object.__setattr__(self, name, value)
        if not (0 < self.global_crop[0] <= self.global_crop[1] <= 1 and 0 < self.local_crop[0] <= self.local_crop[1] <= 1):
            raise ConfigError("crop fractions must lie in (0, 1] with start <= end")
        if min(self.mask_cell) <= 0 or not all(0 <= r < 1 for r in self.mask_ratio):
            raise ConfigError(f"mask_cell must be > 0 and mask_ratio in [0, 1), got {self.mask_cell}, {self.mask_ratio}")
        if min(self.prototypes, self.head_hidden, self.head_dim, self.sinkhorn_iters) < 1:
            raise ConfigError("prototypes, head_hidden, head_dim and sinkhorn_iters must be >= 1")
        if self.student_temp <= 0 or min(self.teacher_temp) <= 0:
            raise ConfigError("temperatures must be > 0")
        if not all(0 <= m <= 1 for m in self.momentum):
            raise ConfigError(f"momentum must lie in [0, 1], got {self.momentum}")
        if self.jitter < 0 or self.schedule_steps < 0 or self.monitor_points < 128:
            raise ConfigError("jitter and schedule_steps must be >= 0, monitor_points >= 128")


class PrototypeHead(nn.Module):
    """Projection MLP, L2 normalisation, cosine scores against learned prototype vectors."""

    def __init__(self, width: int, hidden: int, dim: int, prototypes: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))
        self.prototypes = nn.Parameter(torch.empty(prototypes, dim))
        self.apply(init_weights)
        nn.init.normal_(self.prototypes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = F.normalize(self.mlp(features), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).t()


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, iters: int) -> torch.Tensor:
    """(N, K) assignment probabilities from (N, K) tempered scores, balanced so that every
    prototype gets an equal share of the N points (SwAV's Sinkhorn-Knopp, rows sum to 1)."""
    q = torch.exp(scores.double() - scores.max()).t()  # (K, N)
    q /= q.sum()
    k, n = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True).clamp(min=1e-30)
        q /= k
        q /= q.sum(dim=0, keepdim=True).clamp(min=1e-30)
        q /= n
    return (q * n).t().to(scores.dtype)


def _concat(views: list[View]) -> tuple[PackedBatch, list[slice]]:
    """One packed batch of several views (their events back to back) and each view's rows."""
    batches = [v.batch for v in views]
    rows, start = [], 0
    for b in batches:
        rows.append(slice(start, start + b.num_points))
        start += b.num_points
    shift = torch.cumsum(torch.tensor([0] + [b.num_points for b in batches[:-1]]), 0)
    offsets = torch.cat([batches[0].offsets[:1]] + [b.offsets[1:] + s for b, s in zip(batches, shift, strict=True)])
    cat = PackedBatch(coord=torch.cat([b.coord for b in batches]), feat=torch.cat([b.feat for b in batches]),
                      offsets=offsets, energy=torch.cat([b.energy for b in batches]))
    return cat, rows


def _takes_mask(backbone: nn.Module) -> bool:
    return "mask" in inspect.signature(backbone.forward_features).parameters


class SelfDistillation(nn.Module):
    """Student backbone + prototype head, EMA teacher; ``task(batch) -> {"loss", "outputs"}``."""

    def __init__(self, backbone: nn.Module, cfg: DistillConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DistillConfig()
        if not _takes_mask(backbone):
            raise ConfigError(f"self-distillation masks points with the backbone's mask token; "
                              f"{backbone.default_cfg.name} ({backbone.default_cfg.arch}) has none: use a "
                              f"point-resolution backbone (ptv3_*, uresnet_*)")
        self.config = cfg
        self.backbone = backbone
        width = multilevel_width(backbone)
        with seeded_init(cfg.seed):
            self.head = PrototypeHead(width, cfg.head_hidden, cfg.head_dim, cfg.prototypes)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = copy.deepcopy(self.head)
        for p in [*self.teacher_backbone.parameters(), *self.teacher_head.parameters()]:
            p.requires_grad_(False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    @classmethod
    def from_config(cls, backbone: nn.Module, cfg: DistillConfig) -> SelfDistillation:
        return cls(backbone, cfg)

    def train(self, mode: bool = True) -> SelfDistillation:
        """Training mode for the student; the teacher always runs in eval mode."""
        super().train(mode)
        self.teacher_backbone.eval()
        self.teacher_head.eval()
        return self

    # -- schedules -------------------------------------------------------------------
    def schedule(self) -> dict[str, float]:
        """The ramped settings at the current step."""
        c, step = self.config, int(self.step)
        return {"mask_cell": ramp(step, c.schedule_steps, *c.mask_cell),
                "mask_ratio": ramp(step, c.schedule_steps, *c.mask_ratio),
                "teacher_temp": ramp(step, c.schedule_steps, *c.teacher_temp),
                "momentum": ramp(step, c.schedule_steps, *c.momentum)}

    # -- stages ----------------------------------------------------------------------
    def make_views(self, batch: PackedBatch, generator: torch.Generator) -> tuple[list[View], list[View]]:
        """(teacher's global crops, student's views: jittered copies of the global crops, then
        the local crops)."""
        c = self.config
        teacher = [crop_views(batch, c.global_crop, generator) for _ in range(c.global_views)]
        box = get_dataset(self.backbone.default_cfg.dataset).box_size
        student = [crop_views(v.batch, (1.0, 1.0), generator, jitter=c.jitter, box_size=box) for v in teacher]
        student = [View(batch=s.batch, origin=t.origin[s.origin]) for s, t in zip(student, teacher, strict=True)]
        student += [crop_views(batch, c.local_crop, generator, min_points=2) for _ in range(c.local_views)]
        return teacher, student

    def forward_student(self, views: list[View], generator: torch.Generator, cell: float, ratio: float
                        ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Log-probabilities over prototypes per student view, the multi-level features and
        the mask (both over all student rows)."""
        packed, rows = _concat(views)
        mask = torch.zeros(packed.num_points, dtype=torch.bool, device=packed.coord.device)
        for i in range(self.config.global_views):
            v = views[i].batch
            mask[rows[i]] = grid_mask(v.coord, v.offsets, cell, ratio, generator)
        features = self.backbone.forward_features(packed, generator=generator, mask=mask).multilevel()
        logp = F.log_softmax(self.head(features) / self.config.student_temp, dim=-1)
        return [logp[r] for r in rows], features, mask

    @torch.no_grad()
    def forward_teacher(self, views: list[View], temp: float) -> list[torch.Tensor]:
        """Sinkhorn-balanced prototype assignments per teacher (global) view."""
        packed, rows = _concat(views)
        scores = self.teacher_head(self.teacher_backbone.forward_features(packed).multilevel()) / temp
        q = sinkhorn_knopp(scores, self.config.sinkhorn_iters)
        return [q[r] for r in rows]

    def forward_loss(self, student: list[torch.Tensor], s_views: list[View], teacher: list[torch.Tensor],
                     t_views: list[View], size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean cross-entropy over the view pairs (see the module docstring), each pair a mean
        over its matched points."""
        terms: dict[str, list[torch.Tensor]] = {"own": [], "cross": [], "local": []}
        matched = 0
        for si, (logp, sv) in enumerate(zip(student, s_views, strict=True)):
            for ti, (q, tv) in enumerate(zip(teacher, t_views, strict=True)):
                kind = ("own" if si == ti else "cross") if si < len(t_views) else "local"
                a, b = match_rows(sv.origin, tv.origin, size)
                if len(a) == 0:
                    continue
                terms[kind].append(-(q[b] * logp[a]).sum(dim=-1).mean())
                matched += len(a)
        flat = [t for ts in terms.values() for t in ts]
        if not flat:
            zero = sum(s.sum() for s in student) * 0.0
            return zero, {"matched_points": torch.tensor(0.0)}
        loss = torch.stack(flat).mean()
        parts = {f"loss_{k}": torch.stack(v).mean().detach() for k, v in terms.items() if v}
        return loss, {**parts, "matched_points": torch.tensor(float(matched))}

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TaskOutput:
        if generator is None:
            generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + int(self.step))
        sched = self.schedule()
        t_views, s_views = self.make_views(batch, generator)
        student, features, mask = self.forward_student(s_views, generator, sched["mask_cell"], sched["mask_ratio"])
        teacher = self.forward_teacher(t_views, sched["teacher_temp"])
        loss, parts = self.forward_loss(student, s_views, teacher, t_views, batch.num_points)
        with torch.no_grad():
            q = torch.cat(teacher)
            entropy = -(q * torch.log(q.clamp(min=1e-12))).sum(dim=-1).mean()
            n0 = s_views[0].batch.num_points
            health = feature_health(features[:n0], s_views[0].batch.coord, self.config.monitor_points,
                                    seed=int(self.step))
        outputs: dict[str, Any] = {**parts, "teacher_entropy": entropy, "masked_fraction": mask.float().mean(),
                                   **{k: torch.tensor(v) for k, v in sched.items()},
                                   **{k: torch.tensor(v) for k, v in health.items()}}
        return {"loss": loss, "outputs": outputs}

    # -- the engine's hook -------------------------------------------------------------
    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Record the step and move the teacher towards the student (EMA)."""
        self.step.fill_(step)
        m = self.schedule()["momentum"]
        for student, teacher in ((self.backbone, self.teacher_backbone), (self.head, self.teacher_head)):
            for ps, pt in zip(student.parameters(), teacher.parameters(), strict=True):
                pt.mul_(m).add_(ps.detach(), alpha=1.0 - m)
            for bs, bt in zip(student.buffers(), teacher.buffers(), strict=True):
                bt.copy_(bs)

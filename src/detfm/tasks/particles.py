"""Particle-level set prediction (``particles``): find the particles of an event, say what
each one is, how much kinetic energy it had and where it started.

A Mask2Former-style decoder (Cheng et al. 2022) on per-point backbone features, as the
Panda detector head uses on its frozen point features:

* **mask features**: the shared :class:`~detfm.tasks.heads.PointHead` maps the backbone's
  per-point output to ``hidden`` features per point (linear in probe mode), then a
  LayerNorm (unit-scale features, so the mask logits' dot products learn from the start);
* **queries** (``query_init``): ``learned``: ``num_queries`` learned query features and
  positional embeddings, the same for every event (Mask2Former); ``points``: each event's
  own points, as Mask3D initialises its queries (Schult et al. 2023). Farthest-point
  sampling picks ``num_queries`` of the points the semantic head does not call low-energy
  (all points of an event where it calls every point low-energy); a query starts from the
  mask feature of its point (a linear map, plus a small learned per-slot feature that keeps
  the slots of an event with fewer points apart) and takes the coordinate embedding of its
  point as positional embedding, so every query starts *at* some particle;
* **decoder blocks** (``decoder_blocks``, post-norm as in Mask2Former): masked
  cross-attention to the points *of the query's own event* (a query attends only to the
  points its previous mask prediction holds, ``sigmoid(mask) >= 0.5``; all points of its
  event when that is none), then self-attention among the event's queries, then an MLP.
  Point keys carry an embedding of the normalised coordinates;
* **per query** (after every block, and on the initial queries): class logits over the 5
  particle classes plus *no object*, a mask logit per point of its event (dot product of a
  query embedding with the mask features), the kinetic energy (a correction in log space on
  the calorimetric sum ``sum_i sigmoid(mask_i) E_i`` of its soft mask) and the start point
  (a softmax-weighted mean of its event's point coordinates plus a bounded offset);
* **mask position** (``mask_position``, on by default): the mask features carry no
  coordinates, so two particles with alike features (two photons of a pi0) get alike mask
  logits from every query. With it on, each query also predicts a centre (a softmax-weighted
  mean of its event's point coordinates, the keys carrying the coordinate embedding) and a
  length ``s``, and its mask logit at a point ``x`` loses ``|x - centre| / s``, so a query can
  hold the points of one place and not those of another;
* **class from the mask** (``class_from_mask``, on by default): the class logits add an MLP
  of the query embedding and the mean mask feature over the points the query's mask holds
  (``sigmoid(mask) >= 0.5``, weighted by the probability), so a query's class reads the
  points it found, as the truth-instance ``pid`` head reads its particle's points. Neither
  the mask nor the mask features learn through this path (both detached): trained through
  it, the mask features turned to telling classes apart and found fewer particles;
* **stuff**: low-energy deposits (semantic class 4; in PILArNet-M all of them and only
  them are in no particle instance) are left to a per-point semantic head (focal loss on
  all 5 semantic classes) and are in no particle's mask.

Truth particles: the (event, group) instances with a PID label (majority vote, as
:func:`~detfm.tasks.pid.find_instances` gives it) and at least one point that is not a
low-energy deposit; the mask is those points. Kinetic energy and start come from the
instance's primary ``cluster_extra`` row (:mod:`detfm.data.particle_truth`); where that is
missing (NaN) the particle still counts for class and mask, not for the regressions.

Training: per event and per prediction set, Hungarian matching of queries to truth
particles (``scipy.optimize.linear_sum_assignment`` on CPU) on the cost
``class_cost * (-p_class) + mask_cost * BCE + dice_cost * dice`` over the event's points.
Losses: focal (``focal_gamma``; 0: cross-entropy) class loss over all queries, unmatched
ones to *no object* at weight ``no_object_weight``, per-class weights from
``class_weights``; per matched query the mean per-point BCE (sigmoid focal with
``mask_focal_gamma > 0``) and the dice loss of its mask; smooth-L1 on ``log(1 + KE)`` and
on the start point in units of ``start_scale`` voxels. The losses of all prediction sets
(initial queries and every block: the auxiliary losses) are summed; every term is a mean
within an event and the batch loss is the mean over events (the engine's DDP
requirement), plus the semantic head's loss.

More particles than queries: the matching assigns ``num_queries`` of them; the others
get no query (no mask, class or energy loss) and, in evaluation, count as missed.
Events without particles: every query learns *no object*. Labels without per-point
instance or pid: :class:`~detfm.errors.DataFormatError`.

Inference: a query is a particle if its most likely class is not *no object*. The points
not called low-energy by the semantic head are shared among the kept queries
(``assign``, :func:`assign_points`): ``ranked`` (default) takes the queries in decreasing
order of class score times mean mask probability over their own ``sigmoid(mask) >= 0.5``
points, each keeping the points of its own mask that no query before it took; ``argmax``
(Mask2Former's panoptic rule) gives each point to the query with the highest
``score * sigmoid(mask)`` if that mask holds it. A particle keeps its points if they are at
least ``overlap_threshold`` of its own mask's points, else it is dropped. Predicted masks are
disjoint. (``argmax`` splits the points of a particle between two near-duplicate queries
point by point, each keeps about half of its mask, and both are dropped; ``ranked`` keeps the
better one whole.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from detfm.data import PackedBatch
from detfm.data.datasets import DEFAULT_DATASET, get_dataset
from detfm.errors import ConfigError, DataFormatError
from detfm.models.layers import init_weights, seeded_init
from detfm.models.packing import packed_to_padded
from detfm.tasks.base import TaskOutput
from detfm.tasks.heads import AdaptationTask, HeadConfig
from detfm.tasks.pid import NUM_PID, find_instances
from detfm.tasks.segmentation import NUM_SEMANTIC, segmentation_loss

__all__ = ["NO_OBJECT", "ParticlePredictions", "ParticleTargets", "Particles", "ParticlesConfig", "assign_points",
           "dice_cost", "event_local_ids", "hungarian_match", "iou_matrix", "match_by_iou", "matching_cost",
           "older_particles_settings", "particle_labels", "particle_targets", "predict_particles", "query_points"]

NO_OBJECT = NUM_PID  # the extra class of a query that found nothing
QUERY_INITS = ("learned", "points")
ASSIGN_RULES = ("ranked", "argmax")


@dataclass(frozen=True)
class ParticlesConfig(HeadConfig):
    """Settings of :class:`Particles`: the head settings of :class:`~detfm.tasks.heads.HeadConfig`
    (``hidden`` is the decoder width, ``focal_gamma`` and ``class_weights`` apply to the
    class loss) and

    Attributes:
        num_queries: particle queries per event (more true particles than this: the excess
            is missed).
        query_init: ``learned`` (the same learned queries for every event) or ``points``
            (queries started from farthest-point-sampled points of the event; see the module
            docstring).
        decoder_blocks: masked cross-attention / self-attention / MLP blocks.
        num_heads: attention heads (``hidden`` must be a multiple).
        mlp_ratio: width of the decoder MLP relative to ``hidden``.
        class_cost, mask_cost, dice_cost: matching cost weights (Mask2Former: 2, 5, 5).
        class_loss, mask_loss, dice_loss, energy_loss, start_loss, semantic_loss: loss weights.
        no_object_weight: class-loss weight of a query matched to nothing (Mask2Former: 0.1).
        mask_focal_gamma: 0: per-point BCE mask loss; > 0: sigmoid focal loss.
        start_scale: voxels per unit of the start-point loss.
        overlap_threshold: inference: a particle is kept if it keeps at least this fraction
            of its own mask's points.
        mask_position: each query's mask logits also fall with the distance from a centre
            it predicts (see the module docstring); off: the mask reads the features alone.
            Runs trained while the default was off load as trained
            (:func:`older_particles_settings`).
        class_from_mask: each query's class also reads the mean of the mask features over the
            points its mask holds (see the module docstring); off: the query embedding alone.
            Runs trained while it did not exist load with it off
            (:func:`older_particles_settings`).
        assign: inference: how points go to the kept queries; ``ranked`` (queries in order of
            class score times mean mask probability, each taking the points of its mask that
            no better query took) or ``argmax`` (Mask2Former's panoptic rule: each point to
            the query with the highest ``score * sigmoid(mask)``).
        dataset: the kind of events (class names, the low-energy class, the box size).
    """

    num_classes: int = NUM_PID
    num_queries: int = 32
    query_init: str = "learned"
    decoder_blocks: int = 3
    num_heads: int = 4
    mlp_ratio: float = 4.0
    class_cost: float = 2.0
    mask_cost: float = 5.0
    dice_cost: float = 5.0
    class_loss: float = 2.0
    mask_loss: float = 5.0
    dice_loss: float = 5.0
    energy_loss: float = 1.0
    start_loss: float = 1.0
    semantic_loss: float = 1.0
    no_object_weight: float = 0.1
    mask_focal_gamma: float = 0.0
    start_scale: float = 50.0
    overlap_threshold: float = 0.8
    mask_position: bool = True
    class_from_mask: bool = True
    assign: str = "ranked"
    dataset: str = DEFAULT_DATASET

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_classes != NUM_PID:
            raise ConfigError(f"the particle classes are the {NUM_PID} PID classes (photon ... proton), "
                              f"got num_classes={self.num_classes}")
        if self.num_queries < 1 or self.decoder_blocks < 1 or self.num_heads < 1:
            raise ConfigError(f"num_queries, decoder_blocks and num_heads must be >= 1, got {self.num_queries}, "
                              f"{self.decoder_blocks}, {self.num_heads}")
        if self.assign not in ASSIGN_RULES:
            raise ConfigError(f"assign must be one of {', '.join(ASSIGN_RULES)}, got {self.assign!r}")
        if self.query_init not in QUERY_INITS:
            raise ConfigError(f"query_init must be one of {', '.join(QUERY_INITS)}, got {self.query_init!r}")
        if self.hidden % self.num_heads:
            raise ConfigError(f"hidden ({self.hidden}) must be a multiple of num_heads ({self.num_heads})")
        if not self.mlp_ratio > 0:
            raise ConfigError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        weights = {"class_cost": self.class_cost, "mask_cost": self.mask_cost, "dice_cost": self.dice_cost,
                   "class_loss": self.class_loss, "mask_loss": self.mask_loss, "dice_loss": self.dice_loss,
                   "energy_loss": self.energy_loss, "start_loss": self.start_loss,
                   "semantic_loss": self.semantic_loss, "no_object_weight": self.no_object_weight,
                   "mask_focal_gamma": self.mask_focal_gamma}
        for name, value in weights.items():
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite value >= 0, got {value}")
        if self.class_cost + self.mask_cost + self.dice_cost <= 0:
            raise ConfigError("at least one of class_cost, mask_cost, dice_cost must be > 0")
        if not (math.isfinite(self.start_scale) and self.start_scale > 0):
            raise ConfigError(f"start_scale must be > 0 voxels, got {self.start_scale}")
        if not 0.0 <= self.overlap_threshold <= 1.0:
            raise ConfigError(f"overlap_threshold must be in [0, 1], got {self.overlap_threshold}")
        if get_dataset(self.dataset).excluded_semantic is None:
            raise ConfigError(f"particles needs a dataset kind with a low-energy (stuff) class; "
                              f"{self.dataset} has none")


def older_particles_settings(tensor_names: set[str]) -> dict[str, Any]:
    """Settings a particles run left out of its config because they were the defaults when it
    was trained, read from its weights' tensor names: ``mask_position`` was off by default
    before (such runs store no centre layers), and ``class_from_mask`` did not exist (no
    pooled class layers)."""
    parts = [set(name.split(".")) for name in tensor_names]
    older: dict[str, Any] = {}
    if not any("center_embed" in p for p in parts):
        older["mask_position"] = False
    if not any("class_pool" in p for p in parts):
        older["class_from_mask"] = False
    return older


# ----------------------------------------------------------------------------- truth
@dataclass(frozen=True)
class ParticleTargets:
    """The truth particles of a batch (see the module docstring).

    Attributes:
        point_particle: (P,) int64 particle of each point (-1: none; stuff or no label).
        event: (T,) int64 event of each particle; group: (T,) its group id.
        label: (T,) int64 class 0..4.
        energy: (T,) float32 kinetic energy in MeV (NaN: unknown).
        start: (T, 3) float32 start point in voxels (NaN: unknown).
        size: (T,) int64 points per particle.
    """

    point_particle: torch.Tensor
    event: torch.Tensor
    group: torch.Tensor
    label: torch.Tensor
    energy: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor

    def __len__(self) -> int:
        return int(self.event.numel())


def particle_targets(batch: PackedBatch, dataset: str = DEFAULT_DATASET) -> ParticleTargets:
    """The truth particles of ``batch``: instances with a PID label and at least one point
    that is not a low-energy deposit. Raises :class:`DataFormatError` without labels."""
    if batch.instance is None or batch.pid is None or batch.semantic is None:
        raise DataFormatError("particle finding needs per-point semantic, instance and pid labels; this batch "
                              "has none (open the dataset with labels=True)", field="instance")
    stuff = batch.semantic == get_dataset(dataset).excluded_semantic
    inst = find_instances(batch.offsets, torch.where(stuff, -1, batch.instance), batch.pid)
    keep = inst.label >= 0
    renumber = torch.cumsum(keep.long(), 0) - 1
    pi = inst.point_instance
    safe = pi.clamp(min=0)
    point_particle = torch.full_like(pi, -1)
    if len(inst):
        point_particle = torch.where((pi >= 0) & keep[safe], renumber[safe], -1)
    first = torch.full((len(inst),), -1, dtype=torch.long, device=pi.device)
    has = pi >= 0
    first.scatter_reduce_(0, pi[has], torch.nonzero(has).squeeze(1), reduce="amin", include_self=False)
    first = first[keep]
    t = int(keep.sum())
    if batch.particle_energy is not None and batch.particle_start is not None and t:
        energy = batch.particle_energy[first].float()
        start = batch.particle_start[first].float()
    else:  # no truth carried (e.g. samples made by hand): unknown
        energy = torch.full((t,), float("nan"), device=pi.device)
        start = torch.full((t, 3), float("nan"), device=pi.device)
    return ParticleTargets(point_particle=point_particle, event=inst.event[keep], group=inst.group[keep],
                           label=inst.label[keep], energy=energy, start=start, size=inst.size[keep])


def particle_labels(batch: PackedBatch) -> torch.Tensor:
    """(T,) class of every truth particle of the batch (for class weights)."""
    return particle_targets(batch).label


# ----------------------------------------------------------------------------- matching
def dice_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, T) dice loss ``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` of every query mask
    (``sigmoid`` of (Q, n) logits) against every (T, n) 0/1 target mask."""
    p = mask_logits.sigmoid()
    num = 2.0 * p @ targets.T
    den = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (num + 1.0) / (den + 1.0)


def _bce_cost(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, T) mean per-point BCE of every query mask against every target mask."""
    n = max(mask_logits.shape[1], 1)
    pos = F.softplus(-mask_logits)  # -log sigmoid(x)
    neg = F.softplus(mask_logits)   # -log(1 - sigmoid(x))
    return (pos @ targets.T + neg @ (1.0 - targets).T) / n


def matching_cost(class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
                  masks: torch.Tensor, class_cost: float = 2.0, mask_cost: float = 5.0,
                  dice_weight: float = 5.0) -> torch.Tensor:
    """(Q, T) matching cost of Q queries (class logits (Q, C+1), mask logits (Q, n)) against T
    truth particles (labels (T,), 0/1 masks (T, n)): ``-class_cost p(label) + mask_cost BCE +
    dice_weight dice``."""
    prob = class_logits.float().softmax(-1)
    masks = masks.float()
    logits = mask_logits.float()
    return (-class_cost * prob[:, labels] + mask_cost * _bce_cost(logits, masks)
            + dice_weight * dice_cost(logits, masks))


def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(query indices, truth indices) of the minimum-cost one-to-one assignment of a (Q, T)
    cost matrix, on CPU with scipy; ``min(Q, T)`` pairs (the excess side is unmatched)."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    c = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(c).all():
        raise DataFormatError("non-finite matching cost (NaN in the mask or class logits)", field="logits")
    rows, cols = linear_sum_assignment(c)
    return torch.from_numpy(rows.astype(np.int64)), torch.from_numpy(cols.astype(np.int64))


def iou_matrix(pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, num_pred: int,
               num_truth: int) -> np.ndarray:
    """(K, T) IoU of every predicted particle with every truth particle of one event, from
    the (n,) particle of each point on either side (-1: none)."""
    p = np.asarray(pred.cpu() if isinstance(pred, torch.Tensor) else pred, dtype=np.int64)
    t = np.asarray(truth.cpu() if isinstance(truth, torch.Tensor) else truth, dtype=np.int64)
    both = (p >= 0) & (t >= 0)
    inter = np.zeros((num_pred, num_truth), dtype=np.float64)
    np.add.at(inter, (p[both], t[both]), 1.0)
    size_p = np.bincount(p[p >= 0], minlength=num_pred)[:num_pred].astype(np.float64)
    size_t = np.bincount(t[t >= 0], minlength=num_truth)[:num_truth].astype(np.float64)
    union = size_p[:, None] + size_t[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1.0), 0.0)


def match_by_iou(iou: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(pred indices, truth indices) of one-to-one pairs with IoU >= ``threshold``, greedily
    by decreasing IoU (with disjoint masks and a threshold above 0.5 the pairs are unique
    anyway, the panoptic-quality argument; the greedy rule settles IoU = 0.5 exactly)."""
    k, t = iou.shape
    if k == 0 or t == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    cand = np.argwhere(iou >= threshold)
    order = np.argsort(-iou[cand[:, 0], cand[:, 1]], kind="stable")
    used_p, used_t, pairs = set(), set(), []
    for i, j in cand[order]:
        if i not in used_p and j not in used_t:
            used_p.add(int(i))
            used_t.add(int(j))
            pairs.append((int(i), int(j)))
    pairs.sort()
    arr = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


# ----------------------------------------------------------------------------- model
class _MLP(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int, layers: int = 2) -> None:
        mods: list[nn.Module] = []
        width = dim
        for _ in range(layers - 1):
            mods += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        mods.append(nn.Linear(width, out))
        super().__init__(*mods)


def _weighted_point(query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor,
                    coord: torch.Tensor) -> torch.Tensor:
    """(B, Q, 3): per query, the mean of its event's point coordinates (B, N, 3) weighted by a
    softmax over the real points (``valid``) of the scaled dot products query (B, Q, d) · keys
    (B, N, d)."""
    w = torch.einsum("bqd,bnd->bqn", query, keys) / math.sqrt(keys.shape[-1])
    w = w.masked_fill(~valid[:, None, :], float("-inf")).softmax(-1).nan_to_num(0.0)
    return torch.einsum("bqn,bnc->bqc", w, coord)


def _mask_mean(prob: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """(B, Q, d): per query, the mean of the point features (B, N, d) over the points its mask
    holds (``prob`` (B, Q, N) >= 0.5, weighted by ``prob``); over all points weighted by
    ``prob`` where it holds none. Hard weights keep the many faint points of a large event
    from outweighing a small particle's own."""
    held = torch.where(prob >= 0.5, prob, 0.0)
    w = torch.where(held.sum(-1, keepdim=True) > 0, held, prob)
    w = w / w.sum(-1, keepdim=True).clamp(min=1e-6)
    return torch.einsum("bqn,bnd->bqd", w, feat)


class _DecoderBlock(nn.Module):
    """Masked cross-attention to the event's points, self-attention among its queries, MLP
    (each residual, then LayerNorm: Mask2Former's post-norm order)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = heads
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        hidden = max(1, round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, q: torch.Tensor, qpos: torch.Tensor, memory: torch.Tensor, mpos: torch.Tensor,
                blocked: torch.Tensor) -> torch.Tensor:
        """``q`` (B, Q, d); ``memory`` (B, N, d); ``blocked`` (B, Q, N) True where a query may not look."""
        mask = blocked.repeat_interleave(self.num_heads, dim=0)
        out, _ = self.cross(q + qpos, memory + mpos, memory, attn_mask=mask, need_weights=False)
        q = self.norm1(q + out)
        out, _ = self.self_attn(q + qpos, q + qpos, q, need_weights=False)
        q = self.norm2(q + out)
        return self.norm3(q + self.mlp(q))


@dataclass(frozen=True)
class _Predictions:
    """One prediction set of a padded batch: class (B, Q, C+1), mask (B, Q, N) logits,
    log(1 + KE) (B, Q), start (B, Q, 3) in voxels."""

    cls: torch.Tensor
    mask: torch.Tensor
    log_energy: torch.Tensor
    start: torch.Tensor


@dataclass(frozen=True)
class ParticlePredictions:
    """The particles found in a batch (inference rule of the module docstring).

    Attributes:
        point_particle: (P,) int64 predicted particle of each point (-1: none / stuff).
        event: (K,) int64 event of each particle; query: (K,) the query that made it.
        logits: (K, 6) class logits (5 particle classes and no object).
        label: (K,) int64 most likely particle class (0..4).
        energy: (K,) float32 kinetic energy in MeV; start: (K, 3) float32 start in voxels.
        size: (K,) int64 points per particle.
        semantic_logits: (P, 5) per-point semantic logits (the stuff head).
    """

    point_particle: torch.Tensor
    event: torch.Tensor
    query: torch.Tensor
    logits: torch.Tensor
    label: torch.Tensor
    energy: torch.Tensor
    start: torch.Tensor
    size: torch.Tensor
    semantic_logits: torch.Tensor

    def __len__(self) -> int:
        return int(self.event.numel())


class Particles(AdaptationTask):
    """Backbone + per-point mask features + query decoder; ``task(batch) -> {"loss", "outputs"}``
    (see the module docstring)."""

    config: ParticlesConfig

    def __init__(self, backbone: nn.Module, cfg: ParticlesConfig | None = None) -> None:
        cfg = cfg or ParticlesConfig()
        super().__init__(backbone, cfg, head_outputs=cfg.hidden)
        d, q = cfg.hidden, cfg.num_queries
        self.box = get_dataset(cfg.dataset)
        self.stuff_class = int(self.box.excluded_semantic)  # type: ignore[arg-type]
        with seeded_init(cfg.seed + 2):
            self.query_feat = nn.Embedding(q, d)
            self.query_pos = nn.Embedding(q, d)
            self.query_from_point = nn.Linear(d, d) if cfg.query_init == "points" else None
            self.memory_norm = nn.LayerNorm(d)
            self.point_pos = _MLP(3, d, d)
            self.blocks = nn.ModuleList([_DecoderBlock(d, cfg.num_heads, cfg.mlp_ratio)
                                         for _ in range(cfg.decoder_blocks)])
            self.decoder_norm = nn.LayerNorm(d)
            self.class_embed = nn.Linear(d, NUM_PID + 1)
            self.mask_embed = _MLP(d, d, d, layers=3)
            self.start_embed = _MLP(d, d, d)
            self.start_offset = nn.Linear(d, 3)
            self.energy_head = _MLP(d + 1, d, 1)
            self.semantic_head = nn.Linear(d, NUM_SEMANTIC)
            self.center_embed = _MLP(d, d, d) if cfg.mask_position else None
            self.center_scale = nn.Linear(d, 1) if cfg.mask_position else None
            self.class_pool = _MLP(2 * d, d, NUM_PID + 1) if cfg.class_from_mask else None
            for extra in (self.query_from_point, self.center_embed, self.center_scale, self.class_pool):
                if extra is not None:
                    extra.apply(init_weights)
            if self.center_scale is not None:  # lengths start at ~2 box half-widths: a weak pull
                nn.init.constant_(self.center_scale.bias, 2.0)
            for module in (self.memory_norm, self.point_pos, self.blocks, self.decoder_norm, self.class_embed,
                           self.mask_embed, self.start_embed, self.start_offset, self.energy_head, self.semantic_head):
                module.apply(init_weights)
            # point queries: the per-slot feature only tells slots apart, the point carries the rest
            nn.init.normal_(self.query_feat.weight, std=1.0 if cfg.query_init == "learned" else 0.02)
            nn.init.normal_(self.query_pos.weight, std=1.0)
        # class-loss weights: the 5 classes' (HeadConfig.class_weights) and no object's
        self.register_buffer("query_class_weights", torch.cat(
            [cfg.class_weight_tensor(), torch.tensor([cfg.no_object_weight])]).float())

    # -- forward ------------------------------------------------------------------------
    def _heads(self, q: torch.Tensor, mem: torch.Tensor, mpos: torch.Tensor, valid: torch.Tensor,
               coord: torch.Tensor, energy: torch.Tensor) -> _Predictions:
        h = self.decoder_norm(q)
        cls = self.class_embed(h)
        mask = torch.einsum("bqd,bnd->bqn", self.mask_embed(h), mem)
        if self.center_embed is not None and self.center_scale is not None:
            center = _weighted_point(self.center_embed(h), mem + mpos, valid, coord)  # normalised
            length = F.softplus(self.center_scale(h)) + 1e-2  # (B, Q, 1)
            mask = mask - torch.cdist(center, coord) / length
        soft = torch.where(valid[:, None, :], mask.detach().sigmoid(), 0.0)
        if self.class_pool is not None:
            cls = cls + self.class_pool(torch.cat([h, _mask_mean(soft, mem.detach())], -1))
        log_calo = torch.log1p((soft * energy[:, None, :]).sum(-1))
        log_energy = log_calo + self.energy_head(torch.cat([h, log_calo[..., None] / 5.0], -1)).squeeze(-1)
        start_norm = (_weighted_point(self.start_embed(h), mem, valid, coord)
                      + 0.1 * torch.tanh(self.start_offset(h)))
        start = (start_norm + 1.0) * (self.box.box_size / 2.0)
        return _Predictions(cls=cls, mask=mask, log_energy=log_energy, start=start)

    def forward_sets(self, batch: PackedBatch, generator: torch.Generator | None = None
                     ) -> tuple[list[_Predictions], torch.Tensor, torch.Tensor]:
        """Every prediction set (initial queries, then after each block), the (P, 5) semantic
        logits, and the (B, N) mask of real points of the padded batch."""
        out = self.encode(batch, generator)
        feat = self.memory_norm(self.head(out, self.config.features))  # (P, d) mask features
        semantic = self.semantic_head(feat)
        if batch.num_points == 0:
            raise DataFormatError("particle finding needs at least one point in the batch", field="coord")
        mem, valid = packed_to_padded(feat, batch.offsets)
        coord, _ = packed_to_padded(self.box.normalise(batch.coord.float()), batch.offsets)
        energy, _ = packed_to_padded(batch.energy.float(), batch.offsets)
        mpos = self.point_pos(coord)
        b = len(batch)
        if self.query_from_point is None:
            q = self.query_feat.weight[None].expand(b, -1, -1)
            qpos = self.query_pos.weight[None].expand(b, -1, -1)
        else:
            slot = query_points(batch, semantic.detach().argmax(-1) != self.stuff_class, self.config.num_queries)
            rows = torch.arange(b, device=slot.device)[:, None]
            q = self.query_from_point(mem[rows, slot]) + self.query_feat.weight[None]
            # query_pos stays in the graph (DDP without find_unused_parameters) at no effect
            qpos = mpos[rows, slot] + 0.0 * self.query_pos.weight[None]
        sets = [self._heads(q, mem, mpos, valid, coord, energy)]
        for block in self.blocks:
            blocked = (sets[-1].mask.detach() < 0.0) | ~valid[:, None, :]
            blocked = torch.where(blocked.all(-1, keepdim=True), ~valid[:, None, :], blocked)
            blocked = blocked & ~blocked.all(-1, keepdim=True)  # an empty event: attend to anything
            q = block(q, qpos, mem, mpos, blocked)
            sets.append(self._heads(q, mem, mpos, valid, coord, energy))
        return sets, semantic, valid

    # -- loss ---------------------------------------------------------------------------
    def _mask_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(M,) mean per-point BCE (or sigmoid focal) of M masks (M, n)."""
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        gamma = self.config.mask_focal_gamma
        if gamma > 0:
            p = logits.sigmoid()
            p_t = p * target + (1 - p) * (1 - target)
            bce = bce * (1 - p_t) ** gamma
        return bce.mean(-1)

    def _event_loss(self, pred: _Predictions, b: int, n: int, masks: torch.Tensor, labels: torch.Tensor,
                    energy: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one prediction set on event ``b`` (``n`` points, T truth particles)."""
        cfg = self.config
        cls, mask = pred.cls[b].float(), pred.mask[b, :, :n].float()
        with torch.no_grad():
            cost = matching_cost(cls, mask, labels, masks, cfg.class_cost, cfg.mask_cost, cfg.dice_cost)
        qi, ti = hungarian_match(cost)
        qi, ti = qi.to(cls.device), ti.to(cls.device)
        target_cls = torch.full((cls.shape[0],), NO_OBJECT, dtype=torch.long, device=cls.device)
        target_cls[qi] = labels[ti]
        log_p = F.log_softmax(cls, -1).gather(1, target_cls[:, None]).squeeze(1)
        item = -((1 - log_p.exp()) ** cfg.focal_gamma) * log_p if cfg.focal_gamma else -log_p
        w = self.query_class_weights.to(cls.device)[target_cls]
        class_loss = (w * item).sum() / w.sum().clamp(min=1e-12)
        # every head stays in the graph (DDP without find_unused_parameters) when nothing matched
        zero = 0.0 * (cls.sum() + mask.sum() + pred.log_energy[b].sum() + pred.start[b].sum())
        parts = {"class": class_loss, "mask": zero, "dice": zero, "energy": zero, "start": zero}
        if len(qi):
            m, t = mask[qi], masks[ti].float()
            parts["mask"] = self._mask_loss(m, t).mean()
            p = m.sigmoid()
            parts["dice"] = (1.0 - (2.0 * (p * t).sum(-1) + 1.0) / (p.sum(-1) + t.sum(-1) + 1.0)).mean()
            e_true = energy[ti]
            ok = torch.isfinite(e_true) & (e_true >= 0)
            if bool(ok.any()):
                parts["energy"] = F.smooth_l1_loss(pred.log_energy[b, qi][ok].float(), torch.log1p(e_true[ok]),
                                                   beta=0.1)
            s_true = start[ti]
            ok = torch.isfinite(s_true).all(-1)
            if bool(ok.any()):
                parts["start"] = F.smooth_l1_loss(pred.start[b, qi][ok].float() / cfg.start_scale,
                                                  s_true[ok] / cfg.start_scale)
        loss = (cfg.class_loss * parts["class"] + cfg.mask_loss * parts["mask"] + cfg.dice_loss * parts["dice"]
                + cfg.energy_loss * parts["energy"] + cfg.start_loss * parts["start"])
        return loss, parts

    def forward(self, batch: PackedBatch, generator: torch.Generator | None = None) -> TaskOutput:
        targets = particle_targets(batch, self.config.dataset)
        assert batch.semantic is not None  # particle_targets checked it
        sets, semantic, _ = self.forward_sets(batch, generator)
        counts = batch.counts.tolist()
        b_total = len(batch)
        event_losses = []
        logged = {k: torch.zeros((), device=semantic.device) for k in ("class", "mask", "dice", "energy", "start")}
        for b in range(b_total):
            n = counts[b]
            a = int(batch.offsets[b])
            mine = torch.nonzero(targets.event == b).squeeze(1)
            local = targets.point_particle[a:a + n]
            masks = (local[None, :] == mine[:, None]) if len(mine) else torch.zeros(0, n, dtype=torch.bool,
                                                                                     device=local.device)
            labels, energy, start = targets.label[mine], targets.energy[mine], targets.start[mine]
            total = semantic.new_zeros(())
            for k, pred in enumerate(sets):
                loss, parts = self._event_loss(pred, b, n, masks, labels, energy, start)
                total = total + loss
                if k == len(sets) - 1:
                    for name, v in parts.items():
                        logged[name] = logged[name] + v.detach() / b_total
            event_losses.append(total)
        loss = torch.stack(event_losses).mean()
        loss = loss + self.config.semantic_loss * segmentation_loss(
            semantic, batch.semantic.clamp(0, NUM_SEMANTIC - 1), batch.offsets, None, self.config.focal_gamma)
        outputs = {f"{k}_loss": v for k, v in logged.items()}
        with torch.no_grad():  # queries the last block calls a particle, and truth particles
            outputs["objects"] = (sets[-1].cls.argmax(-1) != NO_OBJECT).sum().float()
            outputs["particles"] = torch.tensor(float(len(targets)), device=loss.device)
        return {"loss": loss, "outputs": outputs}

    # -- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch: PackedBatch) -> ParticlePredictions:
        """The particles of every event of ``batch`` (call ``eval()`` first)."""
        return predict_particles(self, batch)

    def scored_items(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Truth class and predicted class logits (5) of every truth particle found at mask
        IoU >= 0.5 (what the generic confusion counts: PID on found particles)."""
        pred = self.predict(batch)
        targets = particle_targets(batch, self.config.dataset)
        labels, logits = [], []
        for b in range(len(batch)):
            a, e = int(batch.offsets[b]), int(batch.offsets[b + 1])
            pk = torch.nonzero(pred.event == b).squeeze(1)
            tk = torch.nonzero(targets.event == b).squeeze(1)
            pp = event_local_ids(pred.point_particle[a:e], pk)
            tp = event_local_ids(targets.point_particle[a:e], tk)
            pi, ti = match_by_iou(iou_matrix(pp, tp, len(pk), len(tk)))
            labels.append(targets.label[tk[torch.from_numpy(ti).to(tk.device)]])
            logits.append(pred.logits[pk[torch.from_numpy(pi).to(pk.device)], :NUM_PID])
        return torch.cat(labels), torch.cat(logits).float()

    def item_outputs(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class logits (5) of every predicted particle, its event and its query."""
        pred = self.predict(batch)
        return pred.logits[:, :NUM_PID], pred.event, pred.query


def query_points(batch: PackedBatch, candidate: torch.Tensor, num_queries: int) -> torch.Tensor:
    """(B, num_queries) padded positions of the points each event's queries start from.

    Farthest-point sampling over the event's ``candidate`` points ((P,) bool; all of the
    event's points where none is a candidate); an event with fewer points than queries
    reuses them in turn, an empty event gives position 0 (a padding slot that its queries'
    masks never see).
    """
    from detfm.models.fps import farthest_point_sampling

    event = batch.batch_index()
    has = torch.zeros(len(batch), dtype=torch.bool, device=event.device).index_fill_(0, event[candidate], True)
    keep = torch.where(has[event], candidate, torch.ones_like(candidate))
    chosen = torch.nonzero(keep).squeeze(1)  # packed point index of every kept point
    kept = torch.bincount(event[chosen], minlength=len(batch))
    nonempty = torch.nonzero(kept > 0).squeeze(1)
    slot = torch.zeros(len(batch), num_queries, dtype=torch.long, device=event.device)
    if len(nonempty) == 0:
        return slot
    sub_offsets = torch.cat([kept.new_zeros(1), torch.cumsum(kept[nonempty], 0)])
    backend = "numba" if batch.coord.device.type == "cpu" else "torch"
    fps = farthest_point_sampling(batch.coord[chosen].float(), sub_offsets, num_queries, backend=backend)
    turn = torch.arange(num_queries, device=event.device)[None, :] % fps.counts[:, None]
    picked = fps.index.gather(1, turn)  # (E, Q) index into chosen
    packed = chosen[picked]
    slot[nonempty] = packed - batch.offsets[event[packed]]
    return slot


def event_local_ids(point_particle: torch.Tensor, members: torch.Tensor) -> np.ndarray:
    """Batch-wide particle ids of one event's points renumbered 0..len(members)-1 (-1 kept)."""
    pp = point_particle.cpu().numpy()
    ids = members.cpu().numpy()
    out = np.full(pp.shape, -1, np.int64)
    if len(ids):
        pos = np.searchsorted(ids, pp)
        ok = (pp >= 0) & (pos < len(ids)) & (ids[np.minimum(pos, len(ids) - 1)] == pp)
        out[ok] = pos[ok]
    return out


def assign_points(rule: str, score: torch.Tensor, prob: torch.Tensor, stuff: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The points of one event shared among its kept queries: ``(taken, own)``, the (n,) query
    of each point (-1: none) and the (k, n) points each query's own mask holds (what
    ``overlap_threshold`` compares with). ``score`` (k,) class scores, ``prob`` (k, n) mask
    probabilities, ``stuff`` (n,) points the semantic head calls low-energy (never taken).

    * ``ranked``: queries in decreasing order of ``score`` times the mean mask probability
      over their own points (``prob >= 0.5``, not stuff): a confident class and a sharp mask
      first; each takes the points of its own mask that no query before it took.
    * ``argmax`` (Mask2Former's panoptic rule): each point to the query with the highest
      ``score * prob`` if it is in that query's own mask (``prob >= 0.5``, stuff included in
      the mask, not taken).
    """
    if rule not in ASSIGN_RULES:
        raise ConfigError(f"assign must be one of {', '.join(ASSIGN_RULES)}, got {rule!r}")
    if rule == "argmax":
        own = prob >= 0.5
        best = (score[:, None] * prob).argmax(0)
        return torch.where(own.gather(0, best[None]).squeeze(0) & ~stuff, best, -1), own
    own = (prob >= 0.5) & ~stuff
    quality = score * (prob * own).sum(1) / own.sum(1).clamp(min=1)
    taken = torch.full((prob.shape[1],), -1, dtype=torch.long, device=prob.device)
    for j in torch.argsort(quality, descending=True, stable=True).tolist():
        taken = torch.where(own[j] & (taken < 0), j, taken)
    return taken, own


@torch.no_grad()
def predict_particles(task: Particles, batch: PackedBatch) -> ParticlePredictions:
    """The particles of the last prediction set by the inference rule of the module docstring
    (``assign``: ranked queries, or Mask2Former's panoptic argmax)."""
    sets, semantic, _ = task.forward_sets(batch)
    last = sets[-1]
    prob = last.cls.float().softmax(-1)  # (B, Q, 6)
    score = prob[..., :NUM_PID].amax(-1)
    keep = prob.argmax(-1) != NO_OBJECT
    mask_p = last.mask.float().sigmoid()
    stuff = semantic.argmax(-1) == task.stuff_class
    point_particle = torch.full((batch.num_points,), -1, dtype=torch.long, device=semantic.device)
    ev, qu, size_l = [], [], []
    for b in range(len(batch)):
        a, e = int(batch.offsets[b]), int(batch.offsets[b + 1])
        kept = torch.nonzero(keep[b]).squeeze(1)
        if e == a or len(kept) == 0:
            continue
        taken, own = assign_points(task.config.assign, score[b, kept], mask_p[b, kept, : e - a], stuff[a:e])
        for j in range(len(kept)):
            mine = taken == j
            n_mine, n_own = int(mine.sum()), int(own[j].sum())
            if n_mine == 0 or n_mine < task.config.overlap_threshold * n_own:
                continue
            point_particle[a:e][mine] = len(ev)
            ev.append(b)
            qu.append(int(kept[j]))
            size_l.append(n_mine)
    device = semantic.device
    event = torch.tensor(ev, dtype=torch.long, device=device)
    query = torch.tensor(qu, dtype=torch.long, device=device)
    logits = last.cls[event, query].float()
    return ParticlePredictions(
        point_particle=point_particle, event=event, query=query, logits=logits,
        label=logits[:, :NUM_PID].argmax(-1) if len(ev) else torch.zeros(0, dtype=torch.long, device=device),
        energy=torch.expm1(last.log_energy[event, query].float()).clamp(min=0.0),
        start=last.start[event, query].float(), size=torch.tensor(size_l, dtype=torch.long, device=device),
        semantic_logits=semantic)

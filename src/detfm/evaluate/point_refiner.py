"""Point refiner: a fitted per-point second stage that reads each point's neighbourhood.

The fragment classifier (:mod:`detfm.evaluate.fragment_classifier`) names whole fragments, so
it cannot split one: where a delta ray leaves its muon, the muon's voxels next to the junction
are called delta with the ray and stay so; the first voxels of a Michel electron that the model
calls track belong to the muon's component and never reach a fragment. Both are decided by
what lies around a point, a few voxels away, which a point-wise rule does not see.

The point refiner gives every point a class from:
- its own class probabilities, from the model (after any view average) and after the previous
  steps (the fragment classifier), and its energy;
- its neighbourhood at a few radii (``hops``: the voxels reached by that many 26-neighbour
  steps, each counted by the number of paths that reach it, so nearer voxels weigh more): the
  mean class probabilities, the number of voxels, the mean energy, and two straight-line fits,
  one to all the points around it and one to the points called track (weighted by their
  track probability): how well a line describes them, how far the point lies from that
  line, and how far along it from the points' centre (in units of their spread: a track's end
  against its middle); and the mean energy of the track points around it against its own (a
  stopping muon's Bragg peak). A muon voxel lies on its track's line; the start of a delta ray
  or of a Michel electron leaves it, and a Michel electron starts where a track ends;
- the same quantities over a box around it (``cells``: 3 x 3 x 3 cells of that many voxels,
  :func:`box_sums`). Steps stop at a gap; a box does not, so the points of a piece that a gap
  of a few voxels parts from its particle (the rest of a Michel electron, a delta ray that
  leaves its muon with a gap) see the particle.

A few small MLPs map these features to the scored classes (the same network as the fragment
classifier's, :class:`~detfm.evaluate.feature_classifier.ClassifierEnsemble`); each point's
probability over the scored classes moves onto their mean answer, so the excluded class
(low-energy) keeps its probability. It is fitted on the run's labeled training events, on the
outputs of the steps before it, and applied after them. Refiners can be fitted in rounds
(``DEFAULT_ROUNDS``): each round reads the calls of the one before, so a point sees what its
neighbours were refined to.

Cross-entropy makes the MLPs call the rare classes (Michel, delta) less often than the
macro-F1 the scores use would want. The refiner therefore ends with one offset per scored class
on the log-probabilities, fitted on the same labeled points for the best macro-F1
(:func:`fit_class_offsets`: a coordinate search over a fixed grid). The offsets move a point's
probability only among the scored classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from detfm.errors import ConfigError
from detfm.evaluate.feature_classifier import ClassifierEnsemble, seeded_start, standardise_from
from detfm.evaluate.metrics import confusion_matrix, macro_f1
from detfm.models.sparse.hashing import kernel_map

__all__ = ["DEFAULT_CELLS", "DEFAULT_HOPS", "DEFAULT_ROUNDS", "OFFSET_GRID", "PointRefiner", "box_sums",
           "fit_class_offsets", "fit_point_refiner", "neighbourhood_sums", "point_feature_names", "point_features",
           "refine_points", "shift_classes"]

DEFAULT_HOPS = (1, 2, 4, 8)
DEFAULT_ROUNDS = 2  # refiners fitted in turn, each on the calls of the one before
DEFAULT_CELLS = (4, 8)  # box neighbourhoods: cell sizes in voxels (each box is 3 x 3 x 3 cells)
OFFSET_GRID = (-1.0, -0.6, -0.3, -0.15, 0.0, 0.15, 0.3, 0.6, 1.0)
_HOP_NAMES = ("log_voxels", "mean_energy_minus_own", "line_fraction", "log_line_distance", "line_linearity",
              "log_all_distance", "all_linearity", "line_end", "all_end", "line_energy_minus_own")


def point_feature_names(num_classes: int, hops: Sequence[int] = DEFAULT_HOPS,
                        cells: Sequence[int] = DEFAULT_CELLS) -> tuple[str, ...]:
    """The names of the columns of :func:`point_features` for a task of ``num_classes``."""
    names = [f"prob_{c}" for c in range(num_classes)] + [f"model_prob_{c}" for c in range(num_classes)]
    names.append("log_energy")
    for h in hops:
        names += [f"hop{h}_mean_prob_{c}" for c in range(num_classes)] + [f"hop{h}_{n}" for n in _HOP_NAMES]
    for s in cells:
        names += [f"box{s}_mean_prob_{c}" for c in range(num_classes)] + [f"box{s}_{n}" for n in _HOP_NAMES]
    return tuple(names)


def neighbourhood_sums(values: torch.Tensor, coord: torch.Tensor, event: torch.Tensor,
                       hops: Sequence[int]) -> list[torch.Tensor]:
    """``(I + A)^h values`` for every ``h`` in ``hops`` (ascending), where ``A`` links the
    26-neighbour voxels of one event: each point's sum over the voxels within ``h`` steps,
    each counted by the number of paths of at most ``h`` steps that reach it. ``values`` (P, D);
    one point per voxel and event."""
    hops = sorted(int(h) for h in hops)
    if not hops or hops[0] < 1:
        raise ConfigError(f"point refiner: hops must be >= 1, got {list(hops)}")
    kmap = kernel_map(torch.floor(coord.detach().cpu().float()).long(), event.detach().cpu().long())
    a, b = kmap.pair_in, kmap.pair_out
    out, v = [], values
    for step in range(1, hops[-1] + 1):
        v = v + torch.zeros_like(v).index_add_(0, a, v[b])
        if step in hops:
            out.append(v)
    return out


def box_sums(values: torch.Tensor, coord: torch.Tensor, event: torch.Tensor, cell: int) -> torch.Tensor:
    """Each point's sum of ``values`` (P, D) over the box of 3 x 3 x 3 cells of ``cell`` voxels
    around the cell that holds it, in its own event. Unlike :func:`neighbourhood_sums` a box
    reaches across gaps: the points of a piece that a gap of a few voxels parts from the rest
    of its particle still see it."""
    if int(cell) < 1:
        raise ConfigError(f"point refiner: box cells must be >= 1 voxel, got {cell}")
    grid = torch.div(torch.floor(coord.detach().cpu().float()).long(), int(cell), rounding_mode="floor")
    keyed = torch.cat([event.detach().cpu().long()[:, None], grid], dim=1)
    cells, of_point = torch.unique(keyed, dim=0, return_inverse=True)
    per_cell = torch.zeros(len(cells), values.shape[1], dtype=values.dtype).index_add_(0, of_point, values)
    kmap = kernel_map(cells[:, 1:], cells[:, 0])
    box = per_cell + torch.zeros_like(per_cell).index_add_(0, kmap.pair_in, per_cell[kmap.pair_out])
    return box[of_point]


def _line_fit(s0: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor, x: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From weighted sums (weight ``s0``, first moments ``s1`` (P, 3), second moments ``s2``
    (P, 3, 3)): the linearity of the weighted points (largest eigenvalue of their covariance
    over the trace), the distance of ``x`` from their principal line, and how far along that
    line ``x`` lies from their centre, in units of their spread along it (about 1.7 at the end
    of a uniform segment, 0 in its middle); all 0 where there is no weight."""
    w = s0.clamp_min(1e-9)
    mean = s1 / w[:, None]
    cov = s2 / w[:, None, None] - mean[:, :, None] * mean[:, None, :]
    cov = cov + 1e-6 * torch.eye(3, dtype=cov.dtype)
    eigval, eigvec = torch.linalg.eigh(cov)
    axis = eigvec[:, :, 2]
    linearity = eigval[:, 2] / eigval.clamp_min(0).sum(dim=1).clamp_min(1e-9)
    d = x - mean
    along = (d * axis).sum(dim=1, keepdim=True)
    distance = (d - along * axis).norm(dim=1)
    end = along.squeeze(1).abs() / eigval[:, 2].clamp_min(1e-6).sqrt()
    none = s0 <= 1e-6
    return linearity.masked_fill(none, 0.0), distance.masked_fill(none, 0.0), end.masked_fill(none, 0.0)


def point_features(probs: torch.Tensor, model_probs: torch.Tensor, coord: torch.Tensor, event: torch.Tensor,
                   energy: torch.Tensor, line_classes: Sequence[int], hops: Sequence[int] = DEFAULT_HOPS,
                   cells: Sequence[int] = DEFAULT_CELLS) -> torch.Tensor:
    """(P, D) features of every point (:func:`point_feature_names`).

    ``probs`` (P, C): the class probabilities the refiner refines (after the steps before it);
    ``model_probs`` (P, C): the model's own (after any view average); ``coord`` (P, 3) voxel
    coordinates, ``event`` (P,), ``energy`` (P,) MeV; ``line_classes``: the classes whose
    summed probability weighs a point in the track-line fit (the LArTPC: track)."""
    p = probs.detach().float().cpu()
    pm = model_probs.detach().float().cpu()
    if p.shape != pm.shape or p.dim() != 2:
        raise ConfigError(f"point refiner: probabilities of shapes {tuple(p.shape)} and {tuple(pm.shape)}")
    n, c = p.shape
    if n == 0:
        return torch.zeros(0, len(point_feature_names(c, hops, cells)))
    event = event.detach().cpu().long()
    x = torch.floor(coord.detach().cpu().double())
    # coordinates about each event's mean keep the second moments small
    count = torch.zeros(int(event.max()) + 1, dtype=torch.float64).index_add_(0, event, torch.ones(n, dtype=x.dtype))
    centre = torch.zeros(len(count), 3, dtype=x.dtype).index_add_(0, event, x) / count.clamp_min(1)[:, None]
    x = x - centre[event]
    log_e = torch.log1p(energy.detach().cpu().double().clamp_min(0))
    w = p[:, list(line_classes)].sum(dim=1).double()
    xx = (x[:, :, None] * x[:, None, :]).reshape(n, 9)
    ones = torch.ones(n, 1, dtype=x.dtype)
    columns = torch.cat([ones, p.double(), log_e[:, None], w[:, None], w[:, None] * x, w[:, None] * xx, x, xx,
                         (w * log_e)[:, None]], dim=1)
    features = [p, pm, log_e.float()[:, None]]
    sums = neighbourhood_sums(columns, coord, event, hops) + [box_sums(columns, coord, event, size) for size in cells]
    for s in sums:
        s0 = s[:, 0]
        mean_p = s[:, 1:1 + c] / s0[:, None]
        mean_e = s[:, 1 + c] / s0
        k = 2 + c
        sw, swx, swxx = s[:, k], s[:, k + 1:k + 4], s[:, k + 4:k + 13].reshape(n, 3, 3)
        sx, sxx = s[:, k + 13:k + 16], s[:, k + 16:k + 25].reshape(n, 3, 3)
        line_lin, line_d, line_end = _line_fit(sw, swx, swxx, x)
        all_lin, all_d, all_end = _line_fit(s0, sx, sxx, x)
        line_e = torch.where(sw > 1e-6, s[:, k + 25] / sw.clamp_min(1e-9) - log_e, torch.zeros_like(sw))
        features += [mean_p.float(), torch.stack([
            torch.log(s0), mean_e - log_e, sw / s0, torch.log1p(line_d), line_lin, torch.log1p(all_d), all_lin,
            line_end, all_end, line_e,
        ], dim=1).float()]
    return torch.cat(features, dim=1)


def refine_points(probs: torch.Tensor, point_probs: torch.Tensor, scored: Sequence[int]) -> torch.Tensor:
    """``probs`` with each point's probability over ``scored`` moved onto its refined
    distribution ``point_probs`` (P, K), scaled by the point's own total over ``scored``. The
    input is not modified."""
    out = probs.detach().float().cpu().clone()
    cols = torch.as_tensor(list(scored), dtype=torch.long)
    mass = out[:, cols].sum(dim=1, keepdim=True)
    out[:, cols] = mass * point_probs.detach().float().cpu()
    return out


def shift_classes(probs: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(P, K) distributions ``probs`` with each class weighed by ``exp(offsets)`` (K,) and each
    row renormalised to its own total."""
    shifted = probs * torch.exp(offsets.to(probs.dtype))[None]
    return shifted * (probs.sum(dim=1, keepdim=True) / shifted.sum(dim=1, keepdim=True).clamp_min(1e-30))


def fit_class_offsets(probs: torch.Tensor, target: torch.Tensor, grid: Sequence[float] = OFFSET_GRID,
                      rounds: int = 2) -> torch.Tensor:
    """(K,) log-probability offsets for the best macro-F1 of ``argmax(log probs + offsets)``
    against ``target`` (an index into the K classes, -1: not scored), one class at a time
    over ``grid``, ``rounds`` times; a change must gain at least 1e-4. All zero when no point
    is scored."""
    keep = target >= 0
    logp = torch.log(probs[keep].float().clamp_min(1e-30))
    y = target[keep].long().numpy()
    k = int(probs.shape[1])
    offsets = torch.zeros(k)
    if y.size == 0:
        return offsets

    def score_of(shift: torch.Tensor) -> float:  # the macro-F1 the scores report
        return macro_f1(confusion_matrix(y, (logp + shift).argmax(dim=1).numpy(), k))

    best = score_of(offsets)
    for _ in range(rounds):
        for c in range(k):
            for g in grid:
                trial = offsets.clone()
                trial[c] = g
                score = score_of(trial)
                if score > best + 1e-4:
                    best, offsets = score, trial
    return offsets


def fit_point_refiner(features: torch.Tensor, target: torch.Tensor, num_classes: int, *, hidden: int = 64,
                      members: int = 4, epochs: int = 8, batch_size: int = 4096, max_points: int = 3_000_000,
                      lr: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0) -> ClassifierEnsemble:
    """Small MLPs fitted to the points with a target (``target >= 0``, an index into the
    scored classes), on at most ``max_points`` of them drawn with ``seed``.

    Each member: ``epochs`` passes of minibatch AdamW on the cross-entropy (cosine learning
    rate), from its own seeded start and order. Every point weighs the same, as the per-point
    scores count them. Deterministic for a seed."""
    if epochs < 1 or batch_size < 1 or max_points < 1:
        raise ConfigError(f"point refiner: epochs, batch_size and max_points must be >= 1, got {epochs}, "
                          f"{batch_size} and {max_points}")
    keep = (target >= 0).nonzero().squeeze(1)
    if keep.numel() == 0:
        raise ConfigError("no point with a scored class to fit the point refiner on")
    gen = torch.Generator().manual_seed(seed)
    if keep.numel() > max_points:
        keep = keep[torch.randperm(keep.numel(), generator=gen)[:max_points]].sort().values
    x, y = features[keep].float(), target[keep].long()
    clf = ClassifierEnsemble(int(x.shape[1]), num_classes, hidden, members)
    xs = standardise_from(clf, x)
    steps_per_epoch = -(-len(xs) // batch_size)
    for m, mlp in enumerate(clf.members):
        mgen = torch.Generator().manual_seed(seed * 1000 + m)
        seeded_start(mlp, mgen)
        opt = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        for _ in range(epochs):
            order = torch.randperm(len(xs), generator=mgen)
            for i in range(steps_per_epoch):
                idx = order[i * batch_size:(i + 1) * batch_size]
                loss = nn.functional.cross_entropy(mlp(xs[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
    return clf.eval()


class PointRefiner(nn.Module):
    """The fitted point refiner of a task: features (:func:`point_features`) -> the scored
    classes, applied to every point (:func:`refine_points`).

    ``scored``: the classes a point can be given; ``line_classes``: the classes of the
    track-line fit; ``num_classes``: all the task's classes; ``hops``: the neighbourhood radii;
    ``cells``: the cell sizes of the box neighbourhoods (:func:`box_sums`).
    Events are processed ``chunk`` at a time, which bounds the memory of the neighbourhood sums."""

    def __init__(self, scored: Sequence[int], line_classes: Sequence[int], num_classes: int,
                 hops: Sequence[int] = DEFAULT_HOPS, hidden: int = 64, members: int = 4, chunk: int = 64,
                 cells: Sequence[int] = DEFAULT_CELLS) -> None:
        super().__init__()
        self.scored = tuple(int(c) for c in scored)
        self.line_classes = tuple(int(c) for c in line_classes)
        self.num_classes = int(num_classes)
        self.hops = tuple(sorted(int(h) for h in hops))
        if not self.hops or self.hops[0] < 1 or len(set(self.hops)) != len(self.hops):
            raise ConfigError(f"point refiner: hops must be distinct and >= 1, got {list(hops)}")
        if not set(self.scored) | set(self.line_classes) <= set(range(self.num_classes)) or not self.line_classes:
            raise ConfigError(f"point refiner: scored {list(self.scored)} and line classes {list(self.line_classes)} "
                              f"must be classes of a {self.num_classes}-class task (at least one line class)")
        self.cells = tuple(sorted(int(size) for size in cells))
        if any(size < 1 for size in self.cells) or len(set(self.cells)) != len(self.cells):
            raise ConfigError(f"point refiner: box cells must be distinct and >= 1 voxel, got {list(cells)}")
        self.chunk = int(chunk)
        width = len(self.feature_names)
        self.classifier = ClassifierEnsemble(width, len(self.scored), hidden, members)
        self.register_buffer("offsets", torch.zeros(len(self.scored)))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The names of the columns of :meth:`features`."""
        return point_feature_names(self.num_classes, self.hops, self.cells)

    def features(self, probs: torch.Tensor, model_probs: torch.Tensor, coord: torch.Tensor, event: torch.Tensor,
                 energy: torch.Tensor) -> torch.Tensor:
        """(P, D) :func:`point_features`, ``chunk`` events at a time (any point order)."""
        event = event.detach().cpu().long()
        out = torch.zeros(len(event), len(self.feature_names))
        ids = torch.unique(event)
        for i in range(0, len(ids), self.chunk):
            rows = torch.isin(event, ids[i:i + self.chunk]).nonzero().squeeze(1)
            _, local = torch.unique(event[rows], return_inverse=True)
            out[rows] = point_features(probs[rows], model_probs[rows], coord[rows], local, energy[rows],
                                       self.line_classes, self.hops, self.cells)
        return out

    @torch.no_grad()
    def class_probs(self, features: torch.Tensor) -> torch.Tensor:
        """(P, K) the MLPs' mean distribution over the scored classes, before the offsets; in
        slices of 262 144 points (the activations over millions of points at once take gigabytes)."""
        return torch.cat([self.classifier(part).exp() for part in features.split(1 << 18)])

    def refined(self, probs: torch.Tensor, class_probs: torch.Tensor) -> torch.Tensor:
        """``probs`` (P, C) with each point's scored mass moved onto ``class_probs`` after the
        offsets (:func:`shift_classes`, :func:`refine_points`)."""
        return refine_points(probs, shift_classes(class_probs, self.offsets), self.scored)

    def forward(self, probs: torch.Tensor, model_probs: torch.Tensor, coord: torch.Tensor, event: torch.Tensor,
                energy: torch.Tensor) -> torch.Tensor:
        """``probs`` (P, C) after refinement and the class offsets (CPU, float32); ``model_probs``:
        the model's own."""
        return self.refined(probs, self.class_probs(self.features(probs, model_probs, coord, event, energy)))

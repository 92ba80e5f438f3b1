"""Fragment classifier: a small fitted second stage that names each connected fragment.

The fragment vote (:mod:`detfm.evaluate.fragments`) gives a fragment of touching shower-like
points the class with the largest summed probability. It cannot change a fragment's call
from outside the group, and it sees nothing of the fragment's shape or surroundings: a short
piece of a muon track called delta stays delta, and a Michel electron is told from a delta
ray only by the per-point probabilities.

The fragment classifier reads, for every fragment, what a physicist would look at:
- its size and energy (points, summed and mean energy per point);
- the segmentation model's mean class probabilities over its points;
- its shape: the spreads along its three principal axes;
- its contact with the points of the other side (for shower-like fragments: the points
  called track): how many of its points touch them, how many components of the other side it
  touches, how large the largest one is, and where on that one's principal axis the contact
  lies (distance from the nearer end, in voxels and as a fraction of the length): a Michel
  electron starts at the end of a muon, a delta ray along it;
- the energy of the other side where it touches (a stopping muon's Bragg peak) and the mean
  energy per point of the largest touched component (a muon against a proton).

A few small MLPs (:class:`FragmentClassifier`) map these features to one of the scored classes.
It is fitted on the fragments of the run's own labeled training events (each fragment's truth:
the majority class of its scored points) and applied at test time after any view average: every
point of a fragment takes the fragment's class distribution, scaled by its own probability
over the scored classes (so the excluded class, e.g. low-energy, keeps its probability).

*Sides*: fragments are formed separately from the points called one of a group of classes,
each side with its own classifier, applied in turn. By default there is one side, the fragment
classes (LArTPC: shower, Michel, delta); a second side for the components of points called
track added nothing when measured (:func:`detfm.recipes.fragments.fragment_groups`).

*Point refiner*: the stage may end with a per-point step (:mod:`detfm.evaluate.point_refiner`)
that reads each point's neighbourhood and can split what one class per fragment cannot (the
junction of a delta ray with its muon).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from detfm.data import PackedBatch
from detfm.engine.runs import FRAGMENT_CLASSIFIER_FILE, FRAGMENT_CLASSIFIER_INFO, read_fitted_info
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.feature_classifier import ClassifierEnsemble, seeded_start, standardise_from
from detfm.evaluate.fragments import PointProbabilityStep, point_fragments
from detfm.evaluate.point_refiner import PointRefiner, point_feature_names, refine_points
from detfm.io import atomic_path, atomic_write_text
from detfm.models.sparse.hashing import kernel_map

__all__ = ["FRAGMENT_INFO_FORMAT", "FragmentClassifier", "FragmentRelabel", "FragmentStage", "FragmentTable",
           "feature_names", "fit_fragment_classifier", "fragment_table", "fragment_truth", "load_fragment_stage",
           "relabel_fragments", "save_fragment_stage", "scored_positions", "stage_record"]

FRAGMENT_INFO_FORMAT = "detfm-fragment-classifier/1"

_SIZE_NAMES = ("log_points", "log_energy", "log_mean_energy")  # then one mean probability per class
_GEOMETRY_NAMES = (
    "log_spread_1", "spread_2_over_1", "spread_3_over_1",
    "log_contact_points", "log_touched_components", "log_touched_size",
    "log_contact_from_end", "contact_from_end_fraction", "log_touched_length", "touches",
    "log_contact_energy", "log_touched_mean_energy",
)


def feature_names(num_classes: int) -> tuple[str, ...]:
    """The names of the features of :func:`fragment_table`, for a task of ``num_classes``."""
    return _SIZE_NAMES + tuple(f"mean_prob_{c}" for c in range(num_classes)) + _GEOMETRY_NAMES


@dataclass(frozen=True)
class FragmentTable:
    """The fragments of one side of a batch.

    Attributes:
        labels: (P,) int64 the fragment of each point, -1 for points of the other side.
        features: (F, D) float32, one row per fragment (:func:`feature_names`).
    """

    labels: torch.Tensor
    features: torch.Tensor

    @property
    def count(self) -> int:
        return int(self.features.shape[0])


def _principal(x: torch.Tensor, group: torch.Tensor, n: int) -> tuple[torch.Tensor, ...]:
    """Per group: centroid (n, 3), spreads along the principal axes, descending (n, 3), the
    first principal axis (n, 3), point count (n,). float64."""
    x = x.double()
    count = torch.zeros(n, dtype=torch.float64).index_add_(0, group, torch.ones_like(x[:, 0]))
    mean = torch.zeros(n, 3, dtype=torch.float64).index_add_(0, group, x) / count[:, None]
    d = x - mean[group]
    cov = torch.zeros(n, 3, 3, dtype=torch.float64).index_add_(0, group, d[:, :, None] * d[:, None, :])
    cov = cov / count[:, None, None] + 1e-9 * torch.eye(3, dtype=torch.float64)
    eigval, eigvec = torch.linalg.eigh(cov)  # ascending
    return mean, eigval.flip(-1).clamp_min(0).sqrt(), eigvec[:, :, 2], count


def fragment_table(probs: torch.Tensor, coord: torch.Tensor, event: torch.Tensor, energy: torch.Tensor,
                   group: Sequence[int], scored: Sequence[int]) -> FragmentTable:
    """The fragments of the points called one of ``group``, with their features.

    ``probs`` (P, C) class probabilities; ``coord`` (P, 3) voxel coordinates (one point per
    voxel and event); ``event`` (P,) each point's event; ``energy`` (P,) in MeV. A point's call
    is its most probable class among ``scored``; the points called one of ``group`` (a subset
    of ``scored``) form the fragments (26-neighbour components in one event), and those called
    another scored class are the *other side* whose contact the features describe."""
    p = probs.detach().float().cpu()
    coord = coord.detach().cpu().float()
    event = event.detach().cpu().long()
    energy = energy.detach().cpu().float()
    scored_t = torch.as_tensor(list(scored), dtype=torch.long)
    call = scored_t[p[:, scored_t].argmax(dim=1)]
    member = torch.isin(call, torch.as_tensor(list(group), dtype=torch.long))
    labels, nf = point_fragments(coord, event, member)
    other, no = point_fragments(coord, event, ~member)
    num_features = len(feature_names(int(p.shape[1])))
    if nf == 0:
        return FragmentTable(labels, torch.zeros(0, num_features))
    mi = member.nonzero().squeeze(1)
    fl = labels[mi]
    n = torch.zeros(nf).index_add_(0, fl, torch.ones(len(mi)))
    esum = torch.zeros(nf).index_add_(0, fl, energy[mi])
    mean_p = torch.zeros(nf, p.shape[1]).index_add_(0, fl, p[mi]) / n[:, None]
    _, spread, _, _ = _principal(coord[mi], fl, nf)
    spread = spread.float()

    # contact: member point a touches other-side point b
    kmap = kernel_map(torch.floor(coord).long(), event)
    a, b = kmap.pair_in, kmap.pair_out
    touch = member[a] & ~member[b]
    a, b = a[touch], b[touch]
    touching = torch.zeros(len(coord), dtype=torch.bool)
    touching[a] = True
    contact_points = torch.zeros(nf).index_add_(0, fl, touching[mi].float())
    touched = torch.zeros(nf)
    biggest = torch.full((nf,), -1, dtype=torch.long)
    size = torch.zeros(nf)
    from_end = torch.full((nf,), -1.0)
    fraction = torch.full((nf,), -1.0)
    length = torch.zeros(nf)
    contact_energy = torch.zeros(nf)
    touched_energy = torch.zeros(nf)
    if len(a):
        oi = (~member).nonzero().squeeze(1)
        ol = other[oi]
        o_mean, _, o_axis, o_count = _principal(coord[oi], ol, no)
        s = ((coord[oi].double() - o_mean[ol]) * o_axis[ol]).sum(dim=1)
        s_min = torch.full((no,), float("inf"), dtype=torch.float64).scatter_reduce_(0, ol, s, "amin")
        s_max = torch.full((no,), float("-inf"), dtype=torch.float64).scatter_reduce_(0, ol, s, "amax")
        seen = torch.unique(torch.stack([labels[a], b], dim=1), dim=0)  # (fragment, touching point), once each
        contact_energy.index_add_(0, seen[:, 0], energy[seen[:, 1]])
        contact_energy /= torch.zeros(nf).index_add_(0, seen[:, 0], torch.ones(len(seen))).clamp_min(1)
        o_energy = torch.zeros(no).index_add_(0, ol, energy[oi]) / o_count.float()
        pairs = torch.unique(torch.stack([labels[a], other[b]], dim=1), dim=0)
        touched.index_add_(0, pairs[:, 0], torch.ones(len(pairs)))
        # the largest touched component (ties: the higher number), one scatter so that the choice
        # does not depend on the order of writes
        key = o_count[pairs[:, 1]].long() * (no + 1) + pairs[:, 1]
        best = torch.full((nf,), -1, dtype=torch.long).scatter_reduce_(0, pairs[:, 0], key, "amax")
        biggest = torch.where(best >= 0, best % (no + 1), biggest)
        # where the contact lies on the largest touched component: the mean of the member points
        # that touch it, projected on its principal axis
        on_big = other[b] == biggest[labels[a]]
        pts = torch.unique(a[on_big])
        f_of = labels[pts]
        cn = torch.zeros(nf, dtype=torch.float64).index_add_(0, f_of, torch.ones(len(pts), dtype=torch.float64))
        cc = torch.zeros(nf, 3, dtype=torch.float64).index_add_(0, f_of, coord[pts].double())
        has = (biggest >= 0).nonzero().squeeze(1)
        t = biggest[has]
        sc = ((cc[has] / cn[has, None] - o_mean[t]) * o_axis[t]).sum(dim=1)
        span = (s_max[t] - s_min[t]).clamp_min(1e-6)
        end = torch.minimum(sc - s_min[t], s_max[t] - sc).clamp_min(0)
        size[has] = o_count[t].float()
        from_end[has] = torch.log1p(end).float()
        fraction[has] = (end / span).float()
        length[has] = span.float()
        touched_energy[has] = o_energy[t]
    features = torch.stack([
        torch.log1p(n), torch.log1p(esum), torch.log(esum / n + 1e-3), *mean_p.T,
        torch.log1p(spread[:, 0]), spread[:, 1] / (spread[:, 0] + 1e-3), spread[:, 2] / (spread[:, 0] + 1e-3),
        torch.log1p(contact_points), torch.log1p(touched), torch.log1p(size),
        from_end, fraction, torch.log1p(length), (biggest >= 0).float(),
        torch.log1p(contact_energy), torch.log1p(touched_energy),
    ], dim=1)
    return FragmentTable(labels, features)


def scored_positions(truth: torch.Tensor, scored: Sequence[int]) -> torch.Tensor:
    """(P,) int64 the position of each point's true class in ``scored``, -1 where it is not
    scored (an excluded or unlabeled point)."""
    truth = truth.detach().cpu().long()
    k = torch.full_like(truth, -1)
    for j, c in enumerate(scored):
        k[truth == int(c)] = j
    return k


def fragment_truth(table: FragmentTable, truth: torch.Tensor, scored: Sequence[int]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(target, counts)``: each fragment's majority true class among its scored points, as an
    index into ``scored`` (-1: no scored point), and its scored points per class (F, K)."""
    k = scored_positions(truth, scored)
    keep = (table.labels >= 0) & (k >= 0)
    counts = torch.zeros(table.count, len(scored))
    counts.index_put_((table.labels[keep], k[keep]), torch.ones(int(keep.sum())), accumulate=True)
    target = counts.argmax(dim=1)
    target[counts.sum(dim=1) == 0] = -1
    return target, counts


FragmentClassifier = ClassifierEnsemble
"""The network of the fragment classifier (:class:`~detfm.evaluate.feature_classifier.ClassifierEnsemble`)."""


def fit_fragment_classifier(features: torch.Tensor, target: torch.Tensor, points: torch.Tensor, num_classes: int, *,
                            hidden: int = 64, members: int = 4, epochs: int = 400, lr: float = 3e-3,
                            weight_decay: float = 1e-4, seed: int = 0) -> FragmentClassifier:
    """A :class:`FragmentClassifier` fitted to the fragments with a target (``target >= 0``).

    Each member: full-batch AdamW on the cross-entropy, from its own seeded start. Each fragment
    weighs the square root of its scored points (``points``): a large shower counts more than a
    stray voxel, but not as many times more as it has points. No class weights: measured on
    training events, they trade delta recall for precision and lower macro-F1 (0.819-0.831
    against 0.833-0.840). Deterministic for a seed."""
    keep = target >= 0
    if int(keep.sum()) == 0:
        raise ConfigError("no fragment with a scored point to fit the fragment classifier on")
    x, y = features[keep].float(), target[keep].long()
    w = points[keep].float().clamp_min(1).sqrt()
    w = w / w.sum()
    clf = FragmentClassifier(int(x.shape[1]), num_classes, hidden, members)
    xs = standardise_from(clf, x)
    for m, mlp in enumerate(clf.members):
        seeded_start(mlp, torch.Generator().manual_seed(seed * 1000 + m))
        opt = torch.optim.AdamW(mlp.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            loss = (nn.functional.cross_entropy(mlp(xs), y, reduction="none") * w).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return clf.eval()


def relabel_fragments(probs: torch.Tensor, table: FragmentTable, fragment_probs: torch.Tensor,
                      scored: Sequence[int]) -> torch.Tensor:
    """``probs`` with every fragment point's probability over ``scored`` replaced by its
    fragment's class distribution (``fragment_probs`` (F, K)), scaled by the point's own total
    over ``scored``. Other classes and other points keep theirs; the input is not modified."""
    out = probs.detach().float().cpu().clone()
    rows = table.labels >= 0
    if bool(rows.any()):
        out[rows] = refine_points(out[rows], fragment_probs.float()[table.labels[rows]], scored)
    return out


class FragmentStage(nn.Module):
    """The fitted classifiers of every side, applied in turn.

    ``groups``: the classes whose called points form each side's fragments, in the order the
    sides are applied (the second side sees the first side's relabelled calls); ``scored``: the
    classes a fragment can be given (the scored classes of the task); ``num_classes``: all the
    task's classes. ``refiners``: :class:`~detfm.evaluate.point_refiner.PointRefiner` rounds
    applied to every point after the sides, in turn (each reads the calls of the one before)."""

    def __init__(self, groups: Sequence[Sequence[int]], scored: Sequence[int], num_classes: int,
                 hidden: int = 64, members: int = 4, refiners: Sequence[PointRefiner] = ()) -> None:
        super().__init__()
        self.groups = tuple(tuple(int(c) for c in g) for g in groups)
        self.scored = tuple(int(c) for c in scored)
        self.num_classes = int(num_classes)
        if not self.groups or any(not g or not set(g) <= set(self.scored) for g in self.groups):
            raise ConfigError(f"fragment classifier: every group must be a non-empty subset of the scored classes "
                              f"{list(self.scored)}, got {[list(g) for g in self.groups]}")
        if not set(self.scored) <= set(range(self.num_classes)):
            raise ConfigError(f"fragment classifier: scored classes {list(self.scored)} are not classes of a "
                              f"{self.num_classes}-class task")
        width = len(feature_names(self.num_classes))
        self.classifiers = nn.ModuleList(FragmentClassifier(width, len(self.scored), hidden, members)
                                         for _ in self.groups)
        for refiner in refiners:
            if refiner.scored != self.scored or refiner.num_classes != self.num_classes:
                raise ConfigError(f"fragment classifier: the point refiner scores {list(refiner.scored)} of "
                                  f"{refiner.num_classes} classes, the fragments {list(self.scored)} of "
                                  f"{self.num_classes}")
        self.refiners = nn.ModuleList(refiners)

    def tables(self, probs: torch.Tensor, coord: torch.Tensor, event: torch.Tensor,
               energy: torch.Tensor, side: int) -> FragmentTable:
        """The fragments of side ``side`` for these probabilities."""
        return fragment_table(probs, coord, event, energy, self.groups[side], self.scored)

    @torch.no_grad()
    def apply_side(self, side: int, probs: torch.Tensor, coord: torch.Tensor, event: torch.Tensor,
                   energy: torch.Tensor) -> torch.Tensor:
        """``probs`` after side ``side``'s fragments are relabelled."""
        table = self.tables(probs, coord, event, energy, side)
        if table.count == 0:
            return probs.detach().float().cpu().clone()
        fragment_probs = self.classifiers[side](table.features).exp()  # log-probabilities
        return relabel_fragments(probs, table, fragment_probs, self.scored)

    def forward(self, probs: torch.Tensor, coord: torch.Tensor, event: torch.Tensor,
                energy: torch.Tensor) -> torch.Tensor:
        """``probs`` (P, C) after every side and the point refiner rounds, on the input's device."""
        out = probs
        for side in range(len(self.groups)):
            out = self.apply_side(side, out, coord, event, energy)
        for refiner in self.refiners:
            out = refiner(out, probs, coord, event, energy)
        return out.to(probs.device)


def stage_record(stage: FragmentStage, class_names: Sequence[str], info: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """What scores and predictions record of an applied stage: the classes of each side, and
    with the stage's ``fragment_classifier.json`` ``info`` the views it was fitted on and whether
    it has a point refiner."""
    record: dict[str, Any] = {"sides": [[class_names[c] for c in g] for g in stage.groups]}
    if info is not None:
        record.update(fitted_views=info["views"], point_refiner=bool(info.get("point_refiner")))
    return record


class FragmentRelabel(PointProbabilityStep):
    """``task``'s per-point class probabilities after a fitted :class:`FragmentStage`.

    ``task``: a point task (``forward_logits``, ``scored_items``, ``item_outputs``) or an
    :class:`~detfm.evaluate.orientations.OrientationAverage` of one. Outputs are
    log-probabilities, as :class:`~detfm.evaluate.fragments.FragmentVote` gives."""

    def __init__(self, task: nn.Module, stage: FragmentStage) -> None:
        super().__init__(task, "fragment classifier")
        self.stage = stage

    def step(self, probs: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        return self.stage(probs, batch.coord, batch.batch_index(), batch.energy)


def save_fragment_stage(stage: FragmentStage, info: dict[str, Any], run_dir: str | os.PathLike[str]) -> None:
    """Write ``stage`` (safetensors) and ``info`` (JSON, with ``groups``, ``scored_ids``,
    ``num_classes``, ``hidden`` and ``members``) into a run directory, each file atomically."""
    run = Path(run_dir)
    with atomic_path(run / FRAGMENT_CLASSIFIER_FILE) as tmp:
        save_file({k: v.contiguous() for k, v in stage.state_dict().items()}, str(tmp))
    atomic_write_text(run / FRAGMENT_CLASSIFIER_INFO, json.dumps(info, indent=2) + "\n")


def load_fragment_stage(run_dir: str | os.PathLike[str]) -> tuple[FragmentStage, dict[str, Any]]:
    """The fitted :class:`FragmentStage` of a run and its ``fragment_classifier.json``."""
    run = Path(run_dir)
    weights, info_file = run / FRAGMENT_CLASSIFIER_FILE, run / FRAGMENT_CLASSIFIER_INFO
    info = read_fitted_info(run, FRAGMENT_CLASSIFIER_FILE, FRAGMENT_CLASSIFIER_INFO, FRAGMENT_INFO_FORMAT,
                            ("groups", "scored_ids", "num_classes", "hidden", "members"), "fragment classifier",
                            f"detfm fragments --model {run}")
    refined = info.get("point_refiner")
    lacking = [k for k in ("line_classes", "hops", "hidden", "members") if refined and k not in refined]
    if lacking:
        raise DetfmError(f"{info_file}: its point_refiner lacks {', '.join(lacking)}")
    cells = refined.get("cells", []) if refined else []
    if refined and refined.get("features") != list(point_feature_names(info["num_classes"], refined["hops"], cells)):
        raise DetfmError(f"{info_file}: its point refiner was fitted on other point features than this detfm computes; "
                         f"fit it again with `detfm fragments --model {run} --point-refiner`")
    rounds = int(refined.get("rounds", 1)) if refined else 0
    refiners = [PointRefiner(info["scored_ids"], refined["line_classes"], info["num_classes"], refined["hops"],
                             refined["hidden"], refined["members"], cells=cells) for _ in range(rounds)]
    stage = FragmentStage(info["groups"], info["scored_ids"], info["num_classes"], info["hidden"], info["members"],
                          refiners)
    state = load_file(str(weights))
    want = stage.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}" for k, v in want.items()
              if k in state and state[k].shape != v.shape]
    if missing or extra or shapes:
        raise DetfmError(f"{weights}: does not match {info_file} (missing {missing}, unexpected {extra}, "
                         f"shapes {shapes})")
    stage.load_state_dict(state)
    return stage.eval(), info

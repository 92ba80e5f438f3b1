"""Scores of particle-level set prediction (the ``particles`` task).

Matching: in each event a predicted particle and a truth particle match when their masks
(the points each holds) have IoU >= 0.5 (:func:`~detfm.tasks.particles.match_by_iou`;
predicted masks are disjoint, so a truth particle matches at most one prediction). Truth
particles are those of :func:`~detfm.tasks.particles.particle_targets` (low-energy
deposits are stuff, in no particle). A truth particle beyond the task's ``num_queries``
in an event can never be found: it counts as missed.

What :func:`particle_scores` reports:

* ``finding``: efficiency per true class (found / true particles) and purity per
  predicted class (matched / predicted particles), and over all classes;
* ``panoptic``: panoptic quality ``PQ = SQ * RQ`` over all particles (class-agnostic
  matching) and per class (pairs whose true and predicted classes both are the class);
* PID on found particles: the confusion matrix (rows: truth) and the scoring loop's usual
  keys from it (``macro_f1``, ``accuracy``, ``f1``, ``efficiency`` = recall, ``purity`` =
  precision), so studies and cards read them as for ``pid``;
* ``end_to_end``: per class, efficiency = true particles found *and* given their class /
  true particles, purity = predicted particles of the class matched to a true one of the
  class / predicted particles of the class; ``electron_photon`` repeats these two classes
  with their target (both >= 0.80);
* ``muon_pion``: on found true muons and pions, the AUC of ``p(mu) / (p(mu) + p(pi))``
  and the misidentification fractions both ways;
* ``energy``: per true class, on found particles with known truth kinetic energy,
  relative residual ``E / E_true - 1``: bias (median) and resolution (half the 16-84 %
  width), for the regressed energy and for the calorimetric baseline ``s_c * sum of the
  voxel energies of the truth particle's points`` with ``s_c`` the median of
  ``E_true / sum`` of class ``c`` over the same particles (fitted on the scored events
  themselves, which favours the baseline a little);
* ``parameters`` (:func:`score_particles` only): the decoder's and the backbone's parameter
  counts and their ratio, beside the target ratio of 1/20.

:func:`particle_event_stats` and :func:`weighted_particle_metrics` break the headline
scores down by event for the bootstrap of ``detfm evaluate`` (detector systematics,
:mod:`detfm.recipes.systematics`).

:func:`compare_with_truth_pid` sets these beside the scores of a ``pid`` run (particle ID
on the truth instances) of the same events.

:class:`ParticlesWithPid` names the particles a ``particles`` run finds with the head of a
``pid`` run (two stages: the decoder finds the masks, the ``pid`` head, trained on truth
instances, classifies them); ``detfm score --model PARTICLES_RUN --pid PID_RUN``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from detfm.data import PackedBatch
from detfm.evaluate.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    per_class_f1,
    per_class_precision,
    per_class_recall,
)
from detfm.evaluate.scoring import eval_batches, json_float, register_scorer
from detfm.tasks.particles import (
    ParticlePredictions,
    ParticleTargets,
    event_local_ids,
    iou_matrix,
    match_by_iou,
    particle_targets,
)
from detfm.tasks.pid import NUM_PID, ParticleID
from detfm.tasks.registry import TaskSpec

__all__ = ["IOU_THRESHOLD", "SYSTEMATIC_METRICS", "ParticleEventStats", "ParticleRecords", "ParticlesWithPid",
           "collect_particle_records", "compare_with_truth_pid", "event_records", "parameter_counts",
           "particle_event_stats", "particle_scores", "score_particles", "weighted_particle_metrics"]

IOU_THRESHOLD = 0.5
E_GAMMA_TARGET = 0.80  # the electron / photon efficiency and purity target
DECODER_RATIO_TARGET = 1 / 20  # the decoder's target size relative to the backbone


@dataclass
class ParticleRecords:
    """Per truth particle and per predicted particle of a set of events (numpy arrays).

    Truth side (T,): ``truth_event``, ``truth_label``, ``truth_size`` (points),
    ``truth_energy`` (kinetic energy MeV, NaN unknown), ``truth_calo`` (summed voxel energy
    of its points, MeV), ``truth_match`` (matched prediction, -1: missed), ``truth_iou``.
    Predicted side (K,): ``pred_event``, ``pred_probs`` (K, 6: 5 classes and no object),
    ``pred_label``, ``pred_energy``, ``pred_match`` (matched truth, -1: none).
    """

    events: int = 0
    truth_event: list[np.ndarray] = field(default_factory=list)
    truth_label: list[np.ndarray] = field(default_factory=list)
    truth_size: list[np.ndarray] = field(default_factory=list)
    truth_energy: list[np.ndarray] = field(default_factory=list)
    truth_calo: list[np.ndarray] = field(default_factory=list)
    truth_match: list[np.ndarray] = field(default_factory=list)
    truth_iou: list[np.ndarray] = field(default_factory=list)
    pred_event: list[np.ndarray] = field(default_factory=list)
    pred_probs: list[np.ndarray] = field(default_factory=list)
    pred_label: list[np.ndarray] = field(default_factory=list)
    pred_energy: list[np.ndarray] = field(default_factory=list)
    pred_match: list[np.ndarray] = field(default_factory=list)

    def add_event(self, truth_point: np.ndarray, truth_label: np.ndarray, truth_energy: np.ndarray,
                  point_energy: np.ndarray, pred_point: np.ndarray, pred_probs: np.ndarray,
                  pred_energy: np.ndarray) -> None:
        """Add one event: per point its truth and predicted particle (0-based within the
        event, -1: none) and voxel energy; per truth particle its class and kinetic energy;
        per predicted particle its 6 class probabilities and energy."""
        t, k = len(truth_label), len(pred_probs)
        iou = iou_matrix(pred_point, truth_point, k, t)
        pi, ti = match_by_iou(iou, IOU_THRESHOLD)
        t_match = np.full(t, -1, np.int64)
        p_match = np.full(k, -1, np.int64)
        t_iou = np.zeros(t)
        offset_t = sum(len(x) for x in self.truth_label)
        offset_p = sum(len(x) for x in self.pred_probs)
        t_match[ti] = pi + offset_p
        p_match[pi] = ti + offset_t
        t_iou[ti] = iou[pi, ti]
        tp = np.asarray(truth_point, np.int64)
        calo = np.bincount(tp[tp >= 0], weights=np.asarray(point_energy, np.float64)[tp >= 0], minlength=t)[:t]
        size = np.bincount(tp[tp >= 0], minlength=t)[:t]
        probs = np.asarray(pred_probs, np.float64).reshape(k, NUM_PID + 1)
        self.truth_event.append(np.full(t, self.events, np.int64))
        self.truth_label.append(np.asarray(truth_label, np.int64))
        self.truth_size.append(size.astype(np.int64))
        self.truth_energy.append(np.asarray(truth_energy, np.float64))
        self.truth_calo.append(calo)
        self.truth_match.append(t_match)
        self.truth_iou.append(t_iou)
        self.pred_event.append(np.full(k, self.events, np.int64))
        self.pred_probs.append(probs)
        self.pred_label.append(probs[:, :NUM_PID].argmax(1) if k else np.zeros(0, np.int64))
        self.pred_energy.append(np.asarray(pred_energy, np.float64))
        self.pred_match.append(p_match)
        self.events += 1

    def arrays(self) -> dict[str, np.ndarray]:
        """Every field concatenated over events."""
        out: dict[str, np.ndarray] = {}
        for name in ("truth_event", "truth_label", "truth_size", "truth_energy", "truth_calo", "truth_match",
                     "truth_iou", "pred_event", "pred_label", "pred_energy", "pred_match"):
            parts = getattr(self, name)
            out[name] = np.concatenate(parts) if parts else np.zeros(0)
        out["pred_probs"] = (np.concatenate(self.pred_probs) if self.pred_probs
                             else np.zeros((0, NUM_PID + 1)))
        for name in ("truth_label", "truth_match", "pred_label", "pred_match", "truth_event", "pred_event"):
            out[name] = out[name].astype(np.int64)
        return out


def event_records(records: ParticleRecords, batch: PackedBatch, pred: ParticlePredictions,
                  targets: ParticleTargets) -> None:
    """Add every event of ``batch`` (its predictions and truth) to ``records``."""
    probs = torch.softmax(pred.logits.float(), -1).cpu().numpy() if len(pred) else np.zeros((0, NUM_PID + 1))
    for b in range(len(batch)):
        a, e = int(batch.offsets[b]), int(batch.offsets[b + 1])
        pk = torch.nonzero(pred.event == b).squeeze(1)
        tk = torch.nonzero(targets.event == b).squeeze(1)
        records.add_event(
            truth_point=event_local_ids(targets.point_particle[a:e], tk),
            truth_label=targets.label[tk].cpu().numpy(), truth_energy=targets.energy[tk].cpu().numpy(),
            point_energy=batch.energy[a:e].cpu().numpy(), pred_point=event_local_ids(pred.point_particle[a:e], pk),
            pred_probs=probs[pk.cpu().numpy()], pred_energy=pred.energy[pk].cpu().numpy())


class ParticlesWithPid(nn.Module):
    """A ``particles`` task whose found particles are classified by a ``pid`` task's pooled
    head instead of the decoder's class head.

    The decoder finds the particles (masks, energy, start) as it does alone, by its own
    inference rule (which reads its own class scores); each found particle's points are then
    pooled by the ``pid`` task, as that task pools a truth instance's points. The particle's
    probabilities become ``p(no object)`` of the decoder and ``(1 - p(no object)) * p_pid(c)``
    for the 5 classes: the class is the ``pid`` head's, the score (``1 - p(no object)``) the
    decoder's. Both tasks run their own backbones.
    """

    def __init__(self, particles: nn.Module, pid: ParticleID) -> None:
        super().__init__()
        if not isinstance(pid, ParticleID):
            raise TypeError(f"the second stage must be a pid task, got {type(pid).__name__}")
        self.particles = particles
        self.pid = pid

    @property
    def config(self) -> Any:
        """The ``particles`` task's settings (what the scorers read)."""
        return self.particles.config

    @property
    def backbone(self) -> nn.Module:
        """The ``particles`` task's backbone (the decoder's size is counted against it)."""
        return self.particles.backbone  # type: ignore[return-value]

    @torch.no_grad()
    def predict(self, batch: PackedBatch) -> ParticlePredictions:
        """The particles of ``batch`` as the ``particles`` task finds them, named by the ``pid`` head."""
        pred: ParticlePredictions = self.particles.predict(batch)  # type: ignore[operator]
        if len(pred) == 0:
            return pred
        named = self.pid.pooled_logits(batch, pred.point_particle, len(pred)).float().log_softmax(-1)
        own = pred.logits.float().log_softmax(-1)  # the decoder's (K, 6) log-probabilities
        something = torch.logsumexp(own[:, :NUM_PID], -1, keepdim=True)  # log(1 - p(no object))
        logits = torch.cat([something + named, own[:, NUM_PID:]], 1)
        return dataclasses.replace(pred, logits=logits, label=named.argmax(-1))


def collect_particle_records(task: nn.Module, dataset: Any, batch_size: int = 8,
                             progress: bool = False) -> ParticleRecords:
    """Run a ``particles`` task over ``dataset`` (labeled, in order) and record every truth
    and predicted particle."""
    records = ParticleRecords()
    dataset_kind = task.config.dataset  # type: ignore[union-attr]
    for _, batch in eval_batches(task, dataset, batch_size, progress, desc="particles"):
        event_records(records, batch, task.predict(batch), particle_targets(batch, dataset_kind))  # type: ignore[operator]
    return records


# ----------------------------------------------------------------------------- metrics
def _ratio(num: float, den: float) -> float | None:
    return json_float(num / den) if den > 0 else None


def _named(values: Sequence[float | None], classes: Sequence[str]) -> dict[str, float | None]:
    return {c: json_float(v) if v is not None else None for c, v in zip(classes, values, strict=True)}


def _auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Area under the ROC curve of scores ``pos`` (signal) against ``neg`` (Mann-Whitney, ties 1/2)."""
    if len(pos) == 0 or len(neg) == 0:
        return None
    allv = np.concatenate([pos, neg])
    order = np.argsort(allv, kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    i = 0
    while i < len(sorted_v):  # average ranks of ties
        j = i
        while j + 1 < len(sorted_v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def _residual_stats(pred: np.ndarray, true: np.ndarray) -> dict[str, float | None]:
    r = pred / true - 1.0
    if len(r) == 0:
        return {"bias": None, "resolution": None, "mean_bias": None}
    lo, med, hi = np.percentile(r, [15.865, 50.0, 84.135])
    return {"bias": json_float(float(med)), "resolution": json_float(float(hi - lo) / 2.0),
            "mean_bias": json_float(float(r.mean()))}


def particle_scores(records: ParticleRecords, classes: Sequence[str]) -> dict[str, Any]:
    """Every particle-level score of the module docstring from ``records``."""
    r = records.arrays()
    n = len(classes)
    t_label, t_match, p_label, p_match = r["truth_label"], r["truth_match"], r["pred_label"], r["pred_match"]
    found = t_match >= 0
    matched = p_match >= 0
    # finding
    eff = [_ratio(float((found & (t_label == c)).sum()), float((t_label == c).sum())) for c in range(n)]
    pur = [_ratio(float((matched & (p_label == c)).sum()), float((p_label == c).sum())) for c in range(n)]
    finding = {"truth_particles": len(t_label), "predicted_particles": len(p_label),
               "matched": int(found.sum()), "efficiency_all": _ratio(float(found.sum()), float(len(t_label))),
               "purity_all": _ratio(float(matched.sum()), float(len(p_label))),
               "efficiency": _named(eff, classes), "purity": _named(pur, classes), "iou_threshold": IOU_THRESHOLD}
    # panoptic quality
    iou = r["truth_iou"]
    pred_of = np.where(found, t_match, 0)
    matched_pred_label = np.where(found, p_label[pred_of] if len(p_label) else -1, -1)

    def pq(tp_mask: np.ndarray, fp: int, fn: int) -> dict[str, float | None]:
        tp = int(tp_mask.sum())
        sq = float(iou[tp_mask].mean()) if tp else None
        rq = _ratio(tp, tp + 0.5 * fp + 0.5 * fn)
        return {"pq": json_float(sq * rq) if sq is not None and rq is not None else (0.0 if fp + fn else None),
                "sq": json_float(sq) if sq is not None else None, "rq": rq}

    panoptic = pq(found, int((~matched).sum()), int((~found).sum()))
    per_class = {}
    for c, name in enumerate(classes):
        tp_c = found & (t_label == c) & (matched_pred_label == c)
        fp_c = int((p_label == c).sum()) - int(tp_c.sum())
        fn_c = int((t_label == c).sum()) - int(tp_c.sum())
        per_class[name] = pq(tp_c, fp_c, fn_c)["pq"]
    panoptic["pq_per_class"] = per_class
    # PID on found particles
    cm = confusion_matrix(t_label[found], matched_pred_label[found], n) if found.any() else np.zeros((n, n), np.int64)
    # end to end
    right = found & (matched_pred_label == t_label)
    truth_of = np.where(matched, p_match, 0)
    pred_right = matched & (t_label[truth_of] == p_label) if len(t_label) else np.zeros(len(p_label), bool)
    e2e_eff = [_ratio(float((right & (t_label == c)).sum()), float((t_label == c).sum())) for c in range(n)]
    e2e_pur = [_ratio(float((pred_right & (p_label == c)).sum()), float((p_label == c).sum())) for c in range(n)]
    end_to_end = {"efficiency": _named(e2e_eff, classes), "purity": _named(e2e_pur, classes)}
    egamma: dict[str, Any] = {"target": E_GAMMA_TARGET}
    for name in ("electron", "photon"):
        if name in classes:
            c = list(classes).index(name)
            egamma[name] = {"efficiency": e2e_eff[c], "purity": e2e_pur[c]}
    egamma["target_met"] = all(
        isinstance(egamma.get(nm), dict) and egamma[nm]["efficiency"] is not None
        and egamma[nm]["purity"] is not None and egamma[nm]["efficiency"] >= E_GAMMA_TARGET
        and egamma[nm]["purity"] >= E_GAMMA_TARGET for nm in ("electron", "photon"))
    # muon / pion separation
    mupi: dict[str, Any] = {}
    if "muon" in classes and "pion" in classes:
        mu, pi = list(classes).index("muon"), list(classes).index("pion")
        probs = r["pred_probs"]
        sel = found & np.isin(t_label, [mu, pi])
        pp = probs[t_match[sel]] if sel.any() else np.zeros((0, n + 1))
        score = pp[:, mu] / np.maximum(pp[:, mu] + pp[:, pi], 1e-12)
        is_mu = t_label[sel] == mu
        labels = matched_pred_label[sel]
        mupi = {"muons": int(is_mu.sum()), "pions": int((~is_mu).sum()),
                "auc": json_float(a) if (a := _auc(score[is_mu], score[~is_mu])) is not None else None,
                "muon_as_pion": _ratio(float((labels[is_mu] == pi).sum()), float(is_mu.sum())),
                "pion_as_muon": _ratio(float((labels[~is_mu] == mu).sum()), float((~is_mu).sum()))}
    # energy
    energy: dict[str, Any] = {}
    t_e, calo = r["truth_energy"], r["truth_calo"]
    p_e = np.where(found, r["pred_energy"][pred_of] if len(p_label) else np.nan, np.nan)
    for c, name in enumerate(classes):
        sel_c = found & (t_label == c)
        known = sel_c & np.isfinite(t_e) & (t_e > 0)
        entry: dict[str, Any] = {"n": int(known.sum()), "unknown_truth": int((sel_c & ~known).sum())}
        entry["regressed"] = _residual_stats(p_e[known], t_e[known])
        ok = known & (calo > 0)
        scale = float(np.median(t_e[ok] / calo[ok])) if ok.any() else None
        entry["calorimetric_scale"] = json_float(scale) if scale is not None else None
        entry["calorimetric"] = _residual_stats(scale * calo[ok], t_e[ok]) if scale is not None else \
            _residual_stats(np.zeros(0), np.zeros(0))
        energy[name] = entry
    return {"particles": len(t_label), "classes": list(classes), "pq": panoptic["pq"],
            "macro_f1": json_float(macro_f1(cm)), "accuracy": json_float(accuracy(cm)),
            "f1": _named(list(per_class_f1(cm)), classes), "efficiency": _named(list(per_class_recall(cm)), classes),
            "purity": _named(list(per_class_precision(cm)), classes), "confusion": cm.tolist(),
            "finding": finding, "panoptic": panoptic, "end_to_end": end_to_end, "electron_photon": egamma,
            "muon_pion": mupi, "energy": energy,
            "note": "macro_f1/f1/efficiency/purity/confusion: particle ID on found particles (IoU >= 0.5); "
                    "finding and end_to_end: over all truth / predicted particles"}


def parameter_counts(task: nn.Module) -> dict[str, Any]:
    """Parameters of the backbone and of the decoder (everything the task adds on top of the
    backbone: mask features, queries, decoder blocks, per-query heads and the stuff head),
    and their ratio beside the target size of the head (:data:`DECODER_RATIO_TARGET`)."""
    backbone = sum(p.numel() for p in task.backbone.parameters())  # type: ignore[union-attr]
    decoder = sum(p.numel() for p in task.parameters()) - backbone
    return {"backbone": int(backbone), "decoder": int(decoder),
            "decoder_to_backbone": json_float(decoder / backbone) if backbone else None,
            "target_ratio": DECODER_RATIO_TARGET}


def score_particles(task: nn.Module, spec: TaskSpec, dataset: Any, batch_size: int = 8,
                    progress: bool = False) -> dict[str, Any]:
    """The scores of a ``particles`` task on ``dataset`` (the scoring loop's scorer), with the
    decoder's size against the backbone's (:func:`parameter_counts`)."""
    scores = particle_scores(collect_particle_records(task, dataset, batch_size, progress), spec.class_names)
    decoder = task.particles if isinstance(task, ParticlesWithPid) else task
    return {**scores, "parameters": parameter_counts(decoder)}


def compare_with_truth_pid(particles: dict[str, Any], pid: dict[str, Any]) -> dict[str, Any]:
    """Per class, the set prediction's end-to-end efficiency / purity and its PID on found
    particles beside the efficiency / purity of a ``pid`` run (truth instances given) on the
    same events: what finding the particles oneself costs."""
    classes = particles.get("classes", [])
    out: dict[str, Any] = {}
    for name in classes:
        out[name] = {"set_prediction_efficiency": particles["end_to_end"]["efficiency"].get(name),
                     "set_prediction_purity": particles["end_to_end"]["purity"].get(name),
                     "pid_on_found_efficiency": particles["efficiency"].get(name),
                     "truth_instance_efficiency": pid.get("efficiency", {}).get(name),
                     "truth_instance_purity": pid.get("purity", {}).get(name)}
    return {"per_class": out, "macro_f1_on_found": particles.get("macro_f1"),
            "truth_instance_macro_f1": pid.get("macro_f1")}


# ----------------------------------------------------------------------------- systematics
SYSTEMATIC_METRICS = ("efficiency_all", "purity_all", "pq", "pid_accuracy_on_found", "electron_efficiency",
                      "electron_purity", "photon_efficiency", "photon_purity")
"""The headline metrics of a systematics report: finding efficiency and purity (mask IoU >=
0.5), panoptic quality, PID accuracy on found particles and the end-to-end electron and
photon efficiency and purity (see :func:`particle_event_stats` for every metric)."""

_QUANTILES = (15.865, 50.0, 84.135)  # the 16-84 % band and the median of the energy residuals


@dataclass(frozen=True)
class ParticleEventStats:
    """The particle metrics of a set of events broken down by event, so that a bootstrap
    resample of events is a weighting (:func:`weighted_particle_metrics`).

    Attributes:
        events: number of events ``E``.
        ratios: ``{metric: (numerator, denominator)}``, each (E,): the metric is
            ``sum(numerator) / sum(denominator)`` over events.
        residuals: ``{class: (event, residual)}``, each (n,): the relative residual
            ``E / E_true - 1`` of the regressed kinetic energy of every found particle of the
            class with known truth energy, and its event.
    """

    events: int
    ratios: dict[str, tuple[np.ndarray, np.ndarray]]
    residuals: dict[str, tuple[np.ndarray, np.ndarray]]


def particle_event_stats(records: ParticleRecords, classes: Sequence[str]) -> ParticleEventStats:
    """Per event, what every systematics metric is made of (same definitions as
    :func:`particle_scores`).

    Ratio metrics: ``efficiency_all``, ``purity_all``, ``pq`` (sum of matched IoUs over
    ``TP + FP / 2 + FN / 2``), ``pid_accuracy_on_found``, ``finding_efficiency_<class>``,
    ``finding_purity_<class>`` and the end-to-end ``electron_efficiency``,
    ``electron_purity``, ``photon_efficiency``, ``photon_purity``. Energy: the residuals of
    every class (:func:`weighted_particle_metrics` turns them into ``energy_bias_<class>``
    and ``energy_resolution_<class>``).
    """
    r = records.arrays()
    e = records.events
    t_ev, p_ev = r["truth_event"], r["pred_event"]
    found, matched = r["truth_match"] >= 0, r["pred_match"] >= 0
    t_label, p_label = r["truth_label"], r["pred_label"]
    pred_label_of_truth = np.where(found, p_label[np.where(found, r["truth_match"], 0)] if len(p_label) else -1, -1)
    truth_label_of_pred = np.where(matched, t_label[np.where(matched, r["pred_match"], 0)] if len(t_label) else -1,
                                   -1)

    def per_event(events: np.ndarray, values: np.ndarray) -> np.ndarray:
        return np.bincount(events, weights=values.astype(np.float64), minlength=e)[:e]

    n_t, n_p = per_event(t_ev, np.ones(len(t_ev))), per_event(p_ev, np.ones(len(p_ev)))
    n_found = per_event(t_ev, found)
    ratios = {"efficiency_all": (n_found, n_t), "purity_all": (per_event(p_ev, matched), n_p),
              "pq": (per_event(t_ev, r["truth_iou"] * found),
                     n_found + 0.5 * (n_p - per_event(p_ev, matched)) + 0.5 * (n_t - n_found)),
              "pid_accuracy_on_found": (per_event(t_ev, found & (pred_label_of_truth == t_label)), n_found)}
    for c, name in enumerate(classes):
        ratios[f"finding_efficiency_{name}"] = (per_event(t_ev, found & (t_label == c)), per_event(t_ev, t_label == c))
        ratios[f"finding_purity_{name}"] = (per_event(p_ev, matched & (p_label == c)), per_event(p_ev, p_label == c))
    for name in ("electron", "photon"):
        if name in classes:
            c = list(classes).index(name)
            ratios[f"{name}_efficiency"] = (per_event(t_ev, found & (t_label == c) & (pred_label_of_truth == c)),
                                            per_event(t_ev, t_label == c))
            ratios[f"{name}_purity"] = (per_event(p_ev, matched & (p_label == c) & (truth_label_of_pred == c)),
                                        per_event(p_ev, p_label == c))
    t_e = r["truth_energy"]
    p_e = np.where(found, r["pred_energy"][np.where(found, r["truth_match"], 0)] if len(p_label) else np.nan, np.nan)
    residuals = {}
    for c, name in enumerate(classes):
        known = found & (t_label == c) & np.isfinite(t_e) & (t_e > 0)
        residuals[name] = (t_ev[known], p_e[known] / t_e[known] - 1.0)
    return ParticleEventStats(events=e, ratios=ratios, residuals=residuals)


def weighted_particle_metrics(stats: ParticleEventStats, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of :func:`particle_event_stats` for each row of (B, E) integer event
    weights (a bootstrap resample counts each event so many times; a row of ones gives the
    metrics of the events themselves). Returns ``{metric: (B,)}``, NaN where undefined.

    Energy: ``energy_bias_<class>`` (median residual) and ``energy_resolution_<class>``
    (half the 16-84 % width), as :func:`particle_scores` reports them for the regressed
    energy, each residual counted as often as its event.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 2 or w.shape[1] != stats.events:
        raise ValueError(f"weights must be (B, {stats.events}), got {w.shape}")
    counts = np.rint(w).astype(np.int64)
    if not np.array_equal(counts, w) or (counts < 0).any():
        raise ValueError("event weights must be counts (integers >= 0)")
    out: dict[str, np.ndarray] = {}
    for metric, (num, den) in stats.ratios.items():
        top, bottom = w @ num, w @ den
        out[metric] = np.divide(top, bottom, out=np.full(len(w), np.nan), where=bottom > 0)
    for name, (event, residual) in stats.residuals.items():
        bias, resolution = np.full(len(w), np.nan), np.full(len(w), np.nan)
        for b, row in enumerate(counts):
            drawn = np.repeat(residual, row[event])
            if drawn.size:
                lo, med, hi = np.percentile(drawn, _QUANTILES)
                bias[b], resolution[b] = med, (hi - lo) / 2.0
        out[f"energy_bias_{name}"], out[f"energy_resolution_{name}"] = bias, resolution
    return out


register_scorer("particles", score_particles)

"""Anomaly scores from a pretrained backbone, and how well they find rare signatures.

Three scores per event, higher = more anomalous:

* ``"reconstruction"``: the masked-modeling loss of the pretraining run's full task
  (encoder and decoder). For each of ``masks`` random masks, drawn per event from
  ``SeedSequence([seed, event, k])`` so that the score does not depend on the batch, the
  event's hidden part is predicted and scored with the training loss; the score is the mean
  over the masks. Patch backbones (``mpm`` on ``pointmae_*``): the hidden patches' points and
  energies (Chamfer distance + Huber loss of the energy infilling, each averaged over the
  event's hidden patches, weighted as in training). Point-resolution backbones (``mpm`` on
  ``ptv3_*`` / ``uresnet_*``, i.e. masked voxel modeling): the Huber loss of the energy
  infilled at the voxels of the event's hidden grid cells. A self-distillation run has no
  reconstruction; its events get the density score only.
* ``"density"``: the pooled backbone feature of the event (mean and max over its tokens,
  :func:`detfm.models.pool_tokens`; for point-resolution backbones, over its points'
  multi-level features, the ones a linear probe reads), standardised with a reference set of
  normal events;
  the score is the mean Euclidean distance to its ``neighbours`` nearest reference events
  (``density="knn"``) or its squared Mahalanobis distance to a Gaussian fitted on the
  reference (``density="mahalanobis"``). Needs a reference file of normal events.
* ``"baseline"``: no model, only (log(1 + total energy), log(1 + number of points)): the
  squared Mahalanobis distance to a 2D Gaussian fitted on the reference (or on the scored
  file itself when no reference is given), i.e. twice its negative log density up to a
  constant.

Events are read as the run saw them in training (its energy threshold), unrotated. An event
with no point above the threshold, or too small to hide a patch, gets a NaN score from the
backbone methods. :func:`anomaly_study` scores a normal file and files of anomalous events
and writes ``anomalies.json`` with the ROC AUC and the efficiency at 1 % false-positive rate
of every method and signature.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detfm.data import EventDataset, PackedBatch, collate
from detfm.errors import ConfigError, DetfmError
from detfm.io import atomic_path, atomic_write_text
from detfm.models import pool_tokens
from detfm.models.contract import multilevel_width
from detfm.models.packing import group_max, group_mean
from detfm.engine.runs import load_objective, run_settings
from detfm.tasks import MaskedPointModeling
from detfm.tasks.distill import SelfDistillation
from detfm.tasks.losses import chamfer_distance, masked_mean
from detfm.tasks.mvm import MaskedVoxelModeling
from detfm.tasks.views import grid_mask

__all__ = [
    "ANOMALIES_KIND", "BACKBONE_METHODS", "METHODS", "AnomalyScorer", "anomaly_study", "efficiency_at_fpr",
    "event_summary", "load_pretraining_task", "roc_auc", "score_events", "supported_methods",
]

ANOMALIES_KIND = "detfm-anomalies/1"
METHODS = ("reconstruction", "density", "baseline")
BACKBONE_METHODS = ("reconstruction", "density")
DENSITIES = ("knn", "mahalanobis")
# Relative ridge added to covariance matrices (features can be constant or collinear).
_RIDGE = 1e-6
_MIN_STD = 1e-6
_KNN_CHUNK = 1024


# ----------------------------------------------------------------------------- separation metrics
def _finite(scores: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(scores, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ConfigError(f"{name}: no scores")
    if not np.isfinite(a).all():
        raise ConfigError(f"{name}: {int((~np.isfinite(a)).sum())} non-finite score(s); drop them first")
    return a


def roc_auc(scores_normal: Sequence[float] | np.ndarray, scores_anomalous: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: P(anomalous score > normal score), ties counting one half.

    Computed exactly from average ranks (the Mann-Whitney U statistic). 1.0 is perfect
    separation, 0.5 no separation.
    """
    normal = _finite(scores_normal, "scores_normal")
    anomalous = _finite(scores_anomalous, "scores_anomalous")
    values, inverse, counts = np.unique(np.concatenate([normal, anomalous]), return_inverse=True,
                                        return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1.0  # 1-based rank of each distinct value's first copy
    avg_rank = first_rank + (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    n_n, n_a = len(normal), len(anomalous)
    u = ranks[n_n:].sum() - n_a * (n_a + 1) / 2.0
    return float(u / (n_n * n_a))


def efficiency_at_fpr(scores_normal: Sequence[float] | np.ndarray, scores_anomalous: Sequence[float] | np.ndarray,
                      fpr: float = 0.01) -> float:
    """Fraction of anomalous events selected by the cut that keeps at most ``fpr`` of normal ones.

    The cut is "score > t" with t the lowest value such that at most ``floor(fpr * n_normal)``
    normal events lie above it (t is a normal event's score, so ties at t are rejected on
    both sides and the false-positive rate never exceeds ``fpr``).
    """
    if not 0.0 < fpr <= 1.0:
        raise ConfigError(f"fpr must be in (0, 1], got {fpr}")
    normal = np.sort(_finite(scores_normal, "scores_normal"))[::-1]
    anomalous = _finite(scores_anomalous, "scores_anomalous")
    allowed = int(math.floor(fpr * len(normal) + 1e-9))
    threshold = -np.inf if allowed >= len(normal) else normal[allowed]
    return float((anomalous > threshold).mean())


# ----------------------------------------------------------------------------- loading
PretrainingTask = MaskedPointModeling | MaskedVoxelModeling | SelfDistillation


def supported_methods(task: torch.nn.Module) -> tuple[str, ...]:
    """The backbone methods a pretraining objective can score: self-distillation has no
    reconstruction, so only ``density``."""
    return ("density",) if isinstance(task, SelfDistillation) else BACKBONE_METHODS


def load_pretraining_task(run_dir: str | os.PathLike[str], *, map_location: str = "cpu"
                          ) -> tuple[PretrainingTask, float]:
    """(the run's full pretraining task in eval mode, its energy threshold in MeV): masked
    point modeling (patch backbones), masked voxel modeling or self-distillation
    (point-resolution backbones).

    Raises a DetfmError if ``run_dir`` is not a pretraining run or holds no weights.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise DetfmError(f"{run}: no such run directory")
    try:
        task = load_objective(run, map_location=map_location)
    except ConfigError as exc:
        raise DetfmError(f"{run}: not a pretraining run ({exc})") from None
    if not isinstance(task, (MaskedPointModeling, MaskedVoxelModeling, SelfDistillation)):
        raise DetfmError(f"{run}: anomaly scores need a masked-modeling or self-distillation run, "
                         f"not {type(task).__name__}")
    threshold = (run_settings(run).get("data") or {}).get("energy_threshold", 0.13)
    return task, float(threshold)


def _dataset(path: str | os.PathLike[str], energy_threshold: float) -> EventDataset:
    if not Path(path).is_file():
        raise DetfmError(f"{path}: no such event file")
    return EventDataset([path], energy_threshold=energy_threshold, min_points=0, labels=False)


def _batches(dataset: EventDataset, batch_size: int, progress: bool, desc: str
             ) -> Iterator[tuple[list[int], PackedBatch | None]]:
    """(positions in the file, batch of the non-empty events among them) for each chunk."""
    n = len(dataset)
    with tqdm(total=n, desc=desc, unit="event", disable=not progress, leave=False) as bar:
        for a in range(0, n, batch_size):
            samples = [dataset[i] for i in range(a, min(a + batch_size, n))]
            full = [(a + j, s) for j, s in enumerate(samples) if s.n_points > 0]
            yield [i for i, _ in full], (collate([s for _, s in full]) if full else None)
            bar.update(len(samples))


def event_summary(data_file: str | os.PathLike[str], energy_threshold: float = 0.13
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(number of points, total energy in MeV) of every event, counting voxels >= the threshold."""
    ds = _dataset(data_file, energy_threshold)
    n_points = np.zeros(len(ds), np.int64)
    energy = np.zeros(len(ds))
    for i in range(len(ds)):
        s = ds[i]
        n_points[i] = s.n_points
        energy[i] = float(np.asarray(s.energy, np.float64).sum())
    return n_points, energy


# ----------------------------------------------------------------------------- scores
def _standardise(reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = reference.mean(axis=0)
    std = reference.std(axis=0)
    return mean, np.where(std > _MIN_STD, std, 1.0)


def _mahalanobis_sq(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of rows of ``x`` to a Gaussian fitted on ``reference``."""
    mean, std = _standardise(reference)
    r = (reference - mean) / std
    z = (x - mean) / std
    cov = np.atleast_2d(np.cov(r, rowvar=False)) if len(r) > 1 else np.eye(r.shape[1])
    cov = cov + _RIDGE * max(float(np.trace(cov)) / cov.shape[0], 1.0) * np.eye(cov.shape[0])
    solved = np.linalg.solve(cov, z.T).T
    return np.einsum("ij,ij->i", z, solved)


def _knn_distance(x: np.ndarray, reference: np.ndarray, k: int, skip_self: bool) -> np.ndarray:
    """Mean distance of each row of ``x`` to its ``k`` nearest rows of ``reference``
    (standardised with the reference); ``skip_self`` drops each row's own entry (x is reference)."""
    mean, std = _standardise(reference)
    r = (reference - mean) / std
    z = (x - mean) / std
    kk = k + 1 if skip_self else k
    if kk > len(r):
        raise DetfmError(f"density: {len(r)} reference event(s) for {k} neighbour(s); "
                         f"use a larger reference file or fewer neighbours")
    r_sq = (r * r).sum(axis=1)
    out = np.empty(len(z))
    for a in range(0, len(z), _KNN_CHUNK):
        c = z[a:a + _KNN_CHUNK]
        d2 = np.maximum((c * c).sum(axis=1)[:, None] + r_sq[None, :] - 2.0 * c @ r.T, 0.0)
        if skip_self:
            d2[np.arange(len(c)), np.arange(a, a + len(c))] = -1.0  # its own entry sorts first
        near = np.sort(np.partition(d2, kk - 1, axis=1)[:, :kk], axis=1)
        near = near[:, 1:] if skip_self else near
        out[a:a + len(c)] = np.sqrt(near).mean(axis=1)
    return out


@dataclass
class AnomalyScorer:
    """A loaded pretraining run that scores event files; caches per-file features.

    Build with :meth:`from_run`. ``score(path, method, reference)`` returns one score per
    event of ``path`` in file order (see the module docstring).
    """

    task: PretrainingTask
    energy_threshold: float
    batch_size: int = 8
    masks: int = 4
    seed: int = 0
    neighbours: int = 5
    density: str = "knn"
    device: str = "cpu"
    progress: bool = False
    _features: dict[Path, np.ndarray] = field(default_factory=dict, repr=False)
    _summaries: dict[Path, np.ndarray] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("batch_size", "masks", "neighbours"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ConfigError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.density not in DENSITIES:
            raise ConfigError(f"unknown density '{self.density}'; choose one of {', '.join(DENSITIES)}")

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], **options: Any) -> AnomalyScorer:
        task, threshold = load_pretraining_task(run_dir, map_location=options.get("device", "cpu"))
        return cls(task=task, energy_threshold=threshold, **options)

    # -- per-file quantities (cached) -------------------------------------------------
    def features(self, path: str | os.PathLike[str]) -> np.ndarray:
        """(events, 2D) pooled backbone features; NaN rows for empty events."""
        key = Path(path).resolve()
        if key not in self._features:
            ds = _dataset(path, self.energy_threshold)
            out = np.full((len(ds), 2 * self._feature_width()), np.nan)
            with torch.no_grad():
                for rows, batch in _batches(ds, self.batch_size, self.progress, "features"):
                    if batch is not None:
                        out[rows] = self._pooled_features(batch.to(self.device))
            self._features[key] = out
        return self._features[key]

    @property
    def _patches(self) -> bool:
        return isinstance(self.task, MaskedPointModeling)

    def _feature_width(self) -> int:
        backbone = self.task.backbone
        return backbone.num_features if self._patches else multilevel_width(backbone)

    def _pooled_features(self, batch: PackedBatch) -> np.ndarray:
        """(B, 2 width): mean and max of each event's tokens (patch backbones) or of its
        points' multi-level features (point-resolution backbones)."""
        backbone = self.task.backbone
        if self._patches:
            tok = backbone.encode_tokens(batch)
            return pool_tokens(tok.tokens, tok.mask).double().cpu().numpy()
        feats = backbone.forward_features(batch).multilevel().double()
        event = batch.batch_index()
        return torch.cat([group_mean(feats, event, len(batch)), group_max(feats, event, len(batch))],
                         dim=1).cpu().numpy()

    def summary(self, path: str | os.PathLike[str]) -> np.ndarray:
        """(events, 2): log(1 + total energy / MeV), log(1 + points)."""
        key = Path(path).resolve()
        if key not in self._summaries:
            n_points, energy = event_summary(path, self.energy_threshold)
            self._summaries[key] = np.column_stack([np.log1p(energy), np.log1p(n_points.astype(np.float64))])
        return self._summaries[key]

    def reconstruction(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Per-event masked reconstruction loss, mean over ``masks`` masks (NaN: nothing to hide)."""
        if "reconstruction" not in supported_methods(self.task):
            raise ConfigError("method 'reconstruction' needs a masked-modeling run (objective mpm); a "
                              "self-distillation run scores events by 'density' only (--methods density)")
        ds = _dataset(path, self.energy_threshold)
        out = np.full(len(ds), np.nan)
        with torch.no_grad():
            for rows, batch in _batches(ds, self.batch_size, self.progress, "reconstruction"):
                if batch is not None:
                    out[rows] = self._reconstruction_batch(batch.to(self.device))
        return out

    def _event_masks(self, patch_mask: torch.Tensor, events: torch.Tensor, k: int) -> torch.Tensor:
        """(B, G) hidden patches, each event's mask drawn from its own (seed, event, k) stream."""
        mask = patch_mask.cpu()
        hidden = torch.zeros_like(mask)
        for j, event in enumerate(events.tolist()):
            real = torch.nonzero(mask[j]).flatten()
            if len(real) == 0:
                continue
            width = int(real[-1]) + 1  # the event's own width: the draw ignores the batch's padding
            hidden[j, :width] = self.task.random_masking(mask[j:j + 1, :width], self._event_generator(event, k))[0]
        return hidden.to(patch_mask.device)

    def _event_generator(self, event: int, k: int) -> torch.Generator:
        """The generator of mask ``k`` of event number ``event``: the same in any batch."""
        state = np.random.SeedSequence([self.seed, int(event), k]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state) >> 1)

    def _reconstruction_batch(self, batch: PackedBatch) -> np.ndarray:
        if isinstance(self.task, MaskedVoxelModeling):
            return self._voxel_reconstruction_batch(batch)
        task = self.task
        patches = task.backbone.group(batch)
        if batch.index is None:
            raise DetfmError("reconstruction scores need event numbers in the batch (PackedBatch.index)")
        total = torch.zeros(len(batch), dtype=torch.float64)
        scored = torch.zeros(len(batch), dtype=torch.bool)
        for k in range(self.masks):
            masked = self._event_masks(patches.mask, batch.index, k)
            encoded = task.forward_encoder(patches, masked)
            rec = task.forward_decoder(encoded, patches, masked)
            if rec.pred_points.shape[0] == 0:
                continue
            chamfer = chamfer_distance(rec.pred_points, rec.target_points, rec.point_mask, rec.point_mask)
            huber = torch.nn.functional.huber_loss(rec.pred_energy, rec.target_energy, reduction="none",
                                                   delta=task.config.huber_delta)
            per_patch = (task.config.chamfer_weight * chamfer
                         + task.config.energy_weight * masked_mean(huber, rec.point_mask, dim=1))
            event = rec.event.cpu()
            sums = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, event, per_patch.double().cpu())
            counts = torch.bincount(event, minlength=len(batch))
            has = counts > 0
            total[has] += sums[has] / counts[has]
            scored |= has
        out = (total / self.masks).numpy()
        out[~scored.numpy()] = np.nan
        return out

    def _voxel_reconstruction_batch(self, batch: PackedBatch) -> np.ndarray:
        """Masked voxel modeling: the energy-infilling Huber loss over each event's hidden
        voxels, with each event's grid cells drawn on the event alone (batch-independent)."""
        task = self.task
        assert isinstance(task, MaskedVoxelModeling)
        cfg = task.config
        if batch.index is None:
            raise DetfmError("reconstruction scores need event numbers in the batch (PackedBatch.index)")
        offsets = batch.offsets.cpu().tolist()
        coord = batch.coord.cpu()
        total = torch.zeros(len(batch), dtype=torch.float64)
        scored = torch.zeros(len(batch), dtype=torch.bool)
        for k in range(self.masks):
            mask = torch.cat([grid_mask(coord[a:b], torch.tensor([0, b - a]), cfg.mask_cell, cfg.mask_ratio,
                                        self._event_generator(int(e), k))
                              for a, b, e in zip(offsets[:-1], offsets[1:], batch.index.tolist(), strict=True)])
            losses, hidden = task.event_losses(batch, mask.to(batch.coord.device))
            total += losses.double().cpu()
            scored |= hidden.cpu() > 0
        out = (total / self.masks).numpy()
        out[~scored.numpy()] = np.nan
        return out

    # -- scores ---------------------------------------------------------------------------
    def score(self, path: str | os.PathLike[str], method: str,
              reference: str | os.PathLike[str] | None = None) -> np.ndarray:
        """One score per event of ``path`` (higher = more anomalous)."""
        if method not in METHODS:
            raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
        if method == "reconstruction":
            return self.reconstruction(path)
        if method == "baseline":
            x = self.summary(path)
            ref = self.summary(reference) if reference is not None else x
            return _mahalanobis_sq(x, ref)
        if reference is None:
            raise DetfmError("method 'density' needs a reference file of normal events (--reference NORMAL.h5)")
        x = self.features(path)
        ref_all = self.features(reference)
        ok_ref = np.isfinite(ref_all).all(axis=1)
        ref = ref_all[ok_ref]
        out = np.full(len(x), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if not ok.any():
            return out
        if self.density == "mahalanobis":
            out[ok] = _mahalanobis_sq(x[ok], ref)
            return out
        same = Path(path).resolve() == Path(reference).resolve()
        if same:  # leave-one-out: an event is not its own neighbour
            out[ok] = _knn_distance(ref, ref, self.neighbours, skip_self=True)
        else:
            out[ok] = _knn_distance(x[ok], ref, self.neighbours, skip_self=False)
        return out


def score_events(pretrain_run: str | os.PathLike[str], data_file: str | os.PathLike[str], *,
                 method: str = "reconstruction", reference: str | os.PathLike[str] | None = None,
                 batch_size: int = 8, masks: int = 4, seed: int = 0, progress: bool = False,
                 neighbours: int = 5, density: str = "knn", device: str = "cpu") -> np.ndarray:
    """(events,) anomaly scores of ``data_file`` in file order, higher = more anomalous.

    ``method``: ``"reconstruction"``, ``"density"`` (needs ``reference``, a file of normal
    events) or ``"baseline"``; see the module docstring. ``masks`` and ``seed`` set the
    reconstruction masks, ``neighbours`` and ``density`` the density score.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if method == "density" and reference is None:
        raise DetfmError("method 'density' needs a reference file of normal events (--reference NORMAL.h5)")
    scorer = AnomalyScorer.from_run(pretrain_run, batch_size=batch_size, masks=masks, seed=seed,
                                    neighbours=neighbours, density=density, device=device, progress=progress)
    return scorer.score(data_file, method, reference)


# ----------------------------------------------------------------------------- study
def _separation(normal: np.ndarray, anomalous: np.ndarray) -> dict[str, float]:
    n, a = normal[np.isfinite(normal)], anomalous[np.isfinite(anomalous)]
    if len(n) == 0 or len(a) == 0:
        raise DetfmError("no scorable events (every event is empty or too small to mask)")
    return {"auc": roc_auc(n, a), "eff_at_1pct_fpr": efficiency_at_fpr(n, a, 0.01)}


def anomaly_study(pretrain_run: str | os.PathLike[str], normal_file: str | os.PathLike[str],
                  anomaly_files: Mapping[str, str | os.PathLike[str]], reference_file: str | os.PathLike[str],
                  out_dir: str | os.PathLike[str], *, methods: Sequence[str] | None = None,
                  batch_size: int = 8, masks: int = 4, seed: int = 0, neighbours: int = 5,
                  density: str = "knn", device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Score ``normal_file`` and every anomalous file with each method and the baseline.

    Writes ``out_dir/anomalies.json``::

        {"kind": "detfm-anomalies/1",
         "methods": [..., "baseline"],
         "signatures": {name: {method: {"auc", "eff_at_1pct_fpr"}, ...,
                               "auc", "eff_at_1pct_fpr", "best_method",    # best backbone method
                               "baseline_auc", "baseline_eff_at_1pct_fpr", "n_events"}},
         "baseline": {name: {"auc", "eff_at_1pct_fpr"}}}

    and ``out_dir/scores.npz`` (arrays ``"<method>/normal"`` and ``"<method>/<name>"``).
    The normal file should be another sample than ``reference_file`` (held-out events).
    Returns the JSON document.
    """
    chosen = None if methods is None else [m for m in methods if m != "baseline"]
    if chosen is not None and (not chosen or any(m not in BACKBONE_METHODS for m in chosen)):
        raise ConfigError(f"methods must be among {', '.join(BACKBONE_METHODS)}, got {list(methods or [])}")
    if not anomaly_files:
        raise ConfigError("anomaly_study needs at least one anomalous file")
    for name in anomaly_files:
        if not name or name == "normal" or "/" in name:
            raise ConfigError(f"bad signature name {name!r} (non-empty, no '/', not 'normal')")
    scorer = AnomalyScorer.from_run(pretrain_run, batch_size=batch_size, masks=masks, seed=seed,
                                    neighbours=neighbours, density=density, device=device, progress=progress)
    supported = supported_methods(scorer.task)
    chosen = list(supported) if chosen is None else chosen
    if missing := [m for m in chosen if m not in supported]:
        raise ConfigError(f"{pretrain_run}: a {type(scorer.task).__name__} run cannot score {', '.join(missing)}; "
                          f"choose among {', '.join(supported)}")
    all_methods = [*chosen, "baseline"]
    scores: dict[str, np.ndarray] = {}
    signatures: dict[str, dict[str, Any]] = {name: {} for name in anomaly_files}
    for method in all_methods:
        normal = scorer.score(normal_file, method, reference_file)
        scores[f"{method}/normal"] = normal
        for name, path in anomaly_files.items():
            anomalous = scorer.score(path, method, reference_file)
            scores[f"{method}/{name}"] = anomalous
            signatures[name][method] = _separation(normal, anomalous)
    for name, entry in signatures.items():
        best = max(chosen, key=lambda m: entry[m]["auc"])
        entry.update({"auc": entry[best]["auc"], "eff_at_1pct_fpr": entry[best]["eff_at_1pct_fpr"],
                      "best_method": best, "baseline_auc": entry["baseline"]["auc"],
                      "baseline_eff_at_1pct_fpr": entry["baseline"]["eff_at_1pct_fpr"],
                      "n_events": int(len(scores[f"baseline/{name}"]))})
    doc = {"kind": ANOMALIES_KIND, "methods": all_methods, "signatures": signatures,
           "baseline": {name: dict(entry["baseline"]) for name, entry in signatures.items()}}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "scores.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **scores)
    atomic_write_text(out / "anomalies.json", json.dumps(doc, indent=2) + "\n")
    return doc

"""Detector systematics: one segmentation or particle-finding model on nominal events and
their detector twins.

The HEP way of propagating a detector uncertainty: evaluate the same model on the same
physics events rendered through shifted detector models (:mod:`detfm.evaluate.twins`) and
report how every metric moves. Because the events are exact twins, differences are paired:
the bootstrap resamples *events* (the same draw for every variation), so the interval of
``variation - nominal`` is much narrower than either metric's own interval.

What :func:`evaluate_systematics` measures for a segmentation (``semseg``) run, per variation:

* every score of :func:`detfm.recipes.adapt.evaluate_segmentation` (macro-F1 over 5 and 4 classes,
  accuracy, per-class F1/precision/recall), from per-event confusion matrices, with a 68 %
  percentile bootstrap interval over events (``n_boot`` seeded resamples), and the same for
  the paired difference to nominal;
* the flip fraction: in each event, of the voxels recorded in both twins (matched by voxel
  coordinate), the fraction whose predicted class differs from the nominal prediction;
* calibration: events are split (seeded) into a calibration part (``calibration_fraction``)
  and an evaluation part; a temperature is fitted on the nominal calibration part and the
  expected calibration error before and after it is measured on every variation's
  evaluation part (same event ids);
* split-conformal prediction sets (APS, miscoverage ``alpha``) calibrated on the nominal
  calibration part with *one random point per event* (points of one event are not
  exchangeable; one per event are), on temperature-scaled probabilities; coverage and mean
  set size are measured on *all* points of every variation's evaluation part. ``coverage``
  is the mean over events of each event's covered fraction (the probability that a random
  point of a random event is covered: what the calibration guarantees), ``coverage_points``
  the fraction of all points (large events weigh more). With fewer
  calibration events than level ``1 - alpha`` needs (``ceil((1 - alpha) / alpha)``, 9 at
  alpha 0.1), all points of the calibration events are used instead.

For a particle-finding (``particles``) run, per variation:

* every metric of :func:`detfm.evaluate.particles.particle_event_stats`: finding efficiency
  and purity (mask IoU >= 0.5) over all particles and per class, panoptic quality, PID
  accuracy on found particles, end-to-end electron and photon efficiency and purity, and the
  regressed kinetic energy's bias and resolution per class, each with a 68 % bootstrap
  interval over events and the paired shift from nominal with its interval (the same
  :func:`paired_bootstrap` as the segmentation scores; ``metrics`` and ``differences``);
* the flip fraction, with the class of the particle a voxel was given (or none) in place of
  its semantic class;
* ``scores``: every score of :func:`detfm.evaluate.particles.particle_scores`.

Calibration and conformal sets are per-point measurements of segmentation; a particles
report has neither (nor ``reliability.png``) and adds ``shifts.png``.

Events: the nominal file's events that are non-empty (after the run's energy threshold) in
every variation. If the nominal file is one of the run's own fine-tuning files, the events
of the run's train part (``split.json``) are left out, so the model is never scored on what
it trained on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from detfm.evaluate import kinds
from detfm.data.datasets import DEFAULT_DATASET, get_dataset
from detfm.engine.runs import SPLIT_FILE
from detfm.evaluate.scoring import argmax_without, renumber_without
from detfm.errors import ConfigError, DetfmError
from detfm.io import EventFile, atomic_path, atomic_write_text, layout

if TYPE_CHECKING:
    from detfm.evaluate.particles import ParticleEventStats

__all__ = [
    "DEFAULT_VARIATIONS", "PARTICLE_HEADLINE", "REPORT_KIND", "SUPPORTED_TASKS", "batched_metrics",
    "bootstrap_metrics", "bootstrap_particle_metrics", "event_confusions", "evaluate_systematics", "flip_fractions",
    "format_systematics", "heldout_event_ids", "paired_bootstrap", "plot_systematics", "summarize_flips",
]

REPORT_KIND = kinds.SYSTEMATICS
NOMINAL = "nominal"
DEFAULT_VARIATIONS = ("escale_up", "escale_down", "short_lifetime", "noisy", "dead_regions")
CLASSES = layout.SEMANTIC_CLASSES
NUM_CLASSES = len(CLASSES)
EXCLUDED = get_dataset(DEFAULT_DATASET).excluded_semantic  # low-energy deposits: left out of macro_f1_4
NUM_CLASSES_4 = NUM_CLASSES - 1
INTERVAL = 0.68
HEADLINE = ("macro_f1_4", "macro_f1_5", "accuracy_5")
SUPPORTED_TASKS = ("semseg", "particles")
# particle metrics of the printed table and the pictures (every one is in the report)
PARTICLE_HEADLINE = ("efficiency_all", "purity_all", "pq", "electron_efficiency", "electron_purity",
                     "photon_efficiency", "photon_purity")
T = TypeVar("T")


# ----------------------------------------------------------------------------- metrics
def event_confusions(logits: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-event confusion matrices: ``(E, 5, 5)`` over all classes (argmax of all logits) and
    ``(E, 4, 4)`` without low-energy points (argmax of the first 4 logits), as
    :func:`detfm.recipes.adapt.evaluate_segmentation` scores them. Rows: true class."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).astype(np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_events = len(offsets) - 1
    event = np.repeat(np.arange(n_events, dtype=np.int64), np.diff(offsets))
    if len(event) != len(labels) or len(labels) != len(logits):
        raise DetfmError(f"offsets cover {len(event)} points but there are {len(labels)} labels "
                         f"and {len(logits)} logit rows")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DetfmError(f"labels must lie in 0..{NUM_CLASSES - 1}")
    pred5 = logits.argmax(axis=1) if len(logits) else np.zeros(0, np.int64)
    flat5 = (event * NUM_CLASSES + labels) * NUM_CLASSES + pred5
    cm5 = np.bincount(flat5, minlength=n_events * NUM_CLASSES ** 2).reshape(n_events, NUM_CLASSES, NUM_CLASSES)
    keep = labels != EXCLUDED
    pred4 = renumber_without(argmax_without(logits[keep], EXCLUDED), EXCLUDED)
    flat4 = (event[keep] * NUM_CLASSES_4 + renumber_without(labels[keep], EXCLUDED)) * NUM_CLASSES_4 + pred4
    cm4 = np.bincount(flat4, minlength=n_events * NUM_CLASSES_4 ** 2).reshape(
        n_events, NUM_CLASSES_4, NUM_CLASSES_4)
    return cm5, cm4


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean_last(x: np.ndarray) -> np.ndarray:
    defined = ~np.isnan(x)
    count = defined.sum(axis=-1)
    return _ratio(np.where(defined, x, 0.0).sum(axis=-1), count)


def batched_metrics(cm5: np.ndarray, cm4: np.ndarray) -> dict[str, np.ndarray]:
    """The scores of :func:`detfm.recipes.adapt.evaluate_segmentation` for a batch of confusion
    matrices ``(..., 5, 5)`` and ``(..., 4, 4)``: same conventions as
    :mod:`detfm.evaluate.metrics` (NaN where undefined; macro-F1 over defined classes).

    Keys: ``macro_f1_4``, ``macro_f1_5``, ``accuracy_5``, ``accuracy_4`` and ``f1_<class>``,
    ``precision_<class>``, ``recall_<class>`` for the 5 classes.
    """
    out: dict[str, np.ndarray] = {}
    per_class: dict[str, np.ndarray] = {}
    for name, cm in (("5", np.asarray(cm5, np.float64)), ("4", np.asarray(cm4, np.float64))):
        tp = np.diagonal(cm, axis1=-2, axis2=-1)
        predicted, true = cm.sum(axis=-2), cm.sum(axis=-1)
        f1 = _ratio(2.0 * tp, predicted + true)
        out[f"macro_f1_{name}"] = _nanmean_last(f1)
        out[f"accuracy_{name}"] = _ratio(tp.sum(axis=-1), cm.sum(axis=(-2, -1)))
        if name == "5":
            per_class = {"f1": f1, "precision": _ratio(tp, predicted), "recall": _ratio(tp, true)}
    for kind, values in per_class.items():
        for c, cls in enumerate(CLASSES):
            out[f"{kind}_{cls}"] = values[..., c]
    return out


def _interval(samples: np.ndarray, value: float, level: float) -> dict[str, float | None]:
    finite = samples[np.isfinite(samples)]
    if not math.isfinite(value) or finite.size < 2:
        return {"value": _num(value), "lo": None, "hi": None}
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return {"value": float(value), "lo": float(lo), "hi": float(hi)}


Intervals = dict[str, dict[str, dict[str, float | None]]]  # {variation: {metric: {"value", "lo", "hi"}}}


def paired_bootstrap(data: Mapping[str, T], n_events: int,
                     statistic: Callable[[T, np.ndarray], Mapping[str, np.ndarray]], *, n_boot: int = 200,
                     seed: int = 0, level: float = INTERVAL, reference: str = NOMINAL) -> tuple[Intervals, Intervals]:
    """Metrics of each variation and paired differences to ``reference``, with bootstrap
    intervals over events.

    ``data[v]`` holds variation ``v``'s per-event outputs of the same ``n_events`` events;
    ``statistic(data[v], weights)`` turns (B, E) event counts into ``{metric: (B,)}`` (a row of
    ones: the metrics of the events themselves). Each of the ``n_boot`` resamples draws ``E``
    events with replacement (seeded by ``seed`` and ``E``) and uses the same draw for all
    variations, so differences are paired. Returns ``(metrics, differences)``, each
    ``{variation: {metric: {"value", "lo", "hi"}}}`` with the central ``level`` percentile
    interval (None where undefined).
    """
    if n_boot < 2:
        raise ConfigError(f"n_boot must be >= 2, got {n_boot}")
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}")
    if reference not in data:
        raise DetfmError(f"reference variation '{reference}' is missing")
    if n_events < 1:
        raise DetfmError(f"the bootstrap needs at least one event, got {n_events}")
    rng = np.random.default_rng([seed, n_events])
    weights = rng.multinomial(n_events, np.full(n_events, 1.0 / n_events), size=n_boot).astype(np.float64)  # (B, E)
    ones = np.ones((1, n_events))
    values = {v: {k: float(x[0]) for k, x in statistic(d, ones).items()} for v, d in data.items()}
    boots = {v: statistic(d, weights) for v, d in data.items()}
    metrics: Intervals = {}
    differences: Intervals = {}
    for v in data:
        metrics[v] = {k: _interval(boots[v][k], values[v][k], level) for k in values[v]}
        differences[v] = {k: _interval(boots[v][k] - boots[reference][k], values[v][k] - values[reference][k], level)
                          for k in values[v]}
    return metrics, differences


def _confusion_statistic(cms: tuple[np.ndarray, np.ndarray], weights: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`batched_metrics` of the event-weighted sums of per-event confusion matrices."""
    cm5, cm4 = cms
    return batched_metrics(np.einsum("be,eij->bij", weights, cm5.astype(np.float64)),
                           np.einsum("be,eij->bij", weights, cm4.astype(np.float64)))


def bootstrap_metrics(cm5: Mapping[str, np.ndarray], cm4: Mapping[str, np.ndarray], *, n_boot: int = 200,
                      seed: int = 0, level: float = INTERVAL, reference: str = NOMINAL,
                      ) -> tuple[Intervals, Intervals]:
    """Segmentation metrics of each variation and paired differences to ``reference``, with
    bootstrap intervals (:func:`paired_bootstrap`).

    ``cm5[v]`` is ``(E, 5, 5)`` and ``cm4[v]`` ``(E, 4, 4)`` per-event matrices over the same
    events for every variation; the metrics are those of :func:`batched_metrics`.
    """
    if reference not in cm5:  # before the event counts: a clearer message than theirs
        raise DetfmError(f"reference variation '{reference}' is missing")
    n_events = {len(m) for m in cm5.values()} | {len(m) for m in cm4.values()}
    if len(n_events) != 1 or 0 in n_events:
        raise DetfmError(f"every variation needs the same, non-zero number of events, got {sorted(n_events)}")
    return paired_bootstrap({v: (cm5[v], cm4[v]) for v in cm5}, n_events.pop(), _confusion_statistic,
                            n_boot=n_boot, seed=seed, level=level, reference=reference)


def bootstrap_particle_metrics(stats: Mapping[str, ParticleEventStats], *, n_boot: int = 200, seed: int = 0,
                               level: float = INTERVAL, reference: str = NOMINAL) -> tuple[Intervals, Intervals]:
    """Particle metrics of each variation (:func:`~detfm.evaluate.particles.weighted_particle_metrics`)
    and paired differences to ``reference``, with bootstrap intervals (:func:`paired_bootstrap`).
    ``stats[v]`` must describe the same events, in the same order, for every variation."""
    from detfm.evaluate.particles import weighted_particle_metrics

    sizes = {v: s.events for v, s in stats.items()}
    if len(set(sizes.values())) != 1 or 0 in sizes.values():
        raise DetfmError(f"every variation needs the same, non-zero number of events, got {sizes}")
    return paired_bootstrap(stats, next(iter(sizes.values())), weighted_particle_metrics, n_boot=n_boot, seed=seed,
                            level=level, reference=reference)


# ----------------------------------------------------------------------------- flips
def _voxel_keys(coords: np.ndarray) -> np.ndarray:
    c = np.rint(np.asarray(coords, np.float64)).astype(np.int64)
    return (c[:, 0] * 4096 + c[:, 1]) * 4096 + c[:, 2]


def flip_fractions(coords_a: np.ndarray, pred_a: np.ndarray, offsets_a: np.ndarray,
                   coords_b: np.ndarray, pred_b: np.ndarray, offsets_b: np.ndarray) -> np.ndarray:
    """(E,) per event: of the voxels present in both twins (same voxel coordinate), the
    fraction whose predicted class differs; NaN for an event with no common voxel."""
    offsets_a, offsets_b = np.asarray(offsets_a, np.int64), np.asarray(offsets_b, np.int64)
    if len(offsets_a) != len(offsets_b):
        raise DetfmError(f"twins must hold the same events, got {len(offsets_a) - 1} and {len(offsets_b) - 1}")
    keys_a, keys_b = _voxel_keys(coords_a), _voxel_keys(coords_b)
    out = np.full(len(offsets_a) - 1, np.nan)
    for e in range(len(out)):
        a0, a1, b0, b1 = offsets_a[e], offsets_a[e + 1], offsets_b[e], offsets_b[e + 1]
        _, ia, ib = np.intersect1d(keys_a[a0:a1], keys_b[b0:b1], assume_unique=False, return_indices=True)
        if len(ia):
            out[e] = float(np.mean(np.asarray(pred_a)[a0 + ia] != np.asarray(pred_b)[b0 + ib]))
    return out


def summarize_flips(per_event: np.ndarray) -> dict[str, Any]:
    """Mean, median and 90th percentile of the defined per-event flip fractions, and the list
    (events without a common voxel are left out)."""
    values = np.asarray(per_event, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"mean": None, "median": None, "p90": None, "per_event": []}
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "p90": float(np.quantile(values, 0.9)), "per_event": [float(v) for v in values]}


# ----------------------------------------------------------------------------- events
def heldout_event_ids(run_dir: str | os.PathLike[str], data_file: str | os.PathLike[str],
                      part: str | None = None) -> np.ndarray | None:
    """Event numbers of ``data_file`` the fine-tuning run did not train on, or None if the
    file is not one of the run's files (then all its events are held out).

    With ``part`` (``"test"``, ``"val"``, ...) return only that part's events in the file.
    Read from the run's ``split.json`` (global numbers over the run's files, in order).
    """
    split_file = Path(run_dir) / SPLIT_FILE
    if not split_file.is_file():
        return None
    split = json.loads(split_file.read_text(encoding="utf-8"))
    target = Path(data_file).resolve()
    start = 0
    for name in split.get("files", []):
        path = Path(name)
        if not path.is_file():
            return None
        with EventFile(path) as f:
            size = len(f)
        if path.resolve() == target:
            if part is not None:
                ids = np.asarray(split.get(part, []), np.int64)
                return np.sort(ids[(ids >= start) & (ids < start + size)] - start)
            train = np.asarray(split.get("train", []), np.int64)
            trained = train[(train >= start) & (train < start + size)] - start
            return np.setdiff1d(np.arange(size, dtype=np.int64), trained)
        start += size
    return None


def _nonempty_ids(path: Path, threshold: float) -> np.ndarray:
    from detfm.data import EventDataset

    return EventDataset([path], energy_threshold=threshold, min_points=1, labels=True).event_ids


def _event_parts(n_events: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the calibration and evaluation events (seeded, both non-empty, sorted)."""
    if n_events < 2:
        raise DetfmError(f"calibration needs at least 2 events, got {n_events}")
    n_cal = min(max(int(round(fraction * n_events)), 1), n_events - 1)
    order = np.random.default_rng([seed, n_events, 1]).permutation(n_events)
    return np.sort(order[:n_cal]), np.sort(order[n_cal:])


def _point_index(offsets: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Point indices of ``events`` (positions) and the offsets of the selection."""
    offsets = np.asarray(offsets, np.int64)
    sizes = offsets[events + 1] - offsets[events]
    idx = np.concatenate([np.arange(offsets[e], offsets[e + 1]) for e in events]) if len(events) else \
        np.zeros(0, np.int64)
    return idx.astype(np.int64), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


# ----------------------------------------------------------------------------- run
@dataclass
class _Collected:
    """What is kept of one variation's outputs."""

    logits: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    coords: np.ndarray
    cm5: np.ndarray
    cm4: np.ndarray

    @property
    def pred(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


def _collect(task: Any, path: Path, ids: np.ndarray, threshold: float, seed: int, batch_size: int,
             progress: bool) -> _Collected:
    from detfm.data import EventDataset
    from detfm.evaluate.outputs import collect_point_outputs

    dataset = EventDataset([path], energy_threshold=threshold, min_points=0, labels=True, seed=seed).subset(ids)
    out = collect_point_outputs(task, dataset, batch_size=batch_size, progress=progress)
    if not np.array_equal(np.asarray(out.event_index), ids):
        raise DetfmError(f"{path}: point outputs came back for other events than asked")
    logits, labels = np.asarray(out.logits, np.float32), np.asarray(out.labels, np.int64)
    offsets = np.asarray(out.offsets, np.int64)
    cm5, cm4 = event_confusions(logits, labels, offsets)
    return _Collected(logits, labels, offsets, np.asarray(out.coords), cm5, cm4)


def _load_model(run_dir: Path, device: str) -> tuple[Any, Any]:
    from detfm.recipes.adapt import load_finetune_config, load_finetuned
    from detfm.models.lora import merge_lora

    cfg = load_finetune_config(run_dir)
    if cfg.task not in SUPPORTED_TASKS:
        raise DetfmError(f"{run_dir}: systematics of '{cfg.task}' runs are not supported yet; supported tasks: "
                         f"{', '.join(SUPPORTED_TASKS)}")
    task = load_finetuned(run_dir, map_location=device)
    merge_lora(task)
    return cfg, task


def _check_variations(variations: Sequence[str], given: Mapping[str, Path]) -> list[str]:
    """Variation names in order, without repeats or nominal; those without a twin file must
    be detector models (an unknown one raises an error listing the valid names)."""
    from detfm.sim.detector import get_detector

    if NOMINAL in given:
        raise DetfmError("--twins: 'nominal' is the --data file itself; give only its variations")
    names: list[str] = []
    for name in [*variations, *given]:
        name = str(name).strip()
        if name not in given:
            get_detector(name)
        if name != NOMINAL and name not in names:
            names.append(name)
    if not names:
        raise DetfmError("no detector variation to compare with nominal")
    return names


def evaluate_systematics(run_dir: str | os.PathLike[str], nominal_file: str | os.PathLike[str],
                         variations: Sequence[str], out_dir: str | os.PathLike[str], *,
                         twin_files: Mapping[str, str | os.PathLike[str]] | None = None,
                         max_events: int | None = None, n_boot: int = 200, seed: int = 0, alpha: float = 0.1,
                         calibration_fraction: float = 0.5, workers: int = 1, batch_size: int = 8,
                         device: str = "cpu", progress: bool = False, views: int = 1,
                         view_seed: int = 0) -> dict[str, Any]:
    """Evaluate the fine-tuned segmentation or particle-finding model of ``run_dir`` (tasks
    :data:`SUPPORTED_TASKS`) on ``nominal_file`` and its twins under each detector of
    ``variations``; write ``out_dir/report.json``, ``report.txt`` and pictures.

    ``views > 1`` (semseg): every event, nominal or twin, is scored by the class probabilities
    averaged over that many orientations (:class:`~detfm.evaluate.orientations.OrientationAverage`;
    an event and its twins get the same orientations).

    Twins come from ``twin_files`` (``{name: file}``, checked) or, for names not given there,
    are re-simulated into ``out_dir/twins`` from the nominal file's simulation attributes.
    Returns the report (schema ``detfm-systematics/1``, see the module docstring and
    docs/systematics.md).
    """
    started = time.time()
    run, nominal, out = Path(run_dir), Path(nominal_file), Path(out_dir)
    if not nominal.is_file():
        raise DetfmError(f"{nominal}: no such file")
    if max_events is not None and max_events < 2:
        raise ConfigError(f"max_events must be >= 2, got {max_events}")
    if not 0 < calibration_fraction < 1:
        raise ConfigError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 2:
        raise ConfigError(f"n_boot must be >= 2, got {n_boot}")
    given = {str(k): Path(v) for k, v in (twin_files or {}).items()}
    names = _check_variations(variations, given)
    cfg, task = _load_model(run, device)
    if views != 1:
        if cfg.task != "semseg":
            raise ConfigError(f"averaging over orientations applies to semseg runs here; {run} is a "
                              f"'{cfg.task}' run: use views=1")
        from detfm.evaluate.orientations import OrientationAverage

        task = OrientationAverage(task, views, view_seed)
    threshold = cfg.data.energy_threshold

    # events: held out from training, non-empty in the nominal file, first max_events
    candidates = heldout_event_ids(run, nominal)
    ids = _nonempty_ids(nominal, threshold)
    if candidates is not None:
        ids = np.intersect1d(ids, candidates)
    if max_events is not None:
        ids = ids[:max_events]
    if len(ids) < 2:
        raise DetfmError(f"{nominal}: fewer than 2 usable events to evaluate")

    files = {NOMINAL: nominal}
    if given:
        from detfm.evaluate.twins import load_twin_files

        files.update(load_twin_files(given, nominal))
    missing = [v for v in names if v not in files]
    if missing:
        from detfm.evaluate.twins import make_twins

        files.update(make_twins(nominal, missing, out / "twins", workers=workers, progress=progress,
                                max_events=int(ids.max()) + 1))
    for v in names:
        ids = np.intersect1d(ids, _nonempty_ids(files[v], threshold))
    if len(ids) < 2:
        raise DetfmError("fewer than 2 events are non-empty in every variation")

    config: dict[str, Any] = {"variations": names, "max_events": max_events, "n_boot": n_boot}
    curves: dict[str, Any] | None = None
    if cfg.task == "semseg":
        curves, measured = _measure(task, files, names, ids, threshold, cfg.train.seed, n_boot=n_boot, seed=seed,
                                    alpha=alpha, calibration_fraction=calibration_fraction, batch_size=batch_size,
                                    progress=progress)
        config.update(alpha=alpha, calibration_fraction=calibration_fraction)
    else:
        measured = _measure_particles(task, files, names, ids, threshold, cfg.train.seed, n_boot=n_boot, seed=seed,
                                      batch_size=batch_size, progress=progress)
    if views != 1:
        config.update(views=views, view_seed=view_seed)
        measured = {"orientation_views": {"views": views, "seed": view_seed}, **measured}
    report = _clean({"kind": REPORT_KIND, "model": str(run), "task": cfg.task, "events": int(len(ids)),
                     **measured})
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(out / "report.txt", format_systematics(report) + "\n")
    plot_systematics(report, out)
    if curves is not None:
        from detfm.evaluate.calibration import reliability_figure

        temperature = report["calibration"]["temperature"]
        reliability_figure({"before": curves["before"], f"after (T = {temperature:.2f})": curves["after"]},
                           out / "reliability.png", title="Reliability, nominal evaluation events")
    config.update(seed=seed, twin_files={k: str(v) for k, v in given.items()})
    _manifest(out, run, files, seed=seed, started=started, device=device, config=config)
    return report


def _measure(task: Any, files: Mapping[str, Path], names: Sequence[str], ids: np.ndarray, threshold: float,
             data_seed: int, *, n_boot: int, seed: int, alpha: float, calibration_fraction: float,
             batch_size: int, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Collect outputs variation by variation (two in memory at a time) and measure.

    Returns the nominal reliability curves (before/after temperature scaling) and the
    measurements of the report.
    """
    from detfm.evaluate.calibration import (
        calibration_summary,
        expected_calibration_error,
        reliability_curve,
        softmax,
    )
    from detfm.evaluate.conformal import conformal_summary, fit_conformal, one_point_per_event

    cal_events, eval_events = _event_parts(len(ids), calibration_fraction, seed)
    nom = _collect(task, files[NOMINAL], ids, threshold, data_seed, batch_size, progress)
    cal_idx, cal_offsets = _point_index(nom.offsets, cal_events)
    eval_idx, _ = _point_index(nom.offsets, eval_events)
    summary = calibration_summary(nom.logits[cal_idx], nom.labels[cal_idx], nom.logits[eval_idx],
                                  nom.labels[eval_idx])
    temperature = float(summary["temperature"])
    probs_cal = softmax(nom.logits[cal_idx], temperature)
    picked = _conformal_points(cal_offsets, alpha, seed, one_point_per_event)
    predictor = fit_conformal(probs_cal[picked], nom.labels[cal_idx][picked], alpha=alpha, method="aps",
                              randomized=True, seed=seed)

    curves: dict[str, Any] = {}
    cm5: dict[str, np.ndarray] = {}
    cm4: dict[str, np.ndarray] = {}
    flips: dict[str, dict[str, Any]] = {}
    ece_before: dict[str, float] = {}
    ece_after: dict[str, float] = {}
    coverage: dict[str, float] = {}
    coverage_points: dict[str, float] = {}
    set_size: dict[str, float] = {}
    for name in (NOMINAL, *names):
        cur = nom if name == NOMINAL else _collect(task, files[name], ids, threshold, data_seed, batch_size,
                                                    progress)
        cm5[name], cm4[name] = cur.cm5, cur.cm4
        flips[name] = summarize_flips(flip_fractions(nom.coords, nom.pred, nom.offsets,
                                                     cur.coords, cur.pred, cur.offsets))
        idx, idx_offsets = _point_index(cur.offsets, eval_events)
        labels = cur.labels[idx]
        raw = softmax(cur.logits[idx])
        probs = softmax(cur.logits[idx], temperature)
        ece_before[name] = float(expected_calibration_error(raw, labels))
        ece_after[name] = float(expected_calibration_error(probs, labels))
        if name == NOMINAL:
            curves = {"before": reliability_curve(raw, labels),
                      "after": reliability_curve(probs, labels)}
        conf = conformal_summary(predictor, probs, labels, seed=seed, offsets=idx_offsets)
        coverage[name], set_size[name] = float(conf["event_coverage"]), float(conf["set_size"])
        coverage_points[name] = float(conf["coverage"])
    metrics, differences = bootstrap_metrics(cm5, cm4, n_boot=n_boot, seed=seed)
    return curves, {
        "variations": [NOMINAL, *names], "metrics": metrics, "differences": differences, "flip_fraction": flips,
        "calibration": {"temperature": temperature, "ece_before": ece_before, "ece_after": ece_after,
                        "reliability": _reliability(summary.get("reliability"))},
        "conformal": {"alpha": alpha, "method": "aps", "coverage": coverage, "coverage_points": coverage_points,
                      "set_size": set_size},
    }


def _conformal_points(offsets: np.ndarray, alpha: float, seed: int, one_point_per_event: Any) -> np.ndarray:
    """Calibration points for the conformal threshold: one random point per event when there
    are enough events for level ``1 - alpha`` (``ceil((1 - alpha) / alpha)``, 9 at alpha 0.1),
    else every point of the calibration events."""
    events = int((np.diff(offsets) > 0).sum())
    if events >= math.ceil((1 - alpha) / alpha - 1e-12):
        return np.asarray(one_point_per_event(offsets, seed), np.int64)
    return np.arange(int(offsets[-1]), dtype=np.int64)


def _reliability(value: Any) -> dict[str, Any]:
    """The nominal reliability diagram as ``{"before": ..., "after": ...}``."""
    if isinstance(value, Mapping) and "before" in value and "after" in value:
        return {"before": value["before"], "after": value["after"]}
    return {"before": value, "after": None}


# ----------------------------------------------------------------------------- particles
@dataclass
class _ParticleOutputs:
    """What is kept of one variation's particle predictions: the per-event metric parts and,
    per point, its coordinate and the class of the particle it was given (-1: none)."""

    stats: ParticleEventStats
    scores: dict[str, Any]
    coords: np.ndarray
    point_class: np.ndarray
    offsets: np.ndarray


def _collect_particles(task: Any, path: Path, ids: np.ndarray, threshold: float, seed: int, batch_size: int,
                       progress: bool) -> _ParticleOutputs:
    import torch

    from detfm.data import EventDataset
    from detfm.evaluate.particles import ParticleRecords, event_records, particle_event_stats, particle_scores
    from detfm.evaluate.scoring import eval_batches
    from detfm.tasks.particles import particle_targets
    from detfm.tasks.registry import get_task

    dataset = EventDataset([path], energy_threshold=threshold, min_points=0, labels=True, seed=seed).subset(ids)
    records = ParticleRecords()
    coords, classes, counts, index = [], [], [], []
    for _, batch in eval_batches(task, dataset, batch_size, progress, desc=path.name):
        pred = task.predict(batch)
        event_records(records, batch, pred, particle_targets(batch, task.config.dataset))
        owner = pred.point_particle
        point_class = (torch.where(owner >= 0, pred.label[owner.clamp(min=0)], -1) if len(pred)
                       else torch.full_like(owner, -1))
        coords.append(batch.coord.cpu().numpy())
        classes.append(point_class.cpu().numpy())
        counts.append(batch.counts.cpu().numpy())
        if batch.index is not None:
            index.append(batch.index.cpu().numpy())
    if index and not np.array_equal(np.concatenate(index), ids):
        raise DetfmError(f"{path}: particle predictions came back for other events than asked")
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    class_names = get_task("particles").class_names
    return _ParticleOutputs(particle_event_stats(records, class_names), particle_scores(records, class_names),
                            np.concatenate(coords), np.concatenate(classes).astype(np.int64), offsets)


def _measure_particles(task: Any, files: Mapping[str, Path], names: Sequence[str], ids: np.ndarray,
                       threshold: float, data_seed: int, *, n_boot: int, seed: int, batch_size: int,
                       progress: bool) -> dict[str, Any]:
    """The particle measurements of the report: per variation every metric of
    :func:`~detfm.evaluate.particles.particle_event_stats` with its bootstrap interval and
    paired shift from nominal, the fraction of common voxels whose predicted particle class
    changes (none counts as a class), and every score of
    :func:`~detfm.evaluate.particles.particle_scores`."""
    nom = _collect_particles(task, files[NOMINAL], ids, threshold, data_seed, batch_size, progress)
    stats: dict[str, ParticleEventStats] = {}
    scores: dict[str, dict[str, Any]] = {}
    flips: dict[str, dict[str, Any]] = {}
    for name in (NOMINAL, *names):
        cur = nom if name == NOMINAL else _collect_particles(task, files[name], ids, threshold, data_seed,
                                                             batch_size, progress)
        stats[name], scores[name] = cur.stats, cur.scores
        flips[name] = summarize_flips(flip_fractions(nom.coords, nom.point_class, nom.offsets,
                                                     cur.coords, cur.point_class, cur.offsets))
    metrics, differences = bootstrap_particle_metrics(stats, n_boot=n_boot, seed=seed)
    return {"variations": [NOMINAL, *names], "metrics": metrics, "differences": differences,
            "flip_fraction": flips, "scores": scores}


# ----------------------------------------------------------------------------- output
def _num(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _clean(value: Any) -> Any:
    """JSON data: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _num(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _clean(dataclasses.asdict(value))
    return value


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_systematics(report: Mapping[str, Any]) -> str:
    """A text table: one row per variation. Segmentation: headline metric with its 68 %
    interval, paired shift from nominal, flip fraction, ECE before and after temperature
    scaling, conformal coverage and set size. Particles: see :func:`_format_particles`."""
    if report.get("task", "semseg") == "particles":
        return _format_particles(report)
    headline = "macro_f1_4"
    cal, conf = report["calibration"], report["conformal"]
    lines = [f"{report['model']}: {report['events']} events, {headline} with 68 % bootstrap intervals, "
             f"T = {_fmt(cal['temperature'], 2)}, conformal {conf['method']} alpha = {conf['alpha']}",
             f"{'variation':<16}{headline:>24}{'shift':>24}{'flips':>8}{'ECE':>8}{'ECE(T)':>8}"
             f"{'cover':>8}{'cov/pt':>8}{'|set|':>7}"]
    for v in report["variations"]:
        m, d = report["metrics"][v][headline], report["differences"][v][headline]
        cell = f"{_fmt(m['value'])} [{_fmt(m['lo'])}, {_fmt(m['hi'])}]"
        shift = "" if v == NOMINAL else f"{_signed(d['value'])} [{_signed(d['lo'])}, {_signed(d['hi'])}]"
        flips = "" if v == NOMINAL else _fmt(report["flip_fraction"][v]["mean"])
        lines.append(f"{v:<16}{cell:>24}{shift:>24}{flips:>8}{_fmt(cal['ece_before'][v]):>8}"
                     f"{_fmt(cal['ece_after'][v]):>8}{_fmt(conf['coverage'][v]):>8}"
                     f"{_fmt((conf.get('coverage_points') or {}).get(v)):>8}{_fmt(conf['set_size'][v], 2):>7}")
    return "\n".join(lines)


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.3f}"


_SHORT = {"efficiency_all": "eff", "purity_all": "purity", "pq": "PQ", "electron_efficiency": "e eff",
          "electron_purity": "e pur", "photon_efficiency": "gamma eff", "photon_purity": "gamma pur"}


def _format_particles(report: Mapping[str, Any]) -> str:
    """The particle table: per variation the finding efficiency (mask IoU >= 0.5) with its
    68 % interval and its paired shift with interval; then every headline metric of
    :data:`PARTICLE_HEADLINE` with its shift; the flip fraction; and the regressed energy's
    bias and resolution per class with their shifts."""
    names = list(report["variations"])
    metrics, diffs = report["metrics"], report["differences"]
    headline = "efficiency_all"
    lines = [f"{report['model']}: {report['events']} events, particles found at mask IoU >= 0.5; 68 % bootstrap "
             f"intervals, shifts are paired differences to nominal",
             f"{'variation':<16}{'efficiency':>24}{'shift':>24}{'flips':>8}"]
    for v in names:
        m, d = metrics[v][headline], diffs[v][headline]
        cell = f"{_fmt(m['value'])} [{_fmt(m['lo'])}, {_fmt(m['hi'])}]"
        shift = "" if v == NOMINAL else f"{_signed(d['value'])} [{_signed(d['lo'])}, {_signed(d['hi'])}]"
        flips = "" if v == NOMINAL else _fmt(report["flip_fraction"][v]["mean"])
        lines.append(f"{v:<16}{cell:>24}{shift:>24}{flips:>8}")
    shown = [k for k in PARTICLE_HEADLINE if k in metrics[NOMINAL]]
    lines += ["", "value (shift from nominal)",
              f"{'variation':<16}" + "".join(f"{_SHORT.get(k, k):>17}" for k in shown)]
    for v in names:
        cells = [f"{_fmt(metrics[v][k]['value'])} ({'nominal' if v == NOMINAL else _signed(diffs[v][k]['value'])})"
                 for k in shown]
        lines.append(f"{v:<16}" + "".join(f"{c:>17}" for c in cells))
    classes = [k.removeprefix("energy_resolution_") for k in metrics[NOMINAL] if k.startswith("energy_resolution_")]
    classes = [c for c in classes if metrics[NOMINAL][f"energy_resolution_{c}"]["value"] is not None]
    if classes:
        lines += ["", "regressed kinetic energy per class: bias / resolution of E / E_true - 1 (shift of the "
                      "resolution)", f"{'variation':<16}" + "".join(f"{c:>26}" for c in classes)]
        for v in names:
            cells = []
            for c in classes:
                bias, res = metrics[v][f"energy_bias_{c}"]["value"], metrics[v][f"energy_resolution_{c}"]["value"]
                shift = "" if v == NOMINAL else f" ({_signed(diffs[v][f'energy_resolution_{c}']['value'])})"
                cells.append(f"{_signed(bias)} / {_fmt(res)}{shift}")
            lines.append(f"{v:<16}" + "".join(f"{c:>26}" for c in cells))
    return "\n".join(lines)


def plot_systematics(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> list[Path]:
    """metrics.png (headline metrics per variation, 68 % error bars) and flips.png (per-event
    flip fractions between each variation and nominal); for a particles report also
    shifts.png (the paired shifts from nominal of its headline metrics, 68 % error bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    written: list[Path] = []
    names = list(report["variations"])
    particles = report.get("task", "semseg") == "particles"
    headline = [k for k in PARTICLE_HEADLINE if k in report["metrics"][NOMINAL]] if particles else list(HEADLINE)
    blocks = [("metrics", "metrics.png", "score (68 % bootstrap interval)")]
    if particles:
        blocks.append(("differences", "shifts.png", "shift from nominal (paired, 68 % interval)"))
    for key, filename, ylabel in blocks:
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(names)), 4.2))
        _errorbars(ax, report[key], names, headline)
        ax.set_ylabel(ylabel)
        if key == "differences":
            ax.axhline(0.0, color="k", linewidth=0.8)
        ax.set_title(f"Detector variations, {report['events']} events")
        ax.legend(fontsize=8 if len(headline) > 3 else None)
        written.append(_save(fig, out / filename, plt))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bins = np.linspace(0, 1, 41)
    for v in names[1:]:
        values = report["flip_fraction"][v]["per_event"]
        if values:
            ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=v)
    ax.set_xlabel("fraction of common voxels whose predicted particle class changes" if particles
                  else "fraction of common voxels whose predicted class flips")
    ax.set_ylabel("events")
    ax.set_yscale("log")
    ax.set_title("Prediction flips between twins (vs nominal)")
    if len(names) > 1:
        ax.legend()
    written.append(_save(fig, out / "flips.png", plt))

    return written


def _errorbars(ax: Any, block: Mapping[str, Any], names: Sequence[str], metrics: Sequence[str]) -> None:
    """One series of points with 68 % error bars per metric, over the variations ``names``."""
    x = np.arange(len(names))
    step = min(0.12, 0.7 / max(len(metrics), 1))
    for k, metric in enumerate(metrics):
        rows = [block[v][metric] for v in names]
        value = np.array([np.nan if r["value"] is None else r["value"] for r in rows])
        lo = np.array([np.nan if r["lo"] is None else r["lo"] for r in rows])
        hi = np.array([np.nan if r["hi"] is None else r["hi"] for r in rows])
        err = np.nan_to_num(np.vstack([value - lo, hi - value]), nan=0.0).clip(min=0)
        ax.errorbar(x + (k - (len(metrics) - 1) / 2) * step, value, yerr=err, fmt="o", capsize=3,
                    label=metric.replace("_", " "))
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.grid(True, axis="y", alpha=0.3)


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def _manifest(out: Path, run: Path, files: Mapping[str, Path], *, seed: int, started: float, device: str,
              config: Mapping[str, Any]) -> None:
    from detfm.engine.manifest import run_inputs, write_manifest

    inputs = run_inputs(run)
    inputs += sorted({Path(p) for p in files.values()})
    write_manifest(out, inputs=inputs, seeds={"bootstrap": seed}, config=dict(config), device=device,
                   started=started, ended=time.time(), extra={"report": "report.json", "kind": REPORT_KIND})

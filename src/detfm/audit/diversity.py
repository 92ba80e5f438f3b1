"""Model diversity: do several segmentation models fail on the same points?

Models that make the same mistakes give a false sense of agreement and gain nothing from
being combined. For fine-tuned semseg models scored on the same points this reports:

* per model: accuracy and macro-F1 (all 5 classes, argmax over all probabilities; and
  without low-energy points, argmax over the 4 other classes, as ``eval.json``);
* per pair, from the per-point error indicators ``e = (prediction != truth)``:

  - ``error_correlation``: Pearson correlation of the two indicators (the phi
    coefficient); 1 for identical mistakes, 0 for independent ones;
  - ``error_kappa``: Cohen's kappa of the indicators taken as two raters of
    "wrong / right" (agreement beyond what the two error rates alone explain);
  - ``disagreement``: fraction of points the two models label differently;
  - ``both_wrong``: fraction of points both get wrong;
  - ``event_error_correlation``: Pearson correlation of the per-event error rates
    (do the same *events* go badly?);

* the ensemble (mean of the models' probabilities): accuracy, macro-F1 and the gain over
  the best single model on each.

Correlations are None (null in JSON) where undefined: a model that is never (or always)
wrong has no error variance, and per-event correlations need at least
``MIN_EVENTS_FOR_CORRELATION`` (3) events.

Points: the test split of the first model's ``split.json`` when it names exactly the
data file, otherwise every event of the file with at least one point above the energy
threshold (which must be the same for every model).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detfm.recipes.adapt import SPLIT_FILE, load_finetune_config, load_finetuned
from detfm.evaluate import kinds
from detfm.data import EventDataset
from detfm.errors import DetfmError
from detfm.evaluate.scoring import eval_batches
from detfm.evaluate.metrics import accuracy, confusion_matrix, macro_f1
from detfm.io import atomic_path, atomic_write_text, layout
from detfm.models.lora import merge_lora
from detfm.tasks.segmentation import SemanticSegmentation

__all__ = ["KIND", "DiversityAccumulator", "DiversityReport", "diversity_audit"]

KIND = kinds.DIVERSITY
REPORT_FILE = "diversity.json"
HEATMAP_FILE = "diversity.png"
NUM_CLASSES = len(layout.SEMANTIC_CLASSES)
# Per-event error rates are correlated only over at least this many events (two points
# always lie on a line: their correlation is +-1 whatever the models do).
MIN_EVENTS_FOR_CORRELATION = 3


# ----------------------------------------------------------------------------- report
@dataclass(frozen=True)
class DiversityReport:
    """What :func:`diversity_audit` (or :meth:`DiversityAccumulator.report`) found.

    Attributes:
        names: model labels, in the order of every matrix.
        models: per model ``{"name", "accuracy", "macro_f1", "accuracy_4", "macro_f1_4",
            "error_rate"}`` (plus ``"run"`` when read from a run).
        pairs: per pair ``{"a", "b", "error_correlation", "error_kappa", "disagreement",
            "both_wrong", "event_error_correlation"}``.
        error_correlation, event_error_correlation: (M, M) matrices (None where undefined).
        ensemble: accuracy, macro-F1 (both views) of the mean probabilities, and
            ``gain_accuracy`` / ``gain_macro_f1`` over the best single model.
        events, points: what was scored.
        source: where the points came from (data file, split, energy threshold).
    """

    names: tuple[str, ...]
    models: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    error_correlation: list[list[float | None]]
    event_error_correlation: list[list[float | None]]
    ensemble: dict[str, Any]
    events: int
    points: int
    source: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "source": self.source, "events": self.events, "points": self.points,
                "names": list(self.names), "models": self.models, "pairs": self.pairs,
                "error_correlation": self.error_correlation,
                "event_error_correlation": self.event_error_correlation, "ensemble": self.ensemble}

    def format(self) -> str:
        """A readable summary: per-model scores, pair statistics, the ensemble's gain."""
        width = max(len("ensemble"), *map(len, self.names))
        lines = [f"{self.events} events, {self.points} points",
                 f"{'model':<{width}}  {'accuracy':>8}  {'macro-F1':>8}  {'macro-F1(4)':>11}"]
        for m in self.models:
            lines.append(f"{m['name']:<{width}}  {_num(m['accuracy']):>8}  {_num(m['macro_f1']):>8}  "
                         f"{_num(m['macro_f1_4']):>11}")
        e = self.ensemble
        lines.append(f"{'ensemble':<{width}}  {_num(e['accuracy']):>8}  {_num(e['macro_f1']):>8}  "
                     f"{_num(e['macro_f1_4']):>11}")
        lines.append(f"ensemble gain over the best single model: accuracy {_signed(e['gain_accuracy'])}, "
                     f"macro-F1 {_signed(e['gain_macro_f1'])}")
        lines.append("pairs: error correlation (points / events), error kappa, disagreement, both wrong")
        for p in self.pairs:
            lines.append(f"  {p['a']} ~ {p['b']}: {_num(p['error_correlation'])} / "
                         f"{_num(p['event_error_correlation'])}, kappa {_num(p['error_kappa'])}, "
                         f"disagree {_num(p['disagreement'])}, both wrong {_num(p['both_wrong'])}")
        return "\n".join(lines)

    def save(self, out_dir: str | os.PathLike[str], *, heatmap: bool = True) -> list[Path]:
        """Write ``diversity.json`` and (with ``heatmap``) ``diversity.png`` into ``out_dir``."""
        out = Path(out_dir)
        atomic_write_text(out / REPORT_FILE, json.dumps(self.to_dict(), indent=2) + "\n")
        written = [out / REPORT_FILE]
        if heatmap:
            written.append(_save_heatmap(self, out / HEATMAP_FILE))
        return written


# ----------------------------------------------------------------------------- accumulation
class DiversityAccumulator:
    """Collects per-point predictions of M models batch by batch; :meth:`report` at the end.

    Memory stays O(M^2 + events * M): confusion matrices and pair counts are summed, only
    the per-event error rates are kept.
    """

    def __init__(self, names: Sequence[str], num_classes: int = NUM_CLASSES) -> None:
        if len(names) < 2:
            raise DetfmError(f"a diversity audit needs at least 2 models, got {len(names)}")
        if num_classes < 2:
            raise DetfmError(f"num_classes must be >= 2, got {num_classes}")
        m = len(names)
        self.names = tuple(names)
        self.num_classes = num_classes
        self._cm = np.zeros((m + 1, num_classes, num_classes), dtype=np.int64)  # last: the ensemble
        rest = num_classes - 1
        self._cm_rest = np.zeros((m + 1, rest, rest), dtype=np.int64)  # without the last class
        self._points = 0
        self._errors = np.zeros(m, dtype=np.int64)
        self._both = np.zeros((m, m), dtype=np.int64)
        self._differ = np.zeros((m, m), dtype=np.int64)
        self._event_rates: list[np.ndarray] = []

    def add(self, probs: Sequence[np.ndarray], truth: np.ndarray, offsets: np.ndarray | None = None) -> None:
        """Add one batch: ``probs`` one (P, C) array per model, ``truth`` (P,) classes,
        ``offsets`` (E + 1,) event boundaries (default: the batch is one event)."""
        t = np.asarray(truth).astype(np.int64).reshape(-1)
        if len(probs) != len(self.names):
            raise DetfmError(f"expected probabilities of {len(self.names)} models, got {len(probs)}")
        p = np.stack([np.asarray(x, dtype=np.float64) for x in probs])
        if p.shape != (len(self.names), t.size, self.num_classes):
            raise DetfmError(f"probabilities must be (points, {self.num_classes}) per model for "
                             f"{t.size} points, got {p.shape[1:]}")
        bounds = np.array([0, t.size]) if offsets is None else np.asarray(offsets, dtype=np.int64)
        if bounds[0] != 0 or bounds[-1] != t.size or (np.diff(bounds) < 0).any():
            raise DetfmError(f"offsets must rise from 0 to the {t.size} points, got {bounds.tolist()}")
        ensemble = p.mean(axis=0)
        preds = np.concatenate([p.argmax(axis=2), ensemble.argmax(axis=1)[None]])  # (M + 1, P)
        keep = t != self.num_classes - 1
        preds_rest = np.concatenate([p[:, keep, :-1].argmax(axis=2), ensemble[keep, :-1].argmax(axis=1)[None]])
        for k in range(len(preds)):
            self._cm[k] += confusion_matrix(t, preds[k], self.num_classes)
            self._cm_rest[k] += confusion_matrix(t[keep], preds_rest[k], self.num_classes - 1)
        wrong = (preds[:-1] != t[None]).astype(np.int64)  # (M, P)
        self._points += t.size
        self._errors += wrong.sum(axis=1)
        self._both += wrong @ wrong.T
        self._differ += (preds[:-1, None, :] != preds[None, :-1, :]).sum(axis=2)
        sizes = np.diff(bounds)
        full = sizes > 0
        if full.any():
            per_event = np.add.reduceat(wrong, bounds[:-1][full], axis=1) / sizes[full]
            self._event_rates.extend(per_event.T)

    def report(self, *, source: dict[str, Any] | None = None,
               runs: Sequence[str] | None = None) -> DiversityReport:
        """The statistics of everything added so far."""
        if self._points == 0:
            raise DetfmError("nothing to compare: no points were scored")
        m = len(self.names)
        models = []
        for k, name in enumerate(self.names):
            row = {"name": name, **_scores(self._cm[k], self._cm_rest[k]),
                   "error_rate": float(self._errors[k] / self._points)}
            if runs is not None:
                row["run"] = str(runs[k])
            models.append(row)
        ensemble = _scores(self._cm[m], self._cm_rest[m])
        for key in ("accuracy", "macro_f1"):
            best = _best(models, key)
            ensemble[f"gain_{key}"] = None if best is None or ensemble[key] is None else ensemble[key] - best[1]
            ensemble[f"best_{key}_model"] = None if best is None else best[0]
        rates = np.array(self._event_rates).reshape(-1, m)
        corr = [[_phi(self._points, self._errors[i], self._errors[j], self._both[i, j]) for j in range(m)]
                for i in range(m)]
        event_corr = [[_pearson(rates[:, i], rates[:, j]) for j in range(m)] for i in range(m)]
        pairs = []
        for i in range(m):
            for j in range(i + 1, m):
                pairs.append({
                    "a": self.names[i], "b": self.names[j], "error_correlation": corr[i][j],
                    "error_kappa": _kappa(self._points, self._errors[i], self._errors[j], self._both[i, j]),
                    "disagreement": float(self._differ[i, j] / self._points),
                    "both_wrong": float(self._both[i, j] / self._points),
                    "event_error_correlation": event_corr[i][j]})
        return DiversityReport(names=self.names, models=models, pairs=pairs, error_correlation=corr,
                               event_error_correlation=event_corr, ensemble=ensemble,
                               events=len(self._event_rates), points=int(self._points),
                               source=dict(source or {}))


def _scores(cm: np.ndarray, cm_rest: np.ndarray) -> dict[str, float | None]:
    return {"accuracy": _finite(accuracy(cm)), "macro_f1": _finite(macro_f1(cm)),
            "accuracy_4": _finite(accuracy(cm_rest)), "macro_f1_4": _finite(macro_f1(cm_rest))}


def _best(models: Sequence[dict[str, Any]], key: str) -> tuple[str, float] | None:
    scored = [(m["name"], m[key]) for m in models if m[key] is not None]
    return max(scored, key=lambda x: x[1]) if scored else None


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _phi(n: int, si: int, sj: int, both: int) -> float | None:
    """Pearson correlation of two 0/1 indicators from their counts."""
    pi, pj = si / n, sj / n
    var = pi * (1 - pi) * pj * (1 - pj)
    if var <= 0:
        return None
    return float(np.clip((both / n - pi * pj) / math.sqrt(var), -1.0, 1.0))


def _kappa(n: int, si: int, sj: int, both: int) -> float | None:
    """Cohen's kappa of two 0/1 raters from their counts."""
    pi, pj = si / n, sj / n
    observed = 1.0 - (si + sj - 2 * both) / n
    chance = pi * pj + (1 - pi) * (1 - pj)
    if chance >= 1 - 1e-12:
        return None
    return float((observed - chance) / (1 - chance))


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.size < MIN_EVENTS_FOR_CORRELATION:
        return None
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(da @ da) * float(db @ db))
    return None if den <= 0 else float(np.clip(float(da @ db) / den, -1.0, 1.0))


# ----------------------------------------------------------------------------- the audit
def diversity_audit(run_dirs: Sequence[str | os.PathLike[str]], data_file: str | os.PathLike[str], *,
                    max_events: int | None = None, batch_size: int = 8, device: str = "cpu",
                    progress: bool = False) -> DiversityReport:
    """Score the semseg models of ``run_dirs`` on the same points of ``data_file`` (see the
    module docstring) and compare their mistakes.

    Raises :class:`DetfmError` for fewer than two models, a run that is not a semseg
    fine-tuning run, models with different energy thresholds, a missing data file or no
    events to score.
    """
    runs = [Path(r) for r in run_dirs]
    if len(runs) < 2:
        raise DetfmError(f"a diversity audit needs at least 2 models, got {len(runs)}")
    if max_events is not None and max_events < 1:
        raise DetfmError(f"max_events must be >= 1, got {max_events}")
    if batch_size < 1:
        raise DetfmError(f"batch_size must be >= 1, got {batch_size}")
    data = Path(data_file)
    if not data.is_file():
        raise DetfmError(f"{data}: no such data file")
    thresholds = []
    for run in runs:
        if not run.is_dir():
            raise DetfmError(f"{run}: no such run directory")
        cfg = load_finetune_config(run)
        if cfg.task != "semseg":
            raise DetfmError(f"{run}: a '{cfg.task}' run; the diversity audit compares per-point "
                             f"segmentation (semseg) models")
        thresholds.append(cfg.data.energy_threshold)
    if len(set(thresholds)) > 1:
        listed = ", ".join(f"{r.name}: {t}" for r, t in zip(runs, thresholds, strict=True))
        raise DetfmError(f"the models use different energy thresholds ({listed} MeV), so they see different "
                         f"points; compare models trained with the same threshold")
    tasks = [_load_segmentation(run, device) for run in runs]
    dataset, source = _points(runs[0], data, thresholds[0], max_events)
    acc = DiversityAccumulator(_labels(runs), num_classes=tasks[0].config.num_classes)
    for _, batch in eval_batches(tasks[0], dataset, batch_size, progress, desc="comparing"):
        if batch.semantic is None:  # cannot happen: the dataset is opened with labels
            raise DetfmError(f"{data}: the events carry no semantic labels")
        probs = [task.predict_proba(batch).float().cpu().numpy() for task in tasks]
        acc.add(probs, batch.semantic.cpu().numpy(), batch.offsets.cpu().numpy())
    return acc.report(source=source, runs=[str(r) for r in runs])


def _load_segmentation(run: Path, device: str) -> SemanticSegmentation:
    task = load_finetuned(run, map_location=device)
    if not isinstance(task, SemanticSegmentation):
        raise DetfmError(f"{run}: not a segmentation model")
    merge_lora(task)  # inference only: fold LoRA updates into the weights (no-op otherwise)
    if task.config.num_classes != NUM_CLASSES:
        raise DetfmError(f"{run}: {task.config.num_classes} classes, expected {NUM_CLASSES}")
    return task.eval()


def _labels(runs: Sequence[Path]) -> list[str]:
    """Short, distinct model names: the run folder's name (``#k`` added to repeats)."""
    seen: dict[str, int] = {}
    out = []
    for run in runs:
        name = run.resolve().name or str(run)
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


def _points(run: Path, data: Path, threshold: float,
            max_events: int | None) -> tuple[EventDataset, dict[str, Any]]:
    """The events to score: the run's test split when its split names ``data``, else all."""
    dataset = EventDataset([data], energy_threshold=threshold, min_points=1, labels=True)
    test = _test_split(run, data)
    selection = "all events"
    if test is not None:
        dataset = dataset.subset(np.isin(dataset.event_ids, test))
        selection = f"test split of {run.name}"
    if max_events is not None:
        dataset = dataset.subset(np.arange(min(max_events, len(dataset))))
    if len(dataset) == 0:
        raise DetfmError(f"{data}: no events with points above {threshold} MeV to compare on ({selection})")
    return dataset, {"data": str(data), "selection": selection, "energy_threshold": threshold,
                     "event_ids": dataset.event_ids.tolist()}


def _test_split(run: Path, data: Path) -> np.ndarray | None:
    """The test event ids of ``run``'s split.json if it splits exactly ``data``."""
    path = run / SPLIT_FILE
    if not path.is_file():
        return None
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetfmError(f"{path}: cannot read the split ({exc})") from None
    files = split.get("files") if isinstance(split, dict) else None
    if not isinstance(files, list) or len(files) != 1 or not isinstance(split.get("test"), list):
        return None
    if Path(files[0]).resolve() != data.resolve():
        return None
    return np.asarray(split["test"], dtype=np.int64)


# ----------------------------------------------------------------------------- heatmap
def _save_heatmap(report: DiversityReport, path: Path) -> Path:
    """Two heatmaps: point-level and per-event error correlation between the models."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - lazy, Agg only
    from matplotlib.figure import Figure  # noqa: PLC0415

    m = len(report.names)
    size = 2.4 + 0.7 * m
    fig = Figure(figsize=(2 * size + 1.5, size + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    gain = report.ensemble.get("gain_macro_f1")
    fig.suptitle(f"error correlation of {m} models ({report.points} points, {report.events} events); "
                 f"ensemble macro-F1 gain {_signed(gain)}")
    axes = fig.subplots(1, 2)
    image = None
    for ax, title, matrix in zip(axes, ("per point", "per event (error rates)"),
                                 (report.error_correlation, report.event_error_correlation), strict=True):
        values = np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=np.float64)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu_r", vmin=-1.0, vmax=1.0)
        ax.set_facecolor("0.85")  # undefined cells
        ax.set_title(title)
        ax.set_xticks(range(m), report.names, rotation=45, ha="right")
        ax.set_yticks(range(m), report.names)
        for i in range(m):
            for j in range(m):
                text = "n/a" if np.isnan(values[i, j]) else f"{values[i, j]:.2f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="white" if abs(np.nan_to_num(values[i, j])) > 0.6 else "black")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="Pearson correlation of errors")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # explicit: the temporary name does not end in .png
    return path


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.4f}"

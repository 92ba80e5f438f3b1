"""One scoring loop for every task: eval mode, no gradients, batches in dataset order, a
progress bar; and the scores of a registered task on a labeled dataset.

A task says what it scores through ``task.scored_items(batch) -> (labels, logits)`` (items
are points, particle instances or events; label -1: not scored) and its registry entry
(:class:`~detfm.tasks.registry.TaskSpec`): class names, the unit, and a class that a second
view leaves out (semseg: low-energy deposits, the reference's 4-class score).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from detfm.data import EventDataset, PackedBatch, collate
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.fragment_classifier import FragmentRelabel, FragmentStage, stage_record
from detfm.evaluate.fragments import FragmentVote, check_fragment_steps
from detfm.evaluate.instances import InstanceTally
from detfm.evaluate.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    per_class_f1,
    per_class_precision,
    per_class_recall,
)
from detfm.evaluate.orientations import OrientationAverage
from detfm.tasks.registry import TaskSpec

__all__ = ["Scorer", "argmax_without", "eval_batches", "json_float", "register_scorer", "renumber_without",
           "score_task", "task_confusion"]

# The count key of each unit in the scores (kept from the first release of the scores files).
_COUNT_KEY = {"point": "points", "instance": "instances", "event": "scored_events"}


# A task scored by more than a confusion matrix of its items (set prediction: finding, panoptic
# quality, energy) registers its own scorer: scorer(task, spec, dataset, batch_size, progress).
Scorer = Callable[[nn.Module, TaskSpec, Any, int, bool], dict[str, Any]]
_SCORERS: dict[str, Scorer] = {}


def register_scorer(task_name: str, scorer: Scorer) -> None:
    """Make :func:`score_task` score the task ``task_name`` with ``scorer``."""
    _SCORERS[task_name] = scorer


def json_float(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _named(values: np.ndarray, classes: Sequence[str]) -> dict[str, float | None]:
    return {c: json_float(float(v)) for c, v in zip(classes, values, strict=True)}


def argmax_without(scores: np.ndarray, excluded: int) -> np.ndarray:
    """The best class other than ``excluded`` for each row of (N, C) ``scores``, in the
    original class numbers: the one rule for "the 4 classes without low-energy deposits"."""
    masked = np.array(scores, dtype=np.float64, copy=True)
    masked[:, excluded] = -np.inf
    return masked.argmax(axis=1) if len(masked) else np.zeros(0, np.int64)


def renumber_without(classes: np.ndarray, excluded: int) -> np.ndarray:
    """Class numbers with ``excluded`` taken out (those above it move down by one)."""
    classes = np.asarray(classes, dtype=np.int64)
    return classes - (classes > excluded)


def eval_batches(module: nn.Module, dataset: Any, batch_size: int = 8, progress: bool = False,
                 desc: str = "scoring") -> Iterator[tuple[int, PackedBatch]]:
    """``(first dataset position, batch on the module's device)`` over ``dataset`` in order,
    with ``module`` in eval mode and gradients off; the module's mode is restored after."""
    if len(dataset) == 0:
        raise DetfmError("nothing to evaluate: the dataset has no events")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DetfmError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), tqdm(total=len(dataset), desc=desc, unit="event", delay=2.0, leave=False,
                                   disable=not progress) as bar:
            for a in range(0, len(dataset), batch_size):
                batch = collate([dataset[i] for i in range(a, min(a + batch_size, len(dataset)))])
                yield a, batch.to(device)
                bar.update(len(batch))
    finally:
        module.train(was_training)


def task_confusion(task: nn.Module, dataset: EventDataset, num_classes: int, excluded: int | None = None,
                   batch_size: int = 8, progress: bool = False, tally: InstanceTally | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Confusion matrices (rows: truth) of ``task.scored_items`` over ``dataset``: over all
    classes, and (when ``excluded`` is given) without the items of that class, predicted by
    the argmax over the other classes' logits.

    ``tally`` (point tasks on data with instance labels): also collect each true particle's
    recall, a point of a kept class predicted as in the view without ``excluded``."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    cm_kept = None if excluded is None else np.zeros((num_classes - 1, num_classes - 1), dtype=np.int64)
    for first, batch in eval_batches(task, dataset, batch_size, progress):
        truth, logits = task.scored_items(batch)
        truth, logits = truth.cpu().numpy(), logits.float().cpu().numpy()
        scored = truth >= 0
        pred = logits.argmax(axis=-1)
        cm += confusion_matrix(truth[scored], pred[scored], num_classes)
        if cm_kept is not None and excluded is not None:
            keep = scored & (truth != excluded)
            pred[keep] = argmax_without(logits[keep], excluded)
            cm_kept += confusion_matrix(renumber_without(truth[keep], excluded),
                                        renumber_without(pred[keep], excluded), num_classes - 1)
        if tally is not None and batch.instance is not None:
            tally.add(truth, pred, first + batch.batch_index().cpu().numpy(), batch.instance.cpu().numpy())
    return cm, cm_kept


def score_task(task: nn.Module, spec: TaskSpec, dataset: EventDataset, batch_size: int = 8,
               progress: bool = False, views: int = 1, view_seed: int = 0,
               fragment_vote: bool = False, fragment_stage: FragmentStage | None = None) -> dict[str, Any]:
    """The scores of a task on every scored item of ``dataset`` (labeled, not augmented).

    ``views > 1``: the class probabilities of each item are averaged over that many
    orientations of its event (:class:`~detfm.evaluate.orientations.OrientationAverage`,
    drawn from ``view_seed``); the scores then say so under ``orientation_views``.
    ``fragment_vote`` (tasks with ``fragment_classes``, i.e. semseg): each connected fragment
    of points called one of those classes takes one class
    (:class:`~detfm.evaluate.fragments.FragmentVote`, after the views are averaged); the
    scores say so under ``fragment_vote``. ``fragment_stage``: a fitted fragment classifier
    (:class:`~detfm.evaluate.fragment_classifier.FragmentStage`) in place of the vote, after
    the views are averaged; the scores say so under ``fragment_classifier``.

    Per class F1, precision and recall (called efficiency and purity for particles and
    events), macro-F1 and accuracy, and the confusion matrix. With an excluded class (semseg)
    there are two views: all classes (``macro_f1_5``, ...) and without it (``macro_f1_4``,
    ``f1_4``, ``confusion_4``), as the reference evaluation scores segmentation.
    """
    scorer = _SCORERS.get(spec.name)
    check_fragment_steps(spec, fragment_vote, fragment_stage is not None)
    if fragment_vote or fragment_stage is not None:
        inner = OrientationAverage(task, views, view_seed) if views != 1 else task
        extra: dict[str, Any]
        if fragment_stage is not None:
            wrapped: nn.Module = FragmentRelabel(inner, fragment_stage)
            extra = {"fragment_classifier": stage_record(fragment_stage, spec.class_names)}
        else:
            wrapped = FragmentVote(inner, spec.fragment_classes, spec.excluded_class)
            extra = {"fragment_vote": {"classes": [spec.class_names[c] for c in spec.fragment_classes]}}
        voted = score_task(wrapped, spec, dataset, batch_size, progress)
        if views != 1:
            extra["orientation_views"] = {"views": views, "seed": view_seed}
        return {**voted, **extra}
    if views != 1:
        if scorer is not None:
            raise ConfigError(f"averaging over orientations applies to tasks scored point by point, particle "
                              f"by particle or event by event; '{spec.name}' finds its own items: use views=1")
        averaged = score_task(OrientationAverage(task, views, view_seed), spec, dataset, batch_size, progress)
        return {**averaged, "orientation_views": {"views": views, "seed": view_seed}}
    if scorer is not None:  # the task's own scores (see register_scorer)
        return {"split": "test", "events": len(dataset), **scorer(task, spec, dataset, batch_size, progress)}
    classes = spec.class_names
    tally = InstanceTally(len(classes)) if spec.unit == "point" else None
    cm, cm_kept = task_confusion(task, dataset, len(classes), spec.excluded_class, batch_size, progress, tally)
    head = {"split": "test", "events": len(dataset)}
    if tally is not None and tally.pieces:
        head["per_particle"] = tally.summary(classes)
    if cm_kept is None:
        return {**head, _COUNT_KEY[spec.unit]: int(cm.sum()), "classes": list(classes),
                "macro_f1": json_float(macro_f1(cm)), "accuracy": json_float(accuracy(cm)),
                "f1": _named(per_class_f1(cm), classes), "efficiency": _named(per_class_recall(cm), classes),
                "purity": _named(per_class_precision(cm), classes), "confusion": cm.tolist()}
    n, k = len(classes), len(classes) - 1
    kept = [c for i, c in enumerate(classes) if i != spec.excluded_class]
    return {
        **head, _COUNT_KEY[spec.unit]: int(cm.sum()), "classes": list(classes),
        f"macro_f1_{n}": json_float(macro_f1(cm)), f"macro_f1_{k}": json_float(macro_f1(cm_kept)),
        f"accuracy_{n}": json_float(accuracy(cm)), f"accuracy_{k}": json_float(accuracy(cm_kept)),
        "f1": _named(per_class_f1(cm), classes), "precision": _named(per_class_precision(cm), classes),
        "recall": _named(per_class_recall(cm), classes), "confusion": cm.tolist(),
        f"f1_{k}": _named(per_class_f1(cm_kept), kept), f"confusion_{k}": cm_kept.tolist(),
    }

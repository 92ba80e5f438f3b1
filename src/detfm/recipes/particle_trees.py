"""Fit particle ID by boosted trees on a segmentation run's own labeled events.

:func:`fit_pid_trees_run` runs the trained segmentation model of a ``semseg`` run over its
labeled training events (each in ``views`` orientations: every view gives rows of its own),
forms the particle table of every truth instance
(:func:`~detfm.evaluate.particle_trees.particle_table`), and fits
:class:`~detfm.evaluate.boosted_trees.BoostedTrees` to the instances' PID, each class weighted
by the inverse square root of its count. With a ``working_point`` class it then sets that
class's offset: the trees are fitted again on ``folds`` parts of the events, each part scored
by the trees of the others, and the offset is the one at which the class's efficiency and
purity on those held-out scores are closest to equal (the highest of the two smaller). It
writes ``pid_trees.safetensors`` and ``pid_trees.json`` into the run directory;
``detfm score --pid-trees`` then scores particle ID on the run's test split.

Nothing of the test split is read.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detfm.data import EventDataset
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.boosted_trees import TreeSettings, fit_boosted_trees, require_sklearn
from detfm.evaluate.metrics import confusion_matrix, macro_f1, per_class_precision, per_class_recall
from detfm.evaluate.orientations import rotate_batch
from detfm.evaluate.particle_trees import PID_TREES_FORMAT, particle_table, save_pid_trees, table_columns
from detfm.evaluate.scoring import eval_batches
from detfm.models.lora import merge_lora
from detfm.recipes.adapt import labeled_run_events, load_finetune_config, load_finetuned
from detfm.tasks.registry import get_task

__all__ = ["OFFSET_GRID", "fit_pid_trees_run", "labeled_particles", "working_point_offset"]

# log-probability offsets tried for the working point: class weights from 0.37 to 12
OFFSET_GRID = tuple(round(float(v), 2) for v in np.arange(-1.0, 2.5001, 0.05))


def labeled_particles(segmentation: torch.nn.Module, events: EventDataset, *, views: int = 1, view_seed: int = 0,
                      batch_size: int = 8, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rows (N, columns), PID (N,), event (N,) dataset index) of every scored particle instance
    of ``events``, once per view (view 0: the events as they are)."""
    rows, labels, owners = [], [], []
    for view in range(views):
        for _, batch in eval_batches(segmentation, events, batch_size, progress,
                                     desc=f"particles, view {view + 1}/{views}"):
            if batch.index is None:  # the folds keep each event's rows together by its number
                raise DetfmError("particle tables need each event's dataset number (batch.index): pass an "
                                 "EventDataset")
            table, inst = particle_table(segmentation, rotate_batch(batch, view_seed, view))
            keep = (inst.label >= 0).cpu()
            rows.append(table.cpu()[keep])
            labels.append(inst.label.cpu()[keep])
            owners.append(batch.index.cpu()[inst.event.cpu()][keep])
    return torch.cat(rows), torch.cat(labels), torch.cat(owners)


def _class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-row weights: each class by the inverse square root of its share."""
    counts = torch.bincount(labels, minlength=num_classes).double().clamp_min(1.0)
    return ((counts.sum() / counts) ** 0.5)[labels]


def _efficiency_purity(logits: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per class efficiency and purity of ``argmax(logits)`` against ``truth`` (0 where a class is
    never true or never called), and the confusion matrix."""
    cm = confusion_matrix(truth.numpy(), logits.argmax(dim=1).numpy(), int(logits.shape[1]))
    return np.nan_to_num(per_class_recall(cm)), np.nan_to_num(per_class_precision(cm)), cm


def working_point_offset(logits: torch.Tensor, truth: torch.Tensor, c: int,
                         grid: tuple[float, ...] = OFFSET_GRID) -> tuple[float, float, float]:
    """(offset, efficiency, purity): the log-probability offset of class ``c`` in ``grid`` at which
    the smaller of its efficiency and purity (``argmax(logits + offset)`` against ``truth``) is
    highest; among equals the offset nearest zero."""
    best: tuple[float, float, float, float] | None = None
    for g in sorted(grid, key=abs):
        shifted = logits.clone()
        shifted[:, c] += g
        eff, pur, _ = _efficiency_purity(shifted, truth)
        if best is None or min(eff[c], pur[c]) > best[0] + 1e-12:
            best = (min(eff[c], pur[c]), g, float(eff[c]), float(pur[c]))
    assert best is not None
    return best[1], best[2], best[3]


def _held_out_logits(rows: torch.Tensor, labels: torch.Tensor, owners: torch.Tensor, num_classes: int,
                     folds: int, settings: TreeSettings) -> torch.Tensor:
    """Every row's logits from trees fitted on the other folds (folds of whole events)."""
    events = torch.unique(owners)
    if len(events) < folds:
        raise ConfigError(f"a working point needs at least {folds} labeled events (one per fold), got {len(events)}")
    order = torch.randperm(len(events), generator=torch.Generator().manual_seed(settings.seed))
    fold_of = torch.empty(len(events), dtype=torch.long)
    fold_of[order] = torch.arange(len(events)) % folds
    row_fold = fold_of[torch.searchsorted(events, owners)]
    out = torch.zeros(len(rows), num_classes, dtype=torch.float64)
    for f in range(folds):
        fit, held = row_fold != f, row_fold == f
        if len(torch.unique(labels[fit])) < num_classes:
            raise ConfigError(f"fold {f}: a class is missing from the other folds' particles; use fewer folds")
        trees = fit_boosted_trees(rows[fit], labels[fit], num_classes,
                                  sample_weight=_class_weights(labels[fit], num_classes), settings=settings)
        out[held] = trees.raw(rows[held])
    return out


def _scores(logits: torch.Tensor, truth: torch.Tensor, names: tuple[str, ...]) -> dict[str, Any]:
    eff, pur, cm = _efficiency_purity(logits, truth)
    per_class = {name: {"efficiency": round(float(eff[c]), 4), "purity": round(float(pur[c]), 4)}
                 for c, name in enumerate(names)}
    return {"macro_f1": round(float(macro_f1(cm)), 4), "per_class": per_class}


def fit_pid_trees_run(run_dir: str | os.PathLike[str], data: str | os.PathLike[str] | None = None, *,
                      views: int = 1, view_seed: int = 0, settings: TreeSettings | None = None,
                      working_point: str | None = None, folds: int = 5, batch_size: int | None = None,
                      device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Fit and write the particle-ID trees of the semseg run ``run_dir`` (see the module
    docstring); returns what ``pid_trees.json`` holds.

    ``data``: the run's data file where it lives now (default: the path in its config).
    ``working_point``: a PID class name (e.g. ``"electron"``) whose offset is set on held-out
    folds, or None (no offsets). ``settings``: how the trees grow.
    """
    require_sklearn()  # before the model pass
    settings = settings or TreeSettings()
    run = Path(run_dir)
    cfg = load_finetune_config(run)
    if cfg.task != "semseg":
        raise ConfigError(f"{run} is a {cfg.task} run; particle-ID trees read a semseg run's outputs")
    names = tuple(get_task("pid").class_names)
    if working_point is not None and working_point not in names:
        raise ConfigError(f"working point {working_point!r}: not a PID class; choose one of {', '.join(names)}")
    if views < 1 or folds < 2:
        raise ConfigError(f"views must be >= 1 and folds >= 2, got {views} and {folds}")
    events = labeled_run_events(run, data)
    segmentation = load_finetuned(run, map_location=device)
    merge_lora(segmentation)
    start = time.perf_counter()
    rows, labels, owners = labeled_particles(segmentation, events, views=views, view_seed=view_seed,
                                             batch_size=batch_size or cfg.eval_batch_size, progress=progress)
    columns = table_columns(segmentation.backbone.num_features, get_task(cfg.task).class_names)
    missing = [names[c] for c in range(len(names)) if not bool((labels == c).any())]
    if missing:
        raise ConfigError(f"no labeled particle of the classes {missing}: cannot fit particle-ID trees")
    offsets = torch.zeros(len(names))
    point = None
    if working_point is not None:
        c = names.index(working_point)
        held = _held_out_logits(rows, labels, owners, len(names), folds, settings)
        offset, _, _ = working_point_offset(held, labels, c)
        offsets[c] = offset
        held[:, c] += offset
        point = {"class": working_point, "offset": offset, "folds": folds,
                 "held_out": _scores(held, labels, names)}
    trees = fit_boosted_trees(rows, labels, len(names), sample_weight=_class_weights(labels, len(names)),
                              settings=settings)
    info = {
        "format": PID_TREES_FORMAT, "task": "pid", "segmentation_run": str(run), "class_names": list(names),
        "columns": list(columns), "views": views, "view_seed": view_seed,
        "settings": {"iterations": settings.iterations, "learning_rate": settings.learning_rate,
                     "leaves": settings.leaves, "l2": settings.l2, "seed": settings.seed},
        "class_weighting": "inverse square root of each class's count",
        "labeled_events": int(len(events)), "fitted_rows": int(len(rows)),
        "fitted_particles": {n: int((labels == c).sum()) // views for c, n in enumerate(names)},
        "working_point": point, "offsets": [round(float(v), 4) for v in offsets],
        "seconds": round(time.perf_counter() - start, 1),
    }
    save_pid_trees(trees, offsets, info, run)
    return info

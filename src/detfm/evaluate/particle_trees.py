"""Particle ID read off a segmentation model by boosted trees.

A trained segmentation model already holds what names a particle: per point, backbone
features and class probabilities (shower, track, Michel, delta). :func:`particle_table` puts
one row per truth particle instance: the mean and maximum of its points' backbone features,
the mean of their class probabilities, and the particle's measurements
(:func:`~detfm.tasks.particle_features.particle_features`: dE/dx at its ends, pieces,
contact, shape). :class:`TreeParticleID` names each row with fitted
:class:`~detfm.evaluate.boosted_trees.BoostedTrees`, and answers the scoring loop's questions
(``scored_items``, ``item_outputs``) as a ``pid`` task does, so the usual particle ID scores,
views (:class:`~detfm.evaluate.orientations.OrientationAverage`) and predictions apply.

The trees' inputs are the frozen model's outputs: nothing of the model is trained again. A
per-class offset (``offsets``, log-probabilities added before the softmax) sets the working
point, e.g. the electron score cut at which efficiency equals purity
(:mod:`detfm.recipes.particle_trees` chooses it on held-out folds of the training events).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from detfm.data import PackedBatch
from detfm.engine.runs import PID_TREES_FILE, PID_TREES_INFO, read_fitted_info
from detfm.errors import ConfigError, DataFormatError, DetfmError
from detfm.io import atomic_path, atomic_write_text
from detfm.evaluate.boosted_trees import BoostedTrees
from detfm.models.packing import group_max, group_mean
from detfm.tasks.particle_features import PARTICLE_FEATURE_NAMES, particle_features
from detfm.tasks.pid import Instances, find_instances

__all__ = ["PID_TREES_FORMAT", "TreeParticleID", "load_pid_trees", "particle_table", "save_pid_trees",
           "table_columns"]

PID_TREES_FORMAT = "detfm-pid-trees/1"


def table_columns(num_features: int, class_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Names of :func:`particle_table`'s columns for a backbone of ``num_features`` features per
    point and a segmentation model of ``class_names``."""
    return (tuple(f"mean_feature_{i}" for i in range(num_features))
            + tuple(f"max_feature_{i}" for i in range(num_features))
            + tuple(f"mean_prob_{name}" for name in class_names) + PARTICLE_FEATURE_NAMES)


@torch.no_grad()
def particle_table(segmentation: nn.Module, batch: PackedBatch) -> tuple[torch.Tensor, Instances]:
    """(M, columns) float32 rows of every truth particle instance of ``batch`` (see the module
    docstring; columns named by :func:`table_columns`), and the instances.

    ``segmentation``: a trained point-classification task (``encode`` and ``head``, as
    :class:`~detfm.tasks.segmentation.SemanticSegmentation`), in eval mode. A particle's row
    depends only on its own event (the backbone and the measurements see one event at a time)."""
    if batch.instance is None or batch.pid is None:
        raise DataFormatError("particle ID needs per-point instance and pid labels; this batch has none (open the "
                              "dataset with labels=True)", field="instance")
    inst = find_instances(batch.offsets, batch.instance, batch.pid)
    out = segmentation.encode(batch)
    probs = torch.softmax(segmentation.head(out, segmentation.config.features).float(), dim=-1)
    point = out.point.float()
    inside = inst.point_instance >= 0
    index, m = inst.point_instance[inside], len(inst)
    measured = particle_features(batch.coord, batch.energy, batch.batch_index(), inst.point_instance, m)
    rows = torch.cat([group_mean(point[inside], index, m), group_max(point[inside], index, m),
                      group_mean(probs[inside], index, m), measured.to(point.device)], dim=1)
    return torch.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0), inst


class TreeParticleID(nn.Module):
    """A segmentation task and fitted trees: ``scored_items(batch)`` -> (true PID of every
    instance, (M, K) log class probabilities), as a ``pid`` task scores.

    ``offsets`` (K,): log-probabilities added to the trees' logits (the working point; zeros by
    default)."""

    def __init__(self, segmentation: nn.Module, trees: BoostedTrees, offsets: torch.Tensor | None = None) -> None:
        super().__init__()
        width = len(table_columns(segmentation.backbone.num_features, [""] * segmentation.config.num_classes))
        if trees.num_features != width:
            raise ConfigError(f"these trees read {trees.num_features} columns; this segmentation model's particle "
                              f"table has {width}: fit the trees on this model (detfm pid-trees)")
        self.segmentation = segmentation
        self.trees = trees
        k = trees.num_classes
        self.register_buffer("offsets", torch.zeros(k) if offsets is None else offsets.detach().float().clone())
        if self.offsets.shape != (k,):
            raise ConfigError(f"offsets: one per class ({k}) expected, got {tuple(self.offsets.shape)}")

    def forward_instances(self, batch: PackedBatch) -> tuple[torch.Tensor, Instances]:
        """(M, K) log class probabilities of every instance of the batch, and the instances."""
        rows, inst = particle_table(self.segmentation, batch)
        logits = self.trees.raw(rows) + self.offsets.to(torch.float64)
        return torch.log_softmax(logits, dim=-1).float(), inst

    def scored_items(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Every instance's PID (-1: not scored) and log class probabilities."""
        logp, inst = self.forward_instances(batch)
        return inst.label, logp

    def item_outputs(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log class probabilities of every instance, its event and its group id (for predictions)."""
        logp, inst = self.forward_instances(batch)
        return logp, inst.event, inst.group


def save_pid_trees(trees: BoostedTrees, offsets: torch.Tensor, info: dict[str, Any],
                   run_dir: str | os.PathLike[str]) -> None:
    """Write the trees and their working-point ``offsets`` (safetensors) and ``info`` (JSON, with
    ``format``, ``columns`` and ``class_names``) into a run directory, each file atomically."""
    run = Path(run_dir)
    state = {k: v.contiguous() for k, v in trees.state_dict().items()}
    with atomic_path(run / PID_TREES_FILE) as tmp:
        save_file({**state, "offsets": offsets.detach().float().contiguous()}, str(tmp))
    atomic_write_text(run / PID_TREES_INFO, json.dumps(info, indent=2) + "\n")


def load_pid_trees(run_dir: str | os.PathLike[str]) -> tuple[BoostedTrees, torch.Tensor, dict[str, Any]]:
    """The fitted trees of a segmentation run (``detfm pid-trees``), their offsets and their info."""
    run = Path(run_dir)
    weights, info_file = run / PID_TREES_FILE, run / PID_TREES_INFO
    info = read_fitted_info(run, PID_TREES_FILE, PID_TREES_INFO, PID_TREES_FORMAT, ("columns", "class_names"),
                            "particle-ID trees", f"detfm pid-trees --model {run}")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise DetfmError(f"{weights}: not a readable safetensors file ({exc})") from exc
    offsets = state.pop("offsets", None)
    trees_, nodes, classes = BoostedTrees.shapes_of(state)
    trees = BoostedTrees(trees_, nodes, classes, len(info["columns"]))
    want = trees.state_dict()
    missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    shapes = [f"{k} {tuple(state[k].shape)} instead of {tuple(v.shape)}" for k, v in want.items()
              if k in state and state[k].shape != v.shape]
    if offsets is None or missing or extra or shapes or len(info["class_names"]) != classes:
        kept = "present" if offsets is not None else "missing"
        raise DetfmError(f"{weights}: does not match {info_file} (offsets {kept}, missing {missing}, unexpected "
                         f"{extra}, shapes {shapes}, {classes} classes)")
    trees.load_state_dict(state)
    return trees.eval(), offsets, info

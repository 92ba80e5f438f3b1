"""Segmentation scored per particle: how much of each true particle gets its own class.

Voxel scores weigh a 40-voxel Michel electron as 40 votes among millions. An analysis counts
Michel electrons, delta rays and showers, so it asks another question: of the particles of a
class, how many are tagged as that class? One *piece* is the voxels of one true particle
instance (the ``instance`` labels) that carry one true semantic class, in one event. Its
recall is the fraction of its voxels predicted as its class; a piece is *tagged* when at
least half of them are (the majority of a particle's voxels, what a vote over a found
cluster would return). Low-energy deposits belong to no instance (instance -1), so they have
no pieces.

:class:`InstanceTally` collects pieces batch by batch (events never span two batches) and
summarises them per class: the number of pieces, their mean recall, and the fraction tagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TAGGED_FRACTION", "InstanceTally"]

TAGGED_FRACTION = 0.5  # a piece is tagged when at least this fraction of its voxels is right


class InstanceTally:
    """Per-piece recall of a point classifier, accumulated over batches."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self._classes: list[np.ndarray] = []
        self._recalls: list[np.ndarray] = []

    @property
    def pieces(self) -> int:
        """Pieces collected so far."""
        return int(sum(c.size for c in self._classes))

    def add(self, truth: np.ndarray, pred: np.ndarray, event: np.ndarray, instance: np.ndarray) -> None:
        """Add the points of whole events: true and predicted class, the event each point
        belongs to (any id unique within the call) and its particle instance. Points with a
        negative true class or instance are left out."""
        truth, pred = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
        event, instance = np.asarray(event, np.int64), np.asarray(instance, np.int64)
        if not truth.shape == pred.shape == event.shape == instance.shape or truth.ndim != 1:
            raise ValueError(f"truth, pred, event and instance must be 1-D arrays of one length, got shapes "
                             f"{truth.shape}, {pred.shape}, {event.shape}, {instance.shape}")
        keep = (truth >= 0) & (instance >= 0)
        if not keep.any():
            return
        keys = np.stack([event[keep], instance[keep], truth[keep]], axis=1)
        pieces, which = np.unique(keys, axis=0, return_inverse=True)
        which = which.reshape(-1)
        size = np.bincount(which, minlength=len(pieces))
        right = np.bincount(which, weights=(pred[keep] == truth[keep]).astype(np.float64), minlength=len(pieces))
        self._classes.append(pieces[:, 2])
        self._recalls.append(right / size)

    def summary(self, class_names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``{class: {"pieces", "mean_recall", "tagged"}}`` (None where a class has no piece)."""
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        classes = np.concatenate(self._classes) if self._classes else np.zeros(0, np.int64)
        recalls = np.concatenate(self._recalls) if self._recalls else np.zeros(0)
        out: dict[str, dict[str, Any]] = {}
        for c, name in enumerate(class_names):
            r = recalls[classes == c]
            out[name] = {"pieces": int(r.size),
                         "mean_recall": float(r.mean()) if r.size else None,
                         "tagged": float((r >= TAGGED_FRACTION).mean()) if r.size else None}
        return out

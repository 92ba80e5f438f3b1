"""Event display of particle finding: the particles a ``particles`` model found next to the
truth particles, as a static PNG (matplotlib).

Two rows (truth, prediction), three 2D projections each (xy, xz, yz: the views of a
wire-plane display). Every particle has its own colour; a predicted particle matched to a
truth particle (mask IoU >= 0.5) takes the colour of that truth particle, so a found
particle looks the same in both rows and a missed or false one stands out. Stuff (low-energy
deposits, points in no particle) is grey. Legends give each particle's class and kinetic
energy; a star marks its start point.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detfm.data import Sample, collate
from detfm.errors import DetfmError
from detfm.evaluate.display import marker_area
from detfm.io import atomic_path
from detfm.tasks.particles import iou_matrix, match_by_iou, particle_targets
from detfm.tasks.registry import get_task

__all__ = ["display_particles", "render_particles"]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
            "#17becf", "#393b79", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")
_GREY = "#bdbdbd"
_VIEWS = ((0, 1, "x", "y"), (0, 2, "x", "z"), (1, 2, "y", "z"))
_MAX_LEGEND = 12


def _check(coord: np.ndarray, point: np.ndarray, labels: np.ndarray, what: str) -> None:
    if point.shape != (len(coord),):
        raise DetfmError(f"{what}: one particle id per point expected, shape ({len(coord)},), got {point.shape}")
    if point.size and (point.max() >= len(labels) or point.min() < -1):
        raise DetfmError(f"{what}: particle ids must lie in -1..{len(labels) - 1}")


def render_particles(coord: np.ndarray, truth_point: np.ndarray, truth_labels: np.ndarray,
                     pred_point: np.ndarray, pred_labels: np.ndarray, out: str | os.PathLike[str], *,
                     class_names: tuple[str, ...], truth_energy: np.ndarray | None = None,
                     pred_energy: np.ndarray | None = None, truth_start: np.ndarray | None = None,
                     pred_start: np.ndarray | None = None, title: str | None = None) -> Path:
    """Draw one event's truth and predicted particles to ``out`` (``.png``).

    ``coord`` (N, 3) points; ``*_point`` (N,) particle of each point (0-based, -1: none);
    ``*_labels`` the class of each particle; optional energies (MeV) and (K, 3) start points.
    """
    path = Path(out)
    if path.suffix.lower() != ".png":
        raise DetfmError(f"cannot draw particles to '{path}': use a .png file")
    coord = np.asarray(coord, np.float64)
    if coord.ndim != 2 or coord.shape[1] != 3 or len(coord) == 0:
        raise DetfmError(f"coord must be (N, 3) with N >= 1, got {coord.shape}")
    truth_point, pred_point = np.asarray(truth_point, np.int64), np.asarray(pred_point, np.int64)
    truth_labels, pred_labels = np.asarray(truth_labels, np.int64), np.asarray(pred_labels, np.int64)
    _check(coord, truth_point, truth_labels, "truth")
    _check(coord, pred_point, pred_labels, "prediction")
    pi, ti = match_by_iou(iou_matrix(pred_point, truth_point, len(pred_labels), len(truth_labels)))
    truth_color = [_PALETTE[k % len(_PALETTE)] for k in range(len(truth_labels))]
    pred_color = [_PALETTE[(len(truth_labels) + k) % len(_PALETTE)] for k in range(len(pred_labels))]
    for p, t in zip(pi, ti, strict=True):
        pred_color[p] = truth_color[t]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5), squeeze=False)
    size = marker_area(len(coord))
    rows: list[tuple[str, np.ndarray, np.ndarray, list[str], Any, Any]] = [
        (f"truth: {len(truth_labels)} particles", truth_point, truth_labels, truth_color, truth_energy, truth_start),
        (f"prediction: {len(pred_labels)} particles, {len(pi)} found (IoU >= 0.5)", pred_point, pred_labels,
         pred_color, pred_energy, pred_start)]
    for r, (heading, point, labels, colors, energy, start) in enumerate(rows):
        for c, (a, b, na, nb) in enumerate(_VIEWS):
            ax = axes[r][c]
            stuff = point < 0
            ax.scatter(coord[stuff, a], coord[stuff, b], s=size, c=_GREY, linewidths=0, label="stuff / none")
            for k in range(len(labels)):
                mine = point == k
                text = class_names[labels[k]] if 0 <= labels[k] < len(class_names) else f"class {labels[k]}"
                if energy is not None and np.isfinite(energy[k]):
                    text += f" {float(energy[k]):.0f} MeV"
                ax.scatter(coord[mine, a], coord[mine, b], s=size, c=colors[k], linewidths=0,
                           label=text if k < _MAX_LEGEND else None)
                if start is not None and np.isfinite(start[k]).all():
                    ax.scatter([start[k][a]], [start[k][b]], marker="*", s=90, c=colors[k], edgecolors="k",
                               linewidths=0.5)
            ax.set_xlabel(f"{na} [voxel]")
            ax.set_ylabel(f"{nb} [voxel]")
            ax.set_aspect("equal", adjustable="datalim")
            if c == 0:
                ax.set_title(heading, loc="left")
            if c == 2:
                ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, markerscale=3, frameon=False)
    fig.suptitle(title or f"event ({len(coord):,} points)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def display_particles(task: Any, sample: Sample, out: str | os.PathLike[str], title: str | None = None) -> Path:
    """Run a ``particles`` task on one labeled event and draw its particles next to the truth."""
    if sample.n_points == 0:
        raise DetfmError("the event has no points; nothing to draw")
    was_training = task.training
    task.eval()
    try:
        device = next(task.parameters()).device
        batch = collate([sample]).to(device)
        pred = task.predict(batch)
        truth = particle_targets(batch, task.config.dataset)
    finally:
        task.train(was_training)
    return render_particles(
        sample.coord, truth.point_particle.cpu().numpy(), truth.label.cpu().numpy(),
        pred.point_particle.cpu().numpy(), pred.label.cpu().numpy(), out,
        class_names=get_task("particles").class_names,
        truth_energy=truth.energy.cpu().numpy(), pred_energy=pred.energy.cpu().numpy(),
        truth_start=truth.start.cpu().numpy(), pred_start=pred.start.cpu().numpy(),
        title=title or f"event {sample.index} ({sample.n_points:,} points)")


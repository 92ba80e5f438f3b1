"""Event display of particle finding: the particles a ``particles`` model found next to the
truth particles, as a static PNG (matplotlib) or an interactive HTML page (plotly).

PNG: two rows (truth, prediction), three 2D projections each (xy, xz, yz: the views of a
wire-plane display). HTML: two rotatable 3D views side by side (truth left, prediction
right; rotating one rotates the other). Every particle has its own colour; a predicted
particle matched to a truth particle (mask IoU >= 0.5) takes the colour of that truth
particle, so a found particle looks the same in both and a missed or false one stands out.
Stuff (low-energy deposits, points in no particle) is grey. Legends give each particle's
class and kinetic energy; a star (PNG) or diamond (HTML) marks its start point.

:func:`show_particles_file` draws one event of an event file with the rows ``detfm
predict`` wrote for a ``particles`` run (:mod:`detfm.recipes.particle_predict`), as
``detfm show --predictions`` does.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detfm.data import EventDataset, Sample, collate
from detfm.errors import DetfmError
from detfm.evaluate.display import (
    OUTPUT_KINDS,
    SYNC_CAMERAS_JS,
    html_subsample,
    layout_scenes,
    marker_area,
    marker_px,
    read_event,
)
from detfm.io import atomic_path, atomic_write_text
from detfm.tasks.particles import iou_matrix, match_by_iou, particle_targets
from detfm.tasks.registry import get_task

__all__ = ["ParticleRows", "display_particles", "is_particle_predictions", "read_particle_predictions",
           "render_particles", "show_particles_file"]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
            "#17becf", "#393b79", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94")
_GREY = "#bdbdbd"
_VIEWS = ((0, 1, "x", "y"), (0, 2, "x", "z"), (1, 2, "y", "z"))
_MAX_LEGEND = 12
NONE_LABEL = "stuff / none"


def _check(coord: np.ndarray, point: np.ndarray, labels: np.ndarray, what: str) -> None:
    if point.shape != (len(coord),):
        raise DetfmError(f"{what}: one particle id per point expected, shape ({len(coord)},), got {point.shape}")
    if point.size and (point.max() >= len(labels) or point.min() < -1):
        raise DetfmError(f"{what}: particle ids must lie in -1..{len(labels) - 1}")


@dataclass(frozen=True)
class _Side:
    """One side of the display (truth or prediction): heading, particle of each point, and
    per particle its legend text, colour and start point (or None)."""

    heading: str
    point: np.ndarray
    texts: list[str]
    colors: list[str]
    start: np.ndarray | None


def _texts(labels: np.ndarray, energy: np.ndarray | None, class_names: tuple[str, ...]) -> list[str]:
    """Legend text of each particle: its class and, where known, its kinetic energy."""
    out = []
    for k, label in enumerate(labels):
        text = class_names[label] if 0 <= label < len(class_names) else f"class {label}"
        if energy is not None and np.isfinite(energy[k]):
            text += f" {float(energy[k]):.0f} MeV"
        out.append(text)
    return out


def render_particles(coord: np.ndarray, truth_point: np.ndarray, truth_labels: np.ndarray,
                     pred_point: np.ndarray, pred_labels: np.ndarray, out: str | os.PathLike[str], *,
                     class_names: tuple[str, ...], truth_energy: np.ndarray | None = None,
                     pred_energy: np.ndarray | None = None, truth_start: np.ndarray | None = None,
                     pred_start: np.ndarray | None = None, title: str | None = None) -> Path:
    """Draw one event's truth and predicted particles to ``out`` (``.png`` or ``.html``).

    ``coord`` (N, 3) points; ``*_point`` (N,) particle of each point (0-based, -1: none);
    ``*_labels`` the class of each particle; optional energies (MeV) and (K, 3) start points.
    """
    path = Path(out)
    kind = OUTPUT_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DetfmError(f"cannot draw particles to '{path}': use a .png or .html file")
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
    sides = [_Side(f"truth: {len(truth_labels)} particles", truth_point,
                   _texts(truth_labels, truth_energy, class_names), truth_color, truth_start),
             _Side(f"prediction: {len(pred_labels)} particles, {len(pi)} found (IoU >= 0.5)", pred_point,
                   _texts(pred_labels, pred_energy, class_names), pred_color, pred_start)]
    heading = title or f"event ({len(coord):,} points)"
    if kind == "html":
        _write_html(coord, sides, heading, path)
    else:
        _write_png(coord, sides, heading, path)
    return path


def _write_png(coord: np.ndarray, sides: list[_Side], heading: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5), squeeze=False)
    size = marker_area(len(coord))
    for r, side in enumerate(sides):
        for c, (a, b, na, nb) in enumerate(_VIEWS):
            ax = axes[r][c]
            stuff = side.point < 0
            ax.scatter(coord[stuff, a], coord[stuff, b], s=size, c=_GREY, linewidths=0, label=NONE_LABEL)
            for k, (text, color) in enumerate(zip(side.texts, side.colors, strict=True)):
                mine = side.point == k
                ax.scatter(coord[mine, a], coord[mine, b], s=size, c=color, linewidths=0,
                           label=text if k < _MAX_LEGEND else None)
                if side.start is not None and np.isfinite(side.start[k]).all():
                    ax.scatter([side.start[k][a]], [side.start[k][b]], marker="*", s=90, c=color, edgecolors="k",
                               linewidths=0.5)
            ax.set_xlabel(f"{na} [voxel]")
            ax.set_ylabel(f"{nb} [voxel]")
            ax.set_aspect("equal", adjustable="datalim")
            if c == 0:
                ax.set_title(side.heading, loc="left")
            if c == 2:
                ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, markerscale=3, frameon=False)
    fig.suptitle(heading)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _write_html(coord: np.ndarray, sides: list[_Side], heading: str, path: Path) -> None:
    """Two 3D scenes (truth, prediction) with one legend entry per particle, prefixed by the
    side; above :data:`~detfm.evaluate.display.HTML_MAX_POINTS` points a seeded subsample."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    keep, heading = html_subsample(len(coord), heading)
    xyz = coord[keep]
    size = marker_px(len(keep))
    fig = make_subplots(rows=1, cols=len(sides), specs=[[{"type": "scene"}] * len(sides)],
                        subplot_titles=[side.heading for side in sides], horizontal_spacing=0.02)
    for col, side in enumerate(sides, start=1):
        who = "truth" if col == 1 else "prediction"
        point = side.point[keep]
        layers = [(f"{who}: {NONE_LABEL}", _GREY, point < 0, None)]
        layers += [(f"{who}: {text}", color, point == k, k)
                   for k, (text, color) in enumerate(zip(side.texts, side.colors, strict=True))]
        for name, color, mask, k in layers:
            group = f"{who}-{k}"
            fig.add_trace(go.Scatter3d(x=xyz[mask, 0], y=xyz[mask, 1], z=xyz[mask, 2], mode="markers", name=name,
                                       legendgroup=group, hovertemplate=f"x %{{x}}, y %{{y}}, z %{{z}}<extra>{name}</extra>",
                                       marker={"size": size, "color": color, "line": {"width": 0}}), row=1, col=col)
            if k is not None and side.start is not None and np.isfinite(side.start[k]).all():
                s = side.start[k]
                fig.add_trace(go.Scatter3d(x=[s[0]], y=[s[1]], z=[s[2]], mode="markers", name=f"{name} start",
                                           legendgroup=group, showlegend=False,
                                           marker={"size": 6, "symbol": "diamond", "color": color,
                                                   "line": {"width": 1, "color": "black"}}), row=1, col=col)
    layout_scenes(fig, len(sides), heading)
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False},
                                        post_script=SYNC_CAMERAS_JS))


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



# ----------------------------------------------------------------------------- prediction files
@dataclass(frozen=True)
class ParticleRows:
    """The particles ``detfm predict`` found in one event (:mod:`detfm.recipes.particle_predict`).

    Attributes:
        event: the event's number in the event file.
        n_points: points of the event with value >= ``energy_threshold``.
        energy_threshold: the run's energy threshold (MeV).
        classes: the particle class names.
        label: (K,) most likely class of each particle; score: (K,) its probability of
            being a particle at all; energy: (K,) kinetic energy (MeV); start: (K, 3).
        point_particle: (n_points,) the particle of each point (-1: none).
    """

    event: int
    n_points: int
    energy_threshold: float
    classes: tuple[str, ...]
    label: np.ndarray
    score: np.ndarray
    energy: np.ndarray
    start: np.ndarray
    point_particle: np.ndarray


def is_particle_predictions(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` holds the per-particle rows of a ``particles`` run's ``detfm predict``."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return "particle_pred" in h5
    except OSError as exc:
        raise DetfmError(f"{path}: cannot read predictions ({exc})") from None


def read_particle_predictions(path: str | os.PathLike[str], event: int) -> ParticleRows:
    """The predicted particles of event number ``event`` (its number in the event file) in
    a particles prediction file; a clear error if the file is not one or has no row for it."""
    import h5py

    keys = ("particle_pred", "particle_score", "particle_energy", "particle_start", "particle_sizes",
            "particle_points", "event_index", "n_points")
    try:
        with h5py.File(path, "r") as h5:
            missing = [k for k in keys if k not in h5] + ([] if "energy_threshold" in h5.attrs
                                                          else ["attribute energy_threshold"])
            if missing:
                raise DetfmError(f"{path}: not a particle prediction file (missing {', '.join(missing)}); write "
                                 f"one with `detfm predict` on a particles run")
            index = np.asarray(h5["event_index"][:], np.int64)
            rows = np.flatnonzero(index == event)
            if len(rows) == 0:
                held = f"events {index.min()}..{index.max()}" if len(index) else "no events"
                raise DetfmError(f"{path}: no predictions for event {event} (the file holds {held}); were the "
                                 f"predictions made for this event file?")
            r = int(rows[0])
            n_points = int(h5["n_points"][r])
            sizes = np.asarray(h5["particle_sizes"][r], np.int64)
            points = np.asarray(h5["particle_points"][r], np.int64)
            label = np.asarray(h5["particle_pred"][r], np.int64)
            k = len(label)
            classes = tuple(json.loads(h5.attrs["classes"])) if "classes" in h5.attrs else get_task(
                "particles").class_names
            row = ParticleRows(event=event, n_points=n_points, energy_threshold=float(h5.attrs["energy_threshold"]),
                               classes=classes, label=label,
                               score=np.asarray(h5["particle_score"][r], np.float64),
                               energy=np.asarray(h5["particle_energy"][r], np.float64),
                               start=np.asarray(h5["particle_start"][r], np.float64).reshape(k, 3),
                               point_particle=np.full(n_points, -1, np.int64))
    except OSError as exc:
        raise DetfmError(f"{path}: cannot read predictions ({exc})") from None
    except ValueError as exc:  # a reshape of a damaged row
        raise DetfmError(f"{path}: event {event}: damaged particle rows ({exc})") from None
    if len(sizes) != k or int(sizes.sum()) != len(points) or (len(points) and (points.min() < 0 or
                                                                               points.max() >= n_points)):
        raise DetfmError(f"{path}: event {event}: the particle rows do not add up ({k} particles, sizes "
                         f"{sizes.tolist()}, {len(points)} point indices for {n_points} points)")
    row.point_particle[points] = np.repeat(np.arange(k, dtype=np.int64), sizes)
    return row


def show_particles_file(path: str | os.PathLike[str], event_index: int, out: str | os.PathLike[str],
                        predictions: str | os.PathLike[str]) -> Path:
    """Draw event ``event_index`` of an event file (negative: from the end) with the
    particles of a particles prediction file next to its truth particles, to ``out``
    (``.png`` or ``.html``, see :func:`render_particles`).

    The event is drawn at the predictions' energy threshold; its truth particles are
    those the ``particles`` task learns (:func:`~detfm.tasks.particles.particle_targets`).
    """
    target = Path(out)
    if target.suffix.lower() not in OUTPUT_KINDS:
        raise DetfmError(f"cannot draw particles to '{target}': use a .png or .html file")
    _, index, _ = read_event(path, event_index)
    rows = read_particle_predictions(predictions, index)
    dataset = EventDataset([path], energy_threshold=rows.energy_threshold, min_points=0, labels=True)
    sample = dataset[index]
    if sample.n_points != rows.n_points:
        raise DetfmError(f"{predictions}: event {index} has {rows.n_points} predicted points, but {path} has "
                         f"{sample.n_points} points above {rows.energy_threshold} MeV; were the predictions made "
                         f"for this file?")
    if sample.n_points == 0:
        raise DetfmError(f"{path}: event {index} has no points above {rows.energy_threshold} MeV; nothing to draw")
    truth = particle_targets(collate([sample]))
    return render_particles(
        sample.coord, truth.point_particle.numpy(), truth.label.numpy(), rows.point_particle, rows.label, target,
        class_names=rows.classes, truth_energy=truth.energy.numpy(), pred_energy=rows.energy,
        truth_start=truth.start.numpy(), pred_start=rows.start,
        title=f"{Path(path).name} - event {index} ({sample.n_points:,} points): truth and predicted particles")

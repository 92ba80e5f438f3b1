"""Pictures of what a backbone's features encode: per-point features as colours.

:func:`feature_pca_figure` projects the per-point features of a few events onto their
first three principal components (one fit across all shown events, so colours mean the
same thing in every panel) and uses them as red, green and blue. Each event is drawn
twice, truth labels beside feature colours: if pretraining learned the physics, tracks,
showers and Michel electrons come out in distinct colours without ever seeing a label
(the PoLAr-MAE project page shows the same picture, Young et al., arXiv:2502.02558).

Attention maps are not drawn: the encoder computes attention with
``scaled_dot_product_attention``, which does not return the weights.

matplotlib is imported inside the drawing function (Agg canvas, no pyplot), so importing
this module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from torch import nn
from torch.utils.data import Dataset, Subset

from detfm.data import Sample
from detfm.errors import DetfmError
from detfm.evaluate.display import SEMANTIC_COLORS, SEMANTIC_DRAW_ORDER, SEMANTIC_NAMES, marker_area
from detfm.evaluate.probe import iter_point_features
from detfm.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["MAX_EVENTS", "PCAColors", "feature_pca_figure", "pca_colors"]

Projection = Literal["xy", "xz", "yz"]
_AXES = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}

#: Most events in one figure (two panels each); more would be too small to read.
MAX_EVENTS = 12
# Each colour channel spans the 1st to 99th percentile of its component, so a few
# outlying points do not wash out the rest.
_PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class PCAColors:
    """Per-point colours from the first three principal components of the features.

    Attributes:
        rgb: (P, 3) float32 in [0, 1].
        explained: (3,) fraction of the feature variance along each component.
        components: (3, D) unit principal directions (sign fixed: largest loading positive).
        mean: (D,) feature mean the components are centred on.
    """

    rgb: np.ndarray
    explained: np.ndarray
    components: np.ndarray
    mean: np.ndarray


def pca_colors(features: np.ndarray, *, max_fit_points: int = 50_000, seed: int = 0) -> PCAColors:
    """Map (P, D) features to RGB through their first three principal components.

    The PCA is fit on at most ``max_fit_points`` rows (a random subset drawn from
    ``seed``) and applied to all. With fewer than three feature dimensions (or a rank below
    three) the missing channels are a constant 0.5.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DetfmError(f"features must be a non-empty (P, D) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise DetfmError("features hold non-finite (NaN/inf) values")
    if max_fit_points < 1:
        raise DetfmError(f"max_fit_points must be >= 1, got {max_fit_points}")
    fit = x
    if x.shape[0] > max_fit_points:
        rows = np.random.default_rng(seed).choice(x.shape[0], size=max_fit_points, replace=False)
        fit = x[np.sort(rows)]
    mean = fit.mean(axis=0)
    _, s, vt = np.linalg.svd(fit - mean, full_matrices=False)
    total = float((s**2).sum())
    components = np.zeros((3, x.shape[1]))
    explained = np.zeros(3)
    for k in range(min(3, vt.shape[0])):
        if total > 0 and s[k] ** 2 > 1e-12 * total:
            v = vt[k]
            components[k] = v if v[np.argmax(np.abs(v))] > 0 else -v  # SVD signs are arbitrary
            explained[k] = s[k] ** 2 / total

    rgb = np.full((x.shape[0], 3), 0.5)
    proj, proj_fit = (x - mean) @ components.T, (fit - mean) @ components.T
    for k in range(3):
        lo, hi = np.percentile(proj_fit[:, k], _PERCENTILES)
        if explained[k] > 0 and hi > lo:
            rgb[:, k] = np.clip((proj[:, k] - lo) / (hi - lo), 0.0, 1.0)
    return PCAColors(rgb.astype(np.float32), explained, components, mean)


def feature_pca_figure(backbone: nn.Module, dataset: Dataset[Sample], event_indices: Sequence[int],
                       out_png: str | os.PathLike[str], *, projection: Projection = "xy",
                       batch_size: int = 4, title: str | None = None, seed: int = 0) -> PCAColors:
    """Draw events ``event_indices`` of ``dataset``: truth next to PCA feature colours.

    Args:
        backbone: a detfm backbone (``forward_features``); run frozen, in eval mode.
        dataset: events, e.g. an :class:`detfm.data.EventDataset` without augmentation.
            Without labels, the left panel shows the voxel energy instead.
        event_indices: items of ``dataset`` to show (negative counts from the end), at
            most :data:`MAX_EVENTS`.
        out_png: the PNG to write (atomically).
        projection: the 2D view, ``"xy"``, ``"xz"`` or ``"yz"``.
        seed: seeds the subset of points the PCA is fit on (for very large events).

    Returns:
        The :class:`PCAColors` of all drawn points (events in the order given).
    """
    path = Path(out_png)
    if path.suffix.lower() != ".png":
        raise DetfmError(f"cannot draw to '{path}': feature pictures are written as .png")
    if projection not in _AXES:
        raise DetfmError(f"unknown projection '{projection}'; choose one of {', '.join(_AXES)}")
    items = _check_indices(event_indices, len(dataset))  # type: ignore[arg-type]

    events: list[_Shown] = []
    features: list[np.ndarray] = []
    for batch, f in iter_point_features(backbone, Subset(dataset, items), batch_size, progress=False):
        offsets = batch.offsets.cpu().numpy()
        for b in range(len(batch)):
            a, e = int(offsets[b]), int(offsets[b + 1])
            item = items[len(events)]
            if e == a:
                raise DetfmError(f"event {item} has no points; nothing to draw")
            semantic = None if batch.semantic is None else batch.semantic[a:e].cpu().numpy()
            events.append(_Shown(item, batch.coord[a:e].cpu().numpy(), batch.energy[a:e].cpu().numpy(),
                                 semantic))
            features.append(f[a:e].float().cpu().numpy())
    colors = pca_colors(np.concatenate(features), seed=seed)
    _draw(events, colors, path, projection, title)
    return colors


# ----------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class _Shown:
    """One drawn event: its dataset item, points, energies and (if labeled) classes."""

    item: int
    coord: np.ndarray
    energy: np.ndarray
    semantic: np.ndarray | None


# Draw rank of each semantic class (low-energy first, track last, as in the event display).
_DRAW_RANK = np.array([SEMANTIC_DRAW_ORDER.index(c) for c in range(len(SEMANTIC_DRAW_ORDER))])


def _check_indices(event_indices: Sequence[int], n: int) -> list[int]:
    items = [int(i) for i in event_indices]
    if not items:
        raise DetfmError("event_indices is empty: give at least one event to draw")
    if len(items) > MAX_EVENTS:
        raise DetfmError(f"{len(items)} events asked for; draw at most {MAX_EVENTS} per figure")
    bad = [i for i in items if not -n <= i < n]
    if bad:
        raise DetfmError(f"event index {bad[0]} out of range for a dataset of {n} events")
    return [i % n for i in items]


def _draw(events: list[_Shown], colors: PCAColors, path: Path, projection: str, title: str | None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - lazy, Agg only
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415

    fig = Figure(figsize=(11, 4.6 * len(events) + 0.8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    share = ", ".join(f"{100 * v:.0f}%" for v in colors.explained)
    fig.suptitle(title or f"point features: first 3 principal components as RGB (variance {share})")
    axes = fig.subplots(len(events), 2, squeeze=False)
    a, b = _AXES[projection]
    start = 0
    labeled = False
    palette = np.array([SEMANTIC_COLORS[c] for c in range(len(SEMANTIC_COLORS))])
    for row, event in zip(axes, events, strict=True):
        coord = event.coord
        n = len(coord)
        rgb = colors.rgb[start:start + n]
        start += n
        size = marker_area(n)
        if event.semantic is not None:
            labeled = True
            # Same draw order in both panels (track on top), so overlapping points match.
            order = np.argsort(_DRAW_RANK[event.semantic], kind="stable")
            left = {"c": palette[event.semantic[order]]}
            row[0].set_title(f"event {event.item}: truth")
        else:
            order = np.argsort(event.energy, kind="stable")  # high energy on top
            left = {"c": np.log10(np.maximum(event.energy[order], 1e-3)), "cmap": "viridis"}
            row[0].set_title(f"event {event.item}: log10 energy [MeV]")
        xy = coord[order][:, [a, b]]
        drawn = row[0].scatter(xy[:, 0], xy[:, 1], s=size, linewidths=0, rasterized=True, **left)
        if event.semantic is None:
            fig.colorbar(drawn, ax=row[0], label="log10 voxel energy [MeV]", shrink=0.8)
        row[1].scatter(xy[:, 0], xy[:, 1], c=rgb[order], s=size, linewidths=0, rasterized=True)
        row[1].set_title(f"event {event.item}: features (PCA colours)")
        for ax in row:
            _frame(ax, coord, a, b, projection)
    if labeled:
        handles = [Line2D([], [], marker="o", linestyle="", markersize=7, color=SEMANTIC_COLORS[k],
                          label=SEMANTIC_NAMES[k]) for k in sorted(SEMANTIC_COLORS)]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False,
                   title="truth (semantic)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # format is explicit: the temporary name ends in ".tmp"


def _frame(ax: Axes, coord: np.ndarray, a: int, b: int, projection: str) -> None:
    lo, hi = coord.min(axis=0), coord.max(axis=0)
    pad = np.maximum(0.03 * (hi - lo), 2.0)
    ax.set_xlim(lo[a] - pad[a], hi[a] + pad[a])
    ax.set_ylim(lo[b] - pad[b], hi[b] + pad[b])
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"{projection[0]} [voxel]")
    ax.set_ylabel(f"{projection[1]} [voxel]")

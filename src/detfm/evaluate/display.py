"""Event display: draw one LArTPC event as interactive HTML (plotly) or a static PNG (matplotlib).

Two outputs, chosen by the file extension:

* ``.html`` — a rotatable 3D scatter, self-contained (plotly.js is embedded, so the file
  opens offline and can be attached to a report or an e-mail). Events above
  :data:`HTML_MAX_POINTS` points are randomly subsampled with a fixed seed, and the title
  says so, to keep the browser responsive.
* ``.png`` — a 3D view plus the three 2D projections (xy, xz, yz), the views a physicist
  knows from wire-plane event displays. All points are drawn.

Points are coloured by one of four schemes: ``semantic`` (shower, track, Michel, delta,
low-energy), ``pid`` (photon ... proton, none), ``energy`` (voxel value in MeV on a log colour
scale) or ``instance`` (one colour per particle group). Given per-point predicted semantic
classes, truth and prediction are drawn side by side with the same colours.

plotly and matplotlib are imported inside the functions that need them, so importing this
module (or ``detfm.evaluate``) stays cheap.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from detfm.errors import DataFormatError, DetfmError
from detfm.io import Event, EventFile, atomic_path, atomic_write_text, layout

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from matplotlib.figure import Figure, SubFigure

__all__ = ["COLOR_SCHEMES", "HTML_MAX_POINTS", "OUTPUT_KINDS", "SYNC_CAMERAS_JS", "ColorScheme", "html_subsample",
           "layout_scenes", "marker_area", "marker_px", "read_event", "read_predicted_classes", "render_event",
           "show_file"]

ColorScheme = Literal["semantic", "energy", "pid", "instance"]
COLOR_SCHEMES: tuple[str, ...] = get_args(ColorScheme)

#: Most points drawn in an HTML display. Above this, a random subset (fixed seed
#: :data:`HTML_SUBSAMPLE_SEED`) is shown and the title states how many. 50k markers keep
#: a WebGL scatter smooth to rotate on an ordinary laptop.
HTML_MAX_POINTS = 50_000
HTML_SUBSAMPLE_SEED = 0

# Energies are drawn on a log colour scale; values at or below zero (not expected after the
# 0.05 MeV deposit threshold, but possible in foreign files) are clipped to this floor.
_ENERGY_FLOOR_MEV = 1e-3

#: Output kind of each file suffix a display can be written to.
OUTPUT_KINDS = {".html": "html", ".htm": "html", ".png": "png"}

# Display names: layout's identifiers, made readable ("low_energy" -> "low-energy").
_PRETTY = {"michel": "Michel", "low_energy": "low-energy"}
SEMANTIC_NAMES: tuple[str, ...] = tuple(_PRETTY.get(n, n.replace("_", "-")) for n in layout.SEMANTIC_CLASSES)
PID_NAMES: tuple[str, ...] = tuple(_PRETTY.get(n, n.replace("_", "-")) for n in layout.PID_CLASSES)

_GREY = "#9d9d9d"
SEMANTIC_COLORS = {
    layout.SHOWER: "#f58518",      # orange
    layout.TRACK: "#4c78a8",       # blue
    layout.MICHEL: "#54a24b",      # green
    layout.DELTA: "#b279a2",       # purple
    layout.LOW_ENERGY: _GREY,
}
_PID_COLORS = {
    layout.PID_PHOTON: "#eeca3b",    # yellow
    layout.PID_ELECTRON: "#e45756",  # red
    layout.PID_MUON: "#4c78a8",      # blue
    layout.PID_PION: "#72b7b2",      # teal
    layout.PID_PROTON: "#b279a2",    # purple
    layout.PID_NONE: _GREY,
}
# Draw order, lowest first, so the labels that win a shared voxel (track > Michel > shower >
# delta > low-energy, PHYSICS.md "How PILArNet-M events are made") are drawn on top.
SEMANTIC_DRAW_ORDER = (layout.LOW_ENERGY, layout.DELTA, layout.SHOWER, layout.MICHEL, layout.TRACK)
_PID_ORDER = (layout.PID_NONE, layout.PID_PHOTON, layout.PID_ELECTRON, layout.PID_PION,
              layout.PID_PROTON, layout.PID_MUON)
# Twenty distinguishable colours for particle groups, cycled when there are more groups.
_INSTANCE_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
    "#17becf", "#393b79", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#dbdb8d", "#9edae5", "#637939",
)
_UNKNOWN_COLOR = "#000000"
_MAX_PNG_LEGEND = 16  # more groups than this are drawn but summarised as "+ N more" in the legend


@dataclass(frozen=True)
class _Layer:
    """Points of one legend entry: its label, colour, and which points belong to it."""

    label: str
    color: str
    mask: np.ndarray
    key: int  # class or group id: legends list entries by it, whatever the draw order


@dataclass(frozen=True)
class _Panel:
    """One picture of the event: a heading, a colour scheme and the per-point values it colours."""

    heading: str
    scheme: str
    values: np.ndarray  # int labels, or float energies (MeV) for scheme "energy"


# ----------------------------------------------------------------------------- public API
def render_event(event: Event, out: str | os.PathLike[str], *, color: ColorScheme = "semantic",
                 title: str | None = None, predicted: np.ndarray | None = None,
                 max_html_points: int = HTML_MAX_POINTS) -> Path:
    """Draw ``event`` to ``out`` (``.html`` interactive 3D, or ``.png`` 3D + 2D projections).

    Args:
        event: the event to draw.
        out: output path; its extension picks the format. Written atomically.
        color: ``semantic``, ``energy`` (MeV, log scale), ``pid`` or ``instance`` (group id).
        title: heading of the display; by default the number of points.
        predicted: optional (N,) predicted semantic class per point; when given, truth and
            prediction are drawn side by side.
        max_html_points: cap on points in an HTML display (random subsample, fixed seed).

    Returns:
        The path written.

    Raises:
        DetfmError: unknown extension or colour scheme, empty event, or a ``predicted``
            array of the wrong shape or with unknown classes.
        DataFormatError: non-finite coordinates or energies, or clusters that do not add up
            to the number of points.
    """
    return _render(event, Path(out), color, title, predicted, max_html_points)


def show_file(path: str | os.PathLike[str], event_index: int, out: str | os.PathLike[str],
              color: ColorScheme = "semantic", predictions: str | os.PathLike[str] | None = None) -> Path:
    """Draw event ``event_index`` of an event file to ``out`` (see :func:`render_event`).

    Negative indices count from the end, as in Python. Errors name the file and event.
    With ``predictions`` (a file written by ``detfm predict`` for this event file), the
    event is drawn at the prediction's energy threshold, truth next to prediction.
    """
    _output_kind(Path(out))  # fail before opening the file
    _check_color(color)
    event, index, n = read_event(path, event_index)
    title = f"{Path(path).name} - event {index}"
    predicted = None
    if predictions is not None:
        predicted, threshold = read_predicted_classes(predictions, index, n)
        event = event.select(event.energy >= threshold)
        if len(predicted) != event.n_points:
            raise DetfmError(f"{predictions}: event {index} has {len(predicted)} predicted points, but {path} "
                             f"has {event.n_points} points above {threshold} MeV; were the predictions "
                             f"made for this file?")
        title += " - truth (left) and prediction (right)"
    return _render(event, Path(out), color, title, predicted, HTML_MAX_POINTS, source=(str(path), index))


def read_event(path: str | os.PathLike[str], event_index: int) -> tuple[Event, int, int]:
    """Event ``event_index`` of an event file (negative indices count from the end), its
    index from 0 and the number of events in the file; an index out of range is an error
    naming the valid ones."""
    with EventFile(path) as f:
        n = len(f)
        if not -n <= event_index < n:
            valid = f"0..{n - 1}" if n else "none, the file is empty"
            raise DetfmError(f"{path}: event {event_index} out of range; the file has {n} "
                             f"event(s) (valid indices: {valid})")
        index = event_index % n
        return f[index], index, n


def read_predicted_classes(path: str | os.PathLike[str], index: int, expected_events: int | None = None
                           ) -> tuple[np.ndarray, float]:
    """The per-point predicted classes of event ``index`` in a ``detfm predict`` file, and the
    energy threshold the predictions were made at."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            if "pred" not in h5 or "energy_threshold" not in h5.attrs:
                raise DetfmError(f"{path}: not a per-point prediction file (no 'pred' dataset); write one "
                                 f"with `detfm predict`")
            n = len(h5["pred"])
            if expected_events is not None and n != expected_events:
                raise DetfmError(f"{path}: predictions for {n} events, but the event file has {expected_events}")
            return np.asarray(h5["pred"][index], dtype=np.int64), float(h5.attrs["energy_threshold"])
    except OSError as exc:
        raise DetfmError(f"{path}: cannot read predictions ({exc})") from None


def _render(event: Event, path: Path, color: str, title: str | None, predicted: np.ndarray | None,
            max_html_points: int, source: tuple[str, int] | None = None) -> Path:
    """:func:`render_event`, with the file and event index (if known) for error messages."""
    kind = _output_kind(path)
    _check_color(color)
    if max_html_points < 1:
        raise DetfmError(f"max_html_points must be at least 1, got {max_html_points}")
    panels = _panels(event, color, predicted, source)
    heading = title if title is not None else f"event ({event.n_points:,} points)"
    if kind == "html":
        fig = _build_plotly(event, panels, heading, max_html_points)
        html = fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False},
                           post_script=SYNC_CAMERAS_JS if len(panels) > 1 else None)
        atomic_write_text(path, html)
    else:
        mfig = _build_matplotlib(event, panels, heading)
        with atomic_path(path) as tmp:
            # format is explicit: the temporary name ends in ".tmp", not ".png"
            mfig.savefig(tmp, format="png")
    return path


# ----------------------------------------------------------------------------- checks
def _output_kind(path: Path) -> str:
    kind = OUTPUT_KINDS.get(path.suffix.lower())
    if kind is None:
        raise DetfmError(f"cannot draw to '{path}': unknown extension '{path.suffix}'; "
                         "use .html (interactive 3D) or .png (static projections)")
    return kind


def _check_color(color: str) -> None:
    if color not in COLOR_SCHEMES:
        raise DetfmError(f"unknown colour scheme '{color}'; choose one of {', '.join(COLOR_SCHEMES)}")


def _check_event(event: Event, need_labels: bool, source: tuple[str, int] | None) -> None:
    path, index = source if source is not None else (None, None)
    if event.n_points == 0:
        where = f"{path}: event {index}" if source is not None else "the event"
        raise DetfmError(f"{where} has no points; nothing to draw")
    coords = event.coords
    if not np.isfinite(coords).all():
        raise DataFormatError(f"{int((~np.isfinite(coords)).sum())} non-finite coordinate value(s)",
                              path=path, event=index, field="point")
    if not np.isfinite(event.energy).all():
        raise DataFormatError(f"{int((~np.isfinite(event.energy)).sum())} non-finite voxel energies",
                              path=path, event=index, field="point")
    if need_labels:
        counts = event.clusters[:, layout.C_NPOINTS]
        if (counts < 0).any() or int(counts.sum()) != event.n_points:
            raise DataFormatError(f"cluster sizes add up to {int(counts.sum())} points but the event "
                                  f"has {event.n_points}; cannot assign labels",
                                  path=path, event=index, field="cluster")


def _check_predicted(predicted: np.ndarray, n_points: int) -> np.ndarray:
    pred = np.asarray(predicted)
    if pred.ndim == 2 and pred.shape[0] == n_points:
        raise DetfmError(f"predicted has shape {pred.shape}: expected one class id per point, shape "
                         f"({n_points},); take the argmax over classes first")
    if pred.shape != (n_points,):
        raise DetfmError(f"predicted has shape {pred.shape}, expected ({n_points},) - one class per point")
    if not (np.issubdtype(pred.dtype, np.integer)
            or (np.issubdtype(pred.dtype, np.floating) and np.array_equal(pred, np.round(pred)))):
        raise DetfmError(f"predicted must hold integer class ids, got dtype {pred.dtype}")
    pred = pred.astype(np.int64)
    bad = (pred < 0) | (pred >= len(layout.SEMANTIC_CLASSES))
    if bad.any():
        raise DetfmError(f"predicted holds {int(bad.sum())} value(s) outside the semantic classes "
                         f"0..{len(layout.SEMANTIC_CLASSES) - 1} (e.g. {int(pred[bad][0])})")
    return pred


def _panels(event: Event, color: str, predicted: np.ndarray | None,
            source: tuple[str, int] | None = None) -> list[_Panel]:
    """Check the inputs; one panel for the truth and, given ``predicted``, one for the prediction."""
    _check_event(event, need_labels=color != "energy" or predicted is not None, source=source)
    truth_values = {
        "semantic": lambda: event.semantic,
        "pid": lambda: event.pid,
        "instance": lambda: event.instance,
        "energy": lambda: np.asarray(event.energy, np.float64),
    }[color]()
    if predicted is None:
        return [_Panel("", color, truth_values)]
    pred = _check_predicted(predicted, event.n_points)
    agree = float(np.mean(pred == event.semantic))
    return [_Panel(f"truth ({color})", color, truth_values),
            _Panel(f"prediction (semantic, {100 * agree:.1f}% of points agree)", "semantic", pred)]


# ----------------------------------------------------------------------------- colours
def _layers(scheme: str, values: np.ndarray) -> list[_Layer]:
    """Legend entries of a categorical panel, in draw order; only classes present appear."""
    present = set(np.unique(values).tolist())
    layers: list[_Layer] = []
    if scheme in ("semantic", "pid"):
        names, colors, order = ((SEMANTIC_NAMES, SEMANTIC_COLORS, SEMANTIC_DRAW_ORDER) if scheme == "semantic"
                                else (PID_NAMES, _PID_COLORS, _PID_ORDER))
        for k in order:
            if k in present:
                layers.append(_Layer(names[k], colors[k], values == k, k))
        for k in sorted(present - set(order)):  # ids the layout does not define (foreign files)
            layers.append(_Layer(f"unknown class {k}", _UNKNOWN_COLOR, values == k, k))
    elif scheme == "instance":
        groups = sorted(present)
        real = [g for g in groups if g >= 0]
        if len(real) < len(groups):
            layers.append(_Layer("no group", _GREY, values < 0, -1))
        for rank, g in enumerate(real):
            layers.append(_Layer(f"group {g}", _INSTANCE_PALETTE[rank % len(_INSTANCE_PALETTE)],
                                 values == g, g))
    else:  # pragma: no cover - guarded by _check_color
        raise AssertionError(scheme)
    return layers


def _clip_energy(energy: np.ndarray) -> np.ndarray:
    return np.maximum(energy, _ENERGY_FLOOR_MEV)


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Tick values 1-2-5 per decade between ``lo`` and ``hi`` (decades only for wide ranges)."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mantissas = (1.0,) if last - first > 3 else (1.0, 2.0, 5.0)
    ticks = [m * 10.0**d for d in range(first, last + 1) for m in mantissas]
    inside = [t for t in ticks if lo * (1 - 1e-9) <= t <= hi * (1 + 1e-9)]
    return inside or [lo, hi]


def marker_px(n: int) -> float:
    """plotly marker diameter (px): small for big events so tracks stay readable."""
    return float(np.clip(4.5 - 0.6 * math.log10(max(n, 1)), 1.5, 4.0))


def marker_area(n: int) -> float:
    """matplotlib marker area (pt^2), shrinking with the number of points."""
    return float(np.clip(200.0 / math.sqrt(max(n, 1)), 0.3, 12.0))


# ----------------------------------------------------------------------------- HTML (plotly)
#: Rotating one 3D panel rotates the other, so truth and prediction are always seen from the
#: same side (plotly ``post_script`` of a two-scene figure). The flag stops the second
#: relayout from echoing back.
SYNC_CAMERAS_JS = """
var gd = document.getElementById('{plot_id}');
var syncing = false;
gd.on('plotly_relayout', function (ev) {
  if (syncing) { return; }
  var src = ev['scene.camera'] ? 'scene' : (ev['scene2.camera'] ? 'scene2' : null);
  if (src === null) { return; }
  var update = {};
  update[(src === 'scene' ? 'scene2' : 'scene') + '.camera'] = ev[src + '.camera'];
  syncing = true;
  Plotly.relayout(gd, update).then(function () { syncing = false; }, function () { syncing = false; });
});
"""


def _build_plotly(event: Event, panels: list[_Panel], heading: str, max_points: int) -> go.Figure:
    """The interactive figure (one 3D scene per panel), subsampled to ``max_points``."""
    import plotly.graph_objects as go  # noqa: PLC0415 - heavy, only needed for HTML
    from plotly.subplots import make_subplots  # noqa: PLC0415

    keep, heading = html_subsample(event.n_points, heading, max_points)
    # Voxel indices are integers 0..767: int16 halves the embedded data against float32.
    xyz = np.rint(event.coords[keep]).astype(np.int16) if _integral(event.coords) else event.coords[keep]
    energy = np.asarray(event.energy[keep], np.float32)
    size = marker_px(len(keep))

    fig = make_subplots(rows=1, cols=len(panels), specs=[[{"type": "scene"}] * len(panels)],
                        subplot_titles=[p.heading for p in panels] if len(panels) > 1 else None,
                        horizontal_spacing=0.02)
    shown: set[str] = set()  # legend entries already listed (truth and prediction share colours)
    hover = "x %{x}, y %{y}, z %{z}<br>%{customdata:.3g} MeV"
    for col, panel in enumerate(panels, start=1):
        values = panel.values[keep]
        if panel.scheme == "energy":
            e = _clip_energy(values)
            ticks = _log_ticks(float(e.min()), float(e.max()))
            colorbar = {"title": {"text": "energy [MeV]"}, "tickvals": np.log10(ticks).tolist(),
                        "ticktext": [f"{t:g}" for t in ticks]}
            if len(panels) > 1:
                colorbar.update(x=0.49, len=0.7, thickness=14)
            fig.add_trace(go.Scatter3d(
                x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2], mode="markers", name="energy",
                customdata=energy, hovertemplate=hover + "<extra></extra>", showlegend=False,
                marker={"size": size, "color": np.log10(e).astype(np.float32), "colorscale": "Viridis",
                        "colorbar": colorbar, "line": {"width": 0}}), row=1, col=col)
            continue
        for layer in _layers(panel.scheme, values):
            m = layer.mask
            fig.add_trace(go.Scatter3d(
                x=xyz[m, 0], y=xyz[m, 1], z=xyz[m, 2], mode="markers", name=layer.label,
                legendgroup=layer.label, legendrank=1000 + layer.key, showlegend=layer.label not in shown,
                customdata=energy[m], hovertemplate=hover + f"<extra>{layer.label}</extra>",
                marker={"size": size, "color": layer.color, "line": {"width": 0}}), row=1, col=col)
            shown.add(layer.label)

    layout_scenes(fig, len(panels), heading, next((p.scheme for p in panels if p.scheme != "energy"), ""))
    return fig


def html_subsample(n: int, heading: str, max_points: int = HTML_MAX_POINTS) -> tuple[np.ndarray, str]:
    """Indices of the points an HTML display draws (all, or a sorted seeded random
    ``max_points`` of them) and ``heading``, which then says so."""
    if n <= max_points:
        return np.arange(n), heading
    keep = np.sort(np.random.default_rng(HTML_SUBSAMPLE_SEED).choice(n, size=max_points, replace=False))
    return keep, heading + f" - showing a random {max_points:,} of {n:,} points (seed {HTML_SUBSAMPLE_SEED})"


def layout_scenes(fig: go.Figure, scenes: int, heading: str, legend_title: str = "") -> None:
    """Axes in voxels at true proportions for each of ``scenes`` 3D scenes, and the page's
    heading, legend and size."""
    axis = {"showbackground": False}
    for k in range(scenes):
        fig.layout["scene" if k == 0 else f"scene{k + 1}"].update(
            aspectmode="data",  # true proportions: angles and lengths look as in the detector
            xaxis={**axis, "title": {"text": "x [voxel]"}}, yaxis={**axis, "title": {"text": "y [voxel]"}},
            zaxis={**axis, "title": {"text": "z [voxel]"}})
    fig.update_layout(title={"text": heading}, template="plotly_white",
                      legend={"itemsizing": "constant", "title": {"text": legend_title}},
                      margin={"l": 0, "r": 0, "t": 60, "b": 0}, height=750)


def _integral(a: np.ndarray) -> bool:
    return bool(np.array_equal(a, np.rint(a))) and float(np.abs(a).max(initial=0)) < 32_000


# ----------------------------------------------------------------------------- PNG (matplotlib)
_PROJECTIONS = (("xy", 0, 1), ("xz", 0, 2), ("yz", 1, 2))
_AXIS_NAMES = "xyz"


def _build_matplotlib(event: Event, panels: list[_Panel], heading: str) -> Figure:
    """The static figure: per panel a 3D view and the xy, xz, yz projections (2 x 2 grid)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - lazy, Agg only
    from matplotlib.figure import Figure  # noqa: PLC0415

    # A bare Figure with an Agg canvas: no pyplot, no global figure registry, no GUI backend.
    fig = Figure(figsize=(10.5 * len(panels), 9.5), dpi=100, layout="constrained")
    fig.get_layout_engine().set(wspace=0.12)  # room for the 3D view's tick labels
    FigureCanvasAgg(fig)
    fig.suptitle(heading)
    containers: list[Figure | SubFigure] = [fig] if len(panels) == 1 else list(fig.subfigures(1, len(panels)))
    for container, panel in zip(containers, panels, strict=True):
        if panel.heading:
            container.suptitle(panel.heading)
        _draw_panel(container, event.coords, panel)
    return fig


def _draw_panel(container: Figure | SubFigure, coords: np.ndarray, panel: _Panel) -> None:
    from matplotlib.colors import LogNorm  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    ax3d = container.add_subplot(2, 2, 1, projection="3d")
    flat = [container.add_subplot(2, 2, k) for k in (2, 3, 4)]
    size = marker_area(len(coords))
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    pad = np.maximum(0.03 * (hi - lo), 2.0)

    def scatter_all(idx: np.ndarray, **kw: object) -> object:
        """Draw the points ``idx`` in all four views; ``kw`` (colours) must already follow ``idx``."""
        pts = coords[idx]
        mappable = ax3d.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=size, linewidths=0,
                                depthshade=False, rasterized=True, **kw)
        for ax, (_, a, b) in zip(flat, _PROJECTIONS, strict=True):
            ax.scatter(pts[:, a], pts[:, b], s=size, linewidths=0, rasterized=True, **kw)
        return mappable

    if panel.scheme == "energy":
        energy = _clip_energy(panel.values)
        order = np.argsort(energy, kind="stable")  # high energy drawn last, on top
        norm = LogNorm(vmin=float(energy.min()), vmax=max(float(energy.max()), float(energy.min()) * 1.001))
        mappable = scatter_all(order, c=energy[order], cmap="viridis", norm=norm)
        bar = container.colorbar(mappable, ax=[ax3d, *flat], label="voxel energy [MeV]", location="bottom",
                                 shrink=0.6, aspect=40)
        bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # "10", not "10^1"
    else:
        layers = _layers(panel.scheme, panel.values)
        for layer in layers:
            scatter_all(np.flatnonzero(layer.mask), color=layer.color, label=layer.label)
        listed = sorted(layers, key=lambda la: la.key)
        if panel.scheme == "instance" and len(layers) > _MAX_PNG_LEGEND:
            listed = sorted(layers, key=lambda la: -int(la.mask.sum()))[: _MAX_PNG_LEGEND - 1]
        handles = [Line2D([], [], marker="o", linestyle="", markersize=7, color=la.color, label=la.label)
                   for la in listed]
        if len(listed) < len(layers):
            handles.append(Line2D([], [], linestyle="", label=f"+ {len(layers) - len(listed)} more groups"))
        container.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
                         title=panel.scheme, frameon=False)

    ax3d.set_xlabel("x [voxel]")
    ax3d.set_ylabel("y [voxel]")
    ax3d.set_zlabel("z [voxel]")
    for k, setter in enumerate((ax3d.set_xlim, ax3d.set_ylim, ax3d.set_zlim)):
        setter(lo[k] - pad[k], hi[k] + pad[k])
    ax3d.set_box_aspect(tuple(float(v) for v in (hi - lo + 2 * pad)))  # true proportions
    ax3d.set_title("3D")
    for ax, (name, a, b) in zip(flat, _PROJECTIONS, strict=True):
        ax.set_xlim(lo[a] - pad[a], hi[a] + pad[a])
        ax.set_ylim(lo[b] - pad[b], hi[b] + pad[b])
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"{_AXIS_NAMES[a]} [voxel]")
        ax.set_ylabel(f"{_AXIS_NAMES[b]} [voxel]")
        ax.set_title(f"{name} projection")

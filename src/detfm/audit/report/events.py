"""Events section: the best and worst test events of segmentation models.

The report runs no model: it reads the per-point predictions ``detfm predict`` wrote (given
with ``--predictions``, or found among the report's folders) and the truth of the event
file they name. When the model's run is among the report's folders, or its path is still
valid, only the events of its test split are ranked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detfm.audit.report.common import (
    EVENTS_SHOWN,
    MAX_EVENT_RUNS,
    SPLIT_FILE,
    _esc,
    _img,
    _na,
    _new_figure,
    _note,
    _read_json_object,
)
from detfm.data.datasets import DEFAULT_DATASET, get_dataset
from detfm.engine.runs import PREDICTIONS_FORMAT, run_settings
from detfm.evaluate.scoring import argmax_without
from detfm.errors import DetfmError
from detfm.io import layout

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class _ScoredEvent:
    event: int
    accuracy: float
    coords: np.ndarray  # (N, 3)
    truth: np.ndarray   # (N,) semantic class
    pred: np.ndarray    # (N,) predicted class (low-energy points keep class 4 when not scored)


def is_predictions_file(path: Path) -> bool:
    """True for an HDF5 file written by ``detfm predict``."""
    if path.suffix not in (".h5", ".hdf5") or not path.is_file():
        return False
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("format") == PREDICTIONS_FORMAT
    except OSError:
        return False


def find_predictions(dirs: Sequence[Path]) -> list[Path]:
    """The predictions files directly inside ``dirs``."""
    return [p for d in dirs for p in sorted(d.iterdir()) if is_predictions_file(p)]


def _events(dirs: Sequence[Path], max_events: int, predictions: Sequence[Path] = ()) -> str | None:
    files = list(dict.fromkeys([*predictions, *find_predictions(dirs)]))
    if not files:
        return None
    semseg = [p for p in files if _attrs(p).get("task") == "semseg"]
    if not semseg:
        return _na("the predictions found are not per-point segmentation predictions")
    blocks = [_file_events(p, dirs, max_events) for p in semseg[:MAX_EVENT_RUNS]]
    if len(semseg) > MAX_EVENT_RUNS:
        rest = ", ".join(str(p) for p in semseg[MAX_EVENT_RUNS:])
        blocks.append(_note(f"events of the first {MAX_EVENT_RUNS} predictions files shown; not drawn: {rest}"))
    return "".join(blocks)


def _attrs(path: Path) -> dict[str, Any]:
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            return dict(h5.attrs)
    except OSError as exc:
        raise DetfmError(f"{path}: not a readable predictions file ({exc})") from None


def _model_run(model_run: str, dirs: Sequence[Path]) -> Path | None:
    """The run that made the predictions: among the report's folders, else where it was."""
    name = Path(model_run).name
    for d in dirs:
        if d.resolve() == Path(model_run) or (d.name == name and (d / SPLIT_FILE).is_file()):
            return d
    return Path(model_run) if (Path(model_run) / SPLIT_FILE).is_file() else None


def _test_events(run: Path | None, source: Path, n_events: int) -> tuple[list[int], str]:
    """Event numbers of ``source`` to rank, and how they were chosen."""
    if run is None:
        return list(range(n_events)), "all events of the file (the model's run was not found)"
    split = _read_json_object(run / SPLIT_FILE)
    files, test = split.get("files"), split.get("test")
    if not isinstance(files, list) or not isinstance(test, list):
        raise DetfmError(f"{run / SPLIT_FILE}: expected lists 'files' and 'test'")
    start = 0
    from detfm.io import EventFile

    for name in files:
        path = Path(name) if Path(name).is_file() else run / name
        if not path.is_file():
            break
        with EventFile(path) as f:
            size = len(f)
        if path.resolve() == source.resolve():
            return [e - start for e in test if start <= e < start + size], "test events"
        start += size
    return list(range(n_events)), "all events of the file (not one of the run's files)"


def _file_events(path: Path, dirs: Sequence[Path], max_events: int) -> str:
    import h5py

    from detfm.data import EventDataset

    attrs = _attrs(path)
    run = _model_run(str(attrs.get("model_run", "")), dirs)
    title = f"<h3>{_esc(path)}{'' if run is None else f' (model: {_esc(run)})'}</h3>"
    source = Path(str(attrs.get("source_file", "")))
    if not source.is_file():
        return title + _na(f"the data files are missing: {source}")
    exclude = bool(run_settings(run).get("exclude_low_energy", False)) if run is not None else False
    excluded = get_dataset(DEFAULT_DATASET).excluded_semantic
    with h5py.File(path, "r") as h5:
        n_rows = len(h5["event_index"])
        chosen, how = _test_events(run, source, n_rows)
        chosen = chosen[:max_events]
        rows = {int(e): i for i, e in enumerate(h5["event_index"][:])}
        dataset = EventDataset([source], energy_threshold=float(attrs["energy_threshold"]), min_points=0,
                               labels=True)
        scored: list[_ScoredEvent] = []
        for event in chosen:
            if event not in rows:
                raise DetfmError(f"{path}: has no row for event {event} of {source}")
            sample = dataset[event]
            probs = np.asarray(h5["probs"][rows[event]], np.float32).reshape(-1, len(layout.SEMANTIC_CLASSES))
            if sample.n_points == 0 or len(probs) != sample.n_points:
                continue
            truth = np.asarray(sample.semantic)
            if exclude:
                keep = truth != excluded
                pred = np.where(keep, argmax_without(probs, excluded), excluded)
                if not keep.any():
                    continue
                acc = float(np.mean(pred[keep] == truth[keep]))
            else:
                pred = probs.argmax(axis=1)
                acc = float(np.mean(pred == truth))
            scored.append(_ScoredEvent(event, acc, np.asarray(sample.coord), truth, pred))
    if not scored:
        return title + _na("the chosen events have no points above the energy threshold")
    order = sorted(scored, key=lambda s: (-s.accuracy, s.event))
    best = order[:EVENTS_SHOWN]
    worst = [s for s in reversed(order) if s not in best][:EVENTS_SHOWN]
    accs = np.array([s.accuracy for s in scored])
    what = "points other than low-energy, argmax over 4 classes" if exclude else "all points"
    label = "test events" if how == "test events" else "events"
    out = [title, _note(f"{len(scored)} {label} scored ({_esc(how)}); per-event accuracy ({what}): "
                        f"mean {accs.mean():.3f}, median {np.median(accs):.3f}, lowest {accs.min():.3f}, "
                        f"highest {accs.max():.3f}")]
    for kind, picked in (("best", best), ("worst", worst)):
        for s in picked:
            out.append(f"<h4>{kind}: event {s.event} ({len(s.truth):,} points, accuracy {s.accuracy:.3f})</h4>")
            out.append(_img(_event_figure(s), f"{kind} event {s.event}, {path}"))
    return "".join(out)


def _event_figure(s: _ScoredEvent) -> Figure:
    """Truth (top) and prediction (bottom) in the xy, xz and yz projections, semantic colours."""
    from matplotlib.lines import Line2D

    from detfm.evaluate.display import SEMANTIC_COLORS, SEMANTIC_DRAW_ORDER, SEMANTIC_NAMES, marker_area

    unknown = "#000000"
    fig = _new_figure(10.5, 7.0, constrained=False)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.13, wspace=0.3, hspace=0.35)
    axes = fig.subplots(2, 3)
    size = marker_area(len(s.coords))
    for row, (name, values) in enumerate((("truth", s.truth), ("prediction", s.pred))):
        # one scatter per class, in display draw order (the classes that win a voxel on top)
        layers = [(k, values == k) for k in SEMANTIC_DRAW_ORDER]
        for col, (a, b) in enumerate(((0, 1), (0, 2), (1, 2))):
            ax = axes[row][col]
            for k, m in layers:
                if m.any():
                    ax.scatter(s.coords[m, a], s.coords[m, b], s=size, color=SEMANTIC_COLORS.get(k, unknown),
                               linewidths=0)
            ax.set_aspect("equal", adjustable="datalim")
            ax.set_xlabel(f"{'xyz'[a]} [voxel]")
            ax.set_ylabel(f"{'xyz'[b]} [voxel]")
            ax.set_title(f"{name}, {'xyz'[a]}{'xyz'[b]}", fontsize=9)
    present = sorted(set(np.unique(s.truth).tolist()) | set(np.unique(s.pred).tolist()))
    handles = [Line2D([], [], marker="o", linestyle="", color=SEMANTIC_COLORS.get(k, unknown),
                      label=SEMANTIC_NAMES[k] if 0 <= k < len(SEMANTIC_NAMES) else str(k)) for k in present]
    fig.legend(handles=handles, loc="lower center", ncols=max(len(handles), 1), frameon=False)
    fig.suptitle(f"event {s.event}: per-point accuracy {s.accuracy:.3f}")
    return fig

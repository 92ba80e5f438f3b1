"""Sensitivity section: seed-sensitivity and diversity audits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np


if TYPE_CHECKING:
    from matplotlib.figure import Figure

from detfm.audit.report.common import (
    DIVERSITY_FILE,
    DIVERSITY_KIND,
    SENSITIVITY_FILE,
    SENSITIVITY_KIND,
    _esc,
    _img,
    _is_number,
    _new_figure,
    _note,
    _num,
    _read_json_object,
    _table,
)


# ----------------------------------------------------------------------------- sensitivity
def _sensitivity(dirs: Sequence[Path]) -> str | None:
    """The audits of ``detfm audit sensitivity`` and ``detfm audit diversity``, one block per file.

    A file of another ``kind`` is named in a note and not read further.
    """
    readers = ((SENSITIVITY_FILE, SENSITIVITY_KIND, _seed_sensitivity_html),
               (DIVERSITY_FILE, DIVERSITY_KIND, _diversity_html))
    blocks = []
    for d in dirs:
        for name, kind, render in readers:
            path = d / name
            if not path.is_file():
                continue
            data = _read_json_object(path)
            title = f"<h3>{_esc(path)}</h3>"
            if data.get("kind") != kind:
                blocks.append(title + _note(f"{name}: kind {data.get('kind')!r}, this report reads {kind}; "
                                            "not shown"))
                continue
            blocks.append(title + render(path, data))
    return "".join(blocks) or None


def _spread(metrics: object, name: str) -> dict[str, Any]:
    """The ``{mean, std, min, max, values}`` entry of ``name`` in a metrics mapping ({} if absent)."""
    entry = metrics.get(name) if isinstance(metrics, dict) else None
    return entry if isinstance(entry, dict) else {}


def _seed_sensitivity_html(path: Path, data: dict[str, Any]) -> str:
    """Spread of the headline metric and per-class F1 over seeds, the conclusions checked seed by
    seed, and the per-seed headline values of the replicas (and scratch replicas)."""
    seeds = data.get("seeds") if isinstance(data.get("seeds"), list) else []
    headline = str(data.get("headline") or "")
    metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
    scratch = data.get("scratch_metrics") if isinstance(data.get("scratch_metrics"), dict) else None
    out = [_note(f"{len(seeds)} seeds ({', '.join(str(s) for s in seeds)}); headline metric {headline or '?'}; "
                 "std is the sample standard deviation over seeds")]
    names = [m for m in (headline, *(k for k in metrics if str(k).startswith("f1."))) if m in metrics]
    if names:
        headers = ["metric", "mean", "std", "min", "max"] + (["scratch mean"] if scratch is not None else [])
        rows = []
        for m in names:
            s = _spread(metrics, m)
            cells = [_esc(m), *(_num(s.get(k)) for k in ("mean", "std", "min", "max"))]
            if scratch is not None:
                cells.append(_num(_spread(scratch, m).get("mean")))
            rows.append(cells)
        out.append(_table(headers, rows, caption="replicas: headline metric and per-class F1 over seeds"))
    else:
        out.append(_note(f"{path.name}: no headline or per-class F1 metrics"))
    conclusions = [c for c in data.get("conclusions") or [] if isinstance(c, dict)]
    if conclusions:
        rows = []
        for c in conclusions:
            per_seed = [p for p in c.get("per_seed") or [] if isinstance(p, dict)]
            holding = c.get("holding_seeds")
            if not _is_number(holding):
                holding = sum(p.get("holds") is True for p in per_seed)
            every = c.get("holds_for_all_seeds")
            if not isinstance(every, bool):
                every = bool(per_seed) and holding == len(per_seed)
            broken = [str(p.get("seed", "?")) for p in per_seed if p.get("holds") is not True]
            rows.append((_esc(c.get("statement", "?")), f"{'yes' if every else 'no'} ({holding}/{len(per_seed)})",
                         _esc(", ".join(broken)) or "–"))
        out.append(_table(("statement", "holds for every seed", "seeds where it does not hold"), rows,
                          caption="conclusions checked seed by seed"))
    series = {label: _spread(block, headline).get("values")
              for label, block in (("replicas", metrics), ("scratch replicas", scratch)) if block is not None}
    series = {k: v for k, v in series.items() if isinstance(v, list) and any(_is_number(x) for x in v)}
    if series:
        out.append(_img(_seed_values_figure(headline, seeds, series), f"{headline} per seed, {path}"))
    return "".join(out)


def _seed_values_figure(metric: str, seeds: Sequence[object], series: dict[str, list[Any]]) -> Figure:
    """One dot per seed for each series (side by side), the series mean as a dashed line."""
    n = max(len(v) for v in series.values())
    labels = [str(s) for s in seeds] if len(seeds) == n else [str(i) for i in range(n)]
    fig = _new_figure(max(3.6, 1.6 + 0.45 * n), 3.0)
    ax = fig.add_subplot()
    colors = ("#4c78a8", "#9d9d9d", "#f58518")
    width = 0.3 / max(len(series) - 1, 1)
    for k, (name, values) in enumerate(series.items()):
        pairs = [(i, float(v)) for i, v in enumerate(values) if _is_number(v)]
        x = np.array([i for i, _ in pairs], dtype=np.float64) + (k - (len(series) - 1) / 2) * width
        y = np.array([v for _, v in pairs], dtype=np.float64)
        color = colors[k % len(colors)]
        ax.plot(x, y, "o", color=color, label=name)
        ax.axhline(float(y.mean()), color=color, linestyle="--", linewidth=1)
    ax.set_xticks(range(n), labels)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("seed")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per seed (dashed: mean)", fontsize=10)
    ax.legend(fontsize=8)
    return fig


#: Known per-model and per-pair fields of a diversity report, with their column headings.
_MODEL_COLUMNS = {"accuracy": "accuracy", "macro_f1": "macro-F1", "accuracy_4": "accuracy (4 classes)",
                  "macro_f1_4": "macro-F1 (4 classes)", "error_rate": "error rate"}
_PAIR_COLUMNS = {"error_correlation": "error correlation (points)",
                 "event_error_correlation": "error correlation (events)", "error_kappa": "error kappa",
                 "disagreement": "disagreement", "both_wrong": "both wrong"}


def _columns(rows: Sequence[dict[str, Any]], known: dict[str, str], skip: Sequence[str]) -> list[str]:
    """Fields present in ``rows``: the ``known`` ones in their order, then any other numeric ones."""
    present: dict[str, None] = {}
    for r in rows:
        present.update(dict.fromkeys(str(k) for k, v in r.items() if k not in skip and (_is_number(v) or v is None)))
    return [k for k in known if k in present] + [k for k in present if k not in known]


def _signed(value: Any) -> str:
    """A gain with its sign, ``n/a`` when undefined."""
    return f"{float(value):+.4g}" if _is_number(value) else "n/a"


def _diversity_html(path: Path, data: dict[str, Any]) -> str:
    """Per-model scores (and the ensemble's), its gain over the best single model, and the
    pairwise agreement of the models' errors."""
    out = []
    info = []
    if _is_number(data.get("events")) or _is_number(data.get("points")):
        info.append(f"{_num(data.get('events'))} events, {_num(data.get('points'))} points")
    source = data.get("source")
    if isinstance(source, dict):
        info += [f"{k}: {source[k]}" for k in ("data", "selection", "energy_threshold") if source.get(k) is not None]
    if info:
        out.append(_note("; ".join(info)))
    models = [m for m in data.get("models") or [] if isinstance(m, dict)]
    ensemble = data.get("ensemble") if isinstance(data.get("ensemble"), dict) else {}
    if models:
        cols = _columns(models, _MODEL_COLUMNS, ("name", "run"))
        rows = [[_esc(m.get("name", "?")), *(_num(m.get(c)) for c in cols)] for m in models]
        if ensemble:
            rows.append(["<em>ensemble (mean probabilities)</em>",
                         *(_num(ensemble.get(c)) if c in ensemble else "–" for c in cols)])
        out.append(_table(("model", *(_MODEL_COLUMNS.get(c, c) for c in cols)), rows,
                          caption="scores per model, on the same points"))
    gains = [k[len("gain_"):] for k in ensemble if str(k).startswith("gain_")]
    if gains:
        rows = [(_esc(_MODEL_COLUMNS.get(g, g)), _num(ensemble.get(g)), _esc(ensemble.get(f"best_{g}_model") or "?"),
                 _signed(ensemble.get(f"gain_{g}"))) for g in gains]
        out.append(_table(("score", "ensemble", "best single model", "gain"), rows,
                          caption="the ensemble against the best single model"))
    pairs = [p for p in data.get("pairs") or [] if isinstance(p, dict)]
    if pairs:
        cols = _columns(pairs, _PAIR_COLUMNS, ("a", "b"))
        rows = [[_esc(p.get("a", "?")), _esc(p.get("b", "?")), *(_num(p.get(c)) for c in cols)] for p in pairs]
        out.append(_table(("model", "model", *(_PAIR_COLUMNS.get(c, c) for c in cols)), rows,
                          caption="pairs: how far the models' errors coincide (n/a: undefined)"))
    return "".join(out) or _note(f"{path.name}: no models, ensemble or pairs")

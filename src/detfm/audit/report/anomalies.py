"""Anomalies section: signature AUCs and the most anomalous events."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detfm.errors import DetfmError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from detfm.audit.report.common import (
    ANOMALY_FILE,
    RANKED_FILE,
    TOP_ANOMALIES,
    _esc,
    _img,
    _is_number,
    _new_figure,
    _note,
    _num,
    _read_json_object,
    _table,
)


# ----------------------------------------------------------------------------- anomalies
def _anomalies(dirs: Sequence[Path]) -> str | None:
    blocks = []
    for d in dirs:
        json_path, csv_path = d / ANOMALY_FILE, d / RANKED_FILE
        if not json_path.is_file() and not csv_path.is_file():
            continue
        block = [f"<h3>{_esc(d)}</h3>"]
        if json_path.is_file():
            block.append(_anomaly_json_html(json_path, _read_json_object(json_path)))
        if csv_path.is_file():
            block.append(_ranked_html(csv_path))
        blocks.append("".join(block))
    return "".join(blocks) or None


def _anomaly_json_html(path: Path, data: dict[str, Any]) -> str:
    out = []
    signatures = data.get("signatures")
    if isinstance(signatures, dict) and signatures:
        rows = [(_esc(name), _esc(s.get("best_method", "")), _num(s.get("auc")), _num(s.get("baseline_auc")),
                 _num(s.get("eff_at_1pct_fpr")), _num(s.get("baseline_eff_at_1pct_fpr")), _num(s.get("n_events")))
                for name, s in signatures.items() if isinstance(s, dict)]
        out.append(_table(("signature", "method", "AUC", "baseline AUC", "efficiency at 1% FPR",
                           "baseline efficiency", "events"),
                          rows, caption="injected rare signatures: model score vs baseline"))
        out.append(_img(_auc_figure(signatures), f"anomaly AUC per signature, {path}"))
    scores = data.get("scores")
    if isinstance(scores, dict):
        series = {str(k): np.asarray(v, dtype=np.float64) for k, v in scores.items()
                  if isinstance(v, list) and v and all(_is_number(x) for x in v)}
        if series:
            out.append(_img(_scores_figure(series), f"anomaly score distributions, {path}"))
    return "".join(out) or _note(f"{path.name}: no signatures or score lists")


def _auc_figure(signatures: dict[str, Any]) -> Figure:
    names = [n for n, s in signatures.items() if isinstance(s, dict)]
    fig = _new_figure(1.8 + 0.9 * len(names), 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    auc = [s.get("auc") if _is_number(s.get("auc")) else 0.0 for s in (signatures[n] for n in names)]
    base = [s.get("baseline_auc") if _is_number(s.get("baseline_auc")) else 0.0 for s in (signatures[n] for n in names)]
    ax.bar(x - 0.2, auc, width=0.4, color="#4c78a8", label="model")
    ax.bar(x + 0.2, base, width=0.4, color="#9d9d9d", label="baseline")
    ax.axhline(0.5, color="#e45756", linewidth=1, linestyle="--")
    ax.set_xticks(x, names, rotation=25, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AUC")
    ax.legend(fontsize=8)
    return fig


def _scores_figure(series: dict[str, np.ndarray]) -> Figure:
    fig = _new_figure(5.5, 3.2)
    ax = fig.add_subplot()
    finite = np.concatenate([s[np.isfinite(s)] for s in series.values()])
    bins = np.histogram_bin_edges(finite, bins=40) if finite.size else 10
    for name, s in series.items():
        ax.hist(s[np.isfinite(s)], bins=bins, histtype="step", label=f"{name} ({len(s)})")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("events")
    ax.legend(fontsize=8)
    return fig


def _ranked_html(path: Path) -> str:
    """The most anomalous events of a ranked.csv (highest score first)."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (csv.Error, UnicodeDecodeError, OSError) as exc:
        raise DetfmError(f"{path}: cannot be read as CSV ({exc})") from None
    if "event" not in columns or "score" not in columns:
        raise DetfmError(f"{path}: expected columns 'event' and 'score', found {columns or 'none'}")

    def score(row: dict[str, str]) -> float:
        try:
            value = float(row.get("score") or "nan")
        except ValueError:
            raise DetfmError(f"{path}: score {row.get('score')!r} of event {row.get('event')} "
                             "is not a number") from None
        return value if math.isfinite(value) else -math.inf

    top = sorted(rows, key=score, reverse=True)[:TOP_ANOMALIES]
    return _table(columns, [[_esc(row.get(c, "")) for c in columns] for row in top],
                  caption=f"most anomalous events (top {len(top)} of {len(rows)}, from {path.name})")

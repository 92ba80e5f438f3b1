"""Evaluation section: test scores, per-class tables and confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np


if TYPE_CHECKING:
    from matplotlib.figure import Figure

from detfm.audit.report.common import (
    EVAL_FILE,
    _esc,
    _files,
    _img,
    _new_figure,
    _note,
    _num,
    _read_json_object,
    _table,
)


# ----------------------------------------------------------------------------- evaluation
def _eval_kind(scores: dict[str, Any]) -> str | None:
    if "macro_f1_4" in scores or "macro_f1_5" in scores:
        return "semseg"
    if "macro_f1" in scores:
        return "pid"
    return None


def _evaluation(dirs: Sequence[Path]) -> str | None:
    found = [(d, p, _read_json_object(p)) for d, p in _files(dirs, EVAL_FILE)]
    if not found:
        return None
    summary_rows = []
    details = []
    for d, path, scores in found:
        kind = _eval_kind(scores)
        if kind is None:
            details.append(f"<h3>{_esc(d)}</h3>" + _note(f"{path.name}: no macro_f1_4 / macro_f1 score; not a "
                                                         f"fine-tune evaluation"))
            continue
        headline = scores.get("macro_f1_4") if kind == "semseg" else scores.get("macro_f1")
        acc = scores.get("accuracy_4") if kind == "semseg" else scores.get("accuracy")
        summary_rows.append((_esc(d), _esc(scores.get("task", kind)), _esc(scores.get("mode", "?")),
                             _esc(scores.get("backbone", "?")), _num(scores.get("labels")),
                             _num(scores.get("events")), _num(headline), _num(acc),
                             _num(scores.get("macro_f1_5")) if kind == "semseg" else "–"))
        details.append(f"<h3>{_esc(d)}</h3>" + _eval_details(scores, kind, d))
    table = _table(("run", "task", "mode", "backbone", "labels", "test events",
                    "macro-F1 (semseg: 4 classes)", "accuracy", "macro-F1 (5 classes)"), summary_rows)
    return (table if summary_rows else "") + "".join(details)


def _eval_details(scores: dict[str, Any], kind: str, run: Path) -> str:
    classes = [str(c) for c in scores.get("classes") or []]
    f1 = scores.get("f1") or {}
    prec = scores.get("precision" if kind == "semseg" else "purity") or {}
    rec = scores.get("recall" if kind == "semseg" else "efficiency") or {}
    names = ("precision", "recall") if kind == "semseg" else ("purity", "efficiency")
    rows = [(_esc(c), _num(f1.get(c)), _num(prec.get(c)), _num(rec.get(c))) for c in classes]
    header: tuple[str, ...] = ("class", "F1", *names)
    per_particle = scores.get("per_particle")
    if isinstance(per_particle, dict):  # semseg: each true particle's share of right voxels
        header += ("particles", "tagged (≥ half right)", "mean particle recall")
        pieces = [per_particle.get(c) if isinstance(per_particle.get(c), dict) else {} for c in classes]
        rows = [(*row, _num(p.get("pieces")), _num(p.get("tagged")), _num(p.get("mean_recall")))
                for row, p in zip(rows, pieces, strict=True)]
    out = [_table(header, rows)] if rows else []
    confusion = scores.get("confusion")
    if isinstance(confusion, list) and confusion:
        cm = np.asarray(confusion, dtype=np.float64)
        if cm.ndim == 2 and cm.shape[0] == cm.shape[1]:
            labels = classes if len(classes) == len(cm) else [str(i) for i in range(len(cm))]
            out.append(_img(_confusion_figure(cm, labels, f"{run.name or run}: {kind} confusion"),
                            f"confusion matrix, {run}"))
    return "".join(out)


def _confusion_figure(cm: np.ndarray, labels: Sequence[str], title: str) -> Figure:
    """Rows normalised to the true class (colour), with the counts written in the cells."""
    totals = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
    n = len(labels)
    fig = _new_figure(1.2 + 0.75 * n, 0.9 + 0.7 * n)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(cm[i, j]):,}", ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(n), labels, rotation=35, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="fraction of true class", shrink=0.8)
    return fig

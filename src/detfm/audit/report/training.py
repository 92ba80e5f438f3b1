"""Training section: loss and learning rate against step per run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np


if TYPE_CHECKING:
    pass

from detfm.audit.report.common import (
    METRICS_FILE,
    _esc,
    _files,
    _img,
    _is_number,
    _new_figure,
    _note,
    _num,
    _read_metrics,
    _table,
)


# ----------------------------------------------------------------------------- training
def _training(dirs: Sequence[Path]) -> str | None:
    found = _files(dirs, METRICS_FILE)
    if not found:
        return None
    blocks = []
    for d, path in found:
        records, bad = _read_metrics(path)
        points = [(r["step"], r["loss"]) for r in records if _is_number(r.get("step")) and _is_number(r.get("loss"))]
        title = f"<h3>{_esc(d)}</h3>"
        skipped = _note(f"{bad} unreadable line(s) in {METRICS_FILE} skipped") if bad else ""
        if not points:
            blocks.append(title + skipped + _note(f"{METRICS_FILE} has no step/loss records"))
            continue
        steps = np.array([p[0] for p in points], dtype=np.float64)
        loss = np.array([p[1] for p in points], dtype=np.float64)
        lr = [(r["step"], r["lr"]) for r in records if _is_number(r.get("step")) and _is_number(r.get("lr"))]
        fig = _new_figure(6.0, 3.2)
        ax = fig.add_subplot()
        ax.plot(steps, loss, color="#4c78a8", marker="." if len(steps) < 50 else None, label="loss")
        if loss.min() > 0 and loss.max() / loss.min() > 20:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss", color="#4c78a8")
        ax.set_title(d.name or str(d))
        if lr:
            ax2 = ax.twinx()
            ax2.plot([p[0] for p in lr], [p[1] for p in lr], color="#f58518", linewidth=1.0, alpha=0.8)
            ax2.set_ylabel("learning rate", color="#f58518")
        summary = _table(("steps logged", "last step", "first loss", "last loss", "lowest loss"),
                         [(_num(len(points)), _num(int(steps[-1])), _num(float(loss[0])), _num(float(loss[-1])),
                           _num(float(loss.min())))])
        blocks.append(title + skipped + _img(fig, f"loss vs step, {d}") + summary)
    return "".join(blocks)

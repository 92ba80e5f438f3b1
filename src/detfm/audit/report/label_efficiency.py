"""Label-efficiency section: the headline metric against labeled events."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detfm.errors import DetfmError

if TYPE_CHECKING:
    pass

from detfm.audit.report.common import (
    STUDY_FILES,
    _esc,
    _img,
    _is_number,
    _new_figure,
    _num,
    _read_json,
    _table,
)


# ----------------------------------------------------------------------------- label efficiency
def _study_files(dirs: Sequence[Path]) -> list[tuple[Path, Path, dict[str, Any]]]:
    out = []
    for d in dirs:
        for name in STUDY_FILES:
            path = d / name
            if path.is_file():
                data = _read_json(path)
                if isinstance(data, dict) and isinstance(data.get("summary"), dict) and "metric" in data:
                    out.append((d, path, data))
                    break
    return out


def _label_efficiency(dirs: Sequence[Path]) -> str | None:
    studies = _study_files(dirs)
    if not studies:
        return None
    blocks = []
    for d, path, study in studies:
        metric = str(study["metric"])
        curves = _study_curves(path, study["summary"])
        counts = sorted({n for curve in curves.values() for n in curve})
        fig = _new_figure(6.0, 3.8)
        ax = fig.add_subplot()
        for k, (name, curve) in enumerate(curves.items()):
            xs = [n for n in sorted(curve) if _is_number(curve[n].get("mean"))]
            if not xs:
                continue
            mean = np.array([curve[n]["mean"] for n in xs], dtype=np.float64)
            std = np.array([curve[n].get("std") if _is_number(curve[n].get("std")) else 0.0 for n in xs])
            color = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756")[k % 5]
            ax.errorbar(xs, mean, yerr=std, marker="o", capsize=3, color=color, label=name)
            ax.fill_between(xs, mean - std, mean + std, color=color, alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("labeled events")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs labeled events (mean ± std over seeds)", fontsize=10)
        if curves:
            ax.legend(fontsize=8)
        rows = []
        for n in counts:
            cells = [_num(n)]
            for curve in curves.values():
                v = curve.get(n)
                cells.append("n/a" if not v or not _is_number(v.get("mean")) else
                             f"{_num(v['mean'], 3)} ± {_num(v.get('std', 0.0), 2)} ({_num(v.get('n', '?'))})")
            rows.append(cells)
        blocks.append(f"<h3>{_esc(path)}</h3>" + _img(fig, f"label efficiency, {d}")
                      + _table(("labels", *curves), rows, caption=f"{metric}: mean ± std (seeds)"))
    return "".join(blocks)


def _study_curves(path: Path, summary: dict[str, Any]) -> dict[str, dict[int, dict[str, Any]]]:
    curves: dict[str, dict[int, dict[str, Any]]] = {}
    for name, by_n in summary.items():
        if not isinstance(by_n, dict):
            raise DetfmError(f"{path}: summary['{name}'] must map label counts to mean/std/n")
        curve = {}
        for key, value in by_n.items():
            try:
                count = int(key)
            except ValueError:
                raise DetfmError(f"{path}: summary['{name}'] has a non-integer label count {key!r}") from None
            if isinstance(value, dict):
                curve[count] = value
        curves[str(name)] = curve
    return curves

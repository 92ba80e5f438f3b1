"""Systematics and calibration sections: shifts under detector variations, ECE, coverage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np


if TYPE_CHECKING:
    from matplotlib.figure import Figure

from detfm.audit.report.common import (
    SYSTEMATICS_FILE,
    SYSTEMATICS_KIND,
    _esc,
    _files,
    _img,
    _is_number,
    _new_figure,
    _note,
    _num,
    _read_json,
    _table,
)


# ----------------------------------------------------------------------------- systematics
def _systematics_and_calibration(dirs: Sequence[Path]) -> list[tuple[str, str, str | None]]:
    reports = []
    for d, path in _files(dirs, SYSTEMATICS_FILE):
        data = _read_json(path)
        if isinstance(data, dict) and data.get("kind") == SYSTEMATICS_KIND:
            reports.append((d, path, data))
    syst = "".join(_systematics_html(path, r) for _, path, r in reports) or None
    calib = "".join(_calibration_html(path, r) for _, path, r in reports
                    if r.get("calibration") or r.get("conformal")) or None
    return [("systematics", "Systematics", syst), ("calibration", "Calibration and coverage", calib)]


def _interval(v: object) -> str:
    if not isinstance(v, dict):
        return _num(v) if _is_number(v) else "n/a"
    value, lo, hi = v.get("value"), v.get("lo"), v.get("hi")
    if _is_number(lo) and _is_number(hi):
        return f"{_num(value)} <small>[{_num(lo, 3)}, {_num(hi, 3)}]</small>"
    return _num(value)


def _grid(values: dict[str, Any]) -> tuple[list[str], list[str]]:
    rows = [str(k) for k in values]
    cols: list[str] = []
    for v in values.values():
        if isinstance(v, dict):
            cols.extend(str(c) for c in v if str(c) not in cols)
    return rows, cols


def _systematics_html(path: Path, report: dict[str, Any]) -> str:
    out = [f"<h3>{_esc(path)}</h3>"]
    variations = report.get("variations")
    info = [f"{k}: {report[k]}" for k in ("model", "task", "events")
            if k in report and not isinstance(report[k], (dict, list))]
    if isinstance(variations, list) and variations:
        info.append("variations: " + ", ".join(str(v) for v in variations))
    if info:
        out.append(_note("; ".join(info)))
    for key, caption in (("metrics", "metric per variation, value [bootstrap interval]"),
                         ("differences", "shift from nominal (paired), value [bootstrap interval]")):
        block = report.get(key)
        if isinstance(block, dict) and block:
            names, metrics = _grid(block)
            out.append(_table(("metric", *names),
                              [(_esc(m), *(_interval((block.get(v) or {}).get(m)) for v in names)) for m in metrics],
                              caption=caption))
    diffs = report.get("differences")
    if isinstance(diffs, dict) and diffs:
        out.append(_img(_differences_figure(diffs), f"metric shifts per variation, {path}"))
    flips = report.get("flip_fraction")
    if isinstance(flips, dict) and flips:
        out.append(_table(("variation", "mean", "median", "90th percentile"),
                          [(_esc(k), _num(v.get("mean")), _num(v.get("median")), _num(v.get("p90")))
                           for k, v in flips.items() if isinstance(v, dict)],
                          caption="per event, the fraction of voxels whose predicted class differs from nominal"))
    return "".join(out)


def _headline_first(metrics: Sequence[str]) -> list[str]:
    """Metric names with the macro-F1 and accuracy scores first."""
    def key(m: str) -> int:
        return 0 if m.startswith("macro_f1") else 1 if m.startswith("accuracy") else 2
    return sorted(metrics, key=key)


def _is_reference(cells: object) -> bool:
    """True for the row of the reference variation itself: every shift exactly zero."""
    if not isinstance(cells, dict) or not cells:
        return False
    return all(isinstance(c, dict) and all(c.get(k) in (0, 0.0, None) for k in ("value", "lo", "hi"))
               for c in cells.values())


def _differences_figure(diffs: dict[str, Any]) -> Figure:
    variations, metrics = _grid(diffs)
    variations = [v for v in variations if not _is_reference(diffs.get(v))] or variations
    metrics = _headline_first(metrics)[:4]  # a readable figure; the table above lists them all
    fig = _new_figure(2.9 * max(len(metrics), 1), 1.3 + 0.35 * len(variations))
    axes = fig.subplots(1, max(len(metrics), 1), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=False):
        ys = np.arange(len(variations))
        for y, var in zip(ys, variations, strict=True):
            cell = (diffs.get(var) or {}).get(metric)
            if not isinstance(cell, dict) or not _is_number(cell.get("value")):
                continue
            value = float(cell["value"])
            lo = float(cell["lo"]) if _is_number(cell.get("lo")) else value
            hi = float(cell["hi"]) if _is_number(cell.get("hi")) else value
            ax.errorbar([value], [y], xerr=[[max(value - lo, 0.0)], [max(hi - value, 0.0)]], fmt="o",
                        color="#4c78a8", capsize=3)
        ax.axvline(0.0, color="#9d9d9d", linewidth=1)
        ax.set_yticks(ys, variations if ax is axes[0] else [""] * len(variations))
        ax.set_ylim(-0.6, len(variations) - 0.4)
        ax.invert_yaxis()
        ax.set_xlabel(f"Δ {metric}")
    return fig


def _calibration_html(path: Path, report: dict[str, Any]) -> str:
    out = [f"<h3>{_esc(path)}</h3>"]
    calib = report.get("calibration")
    if isinstance(calib, dict) and calib:
        before, after = calib.get("ece_before"), calib.get("ece_after")
        caption = ("expected calibration error before and after temperature scaling "
                   f"(T = {_num(calib.get('temperature'))})")
        if isinstance(before, dict) or isinstance(after, dict):  # one value per variation
            before = before if isinstance(before, dict) else {}
            after = after if isinstance(after, dict) else {}
            names = list(dict.fromkeys([*before, *after]))
            out.append(_table(("variation", "ECE before", "ECE after"),
                              [(_esc(n), _num(before.get(n)), _num(after.get(n))) for n in names], caption=caption))
        else:
            out.append(_table(("ECE before", "ECE after"), [(_num(before), _num(after))], caption=caption))
        reliability = calib.get("reliability")
        if isinstance(reliability, dict) and any(isinstance(c, dict) for c in reliability.values()):
            out.append(_img(_reliability_figure(reliability), f"reliability diagram, {path}"))
    conformal = report.get("conformal")
    if isinstance(conformal, dict) and conformal:
        coverage = conformal.get("coverage") or {}
        sizes = conformal.get("set_size") or {}
        alpha = conformal.get("alpha")
        method = f" ({conformal['method']})" if isinstance(conformal.get("method"), str) else ""
        target = f", target coverage {1 - float(alpha):.3g} (alpha {alpha})" if _is_number(alpha) else ""
        if isinstance(coverage, dict) and isinstance(sizes, dict):
            names = list(dict.fromkeys([*coverage, *sizes]))
            out.append(_table(("variation", "coverage", "mean set size"),
                              [(_esc(n), _num(coverage.get(n)), _num(sizes.get(n))) for n in names],
                              caption=f"split-conformal prediction sets{method}{target}"))
    return "".join(out)


def _reliability_figure(reliability: dict[str, Any]) -> Figure:
    fig = _new_figure(4.2, 4.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#9d9d9d", linestyle="--", linewidth=1, label="perfect calibration")
    colors = {"before": "#e45756", "after": "#4c78a8"}
    for name, curve in reliability.items():
        if not isinstance(curve, dict):
            continue
        conf = np.asarray([np.nan if v is None else v for v in curve.get("confidence") or []], dtype=np.float64)
        acc = np.asarray([np.nan if v is None else v for v in curve.get("accuracy") or []], dtype=np.float64)
        if conf.shape != acc.shape or conf.size == 0:
            continue
        count = np.asarray(curve.get("count") if curve.get("count") is not None else np.ones_like(conf),
                           dtype=np.float64)
        keep = np.isfinite(conf) & np.isfinite(acc)
        if count.shape == conf.shape:
            keep &= count > 0
        color = next((c for k, c in colors.items() if str(name).startswith(k)), "#54a24b")
        ax.plot(conf[keep], acc[keep], marker="o", markersize=3, color=color,
                label=f"{name} temperature scaling" if name in colors else str(name))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    return fig

"""Pictures of `detfm compare`: overlaid normalised distributions over a ratio panel.

Every figure has the same two panels: on top, each file's distribution (normalised so that
files of different sizes compare), with statistical error bars; below, the ratio of each
file to the first (the reference), with the errors of both combined. Matplotlib (Agg) only.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

COLORS = ("#222222", "#e45756", "#4c78a8", "#54a24b", "#f58518", "#b279a2", "#72b7b2", "#9d755d")


@dataclass(frozen=True)
class Curve:
    """One file's binned distribution: values per bin and their statistical errors."""

    label: str
    y: np.ndarray
    err: np.ndarray


def normalised_hist(values: np.ndarray, edges: np.ndarray, weights: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of the (weighted) entries in each bin, and its Poisson-like error."""
    w = np.ones(len(values)) if weights is None else np.asarray(weights, np.float64)
    sums, _ = np.histogram(values, edges, weights=w)
    sq, _ = np.histogram(values, edges, weights=w * w)
    total = w.sum()
    if total <= 0:
        return np.zeros(len(edges) - 1), np.zeros(len(edges) - 1)
    return sums / total, np.sqrt(sq) / total


def _ratio(num: Curve, den: Curve) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(den.y > 0, num.y / den.y, np.nan)
        rel = np.sqrt(np.where(num.y > 0, (num.err / num.y) ** 2, 0.0)
                      + np.where(den.y > 0, (den.err / den.y) ** 2, 0.0))
    return r, np.abs(r) * rel


def figure_png(title: str, xlabel: str, ylabel: str, edges: np.ndarray | None, curves: Sequence[Curve], *,
               categories: Sequence[str] | None = None, logx: bool = False, logy: bool = False,
               note: str = "", reference: str | None = None) -> bytes:
    """A two-panel PNG (distribution over ratio to the first curve)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 5.0), sharex=True,
                                      gridspec_kw={"height_ratios": (3, 1), "hspace": 0.05})
    try:
        if categories is not None:
            x = np.arange(len(categories), dtype=np.float64)
            width = 0.8 / max(len(curves), 1)
            for k, c in enumerate(curves):
                shift = (k - (len(curves) - 1) / 2) * width
                top.bar(x + shift, c.y, width, yerr=c.err, color=COLORS[k % len(COLORS)], alpha=0.75,
                        label=c.label, capsize=2)
                if k:
                    r, re = _ratio(c, curves[0])
                    bottom.errorbar(x + shift, r, yerr=re, fmt="o", ms=3, color=COLORS[k % len(COLORS)])
            bottom.set_xticks(x, list(categories))
        else:
            assert edges is not None
            centres = np.sqrt(edges[1:] * edges[:-1]) if logx else 0.5 * (edges[1:] + edges[:-1])
            for k, c in enumerate(curves):
                color = COLORS[k % len(COLORS)]
                top.stairs(c.y, edges, color=color, label=c.label, linewidth=1.4)
                top.errorbar(centres, c.y, yerr=c.err, fmt="none", ecolor=color, elinewidth=0.8)
                if k:
                    r, re = _ratio(c, curves[0])
                    bottom.errorbar(centres, r, yerr=re, fmt="o", ms=3, color=color)
            if logx:
                from matplotlib.ticker import NullFormatter

                top.set_xscale("log")
                bottom.xaxis.set_minor_formatter(NullFormatter())
        if logy:
            top.set_yscale("log")
        bottom.axhline(1.0, color=COLORS[0], linewidth=0.8)
        finite = [v for c in curves[1:] for v in _ratio(c, curves[0])[0] if np.isfinite(v)]
        hi = min(max([1.5, *finite]) * 1.05, 3.0) if finite else 1.5
        lo = max(min([0.5, *finite]) * 0.95, 0.0) if finite else 0.5
        bottom.set_ylim(lo, hi)
        bottom.set_ylabel(f"ratio to\n{(reference or curves[0].label)[:18]}", fontsize=8)
        bottom.set_xlabel(xlabel)
        top.set_ylabel(ylabel)
        top.set_title(title, fontsize=11)
        top.legend(fontsize=8, loc="best")
        if note:
            top.text(0.01, 0.98, note, transform=top.transAxes, fontsize=7, va="top", color="#555555")
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close(fig)

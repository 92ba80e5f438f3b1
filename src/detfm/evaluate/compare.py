"""`detfm compare`: the plots a physicist makes first when simulation meets data.

For two or more event files (the first is the reference), overlaid normalised
distributions with a ratio panel, and a two-sample test per distribution:

==========================  ===================================================  ===============
distribution                what                                                 test
==========================  ===================================================  ===============
points per event            voxels above the threshold per event                 KS
energy per voxel            voxel value (MeV)                                    KS
energy per event            summed voxel value (MeV)                             KS
class shares (labels)       fraction of voxels per semantic class                chi-square
cluster sizes (labels)      voxels per fragment (cluster rows but the bucket)    KS
track dE/dx (labels)        energy per cm against residual range, stopping       energy-weighted
                            tracks, last 30 cm                                   KS on range
shower longitudinal         energy against depth along the shower axis (X0)      weighted KS
shower lateral              energy against distance from the axis (cm)           weighted KS
==========================  ===================================================  ===============

Files without labels (real data) get the first three; a labeled distribution is drawn for
the files that have labels, and skipped (with the reason in the summary) if fewer than two
do. How tracks and showers are measured: :mod:`detfm.evaluate.compare_stats`.

A note on p-values: voxels of one event are not independent, and the samples hold 10^5 to
10^7 voxels, so any real difference is "significant"; read the ratio panels for the size
of a difference and the p-values for whether it could be a fluctuation.

Outputs: ``--out DIR`` writes ``DIR/compare.html`` (self-contained, pictures inline),
``DIR/compare.json`` and one PNG per distribution; ``--out NAME.html`` writes that page
only. :func:`compare_section` gives the same content as an HTML fragment for other pages.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detfm import __version__
from detfm.evaluate.page_check import page_check_script
from detfm.errors import DetfmError
from detfm.evaluate.compare_plots import Curve, figure_png, normalised_hist
from detfm.evaluate.compare_stats import (
    RESIDUAL_RANGE_MAX_CM,
    FileStats,
    check_same_layout,
    chi2_counts,
    collect,
    ks,
    weighted_ks,
)
from detfm.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_output_dir,
    check_output_file,
    layout,
)

COMPARE_KIND = "detfm-compare/1"
PAGE = "compare.html"
REPORT = "compare.json"
TRACK_EDGES = np.array([0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 14.0, 18.0, 22.0, 26.0, RESIDUAL_RANGE_MAX_CM])
SHOWER_DEPTH_EDGES = np.arange(0.0, 12.01, 0.5)     # X0
SHOWER_LATERAL_EDGES = np.arange(0.0, 20.01, 1.0)   # cm


@dataclass
class Result:
    """One distribution: its test against the reference per file, and its picture."""

    key: str
    title: str
    test: str
    skipped: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)   # one per non-reference file
    png: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "test": self.test, "skipped": self.skipped,
                "comparisons": self.rows, "png": f"{self.key}.png" if self.png else None}


@dataclass
class Comparison:
    files: list[FileStats]
    energy_threshold: float
    results: list[Result]

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": COMPARE_KIND, "detfm_version": __version__, "energy_threshold_mev": self.energy_threshold,
            "reference": self.files[0].path,
            "files": [{"path": f.path, "events": f.events, "points": int(sum(f.points_per_event)),
                       "labeled": f.labeled, "stopping_tracks": f.tracks, "showers": f.showers}
                      for f in self.files],
            "distributions": [r.as_json() for r in self.results],
        }


# ----------------------------------------------------------------------------- distributions
def _labels(files: Sequence[FileStats]) -> list[str]:
    names = [f.name for f in files]
    return [n if names.count(n) == 1 else f"{i}: {n}" for i, n in enumerate(names)]


def _pair_rows(files: Sequence[FileStats], labels: Sequence[str], test: Callable[[FileStats, FileStats],
               tuple[float, float]], size: Callable[[FileStats], int]) -> list[dict[str, Any]]:
    ref = files[0]
    rows = []
    for f, label in zip(files[1:], labels[1:], strict=True):
        stat, p = test(ref, f)
        rows.append({"file": f.path, "label": label, "statistic": stat, "p_value": p,
                     "n_reference": size(ref), "n_file": size(f)})
    return rows


def _edges(samples: Sequence[np.ndarray], log: bool, bins: int, floor: float = 0.0) -> np.ndarray:
    allv = np.concatenate([s for s in samples if len(s)]) if any(len(s) for s in samples) else np.zeros(1)
    hi = float(np.percentile(allv, 99.5)) if len(allv) else 1.0
    if log:
        lo = max(float(allv[allv > 0].min()) if (allv > 0).any() else 1e-3, floor if floor > 0 else 1e-3)
        hi = max(hi, lo * 10)
        return np.geomspace(lo, hi, bins + 1)
    hi = max(hi, 1.0)
    return np.linspace(0.0, hi, bins + 1)


def _sample_result(key: str, title: str, xlabel: str, files: Sequence[FileStats], labels: Sequence[str], *,
                   log: bool = False, logy: bool = False, floor: float = 0.0) -> Result:
    samples = [f.array(key) for f in files]
    edges = _edges(samples, log, 40, floor)
    curves = [Curve(lab, *normalised_hist(s, edges)) for s, lab in zip(samples, labels, strict=True)]
    res = Result(key, title, "KS")
    res.rows = _pair_rows(files, labels, lambda a, b: ks(a.array(key), b.array(key)), lambda f: len(f.array(key)))
    res.png = figure_png(title, xlabel, "fraction per bin", edges, curves, logx=log, logy=logy)
    return res


def _class_result(files: Sequence[FileStats], labels: Sequence[str]) -> Result:
    res = Result("class_shares", "Class shares (semantic labels)", "chi-square")
    curves = []
    for f, lab in zip(files, labels, strict=True):
        total = max(int(f.class_counts.sum()), 1)
        curves.append(Curve(lab, f.class_counts / total, np.sqrt(f.class_counts) / total))
    res.rows = _pair_rows(files, labels, lambda a, b: chi2_counts(a.class_counts, b.class_counts),
                          lambda f: int(f.class_counts.sum()))
    for row, f in zip(res.rows, files[1:], strict=True):
        row["shares"] = dict(zip(layout.SEMANTIC_CLASSES, (f.class_counts / max(f.class_counts.sum(), 1)).round(5)
                                 .tolist(), strict=True))
    res.png = figure_png(res.title, "semantic class", "fraction of voxels", None, curves,
                         categories=layout.SEMANTIC_CLASSES)
    return res


def _track_result(files: Sequence[FileStats], labels: Sequence[str]) -> Result:
    res = Result("track_dedx", "Stopping tracks: dE/dx against residual range", "energy-weighted KS")
    width = np.diff(TRACK_EDGES)
    curves = []
    for f, lab in zip(files, labels, strict=True):
        rr, e = f.array("track_rr"), f.array("track_e")
        s, _ = np.histogram(rr, TRACK_EDGES, weights=e)
        s2, _ = np.histogram(rr, TRACK_EDGES, weights=e * e)
        n = max(f.tracks, 1)
        curves.append(Curve(f"{lab} ({f.tracks} tracks)", s / width / n, np.sqrt(s2) / width / n))
    res.rows = _pair_rows(files, labels, lambda a, b: weighted_ks(a.array("track_rr"), a.array("track_e"),
                                                                  b.array("track_rr"), b.array("track_e")),
                          lambda f: f.tracks)
    res.png = figure_png(res.title, "residual range (cm)", "MeV per cm per track", TRACK_EDGES, curves,
                         reference=labels[0])
    return res


def _shower_result(key: str, title: str, xlabel: str, sample: str, edges: np.ndarray,
                   files: Sequence[FileStats], labels: Sequence[str]) -> Result:
    res = Result(key, title, "energy-weighted KS")
    curves = [Curve(f"{lab} ({f.showers} showers)", *normalised_hist(f.array(sample), edges, f.array("shower_e")))
              for f, lab in zip(files, labels, strict=True)]
    res.rows = _pair_rows(files, labels, lambda a, b: weighted_ks(a.array(sample), a.array("shower_e"),
                                                                  b.array(sample), b.array("shower_e")),
                          lambda f: f.showers)
    res.png = figure_png(title, xlabel, "fraction of shower energy per bin", edges, curves, reference=labels[0])
    return res


def compare(files: Sequence[FileStats], energy_threshold: float) -> Comparison:
    """Every distribution of ``files`` (already collected) against ``files[0]``."""
    files = list(files)
    if len(files) < 2:
        raise DetfmError(f"compare needs at least two files, got {len(files)}")
    check_same_layout(files)
    labels = _labels(files)
    results = [
        _sample_result("points_per_event", "Points per event", "voxels per event", files, labels),
        _sample_result("energy_per_voxel", "Energy per voxel", "voxel value (MeV)", files, labels,
                       log=True, logy=True, floor=energy_threshold),
        _sample_result("energy_per_event", "Energy per event", "summed voxel value (MeV)", files, labels),
    ]
    labeled = [k for k, f in enumerate(files) if f.labeled]
    lab_files = [files[k] for k in labeled]
    lab_names = [labels[k] for k in labeled]
    unlabeled = ", ".join(f.name for f in files if not f.labeled)
    specs: list[tuple[str, str, str, Callable[[], Result], Callable[[FileStats], int]]] = [
        ("class_shares", "Class shares (semantic labels)", "chi-square",
         lambda: _class_result(lab_files, lab_names), lambda f: int(f.class_counts.sum())),
        ("cluster_sizes", "Cluster sizes (voxels per fragment)", "KS",
         lambda: _sample_result("cluster_sizes", "Cluster sizes (voxels per fragment)", "voxels", lab_files,
                                lab_names, log=True, logy=True, floor=1.0), lambda f: len(f.cluster_sizes)),
        ("track_dedx", "Stopping tracks: dE/dx against residual range", "energy-weighted KS",
         lambda: _track_result(lab_files, lab_names), lambda f: f.tracks),
        ("shower_longitudinal", "Shower longitudinal profile", "energy-weighted KS",
         lambda: _shower_result("shower_longitudinal", "Shower longitudinal profile", "depth (X0 = 14 cm)",
                                "shower_t", SHOWER_DEPTH_EDGES, lab_files, lab_names), lambda f: f.showers),
        ("shower_lateral", "Shower lateral profile", "energy-weighted KS",
         lambda: _shower_result("shower_lateral", "Shower lateral profile", "distance from the axis (cm)",
                                "shower_r", SHOWER_LATERAL_EDGES, lab_files, lab_names), lambda f: f.showers),
    ]
    for key, title, test, build, size in specs:
        if len(lab_files) < 2:
            results.append(Result(key, title, test, skipped=f"needs labels in two files; none in {unlabeled}"))
            continue
        empty = [f.name for f in lab_files if size(f) == 0]
        if empty:
            results.append(Result(key, title, test, skipped=f"nothing to measure in {', '.join(empty)}"))
            continue
        res = build()
        if unlabeled:
            for row in res.rows:
                row["note"] = f"without {unlabeled} (no labels)"
        results.append(res)
    return Comparison(files, energy_threshold, results)


def run_compare(paths: Sequence[str | os.PathLike[str]], *,
                energy_threshold: float = layout.DEFAULT_ENERGY_THRESHOLD_MEV,
                max_events: int | None = None) -> Comparison:
    """Read ``paths`` (the first is the reference) and compare every distribution."""
    if len(paths) < 2:
        raise DetfmError(f"compare needs at least two files, got {len(paths)}")
    if not (np.isfinite(energy_threshold) and energy_threshold >= 0):
        raise DetfmError(f"--energy-threshold must be a finite value >= 0 MeV, got {energy_threshold}")
    if max_events is not None and max_events < 1:
        raise DetfmError(f"--max-events must be >= 1, got {max_events}")
    files = [collect(p, energy_threshold=energy_threshold, max_events=max_events) for p in paths]
    return compare(files, energy_threshold)


# ----------------------------------------------------------------------------- HTML
_CSS = """
.detfm-compare table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
.detfm-compare th,.detfm-compare td{border:1px solid #ccc;padding:.25em .55em;text-align:left}
.detfm-compare th{background:#eef2f7}.detfm-compare img{max-width:100%;height:auto;display:block}
.detfm-compare figure{display:inline-block;margin:.4em;vertical-align:top;max-width:560px}
.detfm-compare figcaption{font-size:.85em;color:#555}.detfm-compare .low{color:#b00020;font-weight:600}
.detfm-compare .na{color:#777;font-style:italic}
"""


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def section_html(c: Comparison) -> str:
    """The comparison as one self-contained HTML fragment (pictures inline as base64 PNGs)."""
    labels = _labels(c.files)
    head = ("<tr><th>file</th><th>events</th><th>points above threshold</th><th>labels</th>"
            "<th>stopping tracks</th><th>showers</th></tr>")
    rows = "".join(
        f"<tr><td>{_esc(lab)}{' (reference)' if k == 0 else ''}</td><td>{f.events}</td>"
        f"<td>{sum(f.points_per_event)}</td><td>{'yes' if f.labeled else 'no'}</td>"
        f"<td>{f.tracks if f.labeled else '-'}</td><td>{f.showers if f.labeled else '-'}</td></tr>"
        for k, (f, lab) in enumerate(zip(c.files, labels, strict=True)))
    summary = []
    for r in c.results:
        if r.skipped:
            summary.append(f'<tr><td>{_esc(r.title)}</td><td>{_esc(r.test)}</td>'
                           f'<td colspan="4" class="na">skipped: {_esc(r.skipped)}</td></tr>')
            continue
        for row in r.rows:
            p = row["p_value"]
            cls = ' class="low"' if p is not None and np.isfinite(p) and p < 0.01 else ""
            summary.append(f"<tr><td>{_esc(r.title)}</td><td>{_esc(r.test)}</td><td>{_esc(row['label'])}</td>"
                           f"<td>{_fmt(row['statistic'])}</td><td{cls}>{_fmt(p)}</td>"
                           f"<td>{row['n_reference']} / {row['n_file']}</td></tr>")
    figures = "".join(
        f'<figure id="compare-{r.key}"><img alt="{_esc(r.title)}" '
        f'src="data:image/png;base64,{base64.b64encode(r.png).decode("ascii")}">'
        f"<figcaption>{_esc(r.title)}; ratio panel: each file over {_esc(labels[0])}.</figcaption></figure>"
        for r in c.results if r.png)
    return (f'<div class="detfm-compare"><style>{_CSS}</style>'
            f"<p>Reference: <code>{_esc(c.files[0].path)}</code>; voxels at or above "
            f"{c.energy_threshold:g} MeV. p-values below 0.01 in red.</p>"
            f"<table><caption>Files</caption>{head}{rows}</table>"
            f"<table><caption>Two-sample tests against the reference</caption><tr><th>distribution</th>"
            f"<th>test</th><th>file</th><th>statistic</th><th>p-value</th><th>entries (reference / file)</th>"
            f"</tr>{''.join(summary)}</table>{figures}</div>")


def page_html(c: Comparison) -> str:
    """A complete page around :func:`section_html`, with the self-check script the browser test reads."""
    title = "detfm compare: " + " vs ".join(f.name for f in c.files)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:0 auto;padding:0 1em 2em;"
            f"color:#222}}</style><script>{page_check_script()}</script></head>"
            f'<body data-ok="0"><h1>{_esc(title)}</h1><p class="note">detfm {_esc(__version__)}</p>'
            f"{section_html(c)}</body></html>\n")


def compare_section(files: list[str], *, max_events: int | None = None,
                    energy_threshold: float = layout.DEFAULT_ENERGY_THRESHOLD_MEV) -> str:
    """HTML fragment comparing event ``files`` (the first is the reference), pictures inline.

    For pages that embed the comparison (the run report): the content of `detfm compare`'s
    page without the page around it, a ``<div class="detfm-compare">`` holding its styles
    and base64 PNGs, no script. ``max_events`` caps the events read per file. Raises
    :class:`DetfmError` (or its :class:`DataFormatError`) for bad input.
    """
    return section_html(run_compare(files, energy_threshold=energy_threshold, max_events=max_events))


def write_compare(c: Comparison, out: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write the page (and, for a folder, the JSON and PNGs); return the page's path."""
    out = Path(out)
    if out.suffix.lower() in (".html", ".htm"):
        check_output_file(out, overwrite=overwrite)
        atomic_write_text(out, page_html(c))
        return out
    pngs = tuple(f"{r.key}.png" for r in c.results if r.png)
    check_output_dir(out, overwrite=overwrite, outputs=(PAGE, REPORT, *pngs))
    out.mkdir(parents=True, exist_ok=True)
    for r in c.results:
        if r.png:
            atomic_write_bytes(out / f"{r.key}.png", r.png)
    atomic_write_text(out / REPORT, json.dumps(_finite(c.as_json()), indent=2, allow_nan=False) + "\n")
    atomic_write_text(out / PAGE, page_html(c))
    return out / PAGE


def _finite(x: Any) -> Any:
    """``x`` with NaN/inf floats as None (strict JSON)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def format_compare(c: Comparison) -> str:
    """The summary table as plain text (what the command prints)."""
    lines = [f"reference {c.files[0].path} ({c.files[0].events} events)"]
    for r in c.results:
        if r.skipped:
            lines.append(f"{r.title:<48} skipped: {r.skipped}")
            continue
        for row in r.rows:
            lines.append(f"{r.title:<48} {r.test:<20} vs {row['label']:<24} stat {_fmt(row['statistic']):>8}"
                         f"  p {_fmt(row['p_value']):>8}")
    return "\n".join(lines)

"""One self-contained HTML report of runs, for people: provenance, curves, scores, events.

:func:`build_report` looks in each given directory and its immediate subdirectories for
the files that detfm commands write, and renders one section per kind of input:

==================  =========================================  ===========================
section id          inputs                                     shows
==================  =========================================  ===========================
provenance          manifest.json, config.yaml                 code, environment, data hashes
training            metrics.jsonl                              loss (and lr) vs step per run
evaluation          eval.json (fine-tune runs)                 scores, per-class table, confusion
label-efficiency    results.json / study.json of a study       mean ± std vs labeled events
sensitivity         sensitivity.json, diversity.json (audits)  spread over seeds, conclusions,
                                                               model agreement, ensemble gain
systematics         report.json (``detfm-systematics/1``)      metrics, shifts, prediction flips
calibration         report.json (its calibration/conformal)    ECE, reliability, coverage
anomalies           anomalies.json, ranked.csv                 signature AUCs, top events
events              fine-tune semseg runs + their data files   best and worst test events
==================  =========================================  ===========================

A section whose inputs are absent says so in one line. The file needs nothing outside
itself: pictures are inline base64 PNGs (matplotlib, Agg), styles are inline, and a small
inline script only checks the page (every picture decoded, every section present) and
records the result on ``<body>`` as ``data-ok``, ``data-images``, ``data-broken-images``.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import html
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detfm import __version__
from detfm.audit import kinds
from detfm.errors import DetfmError
from detfm.io import atomic_write_text, layout

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["SECTION_IDS", "build_report", "find_run_dirs"]

#: Element ids of the report's sections, in page order.
SECTION_IDS: tuple[str, ...] = ("provenance", "training", "evaluation", "label-efficiency", "sensitivity",
                                "systematics", "calibration", "anomalies", "events")

MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
SPLIT_FILE = "split.json"
MODEL_FILE = "model.safetensors"
STUDY_FILES = ("results.json", "study.json")
SENSITIVITY_FILE = "sensitivity.json"
SENSITIVITY_KIND = kinds.SENSITIVITY
DIVERSITY_FILE = "diversity.json"
DIVERSITY_KIND = kinds.DIVERSITY
SYSTEMATICS_FILE = "report.json"
SYSTEMATICS_KIND = kinds.SYSTEMATICS
ANOMALY_FILE = "anomalies.json"
RANKED_FILE = "ranked.csv"
FINETUNE_HEADER = "# FinetuneConfig"

#: Rows of the ranked-events table of the anomalies section.
TOP_ANOMALIES = 20
#: Fine-tune runs whose events are drawn (the first ones found); the others are listed.
MAX_EVENT_RUNS = 4
#: Events drawn per run: the best and the worst this many.
EVENTS_SHOWN = 2
_DPI = 80
_SKIP_DIRS = {"checkpoints", "__pycache__"}


# ----------------------------------------------------------------------------- public API
def build_report(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 max_events: int = 40, title: str | None = None) -> Path:
    """Write the HTML report of ``run_dirs`` to ``out`` (atomically) and return its path.

    Args:
        run_dirs: run directories, or folders holding runs (their immediate subdirectories
            are searched too).
        out: the HTML file to write.
        max_events: test events scored per fine-tune segmentation run for the best/worst
            event displays.
        title: page heading (default: "detfm report").

    Raises:
        DetfmError: a directory does not exist, ``max_events < 1``, or an input file is
            corrupt (the message names the file).
    """
    if max_events < 1:
        raise DetfmError(f"max_events must be >= 1, got {max_events}")
    dirs = find_run_dirs(run_dirs)
    heading = title or "detfm report"
    sections = [
        ("provenance", "Provenance", _provenance(dirs)),
        ("training", "Training curves", _training(dirs)),
        ("evaluation", "Evaluation", _evaluation(dirs)),
        ("label-efficiency", "Label efficiency", _label_efficiency(dirs)),
        ("sensitivity", "Sensitivity to model choice", _sensitivity(dirs)),
        *_systematics_and_calibration(dirs),
        ("anomalies", "Anomalies", _anomalies(dirs)),
        ("events", "Best and worst events", _events(dirs, max_events)),
    ]
    page = _page(heading, [str(d) for d in run_dirs], sections)
    path = Path(out)
    atomic_write_text(path, page)
    return path


def find_run_dirs(run_dirs: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Each given directory followed by its immediate subdirectories (sorted, hidden and
    ``checkpoints`` left out), each directory once."""
    found: list[Path] = []
    seen: set[Path] = set()
    for given in run_dirs:
        root = Path(given)
        if not root.is_dir():
            raise DetfmError(f"{root}: no such directory")
        subdirs = sorted(p for p in root.iterdir()
                         if p.is_dir() and not p.name.startswith(".") and p.name not in _SKIP_DIRS)
        for d in (root, *subdirs):
            key = d.resolve()
            if key not in seen:
                seen.add(key)
                found.append(d)
    return found


# ----------------------------------------------------------------------------- reading
def _read_json(path: Path) -> Any:
    """A JSON file's content; a corrupt file raises :class:`DetfmError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DetfmError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise DetfmError(f"{path}: cannot be read ({exc})") from None


def _read_json_object(path: Path) -> dict[str, Any]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DetfmError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_yaml_text(path: Path) -> str:
    """The text of a YAML file, checked to parse (a corrupt file raises naming it)."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DetfmError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise DetfmError(f"{path}: cannot be read ({exc})") from None
    return text


def _read_metrics(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The records of a metrics.jsonl file and the number of lines that were not JSON objects
    (a crash can leave a partial last line)."""
    records: list[dict[str, Any]] = []
    bad = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as exc:
        raise DetfmError(f"{path}: cannot be read ({exc})") from None
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad += 1
    return records, bad


def _files(dirs: Sequence[Path], name: str) -> list[tuple[Path, Path]]:
    """(run directory, file) for every directory holding ``name``."""
    return [(d, d / name) for d in dirs if (d / name).is_file()]


# ----------------------------------------------------------------------------- HTML helpers
def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: object, digits: int = 4) -> str:
    """A number for a table cell: ``digits`` significant digits, ``n/a`` for None/NaN."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}g}"
    return _esc(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], caption: str | None = None) -> str:
    """An HTML table; cells are given as ready HTML (escape text with :func:`_esc`)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _na(reason: str) -> str:
    return f'<p class="na">Not available: {_esc(reason)}.</p>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A bare matplotlib figure on the Agg canvas (no pyplot, no GUI, no global state).

    ``constrained=False`` skips the layout engine (one draw instead of two) for figures
    whose margins are set by hand.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained" if constrained else None)
    FigureCanvasAgg(fig)
    return fig


def _img(fig: Figure, alt: str) -> str:
    """The figure as an inline PNG ``<img>``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


# ----------------------------------------------------------------------------- provenance
def _provenance(dirs: Sequence[Path]) -> str | None:
    parts = []
    for d in dirs:
        manifest, config = d / MANIFEST_FILE, d / CONFIG_FILE
        if not manifest.is_file() and not config.is_file():
            continue
        block = [f"<h3>{_esc(d)}</h3>"]
        if manifest.is_file():
            block.append(_manifest_html(manifest, _read_json_object(manifest)))
        else:
            block.append(_note(f"no {MANIFEST_FILE} in this run"))
        if config.is_file():
            text = _read_yaml_text(config)
            block.append(f"<details><summary>{CONFIG_FILE}</summary><pre>{_esc(text)}</pre></details>")
        parts.append("".join(block))
    return "".join(parts) or None


def _compact(value: object) -> str:
    """A manifest value for a table cell: lists of words joined, flat mappings as ``key value``
    pairs, anything nested as JSON in a collapsed block."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return _esc(" ".join(value))
    if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values()):
        return "<br>".join(f"{_esc(k)}: {_num(v) if _is_number(v) or v is None else _esc(v)}"
                           for k, v in value.items())
    if isinstance(value, (dict, list)):
        block = _esc(json.dumps(value, indent=1))
        return f"<details><summary>{len(value)} entries</summary><pre>{block}</pre></details>"
    return _num(value) if _is_number(value) or value is None else _esc(value)


def _manifest_html(path: Path, manifest: dict[str, Any]) -> str:
    """Code version, environment and timing as a key/value table, the inputs with their hashes."""
    rows: list[tuple[str, str]] = []
    schema = manifest.get("schema")
    warn = ""
    if schema is not None and schema != "detfm-manifest/1":
        warn = _note(f"{path.name}: schema {schema!r}, this report reads detfm-manifest/1; shown as found")
    code = manifest.get("code")
    if isinstance(code, dict):
        version = code.get("version", code.get("detfm", "?"))
        commit = str(code.get("commit") or code.get("git_commit") or "unknown")
        dirty = " (uncommitted changes)" if code.get("dirty", code.get("git_dirty")) else ""
        rows.append(("code", f"detfm {_esc(version)}, commit <code>{_esc(commit)}</code>{_esc(dirty)}"))
    for key, value in manifest.items():
        if key in ("schema", "code", "inputs"):
            continue
        rows.append((key, _compact(value)))
    started, ended = manifest.get("started"), manifest.get("ended")
    duration = _duration(started, ended)
    if duration:
        rows.append(("duration", _esc(duration)))
    out = [warn, _table(("field", "value"), [(_esc(k), v) for k, v in rows])]
    inputs = manifest.get("inputs")
    if isinstance(inputs, list) and inputs:
        cells = []
        for item in inputs:
            if not isinstance(item, dict):
                continue
            digest = str(item.get("sha256") or "")
            short = digest[:16] + ("…" if len(digest) > 16 else "")
            cells.append((_esc(item.get("path", "?")), _num(item.get("size")),
                          f'<code title="{_esc(digest)}">{_esc(short)}</code>'))
        out.append(_table(("input", "bytes", "sha256"), cells, caption="inputs"))
    return "".join(out)


def _duration(started: object, ended: object) -> str | None:
    if not isinstance(started, str) or not isinstance(ended, str):
        return None
    try:
        seconds = (dt.datetime.fromisoformat(ended) - dt.datetime.fromisoformat(started)).total_seconds()
    except (ValueError, TypeError):
        return None
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


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
    out = [_table(("class", "F1", *names), rows)] if rows else []
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


# ----------------------------------------------------------------------------- events
@dataclass(frozen=True)
class _ScoredEvent:
    event: int
    accuracy: float
    coords: np.ndarray  # (N, 3)
    truth: np.ndarray   # (N,) semantic class
    pred: np.ndarray    # (N,) predicted class (low-energy points keep class 4 when not scored)


def _is_finetune_run(d: Path) -> bool:
    config = d / CONFIG_FILE
    if not config.is_file():
        return False
    with open(config, encoding="utf-8", errors="replace") as fh:
        return fh.readline().strip() == FINETUNE_HEADER


def _events(dirs: Sequence[Path], max_events: int) -> str | None:
    runs = [d for d in dirs if _is_finetune_run(d)]
    if not runs:
        return None
    from detfm.adapt import load_finetune_config

    semseg = []
    for d in runs:
        if load_finetune_config(d).task == "semseg":
            semseg.append(d)
    if not semseg:
        return _na("the fine-tune runs found are not semantic-segmentation runs")
    blocks = [_run_events(d, max_events) for d in semseg[:MAX_EVENT_RUNS]]
    if len(semseg) > MAX_EVENT_RUNS:
        rest = ", ".join(str(d) for d in semseg[MAX_EVENT_RUNS:])
        blocks.append(_note(f"events of the first {MAX_EVENT_RUNS} segmentation runs shown; not drawn: {rest}"))
    return "".join(blocks)


def _data_files(run: Path, files: Sequence[str]) -> tuple[list[Path], list[str]]:
    """The run's data files as found (as written, or relative to the run), and those missing."""
    found, missing = [], []
    for name in files:
        for candidate in (Path(name), run / name):
            if candidate.is_file():
                found.append(candidate)
                break
        else:
            missing.append(str(name))
    return found, missing


def _run_events(run: Path, max_events: int) -> str:
    from detfm.adapt import load_finetune_config

    title = f"<h3>{_esc(run)}</h3>"
    split_path = run / SPLIT_FILE
    if not split_path.is_file():
        return title + _na(f"no {SPLIT_FILE} in the run (unfinished?)")
    if not (run / MODEL_FILE).is_file() and not (run / "checkpoints" / "last" / MODEL_FILE).is_file():
        return title + _na(f"no weights ({MODEL_FILE}) in the run")
    split = _read_json_object(split_path)
    files, test = split.get("files"), split.get("test")
    if not isinstance(files, list) or not isinstance(test, list):
        raise DetfmError(f"{split_path}: expected lists 'files' and 'test'")
    paths, missing = _data_files(run, [str(f) for f in files])
    if missing:
        return title + _na("the run's data files are missing: " + ", ".join(missing))
    if not test:
        return title + _na("the run's test split is empty")
    cfg = load_finetune_config(run)
    scored = _score_events(run, paths, [int(e) for e in test[:max_events]], cfg.data.energy_threshold,
                           cfg.exclude_low_energy)
    if not scored:
        return title + _na("the test events have no points above the energy threshold")
    order = sorted(scored, key=lambda s: (-s.accuracy, s.event))
    best = order[:EVENTS_SHOWN]
    worst = [s for s in reversed(order) if s not in best][:EVENTS_SHOWN]
    accs = np.array([s.accuracy for s in scored])
    what = "points other than low-energy, argmax over 4 classes" if cfg.exclude_low_energy else "all points"
    out = [title, _note(f"{len(scored)} test events scored; per-event accuracy ({what}): mean {accs.mean():.3f}, "
                        f"median {np.median(accs):.3f}, lowest {accs.min():.3f}, highest {accs.max():.3f}")]
    for label, chosen in (("best", best), ("worst", worst)):
        for s in chosen:
            out.append(f"<h4>{label}: event {s.event} ({len(s.truth):,} points, accuracy {s.accuracy:.3f})</h4>")
            out.append(_img(_event_figure(s), f"{label} event {s.event}, {run}"))
    return "".join(out)


def _score_events(run: Path, paths: Sequence[Path], event_ids: Sequence[int], threshold: float,
                  exclude_low_energy: bool, batch_size: int = 8) -> list[_ScoredEvent]:
    """Per-event accuracy of the run's model on ``event_ids`` (global numbers over ``paths``)."""
    import torch

    from detfm.adapt import load_finetuned
    from detfm.data import EventDataset, collate
    from detfm.models.lora import merge_lora

    task = load_finetuned(run)
    merge_lora(task)
    dataset = EventDataset(list(paths), energy_threshold=threshold, min_points=0, labels=True)
    if any(not 0 <= e < len(dataset) for e in event_ids):  # min_points=0: item i is global event i
        raise DetfmError(f"{run / SPLIT_FILE}: test event numbers exceed the {len(dataset)} events of its files")
    scored: list[_ScoredEvent] = []
    with torch.no_grad():
        for a in range(0, len(event_ids), batch_size):
            samples = [dataset[e] for e in event_ids[a:a + batch_size]]
            samples = [s for s in samples if s.n_points > 0]
            if not samples:
                continue
            batch = collate(samples)
            probs = task.predict_proba(batch).cpu().numpy()
            for j, s in enumerate(samples):
                p = probs[int(batch.offsets[j]):int(batch.offsets[j + 1])]
                truth = np.asarray(s.semantic)
                if exclude_low_energy:
                    keep = truth != layout.LOW_ENERGY
                    pred = np.where(keep, p[:, :layout.LOW_ENERGY].argmax(axis=1), layout.LOW_ENERGY)
                    acc = float(np.mean(pred[keep] == truth[keep])) if keep.any() else float("nan")
                else:
                    pred = p.argmax(axis=1)
                    acc = float(np.mean(pred == truth))
                if math.isfinite(acc):
                    scored.append(_ScoredEvent(s.index, acc, s.coord, truth, pred))
    return scored


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


# ----------------------------------------------------------------------------- page
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1150px;
padding:0 1.2em 3em;color:#222;line-height:1.45}
h1{margin-top:.8em}h2{border-bottom:2px solid #4c78a8;padding-bottom:.2em;margin-top:2em}
h3{margin:1.4em 0 .4em;font-size:1.02em;word-break:break-all}h4{margin:1em 0 .3em;font-size:.95em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}caption{text-align:left;color:#555;
padding:.2em 0}th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#eef2f7}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.82em}
img{max-width:100%;height:auto;display:block;margin:.5em 0}.na{color:#777;font-style:italic}
.note{color:#555;font-size:.9em}nav a{margin-right:1em}code{font-size:.9em}small{color:#666}
"""

# Checks the page once loaded: every picture decoded, every section present; any script
# error is collected. The result is written on <body> (data-ok="1" when all is well).
_CHECK_JS = """
(function () {
  var errors = [];
  window.addEventListener('error', function (e) {
    errors.push(String(e.message || 'error'));
    document.documentElement.setAttribute('data-errors', errors.join(' | '));
  });
  window.addEventListener('load', function () {
    var ids = %s;
    var missing = ids.filter(function (id) { return !document.getElementById(id); });
    var imgs = Array.prototype.slice.call(document.images);
    var broken = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); });
    var body = document.body;
    body.setAttribute('data-images', String(imgs.length));
    body.setAttribute('data-broken-images', String(broken.length));
    body.setAttribute('data-missing-sections', missing.join(' '));
    body.setAttribute('data-ok', (missing.length === 0 && broken.length === 0 && errors.length === 0) ? '1' : '0');
  });
})();
"""

_MISSING = {
    "provenance": f"no {MANIFEST_FILE} or {CONFIG_FILE} found",
    "training": f"no {METRICS_FILE} found",
    "evaluation": f"no {EVAL_FILE} found",
    "label-efficiency": f"no label-efficiency study ({' or '.join(STUDY_FILES)}) found",
    "sensitivity": f"no seed-sensitivity or diversity audit ({SENSITIVITY_FILE} or {DIVERSITY_FILE}) found",
    "systematics": f"no systematics report ({SYSTEMATICS_FILE} of kind {SYSTEMATICS_KIND}) found",
    "calibration": "no systematics report with calibration or conformal results found",
    "anomalies": f"no {ANOMALY_FILE} or {RANKED_FILE} found",
    "events": "no fine-tune run found",
}


def _page(title: str, given: Sequence[str], sections: Sequence[tuple[str, str, str | None]]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    nav = "".join(f'<a href="#{sid}">{_esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(
        f'<section id="{sid}"><h2>{_esc(name)}</h2>{content if content is not None else _na(_MISSING[sid])}</section>'
        for sid, name, content in sections)
    check = _CHECK_JS % json.dumps(list(SECTION_IDS))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(title)}</title><style>{_CSS}</style><script>{check}</script></head>"
            f'<body data-ok="0"><h1>{_esc(title)}</h1>'
            f'<p class="note">detfm {_esc(__version__)}, written {now}, from: '
            f'{_esc(", ".join(given))}</p><nav>{nav}</nav>{body}</body></html>\n')


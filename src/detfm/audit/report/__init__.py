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
events              predictions of `detfm predict` + event file best and worst test events
data                the event files the runs' configs name     `detfm compare`'s distributions
==================  =========================================  ===========================

A section whose inputs are absent says so in one line. The file needs nothing outside
itself: pictures are inline base64 PNGs (matplotlib, Agg), styles are inline, and a small
inline script only checks the page (every picture decoded, every section present) and
records the result on ``<body>`` as ``data-ok``, ``data-images``, ``data-broken-images``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from detfm.audit.report.anomalies import _anomalies
from detfm.audit.report.common import (
    _SKIP_DIRS,
    ANOMALY_FILE,
    CONFIG_FILE,
    DIVERSITY_FILE,
    EVAL_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    RANKED_FILE,
    SECTION_IDS,
    SENSITIVITY_FILE,
    STUDY_FILES,
    SYSTEMATICS_FILE,
)
from detfm.audit.report.data import _data
from detfm.audit.report.evaluation import _evaluation
from detfm.audit.report.events import _events, is_predictions_file
from detfm.audit.report.label_efficiency import _label_efficiency
from detfm.audit.report.page import _page
from detfm.audit.report.provenance import _provenance
from detfm.audit.report.sensitivity import _sensitivity
from detfm.audit.report.systematics import _systematics_and_calibration
from detfm.audit.report.training import _training
from detfm.errors import DetfmError
from detfm.io import atomic_write_text

__all__ = ["ANOMALY_FILE", "CONFIG_FILE", "DIVERSITY_FILE", "EVAL_FILE", "MANIFEST_FILE", "METRICS_FILE",
           "RANKED_FILE", "SECTION_IDS", "SENSITIVITY_FILE", "STUDY_FILES", "SYSTEMATICS_FILE", "build_report",
           "find_run_dirs"]


# ----------------------------------------------------------------------------- public API
def build_report(run_dirs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str], *,
                 predictions: Sequence[str | os.PathLike[str]] = (), max_events: int = 40,
                 title: str | None = None) -> Path:
    """Write the HTML report of ``run_dirs`` to ``out`` (atomically) and return its path.

    Args:
        run_dirs: run directories, or folders holding runs (their immediate subdirectories
            are searched too).
        out: the HTML file to write.
        predictions: files written by ``detfm predict`` for the best/worst event displays
            (those directly inside the searched folders are found without being named).
        max_events: test events ranked per predictions file for the best/worst displays.
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
        ("events", "Best and worst events", _events(dirs, max_events, [_predictions_file(p) for p in predictions])),
        ("data", "Data and simulation", _data(dirs)),
    ]
    page = _page(heading, [str(d) for d in run_dirs], sections)
    path = Path(out)
    atomic_write_text(path, page)
    return path


def _predictions_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DetfmError(f"{p}: no such predictions file")
    if not is_predictions_file(p):
        raise DetfmError(f"{p}: not a file written by `detfm predict`")
    return p


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

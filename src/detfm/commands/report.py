"""`detfm report`: one self-contained HTML page from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from detfm.errors import DetfmError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm report RUN_DIR... --out report.html``."""
    p = sub.add_parser(
        "report", help="a self-contained HTML report of runs",
        description="Write one HTML file (pictures inline, no network needed to view it) with the provenance, "
                    "training curves, scores, label-efficiency curve, systematics, calibration, anomalies and "
                    "best/worst events found in the given directories and their immediate subdirectories.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories, or folders holding runs (searched one level down)")
    p.add_argument("--out", required=True, help="output HTML file, e.g. report.html (written atomically)")
    p.add_argument("--predictions", nargs="+", default=[], metavar="PREDS.h5",
                   help="per-point predictions written by `detfm predict`, for the best and worst events "
                        "(files directly inside the RUN_DIRs are found without this)")
    p.add_argument("--max-events", type=int, default=40,
                   help="test events ranked per predictions file to pick the best and worst (default 40)")
    p.add_argument("--title", default=None, help="page heading (default 'detfm report')")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from detfm.audit import report
    from detfm.io.outputs import check_output_file

    dirs = report.find_run_dirs(args.run_dirs)  # inputs first: a missing folder is named before the output
    check_output_file(args.out, overwrite=args.overwrite)
    if not any(_has_results(d, report) for d in dirs):
        raise DetfmError(f"nothing to report in {', '.join(args.run_dirs)}: no run or results files "
                         f"({', '.join(_result_names(report))}) there or one folder down")
    path = report.build_report(args.run_dirs, args.out, predictions=args.predictions, max_events=args.max_events,
                               title=args.title)
    print(path)
    return 0


def _result_names(report: Any) -> tuple[str, ...]:
    """The files the report reads, by name (from :mod:`detfm.audit.report`, imported lazily)."""
    return (report.MANIFEST_FILE, report.CONFIG_FILE, report.METRICS_FILE, report.EVAL_FILE, *report.STUDY_FILES,
            report.SENSITIVITY_FILE, report.DIVERSITY_FILE, report.SYSTEMATICS_FILE, report.ANOMALY_FILE,
            report.RANKED_FILE)


def _has_results(folder: Path, report: Any) -> bool:
    """True if ``folder`` holds a file the report reads (a run's files or a results file)."""
    return (any((folder / name).is_file() for name in _result_names(report))
            or any(folder.glob("*.manifest.json")))

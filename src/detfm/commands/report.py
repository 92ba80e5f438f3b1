"""`detfm report`: one self-contained HTML page from run directories."""

from __future__ import annotations

import argparse


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
    p.add_argument("--max-events", type=int, default=40,
                   help="test events scored per fine-tune segmentation run to pick the best and worst (default 40)")
    p.add_argument("--title", default=None, help="page heading (default 'detfm report')")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from detfm.audit.report import build_report

    path = build_report(args.run_dirs, args.out, max_events=args.max_events, title=args.title)
    print(path)
    return 0

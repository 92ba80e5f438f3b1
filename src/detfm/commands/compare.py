"""`detfm compare`: overlaid distributions of event files with ratio panels and two-sample tests."""

from __future__ import annotations

import argparse
from pathlib import Path

from detfm.io import layout


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm compare``."""
    p = sub.add_parser(
        "compare", help="compare event files (simulation vs data): distributions, ratios, two-sample tests",
        description="Overlay normalised distributions of two or more event files (the first is the reference) "
                    "with a ratio panel each: points per event, energy per voxel and per event, and with labels "
                    "class shares, cluster sizes, track dE/dx against residual range and shower longitudinal "
                    "and lateral profiles. Each distribution gets a two-sample test (KS or chi-square) against "
                    "the reference. Files without labels (real data) get what needs no labels. Writes one "
                    "self-contained HTML page (OUT.html), or OUT/compare.html, compare.json and PNGs.")
    p.add_argument("files", nargs="+", metavar="FILE", help="event files; the first is the reference")
    p.add_argument("--out", required=True, metavar="OUT.html|DIR", help="an .html page, or a folder")
    p.add_argument("--energy-threshold", type=float, default=layout.DEFAULT_ENERGY_THRESHOLD_MEV,
                   help=f"count voxels at or above this value in MeV (default "
                        f"{layout.DEFAULT_ENERGY_THRESHOLD_MEV})")
    p.add_argument("--max-events", type=int, help="read at most this many events per file")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs in OUT")
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from detfm.evaluate.compare import (
        PAGE,
        REPORT,
        format_compare,
        run_compare,
        write_compare,
    )
    from detfm.io import check_output_dir, check_output_file

    out = Path(args.out)
    if out.suffix.lower() in (".html", ".htm"):  # check outputs before reading anything
        check_output_file(out, overwrite=args.overwrite)
    else:
        check_output_dir(out, overwrite=args.overwrite, outputs=(PAGE, REPORT))
    comparison = run_compare(args.files, energy_threshold=args.energy_threshold, max_events=args.max_events)
    page = write_compare(comparison, out, overwrite=args.overwrite)
    print(format_compare(comparison))
    print(f"wrote {page}")
    return 0

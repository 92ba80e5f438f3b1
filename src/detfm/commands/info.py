"""`detfm info`: a summary of event files (events, points per event, class fractions, pid counts)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm info FILE...``."""
    p = sub.add_parser("info", help="summarise event files",
                       description="Events, points per event, class fractions and pid counts.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--energy-threshold", type=float, default=0.13,
                   help="drop voxels below this value in MeV before counting (default 0.13)")
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from detfm.data.summary import format_summary, summarize

    print(format_summary(summarize(args.files, energy_threshold=args.energy_threshold)))
    return 0

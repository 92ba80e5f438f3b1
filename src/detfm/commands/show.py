"""`detfm show`: draw one event as interactive HTML or a PNG of 2D projections."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm show FILE --out OUT.html|OUT.png``."""
    p = sub.add_parser("show", help="draw one event (interactive HTML or PNG)",
                       description="Event display: 3D interactive HTML, or PNG with 2D projections.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--event", type=int, default=0, help="event index (default 0)")
    p.add_argument("--color", default="semantic", choices=["semantic", "energy", "pid", "instance"])
    p.add_argument("--predictions", metavar="PREDS.h5",
                   help="a `detfm predict` output for FILE: draw the prediction next to the truth")
    p.add_argument("--out", required=True, help="OUT.html or OUT.png")
    p.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from detfm.evaluate.display import show_file

    out = show_file(args.file, args.event, args.out, color=args.color, predictions=args.predictions)
    print(f"wrote {out}")
    return 0

"""`detfm show`: draw one event as interactive HTML or a PNG of 2D projections."""

from __future__ import annotations

import argparse
import sys

from detfm.errors import DetfmError
from detfm.io.outputs import check_output_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm show FILE --out OUT.html|OUT.png``."""
    p = sub.add_parser("show", help="draw one event (interactive HTML or PNG)",
                       description="Event display: 3D interactive HTML, or PNG with 2D projections.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--event", type=int, default=0, help="event index (default 0)")
    p.add_argument("--color", default="semantic", choices=["semantic", "energy", "pid", "instance"])
    p.add_argument("--predictions", metavar="PREDS.h5",
                   help="a `detfm predict` output for FILE: draw the prediction next to the truth (per-point "
                        "classes of a semseg run; for a particles run, the event coloured by predicted particle, "
                        "class and energy in the legend, next to the truth particles; --color does not apply)")
    p.add_argument("--out", required=True, help="OUT.html or OUT.png")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from detfm.evaluate.display import show_file
    from detfm.io import EventFile, event_problems

    if args.event < 0:
        raise DetfmError(f"--event must be >= 0 (events count from 0), got {args.event}")
    EventFile(args.file)  # the input is named before the output
    check_output_file(args.out, overwrite=args.overwrite)
    if args.predictions is not None and _particle_rows(args.predictions):
        from detfm.evaluate.particle_display import show_particles_file

        out = show_particles_file(args.file, args.event, args.out, args.predictions)
    else:
        out = show_file(args.file, args.event, args.out, color=args.color, predictions=args.predictions)
    with EventFile(args.file) as f:  # drawn as stored; say what every other reader would refuse
        event = f[args.event]
    for field, problem in event_problems(event.points, event.clusters):
        print(f"detfm show: warning: {args.file}: event {args.event}: {field}: {problem} "
              f"(drawn as stored; other commands refuse this event)", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def _particle_rows(predictions: str) -> bool:
    """True if the predictions file holds per-particle rows (a particles run's `detfm predict`)."""
    from pathlib import Path

    if not Path(predictions).is_file():
        raise DetfmError(f"{predictions}: no such file")
    from detfm.evaluate.particle_display import is_particle_predictions

    return is_particle_predictions(predictions)

"""`detfm simulate`: labeled LArTPC events from the embedded simulator, written in the PILArNet-M layout."""

from __future__ import annotations

import argparse

from detfm.errors import DetfmError
from detfm.io.outputs import check_output_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm simulate``."""
    p = sub.add_parser("simulate", help="simulate labeled LArTPC events into an HDF5 file",
                       description="Simulate labeled events (multi-particle vertex + rain by default) "
                                   "and write them in the PILArNet-M layout.")
    p.add_argument("--events", type=int, default=100, help="number of events (default 100)")
    p.add_argument("--out", help="output HDF5 file (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same file")
    p.add_argument("--detector", default="nominal", help="detector model (see --list-detectors)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--mix", default="mpvmpr", choices=["mpvmpr", "mpv", "mpr", "gun"],
                   help="event mix: multi-particle vertex + rain (default), either alone, or a particle gun")
    p.add_argument("--gun", metavar="PARTICLE:KINETIC_MEV",
                   help="single particles from the box centre in random directions, e.g. mu-:500")
    p.add_argument("--anomaly", choices=["hsip", "fractional", "displaced_vertex"], default=None,
                   help="inject one rare signature per event: a slow heavily ionising particle, a "
                        "fractionally charged track or a displaced two-track vertex (see docs/anomalies.md)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--list-detectors", action="store_true", help="list the detector models and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from detfm.sim.detector import DETECTORS

    if args.list_detectors:
        for name, det in DETECTORS.items():
            print(f"{name}\n    {det.describe()}")
        return 0
    if not args.out:
        raise DetfmError("simulate: --out FILE is required")
    if args.events < 1:
        raise DetfmError(f"--events must be >= 1, got {args.events} (a file without events is of no use)")
    if args.workers < 1:
        raise DetfmError(f"--workers must be >= 1, got {args.workers}")
    check_output_file(args.out, overwrite=args.overwrite)
    from detfm.sim.simulate import SimConfig, simulate_to_file

    cfg = SimConfig(events=args.events, seed=args.seed, mix="gun" if args.gun else args.mix,
                    gun=args.gun, detector=args.detector, anomaly=args.anomaly)
    report = simulate_to_file(cfg, args.out, workers=args.workers, progress=not args.quiet)
    print(f"wrote {report.events} events ({report.points} points) to {report.path} "
          f"in {report.seconds:.1f} s ({report.events_per_second:.1f} events/s)")
    print(f"content sha256 {report.content_sha256}")
    return 0

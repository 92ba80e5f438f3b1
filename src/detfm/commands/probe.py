"""`detfm probe`: a linear probe of a pretrained backbone against the same architecture at random."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm probe``."""
    p = sub.add_parser("probe", help="linear probe of a pretrained backbone vs a random one",
                       description="Fit a linear per-point semantic classifier on frozen features of the "
                                   "run's backbone and of the same architecture randomly initialised; "
                                   "write probe.json, probe.txt and PCA pictures of the features.")
    p.add_argument("--backbone", required=True, metavar="RUN_DIR", help="a pretraining run directory")
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="labeled event files")
    p.add_argument("--train-events", type=int, default=200, help="events to fit the probe on (default 200)")
    p.add_argument("--test-events", type=int, default=500, help="events to score, all points (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier probe in --out")
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> int:
    from detfm.recipes.probe_study import probe_study
    from detfm.io import check_output_dir

    check_output_dir(args.out, overwrite=args.overwrite, outputs=("probe.json", "probe.txt"))
    study = probe_study(args.backbone, args.data, args.out, train_events=args.train_events,
                        test_events=args.test_events, seed=args.seed)
    print(study.format())
    print(f"wrote {args.out}/probe.json")
    return 0

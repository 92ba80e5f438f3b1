"""`detfm evaluate`: a fine-tuned segmentation or particle-finding model under detector
variations (systematics)."""

from __future__ import annotations

import argparse

from detfm.commands.views import add_views_options
from detfm.errors import DetfmError

DEFAULT_VARIATIONS = "escale_up,escale_down,short_lifetime,noisy,dead_regions"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm evaluate``."""
    p = sub.add_parser(
        "evaluate", help="systematics: score a model on nominal events and their detector twins",
        description="Score a fine-tuned segmentation (semseg) or particle-finding (particles) model on the "
                    "events of --data and on the same events rendered through shifted detector models (twins): "
                    "every metric with a 68 % bootstrap interval over events, the paired shift from nominal and "
                    "the fraction of voxels whose predicted class flips; for semseg also calibration (ECE "
                    "before/after temperature scaling) and conformal coverage; for particles finding efficiency "
                    "and purity, panoptic quality, electron/photon efficiency and purity and the energy bias and "
                    "resolution. Twins of a file made by `detfm simulate` are re-simulated (cached in OUT/twins); "
                    "other files need --twins NAME=FILE. Writes OUT/report.json, report.txt and pictures.")
    p.add_argument("--model", required=True, metavar="RUN_DIR",
                   help="a run directory of `detfm finetune` (task semseg or particles)")
    p.add_argument("--data", required=True, metavar="NOMINAL.h5", help="labeled nominal event file")
    p.add_argument("--variations", default=None, metavar="NAME,...",
                   help=f"detector models to compare with nominal (default {DEFAULT_VARIATIONS}, or only "
                        f"the --twins names when twins are given; see `detfm simulate --list-detectors`)")
    p.add_argument("--twins", nargs="+", default=[], metavar="NAME=FILE",
                   help="twin files of --data under variation NAME (same events, same order); any name")
    p.add_argument("--max-events", type=int, help="use at most this many events")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default 200)")
    p.add_argument("--alpha", type=float, default=0.1,
                   help="conformal miscoverage (default 0.1: 90 %% sets; semseg only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the calibration split")
    add_views_options(p, "semseg runs")
    p.add_argument("--workers", type=int, default=1, help="worker processes to simulate twins (default 1)")
    p.add_argument("--batch-size", type=int, default=8, help="events per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the results of an earlier evaluation in --out (simulated twins are reused)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_evaluate)


def parse_twins(items: list[str]) -> dict[str, str]:
    """``["NAME=FILE", ...]`` as a mapping; one clear error for a malformed or repeated item."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise DetfmError(f"--twins takes NAME=FILE, got {item!r}")
        if name.strip() in out:
            raise DetfmError(f"--twins: '{name.strip()}' given twice")
        out[name.strip()] = path.strip()
    return out


def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detfm.commands.device import check_device
    from detfm.recipes.systematics import evaluate_systematics, format_systematics
    from detfm.io import check_output_dir

    if args.bootstrap < 2:
        raise DetfmError(f"--bootstrap must be >= 2, got {args.bootstrap}")
    if args.workers < 1:
        raise DetfmError(f"--workers must be >= 1, got {args.workers}")
    if not Path(args.data).is_file():
        raise DetfmError(f"{args.data}: no such file")
    if not Path(args.model).is_dir():
        raise DetfmError(f"{args.model}: no such run directory")
    check_output_dir(args.out, overwrite=args.overwrite, outputs=("report.json", "report.txt"))
    check_device(args.device)
    twins = parse_twins(args.twins)
    if args.variations is not None:
        variations = [v.strip() for v in args.variations.split(",") if v.strip()]
    else:
        variations = [] if twins else DEFAULT_VARIATIONS.split(",")
    report = evaluate_systematics(args.model, args.data, variations, args.out, twin_files=twins,
                                  max_events=args.max_events, n_boot=args.bootstrap, seed=args.seed,
                                  alpha=args.alpha, workers=args.workers, batch_size=args.batch_size,
                                  device=args.device, progress=not args.quiet, views=args.views,
                                  view_seed=args.view_seed)
    print(format_systematics(report))
    print(f"wrote {Path(args.out) / 'report.json'}")
    return 0

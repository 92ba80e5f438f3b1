"""`detfm pid-trees`: fit particle ID by boosted trees on a semseg run's labeled events."""

from __future__ import annotations

import argparse

from detfm.errors import DetfmError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm pid-trees``."""
    p = sub.add_parser(
        "pid-trees", help="fit particle ID by boosted trees on a semseg run (then: detfm score --pid-trees)",
        description="Run the segmentation model of a `detfm finetune --task semseg` run on its labeled training "
                    "events and describe every truth particle instance by the mean and maximum of its points' "
                    "backbone features, the mean of their class probabilities and its measurements (dE/dx at its "
                    "ends, pieces, contact, shape); fit gradient-boosted trees (scikit-learn: pip install "
                    "'detfm[trees]') to the particles' PID. Writes pid_trees.safetensors and pid_trees.json into the "
                    "run directory; `detfm score --pid-trees` scores particle ID on the run's test split. No test "
                    "event is read.")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a semseg run directory of `detfm finetune`")
    p.add_argument("--data", metavar="FILE", help="the run's data file where it lives now (default: as in its config)")
    p.add_argument("--views", type=int, default=1,
                   help="orientations of each labeled event, each giving rows of its own (default 1)")
    p.add_argument("--view-seed", type=int, default=0, help="seed of the orientations (default 0)")
    p.add_argument("--working-point", metavar="CLASS",
                   help="a PID class (e.g. electron) whose score cut is set where its efficiency and purity are "
                        "closest to equal, on held-out folds of the labeled events (default: no cut)")
    p.add_argument("--folds", type=int, default=5, help="folds for --working-point (default 5)")
    p.add_argument("--iterations", type=int, default=400, help="boosting rounds (default 400)")
    p.add_argument("--learning-rate", type=float, default=0.05, help="shrinkage of each round (default 0.05)")
    p.add_argument("--leaves", type=int, default=31, help="leaves per tree at most (default 31)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fit and of the folds (default 0)")
    p.add_argument("--batch-size", type=int, help="events per forward pass (default: the run's eval_batch_size)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace the run's trees if it has them")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_pid_trees)


def _pid_trees(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detfm.commands.device import check_device
    from detfm.engine.runs import PID_TREES_FILE
    from detfm.evaluate.boosted_trees import TreeSettings
    from detfm.recipes.particle_trees import fit_pid_trees_run

    run = Path(args.model)
    if not run.is_dir():
        raise DetfmError(f"{run}: no such run directory")
    if (run / PID_TREES_FILE).exists() and not args.overwrite:
        raise DetfmError(f"{run / PID_TREES_FILE} exists; pass --overwrite to fit them again")
    for name in ("views", "iterations"):
        if getattr(args, name) < 1:
            raise DetfmError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.folds < 2:
        raise DetfmError(f"--folds must be >= 2, got {args.folds}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DetfmError(f"--batch-size must be >= 1, got {args.batch_size}")
    settings = TreeSettings(iterations=args.iterations, learning_rate=args.learning_rate, leaves=args.leaves,
                            seed=args.seed)
    check_device(args.device)
    info = fit_pid_trees_run(run, args.data, views=args.views, view_seed=args.view_seed, settings=settings,
                             working_point=args.working_point, folds=args.folds, batch_size=args.batch_size,
                             device=args.device, progress=not args.quiet)
    counts = ", ".join(f"{k} {v}" for k, v in info["fitted_particles"].items())
    print(f"fitted on {info['labeled_events']} labeled events, {info['views']} view(s): {counts}")
    point = info["working_point"]
    if point:
        held = point["held_out"]["per_class"][point["class"]]
        print(f"working point: {point['class']} offset {point['offset']:+.2f} (held-out folds: efficiency "
              f"{held['efficiency']}, purity {held['purity']}; macro-F1 {point['held_out']['macro_f1']})")
    print(f"wrote {run / PID_TREES_FILE} in {info['seconds']} s; score the test split with: detfm score --model "
          f"{run} --pid-trees")
    return 0

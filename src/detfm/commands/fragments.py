"""`detfm fragments`: fit a semseg run's fragment classifier on its own labeled events."""

from __future__ import annotations

import argparse

from detfm.errors import DetfmError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm fragments``."""
    p = sub.add_parser(
        "fragments", help="fit a semseg run's fragment classifier (then: detfm score --fragment-classifier)",
        description="Run the segmentation model of a `detfm finetune --task semseg` run on its labeled training "
                    "events, form the connected fragments of the points it calls shower, Michel or delta (and, "
                    "separately, track), and fit a small classifier that names each fragment from its size, "
                    "energy, shape, mean class probabilities and contact with the other points. Writes "
                    "fragment_classifier.safetensors and fragment_classifier.json into the run directory; "
                    "`detfm score` and `detfm predict` apply it with --fragment-classifier. No test event is read.")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a semseg run directory of `detfm finetune`")
    p.add_argument("--data", metavar="FILE", help="the run's data file where it lives now (default: as in its config)")
    p.add_argument("--views", type=int, default=1,
                   help="orientations averaged before the fragments are formed (default 1); score with the same")
    p.add_argument("--view-seed", type=int, default=0, help="seed of the orientations (default 0)")
    p.add_argument("--epochs", type=int, default=400, help="full-batch passes of each classifier (default 400)")
    p.add_argument("--seed", type=int, default=0, help="seed of the classifiers (default 0)")
    p.add_argument("--point-refiner", action="store_true",
                   help="then also fit a per-point refiner on the neighbourhood of every labeled point (applied "
                        "after the fragments by --fragment-classifier)")
    p.add_argument("--point-epochs", type=int, default=8, help="passes of the point refiner's fit (default 8)")
    p.add_argument("--point-rounds", type=int, default=None,
                   help="point refiners fitted in turn, each on the calls of the one before (default "
                        "detfm.evaluate.point_refiner.DEFAULT_ROUNDS, 2)")
    p.add_argument("--point-cells", metavar="SIZES", default=None,
                   help="cell sizes in voxels of the refiner's box neighbourhoods, comma-separated, or 'none' (default "
                        "detfm.evaluate.point_refiner.DEFAULT_CELLS); a box of 3 x 3 x 3 cells reaches across gaps")
    p.add_argument("--batch-size", type=int, help="events per forward pass (default: the run's eval_batch_size)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace the run's fragment classifier if it has one")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_fragments)


def _fragments(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detfm.commands.device import check_device
    from detfm.engine.runs import FRAGMENT_CLASSIFIER_FILE
    from detfm.evaluate.point_refiner import DEFAULT_CELLS, DEFAULT_ROUNDS
    from detfm.recipes.fragments import fit_fragment_run

    run = Path(args.model)
    if not run.is_dir():
        raise DetfmError(f"{run}: no such run directory")
    if (run / FRAGMENT_CLASSIFIER_FILE).exists() and not args.overwrite:
        raise DetfmError(f"{run / FRAGMENT_CLASSIFIER_FILE} exists; pass --overwrite to fit it again")
    if args.point_rounds is None:
        args.point_rounds = DEFAULT_ROUNDS
    cells = DEFAULT_CELLS if args.point_cells is None else _cell_sizes(args.point_cells)
    for name in ("views", "epochs", "point_epochs", "point_rounds"):
        if getattr(args, name) < 1:
            raise DetfmError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 1:
        raise DetfmError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_device(args.device)
    info = fit_fragment_run(run, args.data, views=args.views, view_seed=args.view_seed, batch_size=args.batch_size,
                            epochs=args.epochs, seed=args.seed, point_refiner=args.point_refiner,
                            point_epochs=args.point_epochs, point_rounds=args.point_rounds, cells=cells,
                            device=args.device, progress=not args.quiet)
    for side in info["sides"]:
        counts = ", ".join(f"{k} {v}" for k, v in side["fitted_fragments"].items())
        print(f"fragments of {', '.join(side['classes'])}: {side['fragments']} in {info['labeled_events']} labeled "
              f"events (by true class: {counts})")
    if info["point_refiner"]:
        refined = info["point_refiner"]
        print(f"point refiner: {refined['rounds']} round(s) fitted on {refined['points']} labeled points")
    before, after = info["labeled_scores"]["before"], info["labeled_scores"]["after"]
    print(f"labeled events, {info['views']} view(s): macro-F1 {before['macro_f1']} -> {after['macro_f1']} "
          f"(the events it was fitted on; score the test split with: detfm score --model {run} "
          f"--views {info['views']} --fragment-classifier)")
    print(f"wrote {run / FRAGMENT_CLASSIFIER_FILE}")
    return 0


def _cell_sizes(text: str) -> tuple[int, ...]:
    """``--point-cells``: '4,8' -> (4, 8); 'none' -> ()."""
    if text.strip().lower() == "none":
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise DetfmError(f"--point-cells takes distinct whole voxel counts >= 1 separated by commas (e.g. 4,8) or "
                         f"'none', got {text!r}")
    return sizes

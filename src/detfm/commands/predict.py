"""`detfm predict`: class probabilities of a fine-tuned model for every event of a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from detfm.commands.device import check_device
from detfm.commands.views import add_fragment_options, add_views_options
from detfm.errors import DetfmError
from detfm.io.outputs import check_output_file


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm predict``."""
    p = sub.add_parser("predict", help="class probabilities from a fine-tuned model (per point, particle or event)",
                       description="Write the model's class probabilities and argmax class for every event of "
                                   "FILE to an HDF5 file, one row per event in file order: per point for a "
                                   "semseg run, per particle instance for a pid run (FILE must then carry the "
                                   "instance labels), one row of class probabilities for an event run.")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a run directory of `detfm finetune`")
    p.add_argument("--data", required=True, metavar="FILE", help="event file (labels not needed)")
    p.add_argument("--out", required=True, help="output HDF5 file, e.g. preds.h5 (written atomically)")
    p.add_argument("--batch-size", type=int, default=8, help="events per forward pass (default 8)")
    add_views_options(p)
    add_fragment_options(p)
    p.add_argument("--pid", metavar="PID_RUN_DIR",
                   help="particles runs: name the particles the decoder finds with this pid run's head")
    p.add_argument("--pid-trees", action="store_true",
                   help="semseg runs: write per-particle PID rows (as a pid run does) from the run's boosted trees "
                        "(`detfm pid-trees`); the data need instance labels")
    p.add_argument("--float32", action="store_true", help="store probabilities as float32 (default float16)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from detfm.recipes.adapt import predict_file

    out, data = Path(args.out), Path(args.data)
    if out.exists() and data.exists() and out.resolve() == data.resolve():
        raise DetfmError(f"{out}: the output would overwrite the input file")
    check_output_file(out, overwrite=args.overwrite)
    check_device(args.device)
    report = predict_file(args.model, args.data, args.out, batch_size=args.batch_size,
                          dtype="float32" if args.float32 else "float16", device=args.device,
                          progress=not args.quiet, views=args.views, view_seed=args.view_seed, pid_run=args.pid,
                          fragment_vote=args.fragment_vote,
                          fragment_classifier=args.fragment_classifier, pid_trees=args.pid_trees)
    print(f"wrote predictions for {report.events} events ({report.points} points) to {report.path} "
          f"in {report.seconds:.1f} s ({report.events_per_second:.1f} events/s)")
    return 0

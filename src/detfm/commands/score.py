"""`detfm score`: score a fine-tuned run again, on its own test split or on other labeled events."""

from __future__ import annotations

import argparse

from detfm.commands.views import add_fragment_options, add_views_options
from detfm.errors import DetfmError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm score``."""
    p = sub.add_parser(
        "score", help="score a fine-tuned run again (its test split or other labeled files)",
        description="Score the model of a `detfm finetune` run as the run scored it (eval.json): on the test "
                    "events of its split (default; the run's data files must be where the run read them, or "
                    "pass them with --data and --own-split) or on every usable event of labeled --data files. "
                    "--views N averages the class probabilities over N orientations of each event; --fragment-vote "
                    "gives each connected fragment of shower-like points one class; --fragment-classifier names "
                    "each fragment with the run's fitted fragment classifier (`detfm fragments`).")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a run directory of `detfm finetune`")
    p.add_argument("--data", nargs="+", metavar="FILE",
                   help="labeled event files to score (default: the run's own files and test split)")
    p.add_argument("--own-split", action="store_true",
                   help="with --data: the files are the run's own (moved); score the run's test events in them")
    add_views_options(p)
    add_fragment_options(p)
    p.add_argument("--pid", metavar="PID_RUN_DIR",
                   help="particles runs: name the particles the decoder finds with this pid run's head "
                        "(trained on truth instances) instead of the decoder's class head")
    p.add_argument("--pid-trees", action="store_true",
                   help="semseg runs: score particle ID on truth instances with the run's boosted trees "
                        "(`detfm pid-trees`); the scores are a pid task's")
    p.add_argument("--max-events", type=int, help="score only the first this many events")
    p.add_argument("--batch-size", type=int, help="events per forward pass (default: the run's eval_batch_size)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--out", metavar="SCORES.json", help="also write the scores to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from detfm.commands.device import check_device
    from detfm.commands.finetune import score_lines
    from detfm.io import atomic_write_text
    from detfm.io.outputs import check_output_file
    from detfm.recipes.adapt import score_run

    if not Path(args.model).is_dir():
        raise DetfmError(f"{args.model}: no such run directory")
    if args.own_split and not args.data:
        raise DetfmError("--own-split needs --data FILE... (the run's files where they are now)")
    if args.batch_size is not None and args.batch_size < 1:
        raise DetfmError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out:
        check_output_file(Path(args.out), overwrite=args.overwrite)
    check_device(args.device)
    scores = score_run(args.model, args.data, own_split=args.own_split, views=args.views,
                       view_seed=args.view_seed, max_events=args.max_events, batch_size=args.batch_size,
                       device=args.device, progress=not args.quiet, pid_run=args.pid,
                       fragment_vote=args.fragment_vote,
                       fragment_classifier=args.fragment_classifier, pid_trees=args.pid_trees)
    for line in score_lines(scores["task"], scores):
        print(line)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(scores, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0

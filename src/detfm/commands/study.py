"""`detfm study`: studies made of many fine-tuning runs (label efficiency, sim-to-data); each resumes."""

from __future__ import annotations

import argparse
import sys

from detfm.commands.seeds import add_seeds_option, parse_seeds
from detfm.tasks.registry import list_tasks
from detfm.errors import DetfmError
from detfm.io.outputs import check_output_dir


def _int_list(text: str) -> list[int]:
    """``"10,100,1000"`` -> [10, 100, 1000] (argparse type; spaces allowed after commas)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm study STUDY``."""
    from detfm.commands.sim_to_data import add_sim_to_data_arguments, run_sim_to_data_from_args

    study = sub.add_parser("study", help="studies made of many fine-tuning runs (label efficiency, sim-to-data)",
                           description="Studies made of many runs; each resumes where it stopped.")
    studies = study.add_subparsers(dest="study", metavar="STUDY")
    study.set_defaults(func=lambda args: _missing_subcommand(study))
    q = studies.add_parser("sim-to-data", help="does pretraining on unlabeled 'data' close the sim-to-data gap?",
                           description="A: scratch on labeled nominal simulation; B: pretrained on unlabeled "
                                       "events of a shifted detector ('data'), fine-tuned on the same labels. "
                                       "Both scored on nominal and on the 'data' twins of the test events; "
                                       "writes OUT/results.json with the gaps over seeds.")
    add_sim_to_data_arguments(q)
    q.set_defaults(func=run_sim_to_data_from_args)
    p = studies.add_parser("label-efficiency", help="pretrained vs scratch over label counts, modes and seeds",
                           description="Adapt a pretrained backbone and the same architecture from scratch at "
                                       "several label counts, modes and seeds; write OUT/results.json, "
                                       "OUT/results.txt (mean ± std over seeds) and OUT/label_efficiency.png. "
                                       "Finished points are not rerun.")
    p.add_argument("--backbone", metavar="RUN_DIR|scratch", help="a pretraining run, or 'scratch' (required)")
    p.add_argument("--model", help="with --backbone scratch: the architecture (default: the --config's model), "
                                   "e.g. uresnet_micro for a sparse-conv U-Net baseline")
    p.add_argument("--data", nargs="+", metavar="FILE", help="labeled event files (required)")
    p.add_argument("--labels", nargs="+", type=_int_list, metavar="N[,N...]",
                   help="label counts, e.g. 10,100,1000,10000 (required)")
    add_seeds_option(p, default="3", what="fine-tuning seeds per point")
    p.add_argument("--task", choices=list_tasks(), default=None,
                   help="what the adapted model does (default: the --config's task, else semseg)")
    p.add_argument("--modes", "--mode", dest="modes", type=lambda t: [m.strip() for m in t.split(",") if m.strip()],
                   default=None, metavar="MODE[,MODE...]",
                   help="adaptation modes among probe, head, finetune, lora (default finetune)")
    p.add_argument("--steps", type=int, help="optimiser steps per run")
    p.add_argument("--batch-size", type=int, help="events per step (capped at the label count)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline")
    p.add_argument("--config", help="YAML FinetuneConfig for everything else")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--collect", action="store_true",
                   help="train nothing: rebuild results.json, the table and the plot from the finished runs in --out")
    p.add_argument("--combine", nargs="+", metavar="[NAME=]DIR",
                   help="train nothing: one table and plot in --out from the finished runs of several study "
                        "directories; NAME labels a directory's pretrained runs (default: the pretraining run's "
                        "name), scratch runs are labelled by their model, e.g. --combine distill=runs/le "
                        "mpm=runs/le_mpm runs/le_uresnet")
    p.add_argument("--out", required=True, help="study directory")
    p.set_defaults(func=_label_efficiency)


def _named_dir(text: str) -> tuple[str | None, str]:
    """``"distill=runs/le"`` -> ("distill", "runs/le"); ``"runs/le"`` -> (None, "runs/le")."""
    name, sep, directory = text.partition("=")
    if not sep:
        return None, text
    if not name.strip() or not directory.strip():
        raise DetfmError(f"--combine: expected NAME=DIR or DIR, got {text!r}")
    return name.strip(), directory.strip()


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    raise DetfmError("choose a study, e.g. `detfm study label-efficiency --help`")


def _label_efficiency(args: argparse.Namespace) -> int:
    import dataclasses

    from detfm.engine import load_config
    from detfm.recipes.adapt import FinetuneConfig
    from detfm.recipes.label_efficiency import (collect_label_efficiency, combine_label_efficiency,
                                                label_efficiency_study)

    if args.collect and args.combine:
        raise DetfmError("study label-efficiency: --collect (one directory) and --combine (several) exclude each other")
    check_output_dir(args.out, overwrite=True)  # a study resumes: finished points are kept
    if args.collect or args.combine:
        study = (combine_label_efficiency([_named_dir(text) for text in args.combine], args.out) if args.combine
                 else collect_label_efficiency(args.out))
        print(study.format())
        print(f"wrote {args.out}/results.json and {args.out}/label_efficiency.png")
        return 0
    missing = [f"--{name}" for name in ("backbone", "data", "labels") if not getattr(args, name)]
    if missing:
        raise DetfmError(f"study label-efficiency: {', '.join(missing)} required (or --collect to summarise "
                         f"finished runs)")
    labels = [n for group in args.labels for n in group]
    if not labels:
        raise DetfmError("study: --labels needs at least one count, e.g. --labels 10,100,1000")
    cfg = load_config(FinetuneConfig, args.config) if args.config else FinetuneConfig()
    if args.model:
        if args.backbone != "scratch":
            raise DetfmError("study label-efficiency: --model chooses the architecture of --backbone scratch only "
                             "(a pretrained backbone brings its own)")
        from detfm.commands.finetune import _overrides_for

        cfg = dataclasses.replace(cfg, model=args.model,
                                  model_overrides=_overrides_for(args.model, cfg.model_overrides))
    modes = args.modes or [cfg.mode]
    train_over = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr))
                  if v is not None}
    cfg = dataclasses.replace(cfg, backbone=args.backbone, task=args.task or cfg.task, mode=modes[0],
                              labels=min(labels), data=dataclasses.replace(cfg.data, paths=tuple(args.data)),
                              train=dataclasses.replace(cfg.train, progress=False, **train_over))
    study = label_efficiency_study(cfg, labels, parse_seeds(args.seeds), args.out, modes=modes,
                                   scratch_baseline=not args.no_scratch, progress=not args.quiet)
    print(study.format())
    print(f"wrote {args.out}/results.json and {args.out}/label_efficiency.png")
    return 0

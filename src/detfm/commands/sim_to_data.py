"""``detfm study sim-to-data``: its options and the run from parsed arguments."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from detfm.commands.seeds import add_seeds_option, parse_seeds
from detfm.errors import DetfmError
from detfm.recipes.sim_to_data import format_sim_to_data, sim_to_data_study

def add_sim_to_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``detfm study sim-to-data`` (added to ``parser``)."""
    parser.add_argument("--data", required=True, metavar="NOMINAL.h5",
                        help="labeled nominal events made by `detfm simulate`")
    parser.add_argument("--out", required=True, metavar="DIR", help="study directory (resumable)")
    parser.add_argument("--data-detector", default="data_like", help="detector model of the 'data' (default data_like)")
    add_seeds_option(parser, default="3", what="fine-tuning seeds of A and B (3 or more for the goal)")
    parser.add_argument("--pretrain-config", metavar="YAML", help="PretrainConfig for pretraining on the data events")
    parser.add_argument("--pretrain-run", metavar="RUN_DIR", help="reuse this pretraining run instead")
    parser.add_argument("--pretrain-steps", type=int, help="pretraining steps (overrides the config)")
    parser.add_argument("--unlabeled-events", type=int, default=1000,
                        help="unlabeled data events to pretrain on (default 1000)")
    parser.add_argument("--finetune-config", metavar="YAML", help="FinetuneConfig shared by A and B")
    parser.add_argument("--labels", type=int, help="labeled nominal training events")
    parser.add_argument("--mode", choices=["probe", "head", "finetune", "lora"], help="what trains in A and B")
    parser.add_argument("--b-mode", choices=["probe", "head", "finetune", "lora"],
                        help="adapt B this way instead (A keeps --mode); results go to results.<mode>.json")
    parser.add_argument("--steps", type=int, help="fine-tuning steps per run")
    parser.add_argument("--batch-size", type=int, help="fine-tuning events per step (capped at --labels)")
    parser.add_argument("--workers", type=int, default=1, help="simulation worker processes (default 1)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run_sim_to_data_from_args(args: argparse.Namespace) -> int:
    """Run the study from parsed :func:`add_sim_to_data_arguments` options; print the table."""
    from detfm.recipes.adapt import FinetuneConfig
    from detfm.engine import load_config
    from detfm.recipes.pretrain import PretrainConfig

    if args.pretrain_config and args.pretrain_run:
        raise DetfmError("sim-to-data: give --pretrain-config or --pretrain-run, not both")
    pre_cfg = load_config(PretrainConfig, args.pretrain_config) if args.pretrain_config else PretrainConfig()
    if args.pretrain_steps is not None:
        pre_cfg = dataclasses.replace(pre_cfg, train=dataclasses.replace(pre_cfg.train, steps=args.pretrain_steps))
    if args.quiet:
        pre_cfg = dataclasses.replace(pre_cfg, train=dataclasses.replace(pre_cfg.train, progress=False))
    base = load_config(FinetuneConfig, args.finetune_config) if args.finetune_config else FinetuneConfig()
    top = {k: v for k, v in (("labels", args.labels), ("mode", args.mode)) if v is not None}
    base = dataclasses.replace(base, **top)
    train_over: dict[str, Any] = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size))
                                  if v is not None}
    train_over["batch_size"] = max(1, min(train_over.get("batch_size", base.train.batch_size), base.labels))
    if args.quiet:
        train_over["progress"] = False
    base = dataclasses.replace(base, train=dataclasses.replace(base.train, **train_over))
    results = sim_to_data_study(pre_cfg, base, args.data, args.out, data_detector=args.data_detector,
                                seeds=parse_seeds(args.seeds), unlabeled_events=args.unlabeled_events,
                                pretrain_run=args.pretrain_run, b_mode=args.b_mode, workers=args.workers,
                                progress=not args.quiet)
    print(format_sim_to_data(results))
    print(f"wrote {Path(args.out) / (f'results.{args.b_mode}.json' if args.b_mode else 'results.json')}")
    return 0

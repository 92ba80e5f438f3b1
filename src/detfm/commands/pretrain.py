"""`detfm pretrain`: pretrain a backbone on unlabeled events (masked modeling or self-distillation)."""

from __future__ import annotations

import argparse

from detfm.commands.configfile import add_time_limit_option, starting_config, time_limit_seconds
from detfm.commands.tracking import add_tracking_options, check_tracking, log_tracking
from detfm.errors import DetfmError
from detfm.io.outputs import check_output_dir
from detfm.tasks.registry import get_objective, list_objectives


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm pretrain``."""
    p = sub.add_parser("pretrain", help="pretrain a backbone on unlabeled events",
                       description="Pretrain a backbone on unlabeled events: masked point modeling with "
                                   "energy infilling (--objective mpm, the default) or point-level "
                                   "self-distillation (--objective distill, point-resolution backbones such "
                                   "as ptv3_micro). Flags override --config; the resolved config is "
                                   "saved as OUT/config.yaml. Multi-GPU/CPU: launch the same command with "
                                   "`torchrun --nproc_per_node N -m detfm.cli pretrain ...`.")
    p.add_argument("--data", nargs="+", metavar="FILE", help="event files (PILArNet-M layout)")
    p.add_argument("--model", help="backbone name (default pointmae_tiny; see --list-models)")
    p.add_argument("--objective", choices=list_objectives(),
                   help="; ".join(f"{o}: {get_objective(o).description}" for o in list_objectives()))
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int, help="events per step (global, over all processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="seed of data order, masking and initialisation")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    add_time_limit_option(p)
    p.add_argument("--out", help="run directory, e.g. runs/NAME")
    p.add_argument("--config", help="YAML config (as written to a run's config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_tracking_options(p)
    p.add_argument("--list-models", action="store_true", help="list the registered backbones and exit")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from detfm.models import list_models, model_description
    from detfm.recipes.pretrain import PretrainConfig, load_run_config, run_pretrain

    if args.list_models:
        for name in list_models():
            print(f"{name:18s} {model_description(name)}")
        return 0
    if not args.out:
        raise DetfmError("pretrain: --out RUN_DIR is required")
    check_output_dir(args.out, overwrite=True)  # a run folder we can write; a finished run is refused later
    cfg = starting_config(PretrainConfig, args.config, args.resume, args.out, load_run_config)
    train_over = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                    ("seed", args.seed), ("num_workers", args.num_workers)) if v is not None}
    train_over.update(time_limit_seconds(args))
    if args.objective:
        cfg = dataclasses.replace(cfg, objective=args.objective)
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, seed=args.seed),
                                  distill=dataclasses.replace(cfg.distill, seed=args.seed))
    if args.steps is not None:  # the self-distillation schedules span the run
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, schedule_steps=args.steps))
    cfg = dataclasses.replace(
        cfg, model=args.model or cfg.model,
        data=dataclasses.replace(cfg.data, paths=tuple(args.data)) if args.data else cfg.data,
        train=dataclasses.replace(cfg.train, **train_over))
    check_tracking(args)
    result = run_pretrain(cfg, args.out, resume=args.resume)
    print(f"pretrained {cfg.model} for {result.steps} steps in {result.seconds:.0f} s "
          f"({result.events_per_second:.1f} events/s), final loss {result.final_loss}")
    print(f"objective: {cfg.objective}; run directory: {args.out}")
    if result.stopped_early:
        print(f"stopped by the time limit at step {result.steps} of {cfg.train.steps} (the weights of "
              f"that step are saved); continue with: detfm pretrain --out {args.out} --resume")
    log_tracking(args, args.out)
    return 0

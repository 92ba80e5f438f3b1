"""`detfm finetune`: adapt a backbone to segmentation, particle ID or event classification with few labels."""

from __future__ import annotations

import argparse

from detfm.commands.configfile import add_time_limit_option, starting_config, time_limit_seconds
from detfm.commands.tracking import add_tracking_options, check_tracking, log_tracking
from detfm.tasks.registry import get_task, list_tasks
from detfm.errors import DetfmError
from detfm.io.outputs import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm finetune``."""
    p = sub.add_parser("finetune", help="adapt a backbone to segmentation or particle ID with few labels",
                       description="Train a task head (probe, head), the whole model (finetune) or "
                                   "LoRA updates (lora) on N labeled events drawn from the train split of "
                                   "--data (fixed 80/10/10 split); score the test split into OUT/eval.json. "
                                   "--backbone scratch trains the same architecture from random weights.")
    p.add_argument("--backbone", metavar="RUN_DIR|scratch", help="a pretraining run directory, or 'scratch'")
    p.add_argument("--arch", metavar="RUN_DIR", help="scratch only: copy the architecture of this pretraining run")
    p.add_argument("--model", help="scratch only: backbone name (default pointmae_micro with CPU-sized patches)")
    p.add_argument("--data", nargs="+", metavar="FILE", help="labeled event files (PILArNet-M layout)")
    p.add_argument("--task", choices=list_tasks(),
                   help="; ".join(f"{t}: {get_task(t).description}" for t in list_tasks()) + " (default semseg)")
    p.add_argument("--labels", type=int, help="labeled training events (default 100)")
    p.add_argument("--mode", choices=["probe", "head", "finetune", "lora"], help="what trains (default finetune)")
    p.add_argument("--exclude-low-energy", action="store_true", default=None,
                   help="leave low-energy deposits (class 4) out of the loss")
    p.add_argument("--cache-features", action="store_true", default=None,
                   help="probe/head modes: run the frozen backbone once per training event and keep its "
                        "outputs, so later passes train only the head (turns the random rotation off)")
    p.add_argument("--test-views", type=int,
                   help="score the test split averaging the class probabilities over this many orientations "
                        "of each event (default 1; not for particles)")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int, help="events per step (default min(8, labels))")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="seed of the label draw, head initialisation and data order")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    add_time_limit_option(p)
    p.add_argument("--out", help="run directory, e.g. runs/NAME")
    p.add_argument("--config", help="YAML config (as written to a run's config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_tracking_options(p)
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from detfm.recipes.adapt import FinetuneConfig, load_finetune_config, run_finetune
    from detfm.recipes.pretrain import load_run_config

    if not args.out:
        raise DetfmError("finetune: --out RUN_DIR is required")
    if not (args.backbone or args.config or args.resume):
        raise DetfmError("finetune: --backbone RUN_DIR|scratch is required")
    check_output_dir(args.out, overwrite=True)  # a run folder we can write; a finished run is refused later
    cfg = starting_config(FinetuneConfig, args.config, args.resume, args.out, load_finetune_config)
    top = {k: v for k, v in (("backbone", args.backbone), ("task", args.task), ("labels", args.labels),
                             ("mode", args.mode), ("exclude_low_energy", args.exclude_low_energy),
                             ("cache_features", args.cache_features), ("test_views", args.test_views))
           if v is not None}
    if args.seed is not None:
        top["label_seed"] = None  # the label draw follows --seed
    if args.arch or args.model:
        if (args.backbone or cfg.backbone) != "scratch":
            raise DetfmError("finetune: --arch/--model choose the architecture of --backbone scratch only")
        if args.arch and args.model:
            raise DetfmError("finetune: give --arch RUN_DIR or --model NAME, not both")
        if args.arch:
            run_cfg = load_run_config(args.arch)
            top.update(model=run_cfg.model, model_overrides=dict(run_cfg.model_overrides))
        else:
            top["model"] = args.model
            top["model_overrides"] = _overrides_for(args.model, cfg.model_overrides)
    labels = top.get("labels", cfg.labels)
    train_over = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                    ("seed", args.seed), ("num_workers", args.num_workers)) if v is not None}
    train_over.update(time_limit_seconds(args))
    if args.batch_size is None and not args.config and not args.resume:
        train_over["batch_size"] = max(1, min(cfg.train.batch_size, labels))
    data_over: dict = {"paths": tuple(args.data)} if args.data else {}  # type: ignore[type-arg]
    if args.cache_features:
        data_over["rotate"] = False  # kept features are those of the events as stored
    cfg = dataclasses.replace(cfg, **top, data=dataclasses.replace(cfg.data, **data_over),
                              train=dataclasses.replace(cfg.train, **train_over))
    check_tracking(args)
    result = run_finetune(cfg, args.out, resume=args.resume)
    ev = result.eval
    print(f"{cfg.mode} of {cfg.backbone} on {cfg.labels} labeled events: {result.train.steps} steps in "
          f"{result.train.seconds:.0f} s, final loss {result.train.final_loss}")
    for line in score_lines(cfg.task, ev):
        print(line)
    print(f"run directory: {args.out} (scores in eval.json)")
    if result.train.stopped_early:
        print(f"stopped by the time limit at step {result.train.steps} of {cfg.train.steps}: the scores are "
              f"those of that step's weights; continue with: detfm finetune --out {args.out} --resume")
    log_tracking(args, args.out)
    return 0


def score_lines(task: str, ev: dict) -> list[str]:  # type: ignore[type-arg]
    """The headline scores of a run's ``eval.json`` (or of ``detfm score``), as lines to print."""
    spec = get_task(task)
    views = ev.get("orientation_views")
    lines = [] if not views else [f"class probabilities averaged over {views['views']} orientations of each "
                                  f"event (seed {views['seed']})"]
    if ev.get("fragment_vote"):
        lines.append(f"fragment vote over {', '.join(ev['fragment_vote']['classes'])}: one class per connected "
                     f"fragment")
    if ev.get("fragment_classifier"):
        fc = ev["fragment_classifier"]
        sides = "; ".join(", ".join(side) for side in fc["sides"])
        lines.append(f"fragment classifier (fitted on {fc.get('fitted_views', '?')}-view outputs) names the "
                     f"connected fragments of: {sides}")
        if fc.get("point_refiner"):
            lines.append("point refiner: every point's class refined from its neighbourhood after the fragments")
    trees = (ev.get("scored") or {}).get("pid_trees")
    if trees:
        point = trees.get("working_point")
        lines.append(f"particle ID by the run's boosted trees (fitted on {trees.get('fitted_views', '?')}-view rows"
                     + (f"; {point['class']} offset {point['offset']:+.2f})" if point else ")"))
    if spec.unit == "particle":  # set prediction: finding first, then PID on the found particles
        lines.append(f"test ({ev['events']} events, {ev['particles']} particles): PQ {_fmt(ev['pq'])}, finding "
                     f"efficiency {_fmt(ev['finding']['efficiency_all'])}, purity "
                     f"{_fmt(ev['finding']['purity_all'])}; PID on found particles: macro-F1 {_fmt(ev['macro_f1'])}")
    elif spec.excluded_class is None:
        lines.append(f"test ({ev['events']} events): macro-F1 {_fmt(ev['macro_f1'])}, "
                     f"accuracy {_fmt(ev['accuracy'])}")
    else:
        n = len(spec.class_names)
        lines.append(f"test ({ev['events']} events, {ev['points']} points): macro-F1 {_fmt(ev[f'macro_f1_{n}'])} "
                     f"({n} classes), {_fmt(ev[spec.headline])} (without {spec.class_names[spec.excluded_class]})")
    if isinstance(ev.get("f1"), dict):
        lines.append("F1 per class: " + ", ".join(f"{k} {_fmt(v)}" for k, v in ev["f1"].items()))
    if spec.name == "pid" and isinstance(ev.get("efficiency"), dict) and isinstance(ev.get("purity"), dict):
        lines.append("efficiency / purity: " + ", ".join(
            f"{k} {_fmt(v)} / {_fmt(ev['purity'].get(k))}" for k, v in ev["efficiency"].items()))
    if isinstance(ev.get("per_particle"), dict):
        lines.append("particles tagged (at least half their voxels right): " + ", ".join(
            f"{k} {_fmt(v['tagged'])} of {v['pieces']}" for k, v in ev["per_particle"].items() if v["pieces"]))
    return lines


def _overrides_for(model: str, overrides: dict) -> dict:  # type: ignore[type-arg]
    """The config's architecture overrides that ``model`` has fields for (the CPU-sized patches
    of the default patch transformer mean nothing to a point-resolution backbone). The kept
    ones are checked together, so per-stage lists that change the number of stages stay whole,
    and a set that does not fit the model is an error, not dropped."""
    import dataclasses

    from detfm.models import model_config

    fields = {f.name for f in dataclasses.fields(model_config(model))}  # an unknown name is named here
    kept = {key: value for key, value in overrides.items() if key in fields}
    model_config(model, **kept)
    return kept


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"

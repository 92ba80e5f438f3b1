"""The ``detfm`` command line: argument parsing only; the work happens in the library.

User errors (:class:`detfm.errors.DetfmError`) are printed on one line and exit with
status 2; validation failures exit with status 1; Ctrl-C exits with 130 and leaves no
partial output behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from detfm import __version__
from detfm.commands import anomalies as anomalies_cmd
from detfm.commands import audit as audit_cmd
from detfm.commands import card as card_cmd
from detfm.commands import evaluate as evaluate_cmd
from detfm.commands import registry as registry_cmd
from detfm.commands import report as report_cmd
from detfm.commands.seeds import add_seeds_option, parse_seeds
from detfm.errors import DetfmError

Handler = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- simulate
def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate labeled LArTPC events into an HDF5 file",
                       description="Simulate labeled events (multi-particle vertex + rain by default) "
                                   "and write them in the PILArNet-M layout.")
    p.add_argument("--events", type=int, default=100, help="number of events (default 100)")
    p.add_argument("--out", help="output HDF5 file (written atomically)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same file")
    p.add_argument("--detector", default="nominal", help="detector model (see --list-detectors)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--mix", default="mpvmpr", choices=["mpvmpr", "mpv", "mpr", "gun"],
                   help="event mix: multi-particle vertex + rain (default), either alone, or a particle gun")
    p.add_argument("--gun", metavar="PARTICLE:KINETIC_MEV",
                   help="single particles from the box centre in random directions, e.g. mu-:500")
    p.add_argument("--anomaly", choices=["hsip", "fractional", "displaced_vertex"], default=None,
                   help="inject one rare signature per event: a slow heavily ionising particle, a "
                        "fractionally charged track or a displaced two-track vertex (see docs/anomalies.md)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--list-detectors", action="store_true", help="list the detector models and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detfm.sim.detector import DETECTORS

    if args.list_detectors:
        for name, det in DETECTORS.items():
            print(f"{name}\n    {det.describe()}")
        return 0
    if not args.out:
        raise DetfmError("simulate: --out FILE is required")
    if Path(args.out).exists() and not args.overwrite:
        raise DetfmError(f"{args.out} exists; pass --overwrite to replace it")
    from detfm.sim.simulate import SimConfig, simulate_to_file

    cfg = SimConfig(events=args.events, seed=args.seed, mix="gun" if args.gun else args.mix,
                    gun=args.gun, detector=args.detector, anomaly=args.anomaly)
    report = simulate_to_file(cfg, args.out, workers=args.workers, progress=not args.quiet)
    print(f"wrote {report.events} events ({report.points} points) to {report.path} "
          f"in {report.seconds:.1f} s ({report.events_per_second:.1f} events/s)")
    print(f"content sha256 {report.content_sha256}")
    return 0


# ----------------------------------------------------------------------------- info / validate
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="summarise event files",
                       description="Events, points per event, class fractions and pid counts.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--energy-threshold", type=float, default=0.13,
                   help="drop voxels below this value in MeV before counting (default 0.13)")
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from detfm.data.summary import format_summary, summarize

    print(format_summary(summarize(args.files, energy_threshold=args.energy_threshold)))
    return 0


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check files against the PILArNet-M layout",
                       description="List every layout violation with its event and field; "
                                   "exit status 1 if there is any.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--max", type=int, default=1000, help="stop after this many violations per file")
    p.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    from detfm.io import validate_file

    bad = 0
    for path in args.files:
        violations = validate_file(path, max_violations=args.max)
        for v in violations:
            print(v)
        print(f"{path}: {'OK' if not violations else f'{len(violations)} violation(s)'}")
        bad += len(violations)
    return 1 if bad else 0


# ----------------------------------------------------------------------------- show
def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="draw one event (interactive HTML or PNG)",
                       description="Event display: 3D interactive HTML, or PNG with 2D projections.")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--event", type=int, default=0, help="event index (default 0)")
    p.add_argument("--color", default="semantic", choices=["semantic", "energy", "pid", "instance"])
    p.add_argument("--predictions", metavar="PREDS.h5",
                   help="a `detfm predict` output for FILE: draw the prediction next to the truth")
    p.add_argument("--out", required=True, help="OUT.html or OUT.png")
    p.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    from detfm.evaluate.display import show_file

    out = show_file(args.file, args.event, args.out, color=args.color, predictions=args.predictions)
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- experiment tracking
def _add_tracking(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking", metavar="URI",
                   help="also log the finished run to MLflow, e.g. sqlite:///mlflow.db (needs detfm[mlflow])")
    p.add_argument("--register-as", metavar="NAME", help="with --tracking: register the weights under NAME")


def _check_tracking(args: argparse.Namespace) -> None:
    """Fail before training when --tracking cannot work."""
    if getattr(args, "register_as", None) and not getattr(args, "tracking", None):
        raise DetfmError("--register-as needs --tracking URI")
    if getattr(args, "tracking", None):
        from detfm.audit.tracking import require_mlflow

        require_mlflow()


def _log_tracking(args: argparse.Namespace, run_dir: str) -> None:
    if getattr(args, "tracking", None):
        from detfm.audit.tracking import log_run

        run_id = log_run(args.tracking, run_dir, register_as=args.register_as)
        if run_id:
            print(f"logged to {args.tracking} (MLflow run {run_id})")


# ----------------------------------------------------------------------------- pretrain
def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain a backbone by masked point modeling",
                       description="Pretrain a backbone on unlabeled events (masked point modeling with "
                                   "energy infilling). Flags override --config; the resolved config is "
                                   "saved as OUT/config.yaml. Multi-GPU/CPU: launch the same command with "
                                   "`torchrun --nproc_per_node N -m detfm.cli pretrain ...`.")
    p.add_argument("--data", nargs="+", metavar="FILE", help="event files (PILArNet-M layout)")
    p.add_argument("--model", help="backbone name (default pointmae_tiny; see --list-models)")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int, help="events per step (global, over all processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="seed of data order, masking and initialisation")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    p.add_argument("--out", help="run directory, e.g. runs/NAME")
    p.add_argument("--config", help="YAML config (as written to a run's config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_tracking(p)
    p.add_argument("--list-models", action="store_true", help="list the registered backbones and exit")
    p.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    import dataclasses

    from detfm.engine import load_config
    from detfm.models import list_models, model_description
    from detfm.pretrain import PretrainConfig, load_run_config, run_pretrain

    if args.list_models:
        for name in list_models():
            print(f"{name:18s} {model_description(name)}")
        return 0
    if not args.out:
        raise DetfmError("pretrain: --out RUN_DIR is required")
    if args.config:
        cfg = load_config(PretrainConfig, args.config)
    elif args.resume:
        cfg = load_run_config(args.out)
    else:
        cfg = PretrainConfig()
    train_over = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                    ("seed", args.seed), ("num_workers", args.num_workers)) if v is not None}
    if args.seed is not None:
        cfg = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, seed=args.seed))
    cfg = dataclasses.replace(
        cfg, model=args.model or cfg.model,
        data=dataclasses.replace(cfg.data, paths=tuple(args.data)) if args.data else cfg.data,
        train=dataclasses.replace(cfg.train, **train_over))
    _check_tracking(args)
    result = run_pretrain(cfg, args.out, resume=args.resume)
    print(f"pretrained {cfg.model} for {result.steps} steps in {result.seconds:.0f} s "
          f"({result.events_per_second:.1f} events/s), final loss {result.final_loss}")
    print(f"run directory: {args.out}")
    _log_tracking(args, args.out)
    return 0


# ----------------------------------------------------------------------------- probe
def _add_probe(sub: argparse._SubParsersAction) -> None:
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
    p.set_defaults(func=_probe)


def _probe(args: argparse.Namespace) -> int:
    from detfm.evaluate.probe_study import probe_study

    study = probe_study(args.backbone, args.data, args.out, train_events=args.train_events,
                        test_events=args.test_events, seed=args.seed)
    print(study.format())
    print(f"wrote {args.out}/probe.json")
    return 0


# ----------------------------------------------------------------------------- finetune
def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="adapt a backbone to segmentation or particle ID with few labels",
                       description="Train a task head (probe, head), the whole model (finetune) or "
                                   "LoRA updates (lora) on N labeled events drawn from the train split of "
                                   "--data (fixed 80/10/10 split); score the test split into OUT/eval.json. "
                                   "--backbone scratch trains the same architecture from random weights.")
    p.add_argument("--backbone", metavar="RUN_DIR|scratch", help="a pretraining run directory, or 'scratch'")
    p.add_argument("--arch", metavar="RUN_DIR", help="scratch only: copy the architecture of this pretraining run")
    p.add_argument("--model", help="scratch only: backbone name (default pointmae_micro with CPU-sized patches)")
    p.add_argument("--data", nargs="+", metavar="FILE", help="labeled event files (PILArNet-M layout)")
    p.add_argument("--task", choices=["semseg", "pid", "event"],
                   help="semseg (default): per-point semantic classes; pid: particle ID of each particle "
                        "instance; event: the leading particle's ID, one label per event")
    p.add_argument("--labels", type=int, help="labeled training events (default 100)")
    p.add_argument("--mode", choices=["probe", "head", "finetune", "lora"], help="what trains (default finetune)")
    p.add_argument("--exclude-low-energy", action="store_true", default=None,
                   help="leave low-energy deposits (class 4) out of the loss")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int, help="events per step (default min(8, labels))")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="seed of the label draw, head initialisation and data order")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    p.add_argument("--out", help="run directory, e.g. runs/NAME")
    p.add_argument("--config", help="YAML config (as written to a run's config.yaml)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_tracking(p)
    p.set_defaults(func=_finetune)


def _finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from detfm.adapt import FinetuneConfig, load_finetune_config, run_finetune
    from detfm.engine import load_config
    from detfm.pretrain import load_run_config

    if not args.out:
        raise DetfmError("finetune: --out RUN_DIR is required")
    if not (args.backbone or args.config or args.resume):
        raise DetfmError("finetune: --backbone RUN_DIR|scratch is required")
    if args.config:
        cfg = load_config(FinetuneConfig, args.config)
    elif args.resume:
        cfg = load_finetune_config(args.out)
    else:
        cfg = FinetuneConfig()
    top = {k: v for k, v in (("backbone", args.backbone), ("task", args.task), ("labels", args.labels),
                             ("mode", args.mode), ("exclude_low_energy", args.exclude_low_energy))
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
    labels = top.get("labels", cfg.labels)
    train_over = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr),
                                    ("seed", args.seed), ("num_workers", args.num_workers)) if v is not None}
    if args.batch_size is None and not args.config and not args.resume:
        train_over["batch_size"] = max(1, min(cfg.train.batch_size, labels))
    cfg = dataclasses.replace(
        cfg, **top, data=dataclasses.replace(cfg.data, paths=tuple(args.data)) if args.data else cfg.data,
        train=dataclasses.replace(cfg.train, **train_over))
    _check_tracking(args)
    result = run_finetune(cfg, args.out, resume=args.resume)
    ev = result.eval
    print(f"{cfg.mode} of {cfg.backbone} on {cfg.labels} labeled events: {result.train.steps} steps in "
          f"{result.train.seconds:.0f} s, final loss {result.train.final_loss}")
    if cfg.task == "pid":
        print(f"test ({ev['events']} events, {ev['instances']} particles): macro-F1 {_fmt(ev['macro_f1'])}")
    elif cfg.task == "event":
        print(f"test ({ev['scored_events']} events): macro-F1 {_fmt(ev['macro_f1'])}, "
              f"accuracy {_fmt(ev['accuracy'])}")
    else:
        print(f"test ({ev['events']} events, {ev['points']} points): macro-F1 {_fmt(ev['macro_f1_5'])} "
              f"(5 classes), {_fmt(ev['macro_f1_4'])} (without low-energy)")
    print(f"run directory: {args.out} (scores in eval.json)")
    _log_tracking(args, args.out)
    return 0


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# ----------------------------------------------------------------------------- predict
def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="class probabilities from a fine-tuned model (per point, particle or event)",
                       description="Write the model's class probabilities and argmax class for every event of "
                                   "FILE to an HDF5 file, one row per event in file order: per point for a "
                                   "semseg run, per particle instance for a pid run (FILE must then carry the "
                                   "instance labels), one row of class probabilities for an event run.")
    p.add_argument("--model", required=True, metavar="RUN_DIR", help="a run directory of `detfm finetune`")
    p.add_argument("--data", required=True, metavar="FILE", help="event file (labels not needed)")
    p.add_argument("--out", required=True, help="output HDF5 file, e.g. preds.h5 (written atomically)")
    p.add_argument("--batch-size", type=int, default=8, help="events per forward pass (default 8)")
    p.add_argument("--float32", action="store_true", help="store probabilities as float32 (default float16)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from detfm.adapt import predict_file

    if Path(args.out).exists() and not args.overwrite:
        raise DetfmError(f"{args.out} exists; pass --overwrite to replace it")
    report = predict_file(args.model, args.data, args.out, batch_size=args.batch_size,
                          dtype="float32" if args.float32 else "float16", device=args.device,
                          progress=not args.quiet)
    print(f"wrote predictions for {report.events} events ({report.points} points) to {report.path} "
          f"in {report.seconds:.1f} s ({report.events_per_second:.1f} events/s)")
    return 0


# ----------------------------------------------------------------------------- study
def _int_list(text: str) -> list[int]:
    """``"10,100,1000"`` -> [10, 100, 1000] (argparse type; spaces allowed after commas)."""
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_study(sub: argparse._SubParsersAction) -> None:
    from detfm.sim_to_data import add_sim_to_data_arguments, run_sim_to_data_from_args

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
    p.add_argument("--data", nargs="+", metavar="FILE", help="labeled event files (required)")
    p.add_argument("--labels", nargs="+", type=_int_list, metavar="N[,N...]",
                   help="label counts, e.g. 10,100,1000,10000 (required)")
    add_seeds_option(p, default="3", what="fine-tuning seeds per point")
    p.add_argument("--task", choices=["semseg", "pid", "event"], default="semseg")
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
    p.add_argument("--out", required=True, help="study directory")
    p.set_defaults(func=_study)


def _missing_subcommand(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    raise DetfmError("choose a study, e.g. `detfm study label-efficiency --help`")


def _study(args: argparse.Namespace) -> int:
    import dataclasses

    from detfm.adapt import FinetuneConfig, label_efficiency_study
    from detfm.engine import load_config

    if args.collect:
        from detfm.adapt import collect_label_efficiency

        study = collect_label_efficiency(args.out)
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
    modes = args.modes or [cfg.mode]
    train_over = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size), ("lr", args.lr))
                  if v is not None}
    cfg = dataclasses.replace(cfg, backbone=args.backbone, task=args.task, mode=modes[0],
                              labels=min(labels), data=dataclasses.replace(cfg.data, paths=tuple(args.data)),
                              train=dataclasses.replace(cfg.train, progress=False, **train_over))
    study = label_efficiency_study(cfg, labels, parse_seeds(args.seeds), args.out, modes=modes,
                                   scratch_baseline=not args.no_scratch, progress=not args.quiet)
    print(study.format())
    print(f"wrote {args.out}/results.json and {args.out}/label_efficiency.png")
    return 0


# ----------------------------------------------------------------------------- main
COMMANDS = (_add_simulate, _add_info, _add_validate, _add_show, _add_pretrain, _add_probe, _add_finetune,
            _add_predict, _add_study, evaluate_cmd.add_parser, anomalies_cmd.add_parser, registry_cmd.add_parser,
            card_cmd.add_parser, audit_cmd.add_parser, report_cmd.add_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detfm", description="Foundation models for particle-detector data.")
    parser.add_argument("--version", action="version", version=f"detfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except DetfmError as exc:
        print(f"detfm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"detfm {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

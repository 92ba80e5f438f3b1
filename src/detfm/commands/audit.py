"""`detfm audit`: seed sensitivity of a fine-tuning recipe; diversity of fine-tuned models.

Both write a run manifest, ``OUT/manifest.json``, for the audit as a whole (each replica
of a sensitivity audit has its own in ``OUT/seed_<s>``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from detfm.commands.device import check_device
from detfm.commands.seeds import add_seeds_option, parse_seeds
from detfm.engine.runs import MANIFEST_FILE
from detfm.errors import DetfmError
from detfm.io.outputs import check_output_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm audit sensitivity`` and ``detfm audit diversity``."""
    p = sub.add_parser("audit", help="audits: seed sensitivity, model diversity (correlated failures)",
                       description="sensitivity: retrain one fine-tuning config with several seeds and "
                                   "report the spread of every score and whether conclusions hold for "
                                   "every seed. diversity: do several segmentation models fail on the "
                                   "same points?")
    p.set_defaults(func=_no_audit)
    audits = p.add_subparsers(dest="audit", metavar="AUDIT")
    _add_sensitivity(audits)
    _add_diversity(audits)


def _no_audit(args: argparse.Namespace) -> int:
    raise DetfmError("choose an audit: sensitivity or diversity (see detfm audit --help)")


# ----------------------------------------------------------------------------- sensitivity
def _add_sensitivity(audits: argparse._SubParsersAction) -> None:
    p = audits.add_parser("sensitivity", help="spread of scores and conclusions over training seeds",
                          description="Train the fine-tuning config once per seed (train.seed = 0..S-1) into "
                                      "OUT/seed_<s>, report mean, std, min, max and spread of every score, "
                                      "and check 'pretrained beats scratch' seed by seed. Finished seeds are "
                                      "read, not retrained. Writes OUT/sensitivity.json, OUT/sensitivity.md "
                                      "and OUT/manifest.json.")
    p.add_argument("--config", required=True, help="YAML FinetuneConfig (as a run's config.yaml)")
    add_seeds_option(p, default="5", what="training seeds of the replicas (at least 2)")
    p.add_argument("--out", required=True, help="audit directory")
    p.add_argument("--data", nargs="+", metavar="FILE", help="labeled event files (replace data.paths)")
    p.add_argument("--backbone", metavar="RUN_DIR|scratch", help="replace the config's backbone")
    p.add_argument("--compare-scratch", action=argparse.BooleanOptionalAction, default=None,
                   help="also train the backbone's architecture from scratch with the same seeds and check "
                        "'pretrained beats scratch' per seed (default: on for a pretrained backbone)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_sensitivity)


def _sensitivity(args: argparse.Namespace) -> int:
    import dataclasses

    from detfm.recipes.adapt import FinetuneConfig
    from detfm.engine.manifest import run_inputs, write_manifest
    from detfm.audit.sensitivity import REPORT_FILE, TABLE_FILE, sensitivity_audit
    from detfm.engine import load_config

    started = time.time()
    seeds = parse_seeds(args.seeds)
    check_output_dir(args.out, overwrite=True)  # the audit resumes: finished replicas are kept
    cfg = load_config(FinetuneConfig, args.config)
    if args.data:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, paths=tuple(args.data)))
    if args.backbone:
        cfg = dataclasses.replace(cfg, backbone=args.backbone)
    compare = (not cfg.scratch) if args.compare_scratch is None else args.compare_scratch
    report = sensitivity_audit(cfg, seeds, args.out, compare_scratch=compare, progress=not args.quiet)
    backbone = [] if cfg.scratch else run_inputs(cfg.backbone)
    inputs = [Path(args.config), *(Path(p) for p in cfg.data.paths), *backbone]
    config = {"config": str(args.config), "seeds": seeds, "compare_scratch": compare, "out": str(args.out),
              "finetune": cfg}
    # label seed None: each replica draws its labels with its own train seed
    manifest = write_manifest(
        args.out, inputs=inputs, seeds={"train": seeds, "split": cfg.split_seed, "labels": cfg.label_seed},
        config=config, device=_replica_device(report.runs, cfg.train.device), started=started,
        ended=time.time(), extra={"report": REPORT_FILE, "table": TABLE_FILE, "runs": report.runs})
    print(report.format())
    print(f"wrote {args.out}/{REPORT_FILE}, {args.out}/{TABLE_FILE} and {manifest}")
    return 0


def _replica_device(runs: dict[str, list[str]], configured: str) -> str:
    """Where the replicas ran, from their manifests (several: comma-separated); ``configured``
    (the config's ``train.device``) when no replica manifest names one."""
    from detfm.engine.manifest import read_manifest

    devices: set[str] = set()
    for run in (r for variant in runs.values() for r in variant):
        try:
            device = read_manifest(run).get("device")
        except DetfmError:
            continue  # a replica without a readable manifest names no device
        if isinstance(device, str) and device:
            devices.add(device)
    return ",".join(sorted(devices)) or configured


# ----------------------------------------------------------------------------- diversity
def _add_diversity(audits: argparse._SubParsersAction) -> None:
    p = audits.add_parser("diversity", help="correlated failures of several segmentation models",
                          description="Score fine-tuned semseg models on the same points (the test split of "
                                      "the first model when it split FILE, else all events of FILE) and "
                                      "report per-model scores, pairwise error correlation, Cohen's kappa of "
                                      "errors, disagreement, per-event error correlation and the gain of the "
                                      "ensemble (mean probabilities). Writes OUT/diversity.json, "
                                      "OUT/diversity.png and OUT/manifest.json.")
    p.add_argument("--models", nargs="+", required=True, metavar="RUN_DIR",
                   help="two or more run directories of `detfm finetune --task semseg`")
    p.add_argument("--data", required=True, metavar="FILE", help="labeled event file")
    p.add_argument("--max-events", type=int, help="compare on the first N events only")
    p.add_argument("--batch-size", type=int, default=8, help="events per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier audit in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_diversity)


def _diversity(args: argparse.Namespace) -> int:
    from detfm.recipes.adapt import SPLIT_FILE
    from detfm.audit.diversity import KIND, REPORT_FILE, diversity_audit
    from detfm.engine.manifest import run_inputs, write_manifest

    started = time.time()
    if len(args.models) < 2:
        raise DetfmError(f"a diversity audit needs at least 2 models, got {len(args.models)}")
    check_output_dir(args.out, overwrite=args.overwrite, outputs=(REPORT_FILE, "diversity.png", MANIFEST_FILE))
    check_device(args.device)
    report = diversity_audit(args.models, args.data, max_events=args.max_events, batch_size=args.batch_size,
                             device=args.device, progress=not args.quiet)
    written = report.save(args.out)
    split = Path(args.models[0]) / SPLIT_FILE  # may choose the points (the first model's test split)
    inputs = [*(p for run in args.models for p in run_inputs(run)), *([split] if split.is_file() else []),
              Path(args.data)]
    config = {"models": [str(m) for m in args.models], "data": str(args.data), "max_events": args.max_events,
              "batch_size": args.batch_size, "device": args.device, "out": str(args.out)}
    # scoring the same points with fixed weights draws no random numbers: no seeds
    written.append(write_manifest(args.out, inputs=inputs, seeds={}, config=config,
                                  device=args.device, started=started, ended=time.time(),
                                  extra={"report": REPORT_FILE, "kind": KIND, "events": report.events,
                                         "points": report.points}))
    print(report.format())
    print("wrote " + " and ".join(str(p) for p in written))
    return 0

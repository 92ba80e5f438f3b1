"""`detfm anomalies`: rank the events of a file by anomaly score, or run an anomaly study.

::

    detfm anomalies --model RUN --data FILE --out ranked.csv [--method reconstruction|density|baseline]
                    [--reference NORMAL.h5] [--masks 4] [--seed 0]
    detfm anomalies study --model RUN --normal FILE --anomalous NAME=FILE [NAME=FILE ...]
                    --reference FILE --out DIR

The scores are those of :mod:`detfm.evaluate.anomaly`. The ranking writes a run manifest
beside the CSV (``ranked.csv`` -> ``ranked.manifest.json``, as several lists may share a
folder); the study writes ``DIR/manifest.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from detfm.commands.device import check_device
from detfm.engine.runs import MANIFEST_FILE
from detfm.errors import DetfmError
from detfm.io.outputs import check_output_dir, check_output_file

CSV_COLUMNS = ("rank", "event", "score", "n_points", "total_energy")


def _scoring_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--masks", type=int, default=4, help="random masks per event for 'reconstruction' (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the masks (default 0)")
    p.add_argument("--neighbours", type=int, default=5, help="nearest reference events for 'density' (default 5)")
    p.add_argument("--batch-size", type=int, default=8, help="events per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm anomalies`` and its ``study`` sub-command."""
    p = sub.add_parser(
        "anomalies", help="rank events by anomaly score, or measure how well rare signatures are found",
        description="Score every event of --data with a pretraining run (masked reconstruction error, "
                    "feature density against --reference, or the energy/size baseline) and write them "
                    "ranked, most anomalous first, to --out (CSV), with a run manifest beside it "
                    "(ranked.csv: ranked.manifest.json). 'detfm anomalies study' compares normal and "
                    "anomalous files instead.")
    p.add_argument("--model", metavar="RUN_DIR", help="pretraining run directory")
    p.add_argument("--data", metavar="FILE", help="event file to score")
    p.add_argument("--out", metavar="CSV", help="ranked scores (columns: " + ", ".join(CSV_COLUMNS) + ")")
    p.add_argument("--method", default="reconstruction", choices=["reconstruction", "density", "baseline"],
                   help="score (default reconstruction); density needs --reference")
    p.add_argument("--reference", metavar="NORMAL.h5", help="file of normal events (density, baseline)")
    p.add_argument("--top", type=int, default=10, help="events to print (default 10)")
    _scoring_options(p)
    p.set_defaults(func=_rank)

    nested = p.add_subparsers(dest="anomalies_command", metavar="study", title="optional sub-command")
    s = nested.add_parser(
        "study", help="AUC and efficiency at 1%% false positives for files of rare signatures",
        description="Score a normal file and anomalous files with every method and the baseline, and "
                    "write DIR/anomalies.json (ROC AUC, efficiency at 1% false-positive rate) and "
                    "DIR/scores.npz and DIR/manifest.json.")
    s.add_argument("--model", metavar="RUN_DIR", required=True, help="pretraining run directory")
    s.add_argument("--normal", metavar="FILE", required=True, help="held-out normal events")
    s.add_argument("--anomalous", metavar="NAME=FILE", required=True, nargs="+", action="extend",
                   help="anomalous events, e.g. hsip=hsip.h5 (repeatable)")
    s.add_argument("--reference", metavar="FILE", required=True,
                   help="normal events the density and baseline are fitted on (not --normal)")
    s.add_argument("--out", metavar="DIR", required=True, help="output directory")
    s.add_argument("--methods", default=None,
                   help="comma-separated backbone methods (default: all the run supports, reconstruction,density; "
                        "density alone for a self-distillation run)")
    _scoring_options(s)
    s.set_defaults(func=_study)


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.9g}"


def _rank(args: argparse.Namespace) -> int:
    started = time.time()
    missing = [f"--{name}" for name in ("model", "data", "out") if not getattr(args, name)]
    if missing:
        raise DetfmError(f"anomalies: {', '.join(missing)} required (or use 'detfm anomalies study')")
    if args.top < 0:
        raise DetfmError(f"--top must be >= 0, got {args.top}")
    out, data = Path(args.out), Path(args.data)
    if out.exists() and data.exists() and out.resolve() == data.resolve():
        raise DetfmError(f"{out}: the output would overwrite the input file")
    import numpy as np

    from detfm.evaluate.anomaly import AnomalyScorer, event_summary
    from detfm.io import atomic_write_text

    if args.method == "density" and not args.reference:
        raise DetfmError("method 'density' needs a reference file of normal events (--reference NORMAL.h5)")
    check_output_file(out, overwrite=args.overwrite)
    check_output_file(manifest_path(out), overwrite=args.overwrite)
    check_device(args.device)
    scorer = AnomalyScorer.from_run(args.model, batch_size=args.batch_size, masks=args.masks, seed=args.seed,
                                    neighbours=args.neighbours, device=args.device, progress=not args.quiet)
    scores = scorer.score(data, args.method, args.reference)
    n_points, energy = event_summary(data, scorer.energy_threshold)
    key = np.where(np.isnan(scores), -np.inf, scores)
    order = np.lexsort((np.arange(len(scores)), -key))  # score descending, NaN last, then event
    lines = [",".join(CSV_COLUMNS)]
    for rank, i in enumerate(order, start=1):
        lines.append(f"{rank},{i},{_fmt(float(scores[i]))},{int(n_points[i])},{float(energy[i]):.6g}")
    atomic_write_text(out, "\n".join(lines) + "\n")
    manifest = _rank_manifest(args, out, started)
    print(f"scored {len(scores)} events of {data} ({args.method}); ranked list in {out} (manifest {manifest})")
    print(f"{'rank':>4} {'event':>7} {'score':>12} {'points':>7} {'energy/MeV':>11}")
    for rank, i in enumerate(order[:args.top], start=1):
        print(f"{rank:>4} {i:>7} {_fmt(float(scores[i])):>12} {int(n_points[i]):>7} {float(energy[i]):>11.1f}")
    return 0


def manifest_path(out: Path) -> Path:
    """Where the ranking writes its manifest: ``ranked.csv`` -> ``ranked.manifest.json``."""
    return out.with_suffix(".manifest.json")


def _scoring_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options every scoring command resolves (model, masks, seed, ...), as plain data."""
    return {"model": str(args.model), "masks": args.masks, "seed": args.seed, "neighbours": args.neighbours,
            "batch_size": args.batch_size, "device": args.device}


def _rank_manifest(args: argparse.Namespace, out: Path, started: float) -> Path:
    """Write the ranking's manifest beside ``out``: the run's weights, the scored and reference files."""
    from detfm.engine.manifest import run_inputs, write_manifest

    # the reference is read by the density and baseline scores only
    reference = [Path(args.reference)] if args.reference and args.method != "reconstruction" else []
    config = {**_scoring_config(args), "method": args.method, "data": str(args.data),
              "reference": None if args.reference is None else str(args.reference), "out": str(out)}
    return write_manifest(out.parent, name=manifest_path(out).name,
                          inputs=[*run_inputs(args.model), Path(args.data), *reference],
                          seeds={"masks": args.seed}, config=config, device=args.device, started=started,
                          ended=time.time(), extra={"output": out.name})


def _named_files(items: list[str]) -> dict[str, str]:
    files: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise DetfmError(f"--anomalous '{item}': expected NAME=FILE, e.g. hsip=hsip.h5")
        if name in files:
            raise DetfmError(f"--anomalous: signature '{name}' given twice")
        files[name] = path
    return files


def _study(args: argparse.Namespace) -> int:
    from detfm.engine.manifest import run_inputs, write_manifest
    from detfm.evaluate.anomaly import ANOMALIES_KIND, anomaly_study

    started = time.time()
    files = _named_files(args.anomalous)
    check_output_dir(args.out, overwrite=args.overwrite, outputs=("anomalies.json", "scores.npz", MANIFEST_FILE))
    check_device(args.device)
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    doc = anomaly_study(args.model, args.normal, files, args.reference, args.out, methods=methods,
                        batch_size=args.batch_size, masks=args.masks, seed=args.seed,
                        neighbours=args.neighbours, device=args.device, progress=not args.quiet)
    print(f"{'signature':<20} {'method':<15} {'AUC':>6} {'eff@1%FPR':>10}")
    for name, entry in doc["signatures"].items():
        for method in doc["methods"]:
            r = entry[method]
            print(f"{name:<20} {method:<15} {r['auc']:>6.3f} {r['eff_at_1pct_fpr']:>10.3f}")
    inputs = [*run_inputs(args.model), Path(args.normal), *(Path(p) for p in files.values()), Path(args.reference)]
    config = {**_scoring_config(args), "methods": [m for m in doc["methods"] if m != "baseline"],
              "normal": str(args.normal), "anomalous": files,
              "reference": str(args.reference), "out": str(args.out)}
    manifest = write_manifest(args.out, inputs=inputs, seeds={"masks": args.seed}, config=config,
                              device=args.device, started=started, ended=time.time(),
                              extra={"report": "anomalies.json", "scores": "scores.npz", "kind": ANOMALIES_KIND})
    print(f"wrote {Path(args.out) / 'anomalies.json'} and {manifest}")
    return 0

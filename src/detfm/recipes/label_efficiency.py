"""Label-efficiency studies: the same adaptation at several label counts, modes and seeds.

:func:`label_efficiency_study` runs a grid of :func:`detfm.recipes.adapt.run_finetune` calls
(a pretrained backbone and, as the baseline, the same architecture from scratch) and writes
``results.json``, ``results.txt`` (mean ± std over seeds) and ``label_efficiency.png``.
:func:`collect_label_efficiency` rebuilds those files from the finished runs of a study
directory; :func:`combine_label_efficiency` puts the runs of several study directories (say a
``distill`` and an ``mpm`` backbone, and a second scratch architecture) into one table and
one plot.

Each point is a run directory ``<backbone>_<mode>_n<labels>_s<seed>`` holding ``eval.json``;
a point that has one is read, not retrained, so a study resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from detfm.engine.runs import EVAL_FILE
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.scoring import json_float
from detfm.io import atomic_path, atomic_write_text
from detfm.recipes.adapt import (MODES, SCRATCH, FinetuneConfig, _is_main_process, _labeled_dataset,
                                 load_finetune_config, run_finetune, split_events)
from detfm.recipes.pretrain import load_run_config
from detfm.tasks.registry import get_task

__all__ = ["LabelEfficiencyStudy", "collect_label_efficiency", "combine_label_efficiency",
           "label_efficiency_study"]


@dataclass(frozen=True)
class LabelEfficiencyStudy:
    """Scores of a label-efficiency grid.

    Attributes:
        metric: the headline metric (``macro_f1_4`` for semseg, ``macro_f1`` for pid).
        runs: one entry per (variant, labels, seed): backbone, mode, its run directory and scores.
        summary: ``{variant: {labels: {"mean", "std", "n"}}}`` of the headline metric over
            seeds (std: sample standard deviation, 0 for one seed); a variant is
            ``"<backbone>/<mode>"`` such as ``"pretrained/finetune"`` or ``"scratch/probe"``.
        per_class: ``{variant: {labels: {class: mean F1 over seeds}}}``.
    """

    metric: str
    runs: list[dict[str, Any]]
    summary: dict[str, dict[int, dict[str, float]]]
    per_class: dict[str, dict[int, dict[str, float | None]]]
    out_dir: Path

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "detfm-label-efficiency/1", "metric": self.metric, "runs": self.runs,
                "summary": {name: {str(n): {**v, "mean": json_float(v["mean"])} for n, v in by_n.items()}
                            for name, by_n in self.summary.items()},
                "per_class_f1": {name: {str(n): v for n, v in by_n.items()} for name, by_n in self.per_class.items()}}

    def format(self) -> str:
        """A table: one row per label count, one column per variant, mean ± std over seeds."""
        names = list(self.summary)
        counts = sorted({n for by_n in self.summary.values() for n in by_n})
        width = max(18, *(len(n) for n in names))
        lines = [f"{self.metric} (mean ± std over seeds)",
                 f"{'labels':>8}  " + "  ".join(f"{n:>{width}}" for n in names)]
        for count in counts:
            cells = []
            for name in names:
                v = self.summary[name].get(count)
                cells.append(f"{'n/a':>{width}}" if v is None or v["n"] == 0 else
                             f"{v['mean']:.3f} ± {v['std']:.3f} ({v['n']})".rjust(width))
            lines.append(f"{count:>8}  " + "  ".join(cells))
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str]) -> Path:
        """Headline metric vs number of labeled events (log axis), mean ± std over seeds per variant."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for name, by_n in self.summary.items():
            counts = sorted(n for n, v in by_n.items() if v["n"] > 0)
            if not counts:
                continue
            mean = np.array([by_n[n]["mean"] for n in counts])
            std = np.array([by_n[n]["std"] for n in counts])
            style = "--" if name.startswith("scratch") else "-"
            line, = ax.plot(counts, mean, style, marker="o", label=name)
            ax.fill_between(counts, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xscale("log")
        ax.set_xlabel("labeled training events")
        ax.set_ylabel(self.metric.replace("_", " ") + " (test split)")
        ax.set_title("Label efficiency (band: ±1 std over seeds)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        out = Path(path)
        with atomic_path(out) as tmp:
            fig.savefig(tmp, format=out.suffix.lstrip(".") or "png", dpi=120)
        plt.close(fig)
        return out


STUDY_RESULTS = "results.json"
STUDY_TABLE = "results.txt"
STUDY_PLOT = "label_efficiency.png"


def label_efficiency_study(base: FinetuneConfig, labels: Sequence[int], seeds: Sequence[int],
                           out_dir: str | os.PathLike[str], *, modes: Sequence[str] | None = None,
                           scratch_baseline: bool = True, progress: bool = False) -> LabelEfficiencyStudy:
    """Adapt ``base.backbone`` (and, with ``scratch_baseline``, the same architecture from
    random weights) in every mode of ``modes`` (default: ``base.mode``) at every label count
    and seed; write ``results.json``, ``results.txt`` and ``label_efficiency.png``.

    Each point is one :func:`run_finetune` in ``out_dir/<backbone>_<mode>_n<labels>_s<seed>``
    with ``train.seed = seed`` (label draw, head initialisation, data order) and batch size
    ``min(base batch size, labels)``. A point whose run already holds ``eval.json`` is read,
    not retrained, so an interrupted study continues where it stopped.
    """
    modes = list(dict.fromkeys(modes or [base.mode]))
    if not labels or not seeds:
        raise ConfigError("a label-efficiency study needs at least one label count and one seed")
    if any(n < 1 for n in labels) or any(s < 0 for s in seeds):
        raise ConfigError(f"label counts must be >= 1 and seeds >= 0, got {list(labels)}, {list(seeds)}")
    if unknown := [m for m in modes if m not in MODES]:
        raise ConfigError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    backbones: dict[str, FinetuneConfig] = {}
    if base.scratch:
        backbones["scratch"] = base
    else:
        run_cfg = load_run_config(base.backbone)
        backbones["pretrained"] = base
        if scratch_baseline:
            backbones["scratch"] = dataclasses.replace(base, backbone=SCRATCH, model=run_cfg.model,
                                                       model_overrides=dict(run_cfg.model_overrides))
    # check every label count against the data before the first (long) run starts
    split_events(len(_labeled_dataset(base)), dataclasses.replace(base, labels=max(labels)))
    out = Path(out_dir)
    metric = get_task(base.task).headline
    runs: list[dict[str, Any]] = []
    grid = [(b, m, n, s) for b in backbones for m in modes for n in sorted(set(labels)) for s in seeds]
    for name, mode, count, seed in tqdm(grid, desc="label-efficiency", unit="run", disable=not progress):
        variant = backbones[name]
        cfg = dataclasses.replace(variant, mode=mode, labels=count, label_seed=None,
                                  train=dataclasses.replace(variant.train, seed=seed,
                                                            batch_size=min(variant.train.batch_size, count)))
        run = out / f"{name}_{mode}_n{count}_s{seed}"
        if (run / EVAL_FILE).is_file():
            scores = json.loads((run / EVAL_FILE).read_text(encoding="utf-8"))
        else:
            scores = run_finetune(cfg, run, progress=False).eval
        runs.append({"variant": f"{name}/{mode}", "backbone": name, "mode": mode, "labels": count, "seed": seed,
                     "run": str(run), metric: scores.get(metric), "scores": scores})
    return _finish_study(runs, metric, base.task, out)


def _finish_study(runs: list[dict[str, Any]], metric: str, task: str, out: Path) -> LabelEfficiencyStudy:
    """Summarise finished grid points (mean ± std over seeds, per-class F1) and write the outputs."""
    summary: dict[str, dict[int, dict[str, float]]] = {}
    per_class: dict[str, dict[int, dict[str, float | None]]] = {}
    f1_key = get_task(task).per_class
    for variant_name in dict.fromkeys(r["variant"] for r in runs):
        summary[variant_name], per_class[variant_name] = {}, {}
        for count in sorted({r["labels"] for r in runs if r["variant"] == variant_name}):
            chosen = [r for r in runs if r["variant"] == variant_name and r["labels"] == count]
            values = np.array([r[metric] for r in chosen if r[metric] is not None], dtype=np.float64)
            summary[variant_name][count] = {"mean": float(values.mean()) if values.size else float("nan"),
                                            "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
                                            "n": int(values.size)}
            classes = chosen[0]["scores"].get(f1_key, {}) if chosen else {}
            per_class[variant_name][count] = {
                c: json_float(float(np.mean(v))) if (v := [r["scores"][f1_key][c] for r in chosen
                                                            if r["scores"][f1_key].get(c) is not None]) else None
                for c in classes}
    study = LabelEfficiencyStudy(metric=metric, runs=runs, summary=summary, per_class=per_class, out_dir=out)
    if _is_main_process():
        atomic_write_text(out / STUDY_RESULTS, json.dumps(study.to_dict(), indent=2) + "\n")
        atomic_write_text(out / STUDY_TABLE, study.format() + "\n")
        study.plot(out / STUDY_PLOT)
    return study


_RUN_NAME = re.compile(r"^(?P<backbone>pretrained|scratch)_(?P<mode>[a-z]+)_n(?P<labels>\d+)_s(?P<seed>\d+)$")


def _finished_runs(out: Path) -> tuple[str, list[dict[str, Any]]]:
    """``(task, runs)`` of the finished grid points (``eval.json``) in study directory ``out``."""
    if not out.is_dir():
        raise DetfmError(f"{out}: no such study directory")
    runs: list[dict[str, Any]] = []
    task: str | None = None
    for run in sorted(out.iterdir()):
        match = _RUN_NAME.match(run.name)
        if not match or not (run / EVAL_FILE).is_file():
            continue
        scores = json.loads((run / EVAL_FILE).read_text(encoding="utf-8"))
        if task is not None and scores.get("task") != task:
            raise DetfmError(f"{run}: a '{scores.get('task')}' run in a '{task}' study directory")
        task = scores.get("task", "semseg")
        metric = get_task(task).headline
        runs.append({"variant": f"{match['backbone']}/{match['mode']}", "backbone": match["backbone"],
                     "mode": match["mode"], "labels": int(match["labels"]), "seed": int(match["seed"]),
                     "run": str(run), metric: scores.get(metric), "scores": scores})
    if task is None:
        raise DetfmError(f"{out}: no finished runs (<backbone>_<mode>_n<labels>_s<seed>/eval.json) to collect")
    return task, runs


def collect_label_efficiency(out_dir: str | os.PathLike[str]) -> LabelEfficiencyStudy:
    """Rebuild ``results.json``, the table and the plot of a study directory from its finished
    runs (those with ``eval.json``), without training anything: for grids filled by several
    calls, or by runs made with ``detfm finetune --out DIR/<backbone>_<mode>_n<N>_s<seed>``."""
    out = Path(out_dir)
    task, runs = _finished_runs(out)
    runs.sort(key=lambda r: (r["backbone"] != "pretrained", r["mode"], r["labels"], r["seed"]))
    return _finish_study(runs, get_task(task).headline, task, out)


def combine_label_efficiency(sources: Sequence[tuple[str | None, str | os.PathLike[str]]],
                             out_dir: str | os.PathLike[str]) -> LabelEfficiencyStudy:
    """One table and one plot from the finished runs of several study directories.

    ``sources`` are ``(name, study directory)`` pairs. A directory's pretrained runs become
    the variant ``"<name>/<mode>"`` (``name`` ``None``: the pretraining run's directory
    name); its scratch runs become ``"scratch <model>/<mode>"``, so scratch baselines of
    different architectures stay apart and the same baseline found in two directories is
    caught. Every directory must hold runs of the same task; a (variant, labels, seed) point
    may come from one directory only. The outputs go to ``out_dir``, which must not be one of
    the sources (their own ``results.json`` would be overwritten).
    """
    out = Path(out_dir)
    if not sources:
        raise ConfigError("nothing to combine: give at least one study directory")
    task: str | None = None
    runs: list[dict[str, Any]] = []
    seen: dict[tuple[str, int, int], str] = {}
    for name, directory in sources:
        source = Path(directory)
        if source.resolve() == out.resolve():
            raise ConfigError(f"{source}: the combined study needs its own --out directory, not one of the "
                              f"studies it combines")
        source_task, source_runs = _finished_runs(source)
        if task is not None and source_task != task:
            raise DetfmError(f"{source}: '{source_task}' runs cannot be combined with '{task}' runs")
        task = source_task
        for r in source_runs:
            cfg = load_finetune_config(r["run"])
            if r["backbone"] == "pretrained":
                label = name or Path(str(cfg.backbone)).name
            else:
                label = f"scratch {cfg.model}"
            r = {**r, "variant": f"{label}/{r['mode']}", "source": str(source)}
            key = (r["variant"], r["labels"], r["seed"])
            if key in seen:
                raise DetfmError(f"{r['variant']} at {r['labels']} labels, seed {r['seed']}, is in both {seen[key]} "
                                 f"and {r['run']}; keep one of them (or name the pretrained runs apart: NAME=DIR)")
            seen[key] = r["run"]
            runs.append(r)
    assert task is not None
    order = {variant: i for i, variant in enumerate(dict.fromkeys(r["variant"] for r in runs))}
    runs.sort(key=lambda r: (r["variant"].startswith("scratch "), order[r["variant"]], r["labels"], r["seed"]))
    return _finish_study(runs, get_task(task).headline, task, out)

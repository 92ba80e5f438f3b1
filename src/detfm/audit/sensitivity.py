"""Seed sensitivity: how far scores and conclusions move when only the seed changes.

One fine-tuning configuration is trained S times with ``train.seed = s`` (head
initialisation, data order, and the label draw unless the config fixes ``label_seed``;
a scratch backbone's initialisation too). Every numeric score of the replicas' ``eval.json``
is summarised by its mean, sample standard deviation, min, max and spread (max - min).

With a scratch comparison, the same architecture is trained from random weights with
the same seeds, and each conclusion "pretrained beats scratch on X" is checked seed by
seed: a conclusion that fails for one seed is not a conclusion of the method but of the
seed. X is the headline metric (``macro_f1_4`` for semseg, ``macro_f1`` for pid) and the
F1 of every class.

Layout of the audit directory::

    seed_<s>/            one fine-tuning run per seed (the configuration as given)
    scratch_seed_<s>/    the scratch replicas (with a comparison)
    sensitivity.json     machine-readable report (kind ``detfm-sensitivity/1``)
    sensitivity.md       the same as Markdown tables

A replica whose directory already holds ``eval.json`` is read, not retrained, and an
interrupted one continues from its last checkpoint, so a stopped audit resumes where it
stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detfm.engine.runs import CONFIG_FILE, EVAL_FILE, last_checkpoint
from detfm.recipes.adapt import SCRATCH, FinetuneConfig, load_finetune_config, run_finetune
from detfm.tasks.registry import get_task
from detfm.evaluate import kinds
from detfm.engine.config import hashed_config
from detfm.errors import DetfmError
from detfm.io import atomic_write_text
from detfm.recipes.pretrain import load_run_config

__all__ = [
    "KIND", "Conclusion", "MetricSpread", "SensitivityReport", "aggregate_metrics", "compare_to_scratch",
    "flatten_metrics", "replica_config", "scratch_variant", "sensitivity_audit",
]

KIND = kinds.SENSITIVITY
REPORT_FILE = "sensitivity.json"
TABLE_FILE = "sensitivity.md"

# Top-level numbers of eval.json that describe the run, not the model's quality.
RUN_FIELDS = frozenset({"labels", "events", "points", "instances"})
COUNT_FIELDS = frozenset({"pieces"})  # counts inside a score group (per_particle.michel.pieces)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class MetricSpread:
    """One metric over the seeds; ``values`` follows the seed order (None: undefined there).

    ``mean``, ``std`` (sample standard deviation, 0 for one defined value), ``min`` and
    ``max`` cover the defined values only; all None when no seed defines the metric.
    """

    values: tuple[float | None, ...]
    mean: float | None
    std: float | None
    min: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> MetricSpread:
        kept = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
        if kept.size == 0:
            return cls(tuple(values), None, None, None, None)
        std = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
        return cls(tuple(values), float(kept.mean()), std, float(kept.min()), float(kept.max()))

    @property
    def spread(self) -> float | None:
        """max - min over the seeds."""
        return None if self.max is None or self.min is None else self.max - self.min

    @property
    def defined(self) -> int:
        """Seeds for which the metric is defined."""
        return sum(v is not None for v in self.values)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
                "spread": self.spread, "values": list(self.values)}


@dataclass(frozen=True)
class Conclusion:
    """A statement checked seed by seed.

    ``per_seed`` holds ``{"seed", "pretrained", "scratch", "holds"}`` per seed; ``holds``
    is None where either value is undefined (which counts as not holding).
    """

    statement: str
    metric: str
    per_seed: tuple[dict[str, Any], ...]

    @property
    def holds_for_all_seeds(self) -> bool:
        return bool(self.per_seed) and all(p["holds"] is True for p in self.per_seed)

    @property
    def holding_seeds(self) -> int:
        return sum(p["holds"] is True for p in self.per_seed)

    def to_dict(self) -> dict[str, Any]:
        return {"statement": self.statement, "metric": self.metric,
                "holds_for_all_seeds": self.holds_for_all_seeds, "holding_seeds": self.holding_seeds,
                "per_seed": [dict(p) for p in self.per_seed]}


@dataclass(frozen=True)
class SensitivityReport:
    """What :func:`sensitivity_audit` found (see the module docstring).

    Attributes:
        seeds: the seeds, in the order of every ``values`` list.
        headline: the task's headline metric.
        metrics: spread of every numeric score of the replicas of the configuration as given.
        scratch_metrics: the same for the scratch replicas (None without a comparison).
        conclusions: "pretrained beats scratch on ..." checked per seed (empty without one).
        runs: run directories per variant (``"model"``, ``"scratch"``).
    """

    seeds: tuple[int, ...]
    headline: str
    metrics: dict[str, MetricSpread]
    scratch_metrics: dict[str, MetricSpread] | None
    conclusions: tuple[Conclusion, ...]
    runs: dict[str, list[str]]
    out_dir: Path

    def to_dict(self) -> dict[str, Any]:
        return {"kind": KIND, "seeds": list(self.seeds), "headline": self.headline,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "scratch_metrics": None if self.scratch_metrics is None else
                {k: v.to_dict() for k, v in self.scratch_metrics.items()},
                "conclusions": [c.to_dict() for c in self.conclusions], "runs": self.runs}

    def format(self, full: bool = False) -> str:
        """A readable summary: the spread table and each conclusion's verdict.

        Without ``full`` the tables show the overall scores and the per-class F1 only
        (precision and recall are in :meth:`to_markdown` and the JSON).
        """
        pick = (lambda m: m) if full else _summary_rows
        lines = [f"seed sensitivity over {len(self.seeds)} seeds ({', '.join(map(str, self.seeds))})",
                 _text_table(pick(self.metrics))]
        if self.scratch_metrics is not None:
            lines += ["", "scratch replicas", _text_table(pick(self.scratch_metrics))]
        if self.conclusions:
            lines += ["", "conclusions"]
            lines += [_verdict_line(c) for c in self.conclusions]
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The report as Markdown: metric tables and a conclusions table."""
        seeds = ", ".join(map(str, self.seeds))
        parts = [f"# Seed sensitivity\n\nSeeds: {seeds}. Headline metric: `{self.headline}`. "
                 f"std is the sample standard deviation over seeds; spread = max - min.\n",
                 "## Replicas\n", _markdown_table(self.metrics)]
        if self.scratch_metrics is not None:
            parts += ["\n## Scratch replicas\n", _markdown_table(self.scratch_metrics)]
        if self.conclusions:
            parts += ["\n## Conclusions\n", "| statement | holds for all seeds | per seed (pretrained / scratch) |",
                      "|---|---|---|"]
            for c in self.conclusions:
                cells = "; ".join(f"s{p['seed']}: {_num(p['pretrained'])} / {_num(p['scratch'])}"
                                  f"{'' if p['holds'] else ' ✗'}" for p in c.per_seed)
                parts.append(f"| {c.statement} | {'yes' if c.holds_for_all_seeds else 'no'} "
                             f"({c.holding_seeds}/{len(c.per_seed)}) | {cells} |")
        return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------- pure functions
def flatten_metrics(scores: Mapping[str, Any]) -> dict[str, float | None]:
    """Every numeric score of an ``eval.json``, nested dicts flattened with dots (``f1.track``).

    Lists (confusion matrices, class weights), strings and the run's counts
    (:data:`RUN_FIELDS`, and :data:`COUNT_FIELDS` at any depth) are left out; null values
    (undefined metrics) are kept as None.
    """
    out: dict[str, float | None] = {}

    def walk(prefix: str, value: Any, top: bool) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item, False)
        elif (top and prefix in RUN_FIELDS) or prefix.rpartition(".")[2] in COUNT_FIELDS:
            return
        elif value is None:
            out[prefix] = None
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = float(value) if math.isfinite(value) else None

    for key, value in scores.items():
        if key != "class_weights":  # the loss weights of the run, not a score
            walk(str(key), value, True)
    return out


def aggregate_metrics(evals: Sequence[Mapping[str, Any]]) -> dict[str, MetricSpread]:
    """:class:`MetricSpread` of every metric of :func:`flatten_metrics` over the ``evals``
    (one per seed, in order); a metric missing from a seed counts as undefined there."""
    flat = [flatten_metrics(e) for e in evals]
    names: dict[str, None] = {}
    for f in flat:
        names.update(dict.fromkeys(f))
    return {name: MetricSpread.of([f.get(name) for f in flat]) for name in names}


def compare_to_scratch(pretrained: Sequence[Mapping[str, Any]], scratch: Sequence[Mapping[str, Any]],
                       seeds: Sequence[int], headline: str) -> tuple[Conclusion, ...]:
    """Check "pretrained beats scratch" (strictly greater) on ``headline`` and on the F1 of
    every class of the ``f1`` dicts, seed by seed."""
    if not len(pretrained) == len(scratch) == len(seeds):
        raise DetfmError(f"need one pretrained and one scratch score per seed, got {len(pretrained)}, "
                         f"{len(scratch)} for {len(seeds)} seeds")
    flat_p = [flatten_metrics(e) for e in pretrained]
    flat_s = [flatten_metrics(e) for e in scratch]
    targets = [(headline, f"pretrained beats scratch on {headline}")]
    classes: dict[str, None] = {}
    for e in (*pretrained, *scratch):
        classes.update(dict.fromkeys(str(c) for c in (e.get("f1") or {})))
    targets += [(f"f1.{c}", f"pretrained beats scratch on {c} F1") for c in classes]
    out = []
    for metric, statement in targets:
        rows = []
        for seed, p, s in zip(seeds, flat_p, flat_s, strict=True):
            a, b = p.get(metric), s.get(metric)
            rows.append({"seed": int(seed), "pretrained": a, "scratch": b,
                         "holds": None if a is None or b is None else bool(a > b)})
        out.append(Conclusion(statement=statement, metric=metric, per_seed=tuple(rows)))
    return tuple(out)


def replica_config(cfg: FinetuneConfig, seed: int, *, progress: bool = False) -> FinetuneConfig:
    """``cfg`` with ``train.seed = seed`` (and the progress bar on or off)."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=int(seed), progress=progress))


def scratch_variant(cfg: FinetuneConfig) -> FinetuneConfig:
    """The same architecture as ``cfg``'s pretraining run, from random initialisation."""
    if cfg.scratch:
        raise DetfmError("a scratch comparison needs a pretrained backbone (backbone is 'scratch'); "
                         "pass --backbone RUN_DIR or set backbone in the config")
    run_cfg = load_run_config(cfg.backbone)
    return dataclasses.replace(cfg, backbone=SCRATCH, model=run_cfg.model,
                               model_overrides=dict(run_cfg.model_overrides))


# ----------------------------------------------------------------------------- the audit
def sensitivity_audit(cfg: FinetuneConfig, seeds: Sequence[int], out_dir: str | os.PathLike[str], *,
                      compare_scratch: bool = False, progress: bool = False) -> SensitivityReport:
    """Train ``cfg`` once per seed into ``out_dir/seed_<s>`` (and, with ``compare_scratch``,
    the scratch architecture into ``out_dir/scratch_seed_<s>``); write ``sensitivity.json``
    and ``sensitivity.md``.

    Raises :class:`DetfmError` for fewer than two distinct seeds, a negative seed, a
    scratch comparison of a scratch backbone, or a replica directory holding a run of
    another configuration.
    """
    seeds = tuple(int(s) for s in seeds)
    if len(seeds) < 2:
        raise DetfmError(f"a sensitivity audit needs at least 2 seeds, got {len(seeds)}")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise DetfmError(f"seeds must be distinct and >= 0, got {list(seeds)}")
    variants = {"model": ("seed_", cfg)}
    if compare_scratch:
        variants["scratch"] = ("scratch_seed_", scratch_variant(cfg))
    out = Path(out_dir)
    evals: dict[str, list[dict[str, Any]]] = {}
    runs: dict[str, list[str]] = {}
    for name, (prefix, base) in variants.items():
        evals[name], runs[name] = [], []
        for seed in seeds:
            run = out / f"{prefix}{seed}"
            evals[name].append(_replica(replica_config(base, seed, progress=progress), run, progress))
            runs[name].append(str(run))
    headline = get_task(cfg.task).headline
    report = SensitivityReport(
        seeds=seeds, headline=headline, metrics=aggregate_metrics(evals["model"]),
        scratch_metrics=aggregate_metrics(evals["scratch"]) if compare_scratch else None,
        conclusions=compare_to_scratch(evals["model"], evals["scratch"], seeds, headline) if compare_scratch
        else (), runs=runs, out_dir=out)
    atomic_write_text(out / REPORT_FILE, json.dumps(report.to_dict(), indent=2) + "\n")
    atomic_write_text(out / TABLE_FILE, report.to_markdown())
    return report


def _replica(cfg: FinetuneConfig, run: Path, progress: bool) -> dict[str, Any]:
    """The scores of one replica: read from a finished run, else trained (or resumed)."""
    finished = (run / EVAL_FILE).is_file()
    if (run / CONFIG_FILE).is_file():
        _check_same_config(cfg, run)
    if finished:
        try:
            scores = json.loads((run / EVAL_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DetfmError(f"{run / EVAL_FILE}: cannot read the scores ({exc}); delete the run to "
                             f"train this seed again") from None
        if not isinstance(scores, dict):
            raise DetfmError(f"{run / EVAL_FILE}: not a score file (expected a JSON object)")
        return scores
    resume = last_checkpoint(run).exists()
    if not resume and (run / CONFIG_FILE).is_file():
        raise DetfmError(f"{run}: an unfinished run without a checkpoint; delete it to train this seed again")
    return run_finetune(cfg, run, resume=resume, progress=progress).eval


def _check_same_config(cfg: FinetuneConfig, run: Path) -> None:
    saved = _flat(hashed_config(load_finetune_config(run)))
    wanted = _flat(hashed_config(cfg))
    diffs = [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in wanted.items() if saved.get(k) != v]
    diffs += [f"{k}: {v!r} there, unset now" for k, v in saved.items() if k not in wanted]
    if diffs:
        raise DetfmError(f"{run} holds a run of another configuration ({'; '.join(diffs[:3])}); "
                         f"choose a new output folder")


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


# ----------------------------------------------------------------------------- formatting
def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _summary_rows(metrics: Mapping[str, MetricSpread]) -> dict[str, MetricSpread]:
    """The overall scores and the per-class F1 (``f1.<class>``)."""
    return {k: v for k, v in metrics.items() if "." not in k or k.startswith("f1.")}


def _text_table(metrics: Mapping[str, MetricSpread]) -> str:
    width = max([len("metric"), *map(len, metrics)])
    head = f"{'metric':<{width}}  {'mean':>8}  {'std':>8}  {'min':>8}  {'max':>8}  {'spread':>8}"
    rows = [head]
    for name, m in metrics.items():
        cells = "  ".join(f"{_num(v):>8}" for v in (m.mean, m.std, m.min, m.max, m.spread))
        rows.append(f"{name:<{width}}  {cells}")
    return "\n".join(rows)


def _markdown_table(metrics: Mapping[str, MetricSpread]) -> str:
    rows = ["| metric | mean | std | min | max | spread | values |", "|---|---:|---:|---:|---:|---:|---|"]
    for name, m in metrics.items():
        values = ", ".join(_num(v, 3) for v in m.values)
        rows.append(f"| {name} | {_num(m.mean)} | {_num(m.std)} | {_num(m.min)} | {_num(m.max)} | "
                    f"{_num(m.spread)} | {values} |")
    return "\n".join(rows)


def _verdict_line(c: Conclusion) -> str:
    verdict = "holds for every seed" if c.holds_for_all_seeds else \
        f"does NOT hold for every seed ({c.holding_seeds}/{len(c.per_seed)})"
    detail = ", ".join(f"s{p['seed']} {_num(p['pretrained'], 3)} vs {_num(p['scratch'], 3)}" for p in c.per_seed)
    return f"  {c.statement}: {verdict} [{detail}]"

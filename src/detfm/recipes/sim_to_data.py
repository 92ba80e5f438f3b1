"""The simulation-to-data study: does pretraining on unlabeled "data" close the domain gap?

Real detectors differ from their simulation. Here the "data" are events rendered through a
mis-modelled detector (default ``data_like``: shifted energy scale, shorter lifetime, Birks
recombination, noise and dead regions, see :mod:`detfm.sim.detector`); labels exist only for
the nominal simulation.

* A (baseline): the backbone architecture trained from scratch on labeled nominal events.
* B: the same architecture pretrained by masked point modeling on *unlabeled data* events
  (a separate simulated file under the data detector), then fine-tuned on the same labeled
  nominal events (same recipe, same label draw). ``b_mode`` adapts B differently from A
  (e.g. ``lora`` or ``head``, which keep the backbone learned on data); A always trains
  the whole network, as a supervised model would.

Both are scored on the test split of the labeled nominal file and on the *same events*
rendered through the data detector (exact twins, :mod:`detfm.evaluate.twins`). The gap of a
model is ``score(nominal) - score(data)`` (macro-F1 without low-energy deposits); per seed,
and the goal is ``mean gap(B) <= 0.5 * mean gap(A)`` over at least 3 seeds.

Layout of ``out_dir`` (every step is reused when its output exists, so an interrupted study
continues where it stopped)::

    data/<nominal stem>.<detector>.h5   the data twin of the labeled nominal file
    data/unlabeled.<detector>.h5        unlabeled data events for pretraining
    pretrain/                           the pretraining run (unless one is given)
    A_s<seed>/, B_s<seed>/              fine-tuning runs (eval.json: nominal test split)
    B_<mode>_s<seed>/                   B runs adapted with ``b_mode`` instead
    results.json, results.txt, sim_to_data.png   (results.<mode>.json, ... with ``b_mode``)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detfm.errors import ConfigError, DetfmError
from detfm.engine.runs import last_checkpoint
from detfm.io import atomic_path, atomic_write_text

__all__ = ["RESULTS_KIND", "format_sim_to_data", "gap_summary", "sim_to_data_study"]

RESULTS_KIND = "detfm-sim-to-data/1"
METRIC = "macro_f1_4"
GOAL_FRACTION = 0.5
TWIN_EVAL_FILE = "sim_to_data_eval.json"


# ----------------------------------------------------------------------------- arithmetic
def _mean(values: Sequence[float | None]) -> float | None:
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def gap_summary(a_nominal: Sequence[float], a_data: Sequence[float], b_nominal: Sequence[float],
                b_data: Sequence[float], *, goal_fraction: float = GOAL_FRACTION) -> dict[str, Any]:
    """Per-seed gaps ``nominal - data`` of A and B, their ratio and whether the goal is met.

    ``gap_ratio = mean(B gap) / mean(A gap)`` (None when A shows no positive gap: there is
    nothing to close); ``goal_met``: A has a positive mean gap and
    ``mean(B gap) <= goal_fraction * mean(A gap)``.
    """
    lengths = {len(a_nominal), len(a_data), len(b_nominal), len(b_data)}
    if len(lengths) != 1:
        raise DetfmError(f"every list needs one score per seed, got lengths {sorted(lengths)}")

    def side(nominal: Sequence[float], data: Sequence[float]) -> dict[str, list[float | None]]:
        gaps = [None if n is None or d is None else float(n) - float(d) for n, d in zip(nominal, data, strict=True)]
        return {"nominal": [None if n is None else float(n) for n in nominal],
                "data": [None if d is None else float(d) for d in data], "gap": gaps}

    a, b = side(a_nominal, a_data), side(b_nominal, b_data)
    gap_a, gap_b = _mean(a["gap"]), _mean(b["gap"])
    ratio = gap_b / gap_a if gap_a is not None and gap_b is not None and gap_a > 0 else None
    goal = bool(gap_a is not None and gap_b is not None and gap_a > 0 and gap_b <= goal_fraction * gap_a)
    return {"A": a, "B": b, "gap_ratio": ratio, "goal_met": goal}


# ----------------------------------------------------------------------------- data
def _unlabeled_file(nominal_cfg: Any, detector: str, events: int, seed: int, folder: Path, workers: int,
                    progress: bool) -> Path:
    from detfm.evaluate.twins import is_simulated_as
    from detfm.sim.simulate import simulate_to_file

    cfg = dataclasses.replace(nominal_cfg, events=events, seed=seed, detector=detector)
    path = folder / f"unlabeled.{detector}.h5"
    if not is_simulated_as(path, cfg):
        simulate_to_file(cfg, path, workers=workers, progress=progress)
    return path


def _pretrain(pretrain_config: Any, unlabeled: Path, run: Path) -> Path:
    from detfm.engine import load_config
    from detfm.recipes.pretrain import MODEL_FILE, PretrainConfig, run_pretrain

    cfg = pretrain_config
    if isinstance(cfg, (str, os.PathLike)):
        cfg = load_config(PretrainConfig, cfg)
    if not isinstance(cfg, PretrainConfig):
        raise ConfigError(f"pretrain_config must be a PretrainConfig or a YAML file, got {type(cfg).__name__}")
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, paths=(str(unlabeled),)))
    if (run / MODEL_FILE).is_file():
        return run
    resume = last_checkpoint(run).is_dir()
    run_pretrain(cfg, run, resume=resume)
    return run


# ----------------------------------------------------------------------------- runs
def _variants(base: Any, pretrain_run: Path, b_mode: str | None) -> dict[str, Any]:
    from detfm.recipes.adapt import SCRATCH
    from detfm.recipes.pretrain import load_run_config

    arch = load_run_config(pretrain_run)
    return {"A": dataclasses.replace(base, backbone=SCRATCH, model=arch.model,
                                     model_overrides=dict(arch.model_overrides)),
            "B": dataclasses.replace(base, backbone=str(pretrain_run), mode=b_mode or base.mode)}


def _finetune(cfg: Any, run: Path, progress: bool) -> None:
    from detfm.recipes.adapt import EVAL_FILE, run_finetune

    if (run / EVAL_FILE).is_file():
        return
    resume = last_checkpoint(run).is_dir()
    run_finetune(cfg, run, resume=resume, progress=progress)


def _score_twins(run: Path, nominal: Path, data: Path, progress: bool) -> dict[str, Any]:
    """Macro-F1 of the run on its nominal test events and on their data twins (same events,
    those non-empty in both files, up to the run's ``max_eval_events``)."""
    from detfm.recipes.adapt import evaluate_segmentation, load_finetune_config, load_finetuned
    from detfm.data import EventDataset
    from detfm.recipes.systematics import heldout_event_ids
    from detfm.models.lora import merge_lora

    cached = run / TWIN_EVAL_FILE
    if cached.is_file():
        scores = json.loads(cached.read_text(encoding="utf-8"))
        if scores.get("data_file") == str(data.resolve()):
            return scores
    cfg = load_finetune_config(run)
    test = heldout_event_ids(run, nominal, part="test")
    if test is None:
        raise DetfmError(f"{run}: its split.json does not list {nominal}")
    if cfg.max_eval_events:
        test = test[:cfg.max_eval_events]
    threshold = cfg.data.energy_threshold
    sets = {name: EventDataset([path], energy_threshold=threshold, min_points=1, labels=True)
            for name, path in (("nominal", nominal), ("data", data))}
    ids = np.intersect1d(test, np.intersect1d(sets["nominal"].event_ids, sets["data"].event_ids))
    if len(ids) == 0:
        raise DetfmError(f"{run}: no test event is non-empty in both {nominal} and {data}")
    task = load_finetuned(run)
    merge_lora(task)
    scores: dict[str, Any] = {"metric": METRIC, "events": int(len(ids)), "data_file": str(data.resolve())}
    for name, path in (("nominal", nominal), ("data", data)):
        dataset = EventDataset([path], energy_threshold=threshold, min_points=0, labels=True).subset(ids)
        scores[name] = evaluate_segmentation(task, dataset, batch_size=cfg.eval_batch_size, progress=progress)[METRIC]
    atomic_write_text(cached, json.dumps(scores, indent=2) + "\n")
    return scores


def sim_to_data_study(pretrain_config: Any, finetune_base: Any, nominal_file: str | os.PathLike[str],
                      out_dir: str | os.PathLike[str], *, data_detector: str = "data_like",
                      seeds: Sequence[int] = (0, 1, 2), unlabeled_events: int = 1000,
                      unlabeled_seed: int | None = None, pretrain_run: str | os.PathLike[str] | None = None,
                      b_mode: str | None = None, workers: int = 1, progress: bool = False) -> dict[str, Any]:
    """Run the study (see the module docstring) and write ``out_dir/results.json``.

    Args:
        pretrain_config: a :class:`~detfm.recipes.pretrain.PretrainConfig` or its YAML file; its data
            paths are replaced by the unlabeled data file. Ignored with ``pretrain_run``.
        finetune_base: the :class:`~detfm.recipes.adapt.FinetuneConfig` both A and B use (labels,
            mode, steps, ...); backbone, data paths and ``train.seed`` are set per run.
        nominal_file: labeled nominal events made by ``detfm simulate`` (its data twin is
            re-simulated from its attributes).
        data_detector: the detector model of the "data".
        seeds: fine-tuning seeds (label draw, initialisation, order); 3 or more for the goal.
        unlabeled_events, unlabeled_seed: size and simulation seed of the unlabeled data file
            (default seed: the nominal file's seed + 1, so its events differ from the labeled ones).
        pretrain_run: reuse this pretraining run instead of pretraining.
        b_mode: how B is adapted when it should differ from ``finetune_base.mode`` (A keeps
            ``finetune_base.mode``); B's runs are then ``B_<b_mode>_s<seed>`` and the results
            ``results.<b_mode>.json``, so both variants can share one study directory.
    """
    from detfm.recipes.adapt import MODES, FinetuneConfig
    from detfm.evaluate.twins import make_twins, sim_config_of
    from detfm.sim.detector import get_detector

    if not isinstance(finetune_base, FinetuneConfig):
        raise ConfigError(f"finetune_base must be a FinetuneConfig, got {type(finetune_base).__name__}")
    if finetune_base.task != "semseg":
        raise DetfmError("the sim-to-data study scores semantic segmentation (task semseg)")
    if not seeds or any(int(s) < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct integers >= 0, got {list(seeds)}")
    if unlabeled_events < 1:
        raise ConfigError(f"unlabeled_events must be >= 1, got {unlabeled_events}")
    if b_mode is not None and b_mode not in MODES:
        raise ConfigError(f"b_mode must be one of {', '.join(MODES)}, got {b_mode!r}")
    get_detector(data_detector)
    nominal, out = Path(nominal_file), Path(out_dir)
    if not nominal.is_file():
        raise DetfmError(f"{nominal}: no such file")
    nominal_cfg = sim_config_of(nominal)
    if nominal_cfg is None:
        raise DetfmError(f"{nominal}: not made by `detfm simulate` (no simulation attributes), so its "
                         f"'{data_detector}' twin cannot be simulated")
    if nominal_cfg.detector == data_detector:
        raise DetfmError(f"{nominal}: already simulated with the data detector '{data_detector}'")
    useed = nominal_cfg.seed + 1 if unlabeled_seed is None else int(unlabeled_seed)
    if useed == nominal_cfg.seed:
        raise ConfigError(f"unlabeled_seed must differ from the labeled file's seed {nominal_cfg.seed}")

    data_twin = make_twins(nominal, [data_detector], out / "data", workers=workers, progress=progress)[data_detector]
    if pretrain_run is None:
        unlabeled = _unlabeled_file(nominal_cfg, data_detector, unlabeled_events, useed, out / "data", workers,
                                    progress)
        pre = _pretrain(pretrain_config, unlabeled, out / "pretrain")
    else:
        pre = Path(pretrain_run)
        if not pre.is_dir():
            raise DetfmError(f"{pre}: no such pretraining run")
    base = dataclasses.replace(finetune_base, data=dataclasses.replace(finetune_base.data, paths=(str(nominal),)),
                               label_seed=None)
    scores: dict[str, dict[str, list[float | None]]] = {k: {"nominal": [], "data": []} for k in ("A", "B")}
    runs: dict[str, list[str]] = {"A": [], "B": []}
    for seed in seeds:
        for name, variant in _variants(base, pre, b_mode).items():
            cfg = dataclasses.replace(variant, train=dataclasses.replace(variant.train, seed=int(seed)))
            run = out / (f"B_{b_mode}_s{seed}" if name == "B" and b_mode else f"{name}_s{seed}")
            _finetune(cfg, run, progress)
            result = _score_twins(run, nominal, data_twin, progress)
            scores[name]["nominal"].append(result["nominal"])
            scores[name]["data"].append(result["data"])
            runs[name].append(str(run))
    summary = gap_summary(scores["A"]["nominal"], scores["A"]["data"], scores["B"]["nominal"], scores["B"]["data"])
    results = {"kind": RESULTS_KIND, "seeds": [int(s) for s in seeds], "A": summary["A"], "B": summary["B"],
               "gap_ratio": summary["gap_ratio"], "goal_met": summary["goal_met"], "metric": METRIC,
               "data_detector": data_detector, "goal_fraction": GOAL_FRACTION,
               "modes": {"A": base.mode, "B": b_mode or base.mode},
               "files": {"nominal": str(nominal), "data": str(data_twin)}, "pretrain_run": str(pre), "runs": runs}
    suffix = f".{b_mode}" if b_mode else ""  # results.lora.json beside results.json
    atomic_write_text(out / f"results{suffix}.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / f"results{suffix}.txt", format_sim_to_data(results) + "\n")
    plot_sim_to_data(results, out / f"sim_to_data{suffix}.png")
    return results


# ----------------------------------------------------------------------------- output
def _fmt(x: float | None, sign: bool = False) -> str:
    return "n/a" if x is None else (f"{x:+.3f}" if sign else f"{x:.3f}")


def format_sim_to_data(results: dict[str, Any]) -> str:
    """A text table: mean (and per-seed) nominal, data and gap of A and B, the ratio and the verdict."""
    lines = [f"{results.get('metric', METRIC)} on nominal test events and their "
             f"'{results.get('data_detector', 'data')}' twins, seeds {results['seeds']}",
             f"{'':<28}{'nominal':>10}{'data':>10}{'gap':>10}   gap per seed"]
    modes = results.get("modes", {})
    labels = {"A": "A scratch (nominal labels)", "B": "B pretrained on data"}
    if modes.get("B") and modes.get("B") != modes.get("A"):
        labels["B"] = f"B pretrained on data, {modes['B']}"
    for key in ("A", "B"):
        side = results[key]
        per_seed = " ".join(_fmt(g, sign=True) for g in side["gap"])
        lines.append(f"{labels[key]:<28}{_fmt(_mean(side['nominal'])):>10}{_fmt(_mean(side['data'])):>10}"
                     f"{_fmt(_mean(side['gap']), sign=True):>10}   {per_seed}")
    ratio = results["gap_ratio"]
    verdict = "met" if results["goal_met"] else "not met"
    lines.append(f"gap ratio B/A = {_fmt(ratio)}; goal (B gap <= {results.get('goal_fraction', GOAL_FRACTION)} "
                 f"x A gap): {verdict}")
    return "\n".join(lines)


def plot_sim_to_data(results: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Per-seed scores (dots) and means (bars) of A and B on nominal and data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    positions = {("A", "nominal"): 0, ("A", "data"): 1, ("B", "nominal"): 3, ("B", "data"): 4}
    for (key, where), x in positions.items():
        values = np.array([np.nan if v is None else v for v in results[key][where]], np.float64)
        colour = "C0" if where == "nominal" else "C3"
        if np.isfinite(values).any():
            ax.bar(x, float(np.nanmean(values)), color=colour, alpha=0.35, width=0.8)
        ax.plot(np.full(len(values), x), values, "o", color=colour)
    ax.set_xticks(list(positions.values()), [f"{k}\n{w}" for k, w in positions])
    ax.set_ylabel(f"{results.get('metric', METRIC).replace('_', ' ')} (test events)")
    ratio = results["gap_ratio"]
    ax.set_title(f"Sim-to-data gap: B/A = {_fmt(ratio)} ({'goal met' if results['goal_met'] else 'goal not met'})")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out

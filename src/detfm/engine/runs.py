"""The run directory: one place that names its files and reads a backbone back.

Every training run (pretraining or adaptation) is a folder::

    config.yaml        the run's whole config (recipe dataclass)
    backbone.yaml      the backbone architecture (its ModelConfig, with ``arch``), so the run
                       reloads without the registry entry or the run it came from
    metrics.jsonl      training metrics
    checkpoints/       step_NNNNNNNN/ folders and ``last`` (see engine.checkpoint)
    model.safetensors  final weights (backbone parameters under ``backbone.``)
    manifest.json      provenance (see audit.manifest)
    split.json         adaptation runs: the event ids of every split part
    eval.json          adaptation runs: test scores
    fragment_classifier.safetensors / .json
                       semseg runs, after ``detfm fragments``: the fitted fragment classifier

Commands, evaluation and audit code take file names from here, never spell them.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detfm.engine.checkpoint import LAST, MODEL_FILE
from detfm.engine.config import read_yaml
from detfm.errors import DetfmError
from detfm.models import ModelConfig, build_model, config_from_yaml, model_config

__all__ = ["BACKBONE_FILE", "BACKBONE_PREFIX", "CHECKPOINTS_DIR", "CONFIG_FILE", "EVAL_FILE",
           "FRAGMENT_CLASSIFIER_FILE", "FRAGMENT_CLASSIFIER_INFO", "MANIFEST_FILE", "METRICS_FILE", "MODEL_FILE",
           "PID_TREES_FILE", "PID_TREES_INFO", "PREDICTIONS_FORMAT", "SPLIT_FILE", "backbone_config",
           "last_checkpoint", "load_backbone", "load_objective", "random_backbone", "read_fitted_info",
           "run_settings", "weights_path"]

CONFIG_FILE = "config.yaml"
BACKBONE_FILE = "backbone.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
MANIFEST_FILE = "manifest.json"
SPLIT_FILE = "split.json"
EVAL_FILE = "eval.json"
FRAGMENT_CLASSIFIER_FILE = "fragment_classifier.safetensors"
FRAGMENT_CLASSIFIER_INFO = "fragment_classifier.json"
PID_TREES_FILE = "pid_trees.safetensors"  # `detfm pid-trees`: particle ID by boosted trees on a semseg run
PID_TREES_INFO = "pid_trees.json"
# The ``format`` attribute of the per-event outputs ``detfm predict`` writes.
PREDICTIONS_FORMAT = "detfm-predictions/1"
BACKBONE_PREFIX = "backbone."


def last_checkpoint(run_dir: str | os.PathLike[str]) -> Path:
    """Where the newest checkpoint of a run is (it may not exist)."""
    return Path(run_dir) / CHECKPOINTS_DIR / LAST


def weights_path(run_dir: str | os.PathLike[str]) -> Path:
    """The run's final weights, else those of its last checkpoint; an error if neither exists."""
    run = Path(run_dir)
    for candidate in (run / MODEL_FILE, last_checkpoint(run) / MODEL_FILE):
        if candidate.is_file():
            return candidate
    raise DetfmError(f"{run}: no weights ({MODEL_FILE}) in the run or its last checkpoint")


def backbone_config(run_dir: str | os.PathLike[str]) -> ModelConfig:
    """The backbone architecture of a run: its ``backbone.yaml``, or for runs without one the
    ``model`` and ``model_overrides`` of its ``config.yaml``."""
    run = Path(run_dir)
    if (run / BACKBONE_FILE).is_file():
        return config_from_yaml((run / BACKBONE_FILE).read_text(encoding="utf-8"))
    data = run_settings(run, "pretraining run")
    if "model" not in data:
        raise DetfmError(f"{run}: not a pretraining run (its {CONFIG_FILE} names no backbone 'model')")
    return model_config(str(data["model"]), **dict(data.get("model_overrides") or {}))


def load_backbone(run_dir: str | os.PathLike[str], *, map_location: str = "cpu") -> nn.Module:
    """The trained backbone of a run (final weights, else the last checkpoint), in eval mode.

    Weights are read from safetensors only; nothing is unpickled.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = backbone_config(run_dir)
    weights = weights_path(run_dir)
    try:
        state = load_file(str(weights), device=map_location)
    except (SafetensorError, OSError) as exc:
        raise DetfmError(f"{weights}: cannot read weights ({exc})") from None
    backbone = build_model(cfg)
    own = {k[len(BACKBONE_PREFIX):]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    expected = backbone.state_dict()
    for name, tensor in own.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise DetfmError(f"{weights}: weights do not fit {cfg.name}: '{name}' is "
                             f"{tuple(tensor.shape)} in the file, {tuple(expected[name].shape)} in the model")
    missing, unexpected = backbone.load_state_dict(own, strict=False)
    if missing or unexpected:
        raise DetfmError(f"{weights}: weights do not fit {cfg.name} "
                         f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    return backbone.eval()


def random_backbone(run_dir: str | os.PathLike[str], seed: int = 1234) -> nn.Module:
    """The same architecture as a run, randomly initialised (the baseline for probes)."""
    with torch.no_grad():
        return build_model(backbone_config(run_dir).replace(seed=seed)).eval()


def run_settings(run_dir: str | os.PathLike[str], kind: str = "run directory") -> dict[str, Any]:
    """A run's ``config.yaml`` as a plain mapping (for readers below the recipes); ``kind``
    names what was expected, for the error."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise DetfmError(f"{run_dir}: not a {kind} (no {CONFIG_FILE})")
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise DetfmError(f"{path}: a run config must be a mapping")
    return data


def load_objective(run_dir: str | os.PathLike[str], *, map_location: str = "cpu") -> nn.Module:
    """A pretraining run's whole objective (backbone and pretraining heads) with its weights,
    in eval mode: what anomaly scores that re-use the pretraining loss need."""
    from detfm.engine.checkpoint import load_weights
    from detfm.tasks.registry import get_objective

    backbone = backbone_config(run_dir)
    settings = run_settings(run_dir, "pretraining run")
    spec = get_objective(str(settings.get("objective", "mpm")))
    task_settings = settings.get(spec.settings_field) or {}
    if not isinstance(task_settings, dict):
        raise DetfmError(f"{run_dir}: not a pretraining run ('{spec.settings_field}' in {CONFIG_FILE} is not a "
                         f"mapping of {spec.name} settings)")
    task_settings = {k: tuple(v) if isinstance(v, list) else v for k, v in task_settings.items()}
    valid = {f.name for f in dataclasses.fields(spec.config_cls)}
    if unknown := sorted(set(task_settings) - valid):
        raise DetfmError(f"{run_dir}: unknown {spec.name} setting(s) {unknown} in {CONFIG_FILE}")
    with torch.no_grad():
        task = spec.build(build_model(backbone), spec.config_cls(**task_settings))
    load_weights(task, weights_path(run_dir), strict=True, device=map_location)
    return task.to(map_location).eval()


def read_fitted_info(run_dir: str | os.PathLike[str], weights_file: str, info_file: str, fmt: str,
                     required: tuple[str, ...], what: str, fit_command: str) -> dict[str, Any]:
    """The JSON info of a step fitted into a run directory (a fragment classifier, particle-ID
    trees), checked: its weights and info files both there (else an error that names
    ``fit_command``), valid JSON of format ``fmt``, with every key of ``required``."""
    run = Path(run_dir)
    if not (run / weights_file).is_file() or not (run / info_file).is_file():
        raise DetfmError(f"{run}: no {what} ({weights_file}); fit it first with `{fit_command}`")
    path = run / info_file
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DetfmError(f"{path}: not valid JSON ({exc})") from exc
    found = info.get("format") if isinstance(info, dict) else None
    if found != fmt:
        raise DetfmError(f"{path}: format {found!r}, expected {fmt!r}")
    lacking = [k for k in required if k not in info]
    if lacking:
        raise DetfmError(f"{path}: lacks {', '.join(lacking)}")
    return info  # type: ignore[no-any-return]

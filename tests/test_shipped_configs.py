"""Every YAML file in configs/ loads into its config class: no typo, wrong type or stale key
survives in the files the README and `make demo` point users to."""

from __future__ import annotations

from pathlib import Path

import pytest

from detfm.engine import load_config
from detfm.engine.config import read_yaml
from detfm.models.registry import list_models
from detfm.recipes.adapt import FinetuneConfig
from detfm.recipes.pretrain import PretrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_configs_folder_is_found() -> None:
    names = {p.name for p in CONFIGS}
    assert {"demo_pretrain_cpu.yaml", "demo_finetune_cpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_loads(path: Path) -> None:
    raw = read_yaml(path)
    # adaptation configs name a task; pretraining configs name a model (and maybe an objective)
    cls = FinetuneConfig if "task" in raw and "mode" in raw else PretrainConfig
    cfg = load_config(cls, path)
    assert cfg.train.steps > 0 and cfg.train.batch_size > 0
    if isinstance(cfg, PretrainConfig):
        assert cfg.model in list_models()


def test_demo_schedules_span_the_demo_run() -> None:
    pre = load_config(PretrainConfig, CONFIGS[0].parent / "demo_pretrain_cpu.yaml")
    # the teacher temperature and momentum must reach their end values within the short run
    assert pre.distill.schedule_steps == pre.train.steps
    ft = load_config(FinetuneConfig, CONFIGS[0].parent / "demo_finetune_cpu.yaml")
    assert ft.task == "semseg" and ft.mode == "finetune" and ft.labels <= 300

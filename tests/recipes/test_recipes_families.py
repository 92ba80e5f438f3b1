"""Every generic path runs on two backbone families that share only the contract.

The ``*_test`` models (``detfm_testing.register_test_models``): a tiny patch transformer and a
trivial per-point network written for the tests. Fine-tuning in every mode, every task,
reloading, prediction, scoring, systematics and the registry are run on both.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from detfm_testing import TEST_MODELS, register_test_models

from detfm.audit.registry import Registry, load_model
from detfm.data import EventDataset
from detfm.engine import TrainConfig
from detfm.errors import ConfigError
from detfm.evaluate.scoring import score_task
from detfm.models import build_model, config_from_yaml, create_model, list_models
from detfm.models.contract import BackboneOutput, layer_ids
from detfm.recipes.adapt import MODES, FinetuneConfig, load_finetuned, predict_file, run_finetune
from detfm.recipes.pretrain import DataConfig
from detfm.tasks.registry import get_task, list_tasks

register_test_models()

pytestmark = pytest.mark.e2e


def _config(events: Path, model: str, **kw: object) -> FinetuneConfig:
    base = FinetuneConfig(model=model, model_overrides={}, labels=4, max_eval_events=2,
                          data=DataConfig(paths=(str(events),), rotate=False),
                          train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, lr=1e-3, progress=False))
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_two_families_are_registered() -> None:
    assert list_models("*_test") == sorted(TEST_MODELS)
    archs = {create_model(name).default_cfg.arch for name in TEST_MODELS}
    assert archs == {"pointmae", "pointwise"}


@pytest.mark.parametrize("model", TEST_MODELS)
def test_contract_on_every_family(model: str, tiny_events: Path) -> None:
    backbone = create_model(model).eval()
    batch = EventDataset([tiny_events], labels=False).subset(range(3))
    from detfm.data import collate

    b = collate([batch[i] for i in range(3)])
    out = backbone.forward_features(b)
    assert isinstance(out, BackboneOutput)
    assert out.point.shape == (b.num_points, backbone.num_features)
    assert out.local.shape == (b.num_points, backbone.num_local_features)
    _, inter = backbone.forward_intermediates(b, norm=True)
    assert inter and all(t.shape[0] == b.num_points for t in inter)
    ids = layer_ids([n for n, _ in backbone.named_parameters()], backbone.group_matcher())
    assert min(ids.values()) == 0 and len(set(ids.values())) >= 3
    names = dict(backbone.named_modules())
    assert all(isinstance(names[t], torch.nn.Linear) for t in backbone.lora_targets())
    # a saved config rebuilds the same family with the same weights
    again = build_model(config_from_yaml(backbone.default_cfg.to_yaml()))
    assert type(again) is type(backbone)
    assert all(torch.equal(p, q) for p, q in zip(backbone.state_dict().values(), again.state_dict().values(),
                                                  strict=True))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("model", TEST_MODELS)
def test_finetune_every_mode_reloads_and_rescores_identically(model: str, mode: str, tiny_events: Path,
                                                              tmp_path: Path) -> None:
    cfg = _config(tiny_events, model, mode=mode, layer_decay=0.5)
    result = run_finetune(cfg, tmp_path / "run", progress=False)
    assert 0.0 <= result.eval["macro_f1_4"] <= 1.0
    task = load_finetuned(tmp_path / "run")
    test = EventDataset([tiny_events], labels=True).subset(result.split.test[:2])
    assert score_task(task, get_task("semseg"), test) == {k: v for k, v in result.eval.items()
                                                           if k not in ("task", "mode", "backbone", "labels",
                                                                        "class_weights")}
    scales = task.param_lr_scales()
    assert set(scales) == {n for n, _ in task.named_parameters()}
    if mode == "finetune":  # the earliest layers train slowest, the head at the full rate
        first = min(scales[n] for n in scales if n.startswith("backbone."))
        assert first < 1.0 and scales["head.token_proj.weight"] == 1.0
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    if mode in ("probe", "head"):
        assert not any(n.startswith("backbone.") for n in trainable)
    if mode == "lora":
        assert {n.rsplit(".", 1)[-1] for n in trainable if n.startswith("backbone.")} == {"lora_A", "lora_B"}


@pytest.mark.parametrize("task_name", list_tasks())
@pytest.mark.parametrize("model", TEST_MODELS)
def test_every_task_trains_predicts_and_registers(model: str, task_name: str, tiny_events: Path,
                                                  tmp_path: Path) -> None:
    spec = get_task(task_name)
    run = tmp_path / "run"
    result = run_finetune(_config(tiny_events, model, task=task_name, mode="head"), run, progress=False)
    assert result.eval[spec.headline] is None or 0.0 <= result.eval[spec.headline] <= 1.0
    out = tmp_path / "preds.h5"
    report = predict_file(run, tiny_events, out, batch_size=4)
    with h5py.File(out) as h5:
        assert h5.attrs["task"] == task_name
        assert json.loads(h5.attrs["classes"]) == list(spec.class_names)
        probs = h5[f"{spec.prediction_prefix}probs"]
        assert len(probs) == report.events
        first = np.asarray(probs[0], dtype=np.float64).reshape(-1, len(spec.class_names))
        np.testing.assert_allclose(first.sum(axis=1), 1.0, atol=2e-3)  # float16 rows
    reg = Registry(tmp_path / "registry")
    version, created = reg.add(run, f"{model}-{task_name}")
    assert created and version.kind == "finetune"
    loaded = load_model(f"{model}-{task_name}", reg)
    assert type(loaded.backbone) is type(create_model(model))


def test_unknown_task_and_wrong_family_objective_are_clear_errors(tiny_events: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task 'semsge'.*did you mean 'semseg'"):
        _config(tiny_events, "pointwise_test", task="semsge")
    from detfm.recipes.pretrain import PretrainConfig, build_task

    with pytest.raises(ConfigError, match="has none: use a point-resolution backbone"):
        build_task(PretrainConfig(model="pointmae_test", objective="distill"))
    # masked modeling picks its form by family: patches for the patch transformer, voxel cells otherwise
    assert type(build_task(PretrainConfig(model="pointwise_test"))).__name__ == "MaskedVoxelModeling"
    assert type(build_task(PretrainConfig(model="pointmae_test"))).__name__ == "MaskedPointModeling"


def test_a_probe_can_read_the_multilevel_features(tiny_events: Path, tmp_path: Path) -> None:
    """Panda's linear-probe protocol: the head reads the levels concatenated at the points."""
    cfg = _config(tiny_events, "pointwise_test", mode="probe", head_features="multilevel")
    result = run_finetune(cfg, tmp_path / "run", progress=False)
    task = load_finetuned(tmp_path / "run")
    assert task.head.token_proj.in_features == 2 * 16  # two blocks of width 16
    assert 0.0 <= result.eval["macro_f1_5"] <= 1.0
    with pytest.raises(ConfigError, match="head_features"):
        _config(tiny_events, "pointwise_test", head_features="tokens")

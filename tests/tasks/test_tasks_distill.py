"""Self-distillation: views, Sinkhorn balance, the EMA teacher, exact resume, and the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from detfm_testing import register_test_models

from detfm.data.synthetic import synthetic_batch
from detfm.data import collate
from detfm.engine import TrainConfig, train
from detfm.engine.runs import load_backbone, load_objective
from detfm.errors import ConfigError
from detfm.models import create_model
from detfm.recipes.pretrain import DataConfig, PretrainConfig, build_dataset, build_task, run_pretrain
from detfm.tasks.distill import DistillConfig, SelfDistillation, sinkhorn_knopp
from detfm.tasks.mvm import MaskedVoxelModeling

register_test_models()
SMALL = DistillConfig(prototypes=16, head_hidden=32, head_dim=8, schedule_steps=10, local_views=1)


def _task(seed: int = 0) -> SelfDistillation:
    return SelfDistillation(create_model("pointwise_test", seed=seed), SMALL)


def test_sinkhorn_rows_are_distributions_and_prototypes_share_the_points() -> None:
    scores = torch.randn(400, 8, generator=torch.Generator().manual_seed(0)) * 5 + torch.arange(8.0) * 3
    q = sinkhorn_knopp(scores, iters=20)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(400, dtype=q.dtype), atol=1e-6, rtol=0)
    torch.testing.assert_close(q.sum(dim=0), torch.full((8,), 50.0, dtype=q.dtype), rtol=1e-2, atol=0.5)


def test_a_step_trains_the_student_only_and_the_teacher_follows_by_ema() -> None:
    task = _task().train()
    batch = synthetic_batch(np.random.default_rng(0), [300, 120])
    out = task(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and out["outputs"]["matched_points"] > 0
    assert {"feature_rank", "position_r2", "teacher_entropy", "loss_own", "loss_cross", "loss_local"} <= set(out["outputs"])
    out["loss"].backward()
    assert task.head.prototypes.grad is not None and task.backbone.stem.weight.grad is not None
    assert all(p.grad is None for p in task.teacher_backbone.parameters())
    with torch.no_grad():
        for p in task.backbone.parameters():
            p.add_(1.0)
    before = task.teacher_backbone.stem.weight.clone()
    task.after_step(1)
    m = task.schedule()["momentum"]
    assert int(task.step) == 1 and 0.99 < m < 1.0
    expected = m * before + (1 - m) * task.backbone.stem.weight
    torch.testing.assert_close(task.teacher_backbone.stem.weight, expected)
    assert not task.teacher_backbone.training  # the teacher stays in eval mode


def test_same_seed_same_loss_and_backbones_without_a_mask_token_are_refused() -> None:
    batch = synthetic_batch(np.random.default_rng(1), [200, 200])
    a = _task()(batch, generator=torch.Generator().manual_seed(5))["loss"]
    b = _task()(batch, generator=torch.Generator().manual_seed(5))["loss"]
    assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="has none: use a point-resolution backbone"):
        SelfDistillation(create_model("pointmae_test"), SMALL)
    with pytest.raises(ConfigError, match="2 global views"):
        DistillConfig(global_views=1)


def test_masked_voxel_modeling_scores_only_hidden_points() -> None:
    task = MaskedVoxelModeling(create_model("pointwise_test")).train()
    batch = synthetic_batch(np.random.default_rng(3), [300, 200])
    out = task(batch, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"]) and 0.0 < float(out["outputs"]["masked_fraction"]) < 1.0
    out["loss"].backward()
    assert task.backbone.mask_token.grad is not None and task.backbone.mask_token.grad.abs().sum() > 0


class Interrupt(Exception):
    pass


def _config(events: Path) -> PretrainConfig:
    return PretrainConfig(model="pointwise_test", objective="distill", distill=SMALL,
                          data=DataConfig(paths=(str(events),), rotate=False, max_points=400),
                          train=TrainConfig(steps=4, batch_size=2, warmup_steps=1, checkpoint_every=2, log_every=1,
                                            progress=False))


def test_pretraining_resumes_exactly_teacher_included(tiny_events: Path, tmp_path: Path) -> None:
    cfg = _config(tiny_events)
    run_pretrain(cfg, tmp_path / "straight")

    def stop_after_two(record: dict[str, Any], task: torch.nn.Module) -> None:
        if record["step"] == 3:  # the step-2 checkpoint is on disk
            raise Interrupt

    with pytest.raises(Interrupt):
        train(build_task(cfg), build_dataset(cfg.data, cfg.train.seed), collate, cfg.train, tmp_path / "split",
              callbacks=[stop_after_two], run_config=cfg)
    run_pretrain(cfg, tmp_path / "split", resume=True)
    a, b = load_objective(tmp_path / "straight"), load_objective(tmp_path / "split")
    assert isinstance(a, SelfDistillation) and int(a.step) == 4
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    assert type(load_backbone(tmp_path / "straight")) is type(a.backbone)
    lines = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    assert '"feature_rank"' in lines[-1] and '"position_r2"' in lines[-1]


def test_distill_on_the_point_transformer_gets_a_mask_token_from_the_recipe() -> None:
    task = build_task(PretrainConfig(model="ptv3_micro", objective="distill", distill=SMALL))
    assert isinstance(task, SelfDistillation) and task.backbone.default_cfg.mask_token
    out = task.train()(synthetic_batch(np.random.default_rng(4), [300, 150]),
                       generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and task.backbone.embedding.mask_token.grad is not None

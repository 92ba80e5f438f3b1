"""The run directory: weights found where training left them, backbones rebuilt from any run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from detfm.engine.runs import (
    BACKBONE_FILE,
    MODEL_FILE,
    backbone_config,
    last_checkpoint,
    load_backbone,
    load_objective,
    random_backbone,
    weights_path,
)
from detfm.errors import DetfmError
from detfm.tasks import MaskedPointModeling


def test_a_pretraining_run_reloads_its_backbone_and_objective(tiny_pretrained: Path) -> None:
    assert (tiny_pretrained / BACKBONE_FILE).is_file()
    backbone = load_backbone(tiny_pretrained)
    task = load_objective(tiny_pretrained)
    assert isinstance(task, MaskedPointModeling) and not backbone.training
    for (name, p), (_, q) in zip(backbone.state_dict().items(), task.backbone.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    other = random_backbone(tiny_pretrained, seed=7)
    assert type(other) is type(backbone)
    assert not torch.equal(next(iter(other.state_dict().values())), next(iter(backbone.state_dict().values())))


def test_runs_without_backbone_yaml_or_final_weights(tiny_pretrained: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_pretrained, run)
    (run / BACKBONE_FILE).unlink()  # an older run: the architecture comes from config.yaml
    assert backbone_config(run) == backbone_config(tiny_pretrained)
    (run / MODEL_FILE).unlink()  # an unfinished run: the last checkpoint's weights
    assert weights_path(run) == last_checkpoint(run) / MODEL_FILE
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(DetfmError, match="no weights"):
        weights_path(run)


def test_not_a_run_and_weights_of_another_size_are_clear_errors(tiny_pretrained: Path, tmp_path: Path) -> None:
    with pytest.raises(DetfmError, match="not a pretraining run"):
        load_backbone(tmp_path)
    run = tmp_path / "resized"
    shutil.copytree(tiny_pretrained, run)
    text = (run / BACKBONE_FILE).read_text().replace("embed_dim: 96", "embed_dim: 48")
    (run / BACKBONE_FILE).write_text(text)
    mismatch = r"weights do not fit pointmae_micro: .* is \(96,?\d*\) in the file, \(48,?\d*\) in the model"
    with pytest.raises(DetfmError, match=mismatch):
        load_backbone(run)

"""The pretraining recipe end to end: simulate -> pretrain -> reload the backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from detfm.cli import main
from detfm.errors import ConfigError, DetfmError
from detfm.recipes.pretrain import DataConfig, PretrainConfig, load_backbone, random_backbone, run_pretrain
from detfm.engine import TrainConfig
from detfm.sim.simulate import SimConfig, simulate_to_file

TINY = {"num_groups": 32, "radius": 12.0, "cover_radius": 12.0, "group_size": 16}


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pre") / "ev.h5"
    simulate_to_file(SimConfig(events=12, seed=11), path, progress=False)
    return path


def _cfg(events: Path, steps: int = 3) -> PretrainConfig:
    return PretrainConfig(model="pointmae_micro", model_overrides=TINY, data=DataConfig(paths=(str(events),)),
                          train=TrainConfig(steps=steps, batch_size=4, warmup_steps=1, log_every=1,
                                            checkpoint_every=2, progress=False, lr=1e-3))


def test_pretrain_writes_run_and_backbone_reloads(events: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    result = run_pretrain(_cfg(events, steps=8), tmp_path / "run")
    lines = [l for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if l]
    assert len(lines) >= 8
    assert result.final_loss is not None and result.final_loss == result.final_loss  # finite, not NaN
    backbone = load_backbone(tmp_path / "run")
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, saved["backbone." + key])
    # the random baseline has the same architecture but different weights
    rand = random_backbone(tmp_path / "run")
    assert rand.state_dict().keys() == backbone.state_dict().keys()
    assert any(not torch.equal(a, b) for a, b in zip(rand.state_dict().values(),
                                                      backbone.state_dict().values(), strict=True))


def test_cli_pretrain_with_config_file_and_resume_checks(events: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("model: pointmae_micro\nmodel_overrides: {num_groups: 32, radius: 12.0, "
                        "cover_radius: 12.0, group_size: 16}\ntrain: {warmup_steps: 1, progress: false, "
                        "checkpoint_every: 2}\n")
    out = tmp_path / "run"
    argv = ["pretrain", "--config", str(cfg_path), "--data", str(events), "--steps", "2",
            "--batch-size", "4", "--out", str(out)]
    assert main(argv) == 0
    assert "pretrained pointmae_micro for 2 steps" in capsys.readouterr().out
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # a resume with a different config is refused, and the run directory is left as it was
    assert main(argv[:-2] + ["--lr", "0.5", "--out", str(out), "--resume"]) == 2
    assert "config" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_bad_config_key_names_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text("modle: pointmae_micro\n")
    assert main(["pretrain", "--config", str(cfg_path), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "modle" in err and "model" in err


def test_bad_inputs(events: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no data files"):
        run_pretrain(PretrainConfig(), tmp_path / "r")
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage" * 100)
    cfg = _cfg(events)
    with pytest.raises(DetfmError, match="bad.h5"):
        run_pretrain(PretrainConfig(model=cfg.model, model_overrides=TINY, data=DataConfig(paths=(str(bad),)),
                                    train=cfg.train), tmp_path / "r2")
    assert not (tmp_path / "r2").exists()
    with pytest.raises(DetfmError, match="not a pretraining run"):
        load_backbone(tmp_path)
    with pytest.raises(DetfmError, match="unknown model"):
        run_pretrain(PretrainConfig(model="pointmae_smal", data=cfg.data, train=cfg.train), tmp_path / "r3")


def test_a_wrong_model_name_is_named_before_the_data_is_read(tmp_path: Path) -> None:
    cfg = PretrainConfig(model="pointmae_smal", data=DataConfig(paths=(str(tmp_path / "missing.h5"),)))
    with pytest.raises(ConfigError, match="unknown model 'pointmae_smal'; did you mean 'pointmae_small'"):
        run_pretrain(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()

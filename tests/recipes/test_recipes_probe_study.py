"""`detfm probe`: the pretrained-vs-random linear probe study writes its evidence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from detfm.cli import main
from detfm.engine import TrainConfig
from detfm.errors import DetfmError
from detfm.recipes.probe_study import probe_study
from detfm.recipes.pretrain import DataConfig, PretrainConfig, run_pretrain
from detfm.sim.simulate import SimConfig, simulate_to_file

TINY = {"num_groups": 32, "radius": 12.0, "cover_radius": 12.0, "group_size": 16, "depth": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("study")
    events = root / "ev.h5"
    simulate_to_file(SimConfig(events=10, seed=21), events, progress=False)
    cfg = PretrainConfig(model="pointmae_micro", model_overrides=TINY, data=DataConfig(paths=(str(events),)),
                         train=TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False))
    run_pretrain(cfg, root / "run")
    return root / "run", events


def test_probe_study_writes_results_for_both_backbones(run: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir, events = run
    study = probe_study(run_dir, [str(events)], tmp_path, train_events=4, test_events=4,
                        max_train_points=300, pictures=2, progress=False)
    data = json.loads((tmp_path / "probe.json").read_text())
    assert set(data) == {"pretrained", "random"}
    assert set(data["pretrained"]) == {"all", "no_lowe"}
    assert (tmp_path / "pca_pretrained.png").stat().st_size > 10_000
    assert "pretrained" in (tmp_path / "probe.txt").read_text()
    all_classes = study.results["pretrained"]["all"]
    assert 0.0 <= all_classes.macro_f1 <= 1.0
    assert study.results["random"]["no_lowe"].n_test_points < study.results["random"]["all"].n_test_points


def test_probe_study_errors(run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, events = run
    with pytest.raises(DetfmError, match="usable events"):
        probe_study(run_dir, [str(events)], tmp_path, train_events=8, test_events=8, progress=False)
    assert main(["probe", "--backbone", str(tmp_path / "nope"), "--data", str(events),
                 "--out", str(tmp_path / "o")]) == 2
    assert "not a pretraining run" in capsys.readouterr().err

"""Anomaly scores from point-resolution pretraining runs: masked voxel modeling and self-distillation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detfm_testing import one_torch_thread

from detfm.cli import main
from detfm.data import EventDataset, collate
from detfm.engine import TrainConfig
from detfm.errors import ConfigError
from detfm.evaluate.anomaly import AnomalyScorer, anomaly_study, score_events, supported_methods
from detfm.models.contract import multilevel_width
from detfm.recipes.pretrain import DataConfig, PretrainConfig, run_pretrain
from detfm.sim.simulate import SimConfig, simulate_to_file
from detfm.tasks.distill import DistillConfig
from detfm.tasks.mpm import MPMConfig

SMALL_DISTILL = DistillConfig(prototypes=16, head_hidden=32, head_dim=8, schedule_steps=10, local_views=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("anomaly_points")
    out = {"train": root / "train.h5", "reference": root / "ref.h5", "hsip": root / "hsip.h5"}
    simulate_to_file(SimConfig(events=6, seed=1), out["train"], progress=False)
    simulate_to_file(SimConfig(events=6, seed=3), out["reference"], progress=False)
    simulate_to_file(SimConfig(events=5, seed=2, anomaly="hsip"), out["hsip"], progress=False)
    return out


def _pretrain(files: dict[str, Path], out: Path, objective: str) -> Path:
    cfg = PretrainConfig(model="ptv3_micro", objective=objective, task=MPMConfig(mask_cell=8.0, mask_ratio=0.5),
                         distill=SMALL_DISTILL, data=DataConfig(paths=(str(files["train"]),), max_points=600),
                         train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, log_every=1, checkpoint_every=2,
                                           progress=False, lr=1e-3))
    with one_torch_thread():
        run_pretrain(cfg, out)
    return out


@pytest.fixture(scope="module")
def mvm_run(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pretrain(files, tmp_path_factory.mktemp("mvm") / "run", "mpm")


@pytest.fixture(scope="module")
def distill_run(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _pretrain(files, tmp_path_factory.mktemp("distill") / "run", "distill")


def test_voxel_reconstruction_is_per_event_and_the_training_loss(mvm_run: Path, files: dict[str, Path]) -> None:
    a = score_events(mvm_run, files["hsip"], method="reconstruction", masks=2, seed=0, batch_size=3)
    b = score_events(mvm_run, files["hsip"], method="reconstruction", masks=2, seed=0, batch_size=1)
    c = score_events(mvm_run, files["hsip"], method="reconstruction", masks=2, seed=1, batch_size=3)
    assert a.shape == (5,) and np.isfinite(a).all() and (a > 0).all()
    np.testing.assert_allclose(a, b, rtol=1e-4)  # the cells are drawn per event, not per batch
    assert not np.allclose(a, c)
    # one event, one mask: the score is the objective's own loss under the same draw
    scorer = AnomalyScorer.from_run(mvm_run, masks=1, seed=3)
    dataset = EventDataset([files["hsip"]], energy_threshold=scorer.energy_threshold, min_points=0, labels=False)
    scores = scorer.score(files["hsip"], "reconstruction")
    for i in (0, 3):
        state = np.random.SeedSequence([3, i, 0]).generate_state(1, np.uint64)[0]
        with torch.no_grad():
            loss = scorer.task(collate([dataset[i]]), generator=torch.Generator().manual_seed(int(state) >> 1))["loss"]
        assert scores[i] == pytest.approx(float(loss), rel=1e-5)


@pytest.mark.parametrize("which", ["mvm", "distill"])
def test_density_pools_the_multilevel_point_features(which: str, mvm_run: Path, distill_run: Path,
                                                     files: dict[str, Path]) -> None:
    run = mvm_run if which == "mvm" else distill_run
    scorer = AnomalyScorer.from_run(run, neighbours=3, batch_size=4)
    features = scorer.features(files["reference"])
    width = multilevel_width(scorer.task.backbone)
    assert features.shape == (6, 2 * width) and np.isfinite(features).all()
    # event 2 alone: its mean and max over its points' multi-level features
    dataset = EventDataset([files["reference"]], energy_threshold=scorer.energy_threshold, min_points=0, labels=False)
    with torch.no_grad():
        point = scorer.task.backbone.forward_features(collate([dataset[2]])).multilevel().double()
    np.testing.assert_allclose(features[2, :width], point.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features[2, width:], point.max(0).values.numpy(), rtol=1e-4, atol=1e-5)
    dens = scorer.score(files["hsip"], "density", files["reference"])
    assert dens.shape == (5,) and np.isfinite(dens).all() and (dens > 0).all()


def test_self_distillation_scores_by_density_only(distill_run: Path, mvm_run: Path, files: dict[str, Path],
                                                  tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scorer = AnomalyScorer.from_run(distill_run)
    assert supported_methods(scorer.task) == ("density",)
    assert supported_methods(AnomalyScorer.from_run(mvm_run).task) == ("reconstruction", "density")
    with pytest.raises(ConfigError, match="by 'density' only"):
        scorer.score(files["hsip"], "reconstruction")
    with pytest.raises(ConfigError, match="cannot score reconstruction"):
        anomaly_study(distill_run, files["hsip"], {"hsip": files["hsip"]}, files["reference"], tmp_path / "x",
                      methods=["reconstruction", "density"])
    assert not (tmp_path / "x").exists()
    # the CLI's default: whatever the run supports
    out = tmp_path / "study"
    assert main(["anomalies", "study", "--model", str(distill_run), "--normal", str(files["reference"]),
                 "--anomalous", f"hsip={files['hsip']}", "--reference", str(files["train"]), "--out", str(out),
                 "--quiet"]) == 0
    doc = json.loads((out / "anomalies.json").read_text())
    assert doc["methods"] == ["density", "baseline"] and doc["signatures"]["hsip"]["best_method"] == "density"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["methods"] == ["density"]
    capsys.readouterr()

"""Anomaly scores from a pretraining run, the separation metrics, the study and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detfm_testing import one_torch_thread

from detfm.cli import main
from detfm.data import EventDataset
from detfm.engine import TrainConfig
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.anomaly import (ANOMALIES_KIND, AnomalyScorer, anomaly_study, efficiency_at_fpr,
                                    event_summary, roc_auc, score_events)
from detfm.recipes.pretrain import DataConfig, PretrainConfig, run_pretrain
from detfm.sim.simulate import SimConfig, simulate_to_file

TINY = {"num_groups": 16, "radius": 12.0, "cover_radius": 12.0, "group_size": 16}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("anomaly")
    out = {"train": root / "train.h5", "normal": root / "normal.h5", "reference": root / "ref.h5",
           "hsip": root / "hsip.h5"}
    simulate_to_file(SimConfig(events=8, seed=1), out["train"], progress=False)
    simulate_to_file(SimConfig(events=6, seed=2), out["normal"], progress=False)
    simulate_to_file(SimConfig(events=8, seed=3), out["reference"], progress=False)
    simulate_to_file(SimConfig(events=6, seed=2, anomaly="hsip"), out["hsip"], progress=False)
    return out


@pytest.fixture(scope="module")
def run(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("anomaly_run") / "run"
    cfg = PretrainConfig(model="pointmae_micro", model_overrides=TINY,
                         data=DataConfig(paths=(str(files["train"]),)),
                         train=TrainConfig(steps=2, batch_size=4, warmup_steps=1, log_every=1,
                                           checkpoint_every=2, progress=False, lr=1e-3))
    with one_torch_thread():
        run_pretrain(cfg, out)
    return out


# ----------------------------------------------------------------------------- metrics
def test_auc_and_efficiency_on_hand_made_cases() -> None:
    assert roc_auc([0, 1, 2], [3, 4]) == 1.0
    assert roc_auc([3, 4], [0, 1, 2]) == 0.0
    assert roc_auc([1, 2, 3], [1, 2, 3]) == 0.5
    assert roc_auc([5.0] * 4, [5.0] * 3) == 0.5  # all tied
    # pairs (n, a): 1<2, 1<3, 2=2 (1/2), 2<3, 4>2, 4>3 -> (1 + 1 + 0.5 + 1) / 6
    assert roc_auc([1, 2, 4], [2, 3]) == pytest.approx(3.5 / 6)
    normal = np.arange(100.0)
    assert efficiency_at_fpr(normal, [200.0, 300.0]) == 1.0
    # 1 % of 100: one normal event (99) may pass, so the cut is "> 98"
    assert efficiency_at_fpr(normal, [98.5, 99.5, 10.0], fpr=0.01) == pytest.approx(2 / 3)
    assert efficiency_at_fpr(normal, [98.5, 99.5, 10.0], fpr=0.005) == pytest.approx(1 / 3)  # cut "> 99"
    assert efficiency_at_fpr(normal, normal, fpr=0.01) == pytest.approx(0.01)
    assert efficiency_at_fpr([1.0] * 10, [1.0] * 5, fpr=0.5) == 0.0  # ties at the cut are rejected
    assert efficiency_at_fpr([1.0, 2.0], [0.0], fpr=1.0) == 1.0
    with pytest.raises(ConfigError, match="non-finite"):
        roc_auc([1.0, np.nan], [2.0])
    with pytest.raises(ConfigError, match="fpr"):
        efficiency_at_fpr([1.0], [2.0], fpr=0.0)
    with pytest.raises(ConfigError, match="no scores"):
        roc_auc([], [1.0])


def test_auc_matches_the_pairwise_definition_on_random_ties() -> None:
    rng = np.random.default_rng(0)
    n, a = rng.integers(0, 5, 40).astype(float), rng.integers(1, 6, 30).astype(float)
    pairwise = ((a[None, :] > n[:, None]) + 0.5 * (a[None, :] == n[:, None])).mean()
    assert roc_auc(n, a) == pytest.approx(pairwise, abs=1e-12)
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        return
    y = np.r_[np.zeros(len(n)), np.ones(len(a))]
    assert roc_auc(n, a) == pytest.approx(roc_auc_score(y, np.r_[n, a]))


# ----------------------------------------------------------------------------- scores
def test_reconstruction_scores_are_per_event_deterministic_and_batch_independent(
        run: Path, files: dict[str, Path]) -> None:
    a = score_events(run, files["hsip"], method="reconstruction", masks=2, seed=0, batch_size=4)
    b = score_events(run, files["hsip"], method="reconstruction", masks=2, seed=0, batch_size=4)
    c = score_events(run, files["hsip"], method="reconstruction", masks=2, seed=0, batch_size=1)
    d = score_events(run, files["hsip"], method="reconstruction", masks=2, seed=1, batch_size=4)
    assert a.shape == (6,) and np.isfinite(a).all() and (a > 0).all()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-4)  # masks are drawn per event, not per batch
    assert not np.allclose(a, d)


def test_reconstruction_score_is_the_training_loss_of_the_event(run: Path, files: dict[str, Path]) -> None:
    """One event, one mask: the score equals the task's own loss under the same mask draw."""
    from detfm.data import collate

    scorer = AnomalyScorer.from_run(run, masks=1, seed=3)
    dataset = EventDataset([files["hsip"]], energy_threshold=scorer.energy_threshold, min_points=0, labels=False)
    for i in (0, 4):
        batch = collate([dataset[i]])
        state = np.random.SeedSequence([3, i, 0]).generate_state(1, np.uint64)[0]
        with torch.no_grad():
            loss = scorer.task(batch, generator=torch.Generator().manual_seed(int(state) >> 1))["loss"]
        assert scorer.score(files["hsip"], "reconstruction")[i] == pytest.approx(float(loss), rel=1e-5)


def test_density_and_baseline_scores(run: Path, files: dict[str, Path]) -> None:
    scorer = AnomalyScorer.from_run(run, neighbours=3)
    features = scorer.features(files["reference"])
    assert features.shape == (8, 2 * scorer.task.backbone.num_features)
    dens = scorer.score(files["hsip"], "density", files["reference"])
    assert dens.shape == (6,) and np.isfinite(dens).all() and (dens > 0).all()
    # leave-one-out on the reference itself: no event is its own neighbour (distance > 0)
    loo = scorer.score(files["reference"], "density", files["reference"])
    assert (loo > 0).all()
    maha = AnomalyScorer.from_run(run, density="mahalanobis").score(files["hsip"], "density", files["reference"])
    assert maha.shape == (6,) and (maha >= 0).all()
    base = scorer.score(files["hsip"], "baseline", files["reference"])
    n_points, energy = event_summary(files["hsip"])
    assert base.shape == (6,) and (n_points > 0).all() and (energy > 0).all()
    # the baseline is a distance in (log energy, log points): an event at the reference mean scores ~0
    ref = scorer.summary(files["reference"])
    from detfm.evaluate.anomaly import _mahalanobis_sq
    assert _mahalanobis_sq(ref.mean(axis=0)[None, :], ref)[0] == pytest.approx(0.0, abs=1e-9)


def test_clear_errors(run: Path, files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DetfmError, match="needs a reference"):
        score_events(run, files["hsip"], method="density")
    with pytest.raises(DetfmError, match="not a pretraining run"):
        score_events(tmp_path, files["hsip"])
    (tmp_path / "ft").mkdir()
    (tmp_path / "ft" / "config.yaml").write_text("task: semseg\nbackbone: pretrained\n")
    with pytest.raises(DetfmError, match="not a pretraining run"):
        score_events(tmp_path / "ft", files["hsip"])
    with pytest.raises(ConfigError, match="unknown method"):
        score_events(run, files["hsip"], method="magic")
    with pytest.raises(ConfigError, match="masks"):
        score_events(run, files["hsip"], masks=0)
    with pytest.raises(DetfmError, match="no such event file"):
        score_events(run, tmp_path / "missing.h5", method="baseline")


def test_study_writes_the_documented_json(run: Path, files: dict[str, Path], tmp_path: Path) -> None:
    doc = anomaly_study(run, files["normal"], {"hsip": files["hsip"]}, files["reference"], tmp_path / "study",
                        masks=1, neighbours=3)
    saved = json.loads((tmp_path / "study" / "anomalies.json").read_text())
    assert saved == doc
    assert set(doc) == {"kind", "methods", "signatures", "baseline"}
    assert doc["kind"] == ANOMALIES_KIND and doc["methods"] == ["reconstruction", "density", "baseline"]
    entry = doc["signatures"]["hsip"]
    for method in doc["methods"]:
        assert set(entry[method]) == {"auc", "eff_at_1pct_fpr"}
        assert 0.0 <= entry[method]["auc"] <= 1.0 and 0.0 <= entry[method]["eff_at_1pct_fpr"] <= 1.0
    best = entry["best_method"]
    assert entry["auc"] == entry[best]["auc"] == max(entry[m]["auc"] for m in ("reconstruction", "density"))
    assert entry["baseline_auc"] == entry["baseline"]["auc"] == doc["baseline"]["hsip"]["auc"]
    assert entry["baseline_eff_at_1pct_fpr"] == doc["baseline"]["hsip"]["eff_at_1pct_fpr"]
    with np.load(tmp_path / "study" / "scores.npz") as z:
        assert z["reconstruction/hsip"].shape == (6,) and z["baseline/normal"].shape == (6,)
        assert roc_auc(z["density/normal"], z["density/hsip"]) == entry["density"]["auc"]


# ----------------------------------------------------------------------------- CLI
def test_cli_ranks_events_into_a_csv(run: Path, files: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ranked.csv"
    assert main(["anomalies", "--model", str(run), "--data", str(files["hsip"]), "--out", str(out),
                 "--method", "baseline", "--reference", str(files["reference"]), "--top", "3", "--quiet"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "rank,event,score,n_points,total_energy"
    rows = [line.split(",") for line in lines[1:]]
    assert [int(r[0]) for r in rows] == list(range(1, 7))
    assert sorted(int(r[1]) for r in rows) == list(range(6))
    scores = [float(r[2]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    n_points, energy = event_summary(files["hsip"])
    for r in rows:
        assert int(r[3]) == n_points[int(r[1])]
        assert float(r[4]) == pytest.approx(energy[int(r[1])], rel=1e-5)
    printed = capsys.readouterr().out
    assert "ranked list in" in printed and len([l for l in printed.splitlines() if l.strip()]) == 2 + 3
    expected = score_events(run, files["hsip"], method="baseline", reference=files["reference"])
    assert float(rows[0][2]) == pytest.approx(expected.max(), rel=1e-8)


def test_cli_errors_and_study(run: Path, files: dict[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["anomalies", "--model", str(run), "--data", str(files["hsip"]), "--out",
                 str(tmp_path / "x.csv"), "--method", "density"]) == 2
    assert "needs a reference" in capsys.readouterr().err
    assert main(["anomalies", "--model", str(tmp_path), "--data", str(files["hsip"]), "--out",
                 str(tmp_path / "x.csv")]) == 2
    assert "not a pretraining run" in capsys.readouterr().err
    assert main(["anomalies", "--data", str(files["hsip"])]) == 2
    assert "--model, --out required" in capsys.readouterr().err
    assert main(["anomalies", "study", "--model", str(run), "--normal", str(files["normal"]), "--anomalous",
                 "hsip", "--reference", str(files["reference"]), "--out", str(tmp_path / "s")]) == 2
    assert "expected NAME=FILE" in capsys.readouterr().err
    assert main(["anomalies", "study", "--model", str(run), "--normal", str(files["normal"]), "--anomalous",
                 f"hsip={files['hsip']}", "--reference", str(files["reference"]), "--out", str(tmp_path / "s"),
                 "--methods", "density", "--neighbours", "3", "--quiet"]) == 0
    doc = json.loads((tmp_path / "s" / "anomalies.json").read_text())
    assert doc["methods"] == ["density", "baseline"] and "hsip" in doc["signatures"]
    assert "hsip" in capsys.readouterr().out

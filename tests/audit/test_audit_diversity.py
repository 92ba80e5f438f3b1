"""Model diversity audit: error correlation, kappa, disagreement, ensemble gain, CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from detfm_testing import TINY, one_torch_thread

from detfm.recipes.adapt import FinetuneConfig, run_finetune
from detfm.audit.diversity import DiversityAccumulator, diversity_audit
from detfm.cli import main
from detfm.engine import TrainConfig
from detfm.errors import DetfmError
from detfm.recipes.pretrain import DataConfig


@pytest.fixture(scope="module")
def runs(tiny_events: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two tiny scratch segmentation runs that differ only in the seed."""
    root = tmp_path_factory.mktemp("div")
    base = FinetuneConfig(model_overrides=TINY, mode="head", labels=4,
                          data=DataConfig(paths=(str(tiny_events),), rotate=False),
                          train=TrainConfig(steps=2, batch_size=2, warmup_steps=0, lr=3e-3, progress=False))
    out = []
    with one_torch_thread():
        for seed in (0, 1):
            cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
            run_finetune(cfg, root / f"s{seed}")
            out.append(root / f"s{seed}")
    return out[0], out[1]


def one_hot(pred: list[int], num_classes: int = 3) -> np.ndarray:
    """Probabilities 0.8 on the predicted class, the rest spread evenly."""
    p = np.full((len(pred), num_classes), 0.2 / (num_classes - 1))
    p[np.arange(len(pred)), pred] = 0.8
    return p


# ----------------------------------------------------------------------------- hand-made cases
def test_identical_models_have_error_correlation_one() -> None:
    truth = np.array([0, 1, 2, 1, 0, 2])
    probs = one_hot([0, 2, 2, 0, 0, 1])
    acc = DiversityAccumulator(["a", "b"], num_classes=3)
    acc.add([probs, probs.copy()], truth, np.array([0, 2, 4, 6]))
    report = acc.report()
    pair = report.pairs[0]
    assert pair["error_correlation"] == pytest.approx(1.0) and pair["error_kappa"] == pytest.approx(1.0)
    assert pair["disagreement"] == 0.0 and pair["both_wrong"] == pytest.approx(0.5)
    assert report.error_correlation[0][0] == pytest.approx(1.0)
    assert report.ensemble["gain_accuracy"] == pytest.approx(0.0)
    assert report.events == 3 and report.points == 6


def test_pair_statistics_of_hand_made_predictions() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    pred_a = [0, 1, 1, 1, 2, 0, 0, 1]  # wrong at 1 and 5
    pred_b = [0, 1, 1, 0, 2, 2, 0, 1]  # wrong at 1 and 3
    offsets = np.array([0, 2, 4, 6, 8])
    acc = DiversityAccumulator(["a", "b"], num_classes=3)
    # two batches: the statistics are sums, so splitting must not change them
    acc.add([one_hot(pred_a)[:4], one_hot(pred_b)[:4]], truth[:4], offsets[:3])
    acc.add([one_hot(pred_a)[4:], one_hot(pred_b)[4:]], truth[4:], offsets[2:] - 4)
    report = acc.report()
    pair = report.pairs[0]
    err_a = np.array(pred_a) != truth
    err_b = np.array(pred_b) != truth
    assert pair["error_correlation"] == pytest.approx(np.corrcoef(err_a, err_b)[0, 1]) == pytest.approx(1 / 3)
    # kappa: observed agreement 6/8, chance 0.25 * 0.25 + 0.75 * 0.75
    assert pair["error_kappa"] == pytest.approx((0.75 - 0.625) / (1 - 0.625))
    assert pair["disagreement"] == pytest.approx(2 / 8) and pair["both_wrong"] == pytest.approx(1 / 8)
    rates_a, rates_b = [0.5, 0.0, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]
    assert pair["event_error_correlation"] == pytest.approx(np.corrcoef(rates_a, rates_b)[0, 1])
    assert [m["accuracy"] for m in report.models] == [pytest.approx(0.75), pytest.approx(0.75)]


def test_ensemble_gain_when_every_model_errs_somewhere_else() -> None:
    truth = np.zeros(3, dtype=np.int64)
    probs = []
    for wrong in range(3):  # each model misses one point, each a different one
        p = np.tile([0.9, 0.1, 0.0], (3, 1))
        p[wrong] = [0.4, 0.6, 0.0]
        probs.append(p)
    acc = DiversityAccumulator(["a", "b", "c"], num_classes=3)
    acc.add(probs, truth)
    report = acc.report()
    for m in report.models:  # class 0: F1 = 2*2/(2*2+1) = 0.8, class 1: 0 (never true), class 2: undefined
        assert m["accuracy"] == pytest.approx(2 / 3) and m["macro_f1"] == pytest.approx(0.4)
    ens = report.ensemble
    assert ens["accuracy"] == pytest.approx(1.0) and ens["macro_f1"] == pytest.approx(1.0)
    assert ens["gain_accuracy"] == pytest.approx(1 / 3) and ens["gain_macro_f1"] == pytest.approx(0.6)
    assert ens["best_accuracy_model"] == "a"
    # disjoint single errors: phi = (0 - 1/9) / (2/9)
    assert all(p["error_correlation"] == pytest.approx(-0.5) for p in report.pairs)
    assert all(p["both_wrong"] == 0.0 for p in report.pairs)
    assert report.pairs[0]["event_error_correlation"] is None  # one event: undefined


def test_undefined_correlations_and_bad_input() -> None:
    truth = np.array([0, 1, 2])
    perfect = one_hot([0, 1, 2])
    acc = DiversityAccumulator(["a", "b"], num_classes=3)
    acc.add([perfect, one_hot([0, 0, 2])], truth)
    report = acc.report()
    assert report.pairs[0]["error_correlation"] is None  # a model that is never wrong has no error variance
    assert report.error_correlation[0][0] is None and report.error_correlation[1][1] == pytest.approx(1.0)
    with pytest.raises(DetfmError, match="at least 2 models"):
        DiversityAccumulator(["a"])
    with pytest.raises(DetfmError, match="probabilities of 2 models"):
        acc.add([perfect], truth)
    with pytest.raises(DetfmError, match="offsets"):
        acc.add([perfect, perfect], truth, np.array([0, 2]))
    with pytest.raises(DetfmError, match="no points"):
        DiversityAccumulator(["a", "b"]).report()


# ----------------------------------------------------------------------------- on fine-tuned runs
def test_same_model_twice_on_its_test_split(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, _ = runs
    report = diversity_audit([a, a], _data(a))
    split = json.loads((a / "split.json").read_text())
    assert report.source["selection"] == f"test split of {a.name}"
    assert report.source["event_ids"] == split["test"]
    assert report.names == (a.name, f"{a.name}#2")
    assert report.pairs[0]["error_correlation"] == pytest.approx(1.0)
    assert report.pairs[0]["disagreement"] == 0.0 and report.ensemble["gain_accuracy"] == pytest.approx(0.0)
    ev = json.loads((a / "eval.json").read_text())  # the same points as the run's own scoring
    assert report.points == ev["points"]
    assert report.models[0]["accuracy"] == pytest.approx(ev["accuracy_5"])
    assert report.models[0]["macro_f1_4"] == pytest.approx(ev["macro_f1_4"])
    written = report.save(tmp_path / "out")
    assert json.loads(written[0].read_text())["kind"] == "detfm-diversity/1"
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_other_files_use_all_events_and_max_events(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    copy = tmp_path / "other.h5"
    shutil.copy(_data(a), copy)
    report = diversity_audit([a, b], copy, max_events=5, batch_size=2)
    assert report.source["selection"] == "all events" and report.events == 5
    assert report.source["event_ids"] == [0, 1, 2, 3, 4]  # the file's first events, not the test split
    assert len(report.pairs) == 1 and report.pairs[0]["event_error_correlation"] is not None
    assert report.models[1]["run"] == str(b)


def test_clear_errors(runs: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = runs
    data = _data(a)
    with pytest.raises(DetfmError, match="at least 2 models"):
        diversity_audit([a], data)
    with pytest.raises(DetfmError, match="no such data file"):
        diversity_audit([a, b], tmp_path / "missing.h5")
    with pytest.raises(DetfmError, match="no such run directory"):
        diversity_audit([a, tmp_path / "nothing"], data)
    pid = tmp_path / "pid"
    pid.mkdir()
    text = (a / "config.yaml").read_text()
    assert "task: semseg" in text and "energy_threshold: 0.13" in text
    (pid / "config.yaml").write_text(text.replace("task: semseg", "task: pid"))
    with pytest.raises(DetfmError, match="'pid' run"):
        diversity_audit([a, pid], data)
    shifted = tmp_path / "shifted"
    shutil.copytree(b, shifted)
    (shifted / "config.yaml").write_text(text.replace("energy_threshold: 0.13", "energy_threshold: 0.2"))
    with pytest.raises(DetfmError, match="different energy thresholds"):
        diversity_audit([a, shifted], data)


def test_cli_diversity(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = runs
    out = tmp_path / "div"
    assert main(["audit", "diversity", "--models", str(a), str(b), "--data", str(_data(a)), "--max-events", "2",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "ensemble gain over the best single model" in printed and f"{a.name} ~ {b.name}" in printed
    assert (out / "diversity.json").is_file() and (out / "diversity.png").is_file()
    assert main(["audit", "diversity", "--models", str(a), "--data", str(_data(a)), "--out", str(out)]) == 2
    assert "at least 2 models" in capsys.readouterr().err


def _data(run: Path) -> Path:
    return Path(json.loads((run / "split.json").read_text())["files"][0])

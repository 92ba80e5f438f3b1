"""Systematics: per-event metrics, paired bootstrap, flip fractions, the report and `detfm evaluate`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from detfm_testing import TINY_SHALLOW, one_torch_thread

from detfm.recipes.adapt import FinetuneConfig, run_finetune
from detfm.cli import main
from detfm.commands import evaluate as evaluate_cmd
from detfm.engine import TrainConfig, save_config
from detfm.errors import DetfmError
from detfm.evaluate.metrics import accuracy, confusion_matrix, macro_f1, per_class_f1, per_class_recall
from detfm.recipes.systematics import (
    DEFAULT_VARIATIONS,
    REPORT_KIND,
    batched_metrics,
    bootstrap_metrics,
    event_confusions,
    evaluate_systematics,
    flip_fractions,
    format_systematics,
    heldout_event_ids,
    summarize_flips,
)
from detfm.recipes.pretrain import DataConfig
from detfm.sim.simulate import SimConfig, simulate_to_file


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A training file, a nominal evaluation file and a tiny fine-tuned model."""
    root = tmp_path_factory.mktemp("syst")
    train, nominal = root / "train.h5", root / "nominal.h5"
    simulate_to_file(SimConfig(events=12, seed=21), train, progress=False)
    simulate_to_file(SimConfig(events=8, seed=22), nominal, progress=False)
    cfg = FinetuneConfig(model_overrides=TINY_SHALLOW, labels=4,
                         data=DataConfig(paths=(str(train),), rotate=False),
                         train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, progress=False),
                         max_eval_events=1)
    with one_torch_thread():
        run_finetune(cfg, root / "run")
    return {"train": train, "nominal": nominal, "run": root / "run", "root": root}


# ----------------------------------------------------------------------------- metrics
def test_batched_metrics_match_the_metrics_module() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 400)
    pred = np.where(rng.random(400) < 0.6, truth, rng.integers(0, 5, 400))
    pred[pred == 2] = 3  # class 2 never predicted: precision undefined, F1 defined
    cm5 = confusion_matrix(truth, pred, 5)
    keep = truth != 4
    cm4 = confusion_matrix(truth[keep], np.minimum(pred[keep], 3), 4)
    got = batched_metrics(cm5, cm4)
    assert got["macro_f1_5"] == pytest.approx(macro_f1(cm5))
    assert got["macro_f1_4"] == pytest.approx(macro_f1(cm4))
    assert got["accuracy_5"] == pytest.approx(accuracy(cm5))
    assert got["accuracy_4"] == pytest.approx(accuracy(cm4))
    np.testing.assert_allclose([got[f"f1_{c}"] for c in ("shower", "track", "michel", "delta", "low_energy")],
                               per_class_f1(cm5))
    assert got["recall_track"] == pytest.approx(per_class_recall(cm5)[1])
    assert np.isnan(got["precision_michel"])


def test_event_confusions_score_like_evaluate_segmentation() -> None:
    logits = np.array([[5, 0, 0, 0, 0], [0, 5, 0, 0, 0], [0, 0, 0, 1, 9], [0, 3, 0, 0, 0], [0, 0, 0, 0, 9]],
                      np.float32)
    labels = np.array([0, 0, 1, 1, 4])
    cm5, cm4 = event_confusions(logits, labels, np.array([0, 2, 5]))
    assert cm5.shape == (2, 5, 5) and cm4.shape == (2, 4, 4)
    assert cm5[0, 0, 0] == 1 and cm5[0, 0, 1] == 1 and cm5[1, 1, 4] == 1 and cm5[1, 4, 4] == 1
    # without low-energy: the point of class 4 is dropped and the argmax runs over 4 logits
    assert cm4[1].sum() == 2 and cm4[1, 1, 1] == 1 and cm4[1, 1, 3] == 1


def _per_event(n_events: int, accuracy_: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cm5 = np.zeros((n_events, 5, 5), np.int64)
    for e in range(n_events):
        truth = rng.integers(0, 5, 50)
        pred = np.where(rng.random(50) < accuracy_, truth, rng.integers(0, 5, 50))
        cm5[e] = confusion_matrix(truth, pred, 5)
    return cm5, cm5[:, :4, :4].copy()


def test_bootstrap_intervals_contain_the_value_and_shrink_with_more_events() -> None:
    widths = []
    for n in (20, 400):
        nom5, nom4 = _per_event(n, 0.8, seed=1)
        var5, var4 = _per_event(n, 0.7, seed=2)
        metrics, diffs = bootstrap_metrics({"nominal": nom5, "x": var5}, {"nominal": nom4, "x": var4},
                                           n_boot=200, seed=0)
        for v in ("nominal", "x"):
            for name in ("macro_f1_4", "macro_f1_5", "accuracy_5", "f1_track"):
                m = metrics[v][name]
                assert m["lo"] <= m["value"] <= m["hi"], (n, v, name)
        d = diffs["x"]["accuracy_5"]
        assert d["lo"] <= d["value"] <= d["hi"] < 0  # 0.7 vs 0.8: clearly worse
        assert diffs["nominal"]["macro_f1_4"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
        widths.append(metrics["x"]["macro_f1_4"]["hi"] - metrics["x"]["macro_f1_4"]["lo"])
    assert widths[1] < widths[0] / 2
    # seeded: the same call gives the same intervals
    a = bootstrap_metrics({"nominal": nom5}, {"nominal": nom4}, n_boot=50, seed=3)
    assert a == bootstrap_metrics({"nominal": nom5}, {"nominal": nom4}, n_boot=50, seed=3)


def test_paired_differences_are_tighter_than_either_interval() -> None:
    nom5, nom4 = _per_event(100, 0.8, seed=1)
    var5, var4 = nom5.copy(), nom4.copy()
    var5[:, 0, 0] -= np.minimum(var5[:, 0, 0], 1)  # one shower point per event moves to track
    var5[:, 0, 1] += np.minimum(nom5[:, 0, 0], 1)
    metrics, diffs = bootstrap_metrics({"nominal": nom5, "x": var5}, {"nominal": nom4, "x": var4}, n_boot=100)
    width = metrics["x"]["accuracy_5"]["hi"] - metrics["x"]["accuracy_5"]["lo"]
    dwidth = diffs["x"]["accuracy_5"]["hi"] - diffs["x"]["accuracy_5"]["lo"]
    assert dwidth < width / 5


# ----------------------------------------------------------------------------- flips
def test_flip_fraction_is_zero_for_identical_predictions_and_exact_on_a_hand_made_case() -> None:
    coords = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [5, 5, 5]], np.float32)
    pred = np.array([0, 1, 1, 3])
    offsets = np.array([0, 3, 4])
    assert flip_fractions(coords, pred, offsets, coords, pred, offsets).tolist() == [0.0, 0.0]
    # twin: event 0 loses voxel (1,0,0), gains (9,9,9), voxels reordered, (2,0,0) flips;
    # event 1 has no voxel in common
    coords_b = np.array([[9, 9, 9], [2, 0, 0], [0, 0, 0], [6, 6, 6]], np.float32)
    pred_b = np.array([4, 2, 0, 3])
    got = flip_fractions(coords, pred, offsets, coords_b, pred_b, offsets)
    assert got[0] == pytest.approx(0.5) and np.isnan(got[1])
    summary = summarize_flips(np.array([0.0, 0.5, np.nan, 1.0]))
    assert summary["per_event"] == [0.0, 0.5, 1.0]
    assert summary["mean"] == pytest.approx(0.5) and summary["median"] == 0.5
    assert summary["p90"] == pytest.approx(0.9)


# ----------------------------------------------------------------------------- end to end
def test_report_has_the_documented_schema(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "syst"
    report = evaluate_systematics(files["run"], files["nominal"], ["escale_up", "noisy"], out, n_boot=20,
                                  seed=1)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    assert set(report) == {"kind", "model", "task", "events", "variations", "metrics", "differences",
                           "flip_fraction", "calibration", "conformal"}
    assert report["kind"] == REPORT_KIND and report["task"] == "semseg" and report["events"] == 8
    names = ["nominal", "escale_up", "noisy"]
    assert report["variations"] == names
    for key in ("metrics", "differences", "flip_fraction"):
        assert list(report[key]) == names
    for v in names:
        assert {"macro_f1_4", "macro_f1_5", "accuracy_5", "accuracy_4", "f1_track"} <= set(report["metrics"][v])
        assert all(set(m) == {"value", "lo", "hi"} for m in report["metrics"][v].values())
        assert set(report["flip_fraction"][v]) == {"mean", "median", "p90", "per_event"}
    assert report["differences"]["nominal"]["accuracy_5"]["value"] == 0.0
    assert report["flip_fraction"]["nominal"]["mean"] == 0.0
    assert len(report["flip_fraction"]["noisy"]["per_event"]) == 8
    cal = report["calibration"]
    assert set(cal) == {"temperature", "ece_before", "ece_after", "reliability"} and cal["temperature"] > 0
    assert list(cal["ece_before"]) == names and list(cal["ece_after"]) == names
    assert set(cal["reliability"]) == {"before", "after"}
    conf = report["conformal"]
    assert set(conf) == {"alpha", "method", "coverage", "coverage_points", "set_size"} and conf["method"] == "aps"
    assert all(0 <= conf["coverage"][v] <= 1 and 0 <= conf["coverage_points"][v] <= 1
               and 0 <= conf["set_size"][v] <= 5 for v in names)
    for picture in ("metrics.png", "flips.png", "reliability.png"):
        assert (out / picture).stat().st_size > 1000
    table = format_systematics(report)
    assert "escale_up" in table and "macro_f1_4" in table
    assert (out / "twins" / "nominal.noisy.h5").is_file()


def test_user_twins_and_held_out_events(files: dict[str, Path], tmp_path: Path) -> None:
    held = heldout_event_ids(files["run"], files["train"])
    split = json.loads((files["run"] / "split.json").read_text())
    assert held is not None and not set(held.tolist()) & set(split["train"])
    assert heldout_event_ids(files["run"], files["nominal"]) is None
    assert heldout_event_ids(files["run"], files["train"], part="test").tolist() == split["test"]
    twin = tmp_path / "noisy.h5"
    simulate_to_file(SimConfig(events=12, seed=21, detector="noisy"), twin, progress=False)
    report = evaluate_systematics(files["run"], files["train"], [], tmp_path / "out", twin_files={"my_noise": twin},
                                  n_boot=10)
    assert report["variations"] == ["nominal", "my_noise"]  # user twins may have any name
    assert report["events"] == len(held)  # the run's training events are left out
    assert not (tmp_path / "out" / "twins").exists()


def test_cli_prints_the_table_and_reports_errors(files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    assert main(["evaluate", "--model", str(files["run"]), "--data", str(files["nominal"]), "--variations",
                 "escale_down", "--max-events", "6", "--bootstrap", "10", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "escale_down" in printed and "report.json" in printed
    assert json.loads((out / "report.json").read_text())["events"] == 6

    def error(*argv: str) -> str:
        assert main(["evaluate", "--out", str(tmp_path / "x"), *argv]) == 2
        return capsys.readouterr().err

    assert ",".join(DEFAULT_VARIATIONS) == evaluate_cmd.DEFAULT_VARIATIONS
    assert "no such file" in error("--model", str(files["run"]), "--data", str(tmp_path / "missing.h5"))
    msg = error("--model", str(files["run"]), "--data", str(files["nominal"]), "--variations", "noisy,wobbly")
    assert "unknown detector 'wobbly'" in msg and "escale_up" in msg and "dead_regions" in msg
    assert "NAME=FILE" in error("--model", str(files["run"]), "--data", str(files["nominal"]), "--twins", "noisy")
    pid_run = tmp_path / "pid_run"
    pid_run.mkdir()
    save_config(dataclasses.replace(FinetuneConfig(), task="pid"), pid_run / "config.yaml")
    assert "not supported yet" in error("--model", str(pid_run), "--data", str(files["nominal"]))
    assert "not a fine-tuning run" in error("--model", str(tmp_path), "--data", str(files["nominal"]))
    with pytest.raises(DetfmError, match="max_events must be >= 2"):
        evaluate_systematics(files["run"], files["nominal"], ["noisy"], tmp_path / "y", max_events=1)


def test_views_turn_an_event_and_its_twins_alike(files: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.h5"
    shutil.copy(files["nominal"], copy)
    report = evaluate_systematics(files["run"], files["nominal"], [], tmp_path / "out", twin_files={"copy": copy},
                                  n_boot=10, views=3, view_seed=2)
    assert report["orientation_views"] == {"views": 3, "seed": 2}
    # the same events turned the same way: not one voxel changes its class, every metric equal
    assert report["flip_fraction"]["copy"]["mean"] == 0.0
    assert report["metrics"]["copy"] == report["metrics"]["nominal"]
    plain = evaluate_systematics(files["run"], files["nominal"], [], tmp_path / "plain", twin_files={"copy": copy},
                                 n_boot=10)
    assert "orientation_views" not in plain and plain["events"] == report["events"]
    # averaging changes the probabilities (this barely trained model calls one class either way)
    assert plain["calibration"]["ece_before"]["nominal"] != report["calibration"]["ece_before"]["nominal"]

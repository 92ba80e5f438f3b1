"""The simulation-to-data study: gap arithmetic, and the whole study at a tiny scale."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from detfm_testing import TINY_SHALLOW

from detfm.recipes.adapt import FinetuneConfig, load_finetune_config
from detfm.engine import TrainConfig
from detfm.errors import ConfigError, DetfmError
from detfm.io import EventFile, read_events, write_events
from detfm.recipes.pretrain import DataConfig, PretrainConfig
from detfm.sim.simulate import SimConfig, simulate_to_file
from detfm.commands.sim_to_data import add_sim_to_data_arguments, run_sim_to_data_from_args
from detfm.recipes.sim_to_data import (
    RESULTS_KIND,
    format_sim_to_data,
    gap_summary,
    sim_to_data_study,
)


def test_gap_arithmetic_ratio_and_goal() -> None:
    s = gap_summary([0.8, 0.7, 0.9], [0.5, 0.5, 0.6], [0.8, 0.8, 0.8], [0.7, 0.75, 0.7])
    assert s["A"]["gap"] == pytest.approx([0.3, 0.2, 0.3])
    assert s["B"]["gap"] == pytest.approx([0.1, 0.05, 0.1])
    assert s["gap_ratio"] == pytest.approx(0.25 / 0.8)
    assert s["goal_met"] is True
    half = gap_summary([1.0], [0.8], [1.0], [0.9])  # B gap 0.1 = exactly half of A's 0.2
    assert half["gap_ratio"] == pytest.approx(0.5) and half["goal_met"] is True
    miss = gap_summary([1.0], [0.8], [1.0], [0.85])
    assert miss["gap_ratio"] == pytest.approx(0.75) and miss["goal_met"] is False
    none = gap_summary([0.5, 0.5], [0.6, 0.5], [0.5, 0.5], [0.5, 0.5])  # A shows no gap: nothing to close
    assert none["gap_ratio"] is None and none["goal_met"] is False
    with pytest.raises(DetfmError, match="one score per seed"):
        gap_summary([1.0, 0.9], [0.8], [1.0], [0.9])
    table = format_sim_to_data({"seeds": [0, 1, 2], **s, "metric": "macro_f1_4", "data_detector": "data_like"})
    assert "goal (B gap <= 0.5 x A gap): met" in table and "+0.267" in table


def test_inputs_are_checked_before_anything_runs(tmp_path: Path) -> None:
    base = FinetuneConfig()
    plain = tmp_path / "plain.h5"
    simulate_to_file(SimConfig(events=2, seed=1), tmp_path / "sim.h5", progress=False)
    write_events(plain, read_events(tmp_path / "sim.h5"))
    with pytest.raises(DetfmError, match="not made by `detfm simulate`"):
        sim_to_data_study(PretrainConfig(), base, plain, tmp_path / "out")
    with pytest.raises(DetfmError, match="no such file"):
        sim_to_data_study(PretrainConfig(), base, tmp_path / "missing.h5", tmp_path / "out")
    with pytest.raises(DetfmError, match="Valid detectors"):
        sim_to_data_study(PretrainConfig(), base, tmp_path / "sim.h5", tmp_path / "out", data_detector="real")
    with pytest.raises(ConfigError, match="seeds"):
        sim_to_data_study(PretrainConfig(), base, tmp_path / "sim.h5", tmp_path / "out", seeds=(1, 1))
    with pytest.raises(ConfigError, match="b_mode must be one of"):
        sim_to_data_study(PretrainConfig(), base, tmp_path / "sim.h5", tmp_path / "out", b_mode="frozen")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resumable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nominal = tmp_path / "nominal.h5"
    simulate_to_file(SimConfig(events=20, seed=7), nominal, progress=False)
    pre = PretrainConfig(model="pointmae_micro", model_overrides=TINY_SHALLOW, data=DataConfig(rotate=False),
                         train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, progress=False))
    base = FinetuneConfig(labels=4, data=DataConfig(rotate=False), max_eval_events=2,
                          train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, progress=False))
    out = tmp_path / "study"
    results = sim_to_data_study(pre, base, nominal, out, seeds=(0, 1), unlabeled_events=6)
    assert results["kind"] == RESULTS_KIND and results["seeds"] == [0, 1]
    for side in ("A", "B"):
        assert len(results[side]["nominal"]) == len(results[side]["gap"]) == 2
        for n, d, g in zip(results[side]["nominal"], results[side]["data"], results[side]["gap"], strict=True):
            assert 0 <= n <= 1 and 0 <= d <= 1 and g == pytest.approx(n - d)
    assert json.loads((out / "results.json").read_text()) == results
    assert (out / "sim_to_data.png").stat().st_size > 1000
    unlabeled = EventFile(out / "data" / "unlabeled.data_like.h5")
    assert len(unlabeled) == 6 and unlabeled.attrs["detector"] == "data_like" and unlabeled.attrs["seed"] == 8
    twin = EventFile(out / "data" / "nominal.data_like.h5")
    assert len(twin) == 20 and twin.attrs["seed"] == 7
    # A and B were trained on the same labeled nominal events and scored on the same test events
    splits = [json.loads((out / f"{k}_s0" / "split.json").read_text()) for k in ("A", "B")]
    assert splits[0]["labeled"] == splits[1]["labeled"] and splits[0]["test"] == splits[1]["test"]
    assert load_finetune_config(out / "A_s0").backbone == "scratch"
    assert load_finetune_config(out / "B_s1").backbone == str(out / "pretrain")
    assert load_finetune_config(out / "B_s1").train.seed == 1

    # resumable: nothing is retrained, the same numbers come back (through the command line too)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*_s*/eval.json")}
    parser = argparse.ArgumentParser()
    add_sim_to_data_arguments(parser)
    args = parser.parse_args(["--data", str(nominal), "--out", str(out), "--seeds", "0", "1",
                              "--pretrain-run", str(out / "pretrain"), "--labels", "4", "--steps", "2", "--quiet"])
    assert run_sim_to_data_from_args(args) == 0
    assert "gap ratio B/A" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_s*/eval.json")} == stamps
    again = json.loads((out / "results.json").read_text())
    assert again["A"] == results["A"] and again["B"] == results["B"]

    # B adapted another way shares the study: A is reused, B's runs and results are separate
    head = sim_to_data_study(pre, base, nominal, out, seeds=(0, 1), pretrain_run=out / "pretrain", b_mode="head")
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert head["A"] == results["A"] and head["modes"] == {"A": "finetune", "B": "head"}
    assert load_finetune_config(out / "B_head_s1").mode == "head"
    assert json.loads((out / "results.head.json").read_text()) == head
    assert json.loads((out / "results.json").read_text()) == again
    assert "B pretrained on data, head" in (out / "results.head.txt").read_text()

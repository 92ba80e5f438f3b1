"""Seed sensitivity audit: aggregation, resumption, conclusions checked seed by seed, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from detfm_testing import one_torch_thread

from detfm.recipes.adapt import FinetuneConfig, load_finetune_config
from detfm.audit.sensitivity import (
    SensitivityReport,
    aggregate_metrics,
    compare_to_scratch,
    flatten_metrics,
    sensitivity_audit,
)
from detfm.cli import main
from detfm.engine import TrainConfig, save_config
from detfm.errors import DetfmError
from detfm.recipes.pretrain import DataConfig

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def base_config(tiny_events: Path, tiny_pretrained: Path) -> FinetuneConfig:
    return FinetuneConfig(backbone=str(tiny_pretrained), mode="head", labels=4, label_seed=0,
                          data=DataConfig(paths=(str(tiny_events),), rotate=False), max_eval_events=2,
                          train=TrainConfig(steps=2, batch_size=2, warmup_steps=0, lr=3e-3, progress=False))


@pytest.fixture(scope="module")
def audit(base_config: FinetuneConfig, tmp_path_factory: pytest.TempPathFactory) -> SensitivityReport:
    out = tmp_path_factory.mktemp("sens") / "audit"
    with one_torch_thread():
        return sensitivity_audit(base_config, SEEDS, out, compare_scratch=True)


def _evals(out: Path, prefix: str) -> list[dict]:
    return [json.loads((out / f"{prefix}{s}" / "eval.json").read_text()) for s in SEEDS]


# ----------------------------------------------------------------------------- the audit on real runs
def test_spread_matches_numpy_on_the_replicas_scores(audit: SensitivityReport) -> None:
    out = audit.out_dir
    written = json.loads((out / "sensitivity.json").read_text())
    assert written["kind"] == "detfm-sensitivity/1" and written["seeds"] == list(SEEDS)
    for prefix, key in (("seed_", "metrics"), ("scratch_seed_", "scratch_metrics")):
        evals = _evals(out, prefix)
        for name in ("macro_f1_4", "accuracy_5", "f1.track", "recall.shower"):
            raw = [e[name] if "." not in name else e[name.split(".")[0]][name.split(".")[1]] for e in evals]
            entry = written[key][name]
            assert entry["values"] == raw
            defined = np.array([v for v in raw if v is not None], dtype=float)
            if defined.size == 2:
                assert entry["mean"] == pytest.approx(defined.mean())
                assert entry["std"] == pytest.approx(defined.std(ddof=1))
                assert entry["spread"] == pytest.approx(defined.max() - defined.min())
        # counts and lists are not metrics
        assert not {"events", "points", "labels", "confusion", "class_weights"} & set(written[key])
    # the replicas differ only in the seed; the scratch ones copy the pretraining architecture
    for seed in SEEDS:
        for prefix in ("seed_", "scratch_seed_"):
            saved = load_finetune_config(out / f"{prefix}{seed}")
            assert saved.train.seed == seed and saved.label_seed == 0
    assert load_finetune_config(out / "scratch_seed_0").scratch
    assert (out / "scratch_seed_0" / "backbone.yaml").read_text() == (out / "seed_0" / "backbone.yaml").read_text()
    assert "| macro_f1_4 |" in (out / "sensitivity.md").read_text()


def test_conclusions_cover_the_headline_and_every_class(audit: SensitivityReport) -> None:
    statements = [c.statement for c in audit.conclusions]
    assert statements[0] == "pretrained beats scratch on macro_f1_4"
    assert {s for s in statements[1:]} == {f"pretrained beats scratch on {c} F1"
                                           for c in ("shower", "track", "michel", "delta", "low_energy")}
    head = audit.conclusions[0]
    pre, scratch = _evals(audit.out_dir, "seed_"), _evals(audit.out_dir, "scratch_seed_")
    assert [p["pretrained"] for p in head.per_seed] == [e["macro_f1_4"] for e in pre]
    assert [p["scratch"] for p in head.per_seed] == [e["macro_f1_4"] for e in scratch]
    assert head.holds_for_all_seeds == all(a["macro_f1_4"] > b["macro_f1_4"] for a, b in zip(pre, scratch))


def test_a_second_call_reuses_finished_seeds(audit: SensitivityReport, base_config: FinetuneConfig) -> None:
    out = audit.out_dir
    stamps = {p: (out / p / "model.safetensors").stat().st_mtime_ns
              for p in ("seed_0", "seed_1", "scratch_seed_0", "scratch_seed_1")}
    again = sensitivity_audit(base_config, SEEDS, out, compare_scratch=True)
    assert {p: (out / p / "model.safetensors").stat().st_mtime_ns for p in stamps} == stamps
    assert again.to_dict() == audit.to_dict()
    # a replica stopped after training but before scoring continues from its checkpoint
    scores = (out / "seed_1" / "eval.json").read_text()
    (out / "seed_1" / "eval.json").unlink()
    sensitivity_audit(base_config, SEEDS, out, compare_scratch=True)
    assert json.loads((out / "seed_1" / "eval.json").read_text()) == json.loads(scores)
    # a folder trained with another configuration is refused, not silently mixed in
    other = dataclasses.replace(base_config, train=dataclasses.replace(base_config.train, steps=3))
    with pytest.raises(DetfmError, match="another configuration"):
        sensitivity_audit(other, SEEDS, out)


def test_cli_prints_the_summary_and_refuses_bad_requests(audit: SensitivityReport, base_config: FinetuneConfig,
                                                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    save_config(base_config, cfg_path)
    assert main(["audit", "sensitivity", "--config", str(cfg_path), "--seeds", "2", "--out", str(audit.out_dir),
                 "--quiet"]) == 0  # pretrained backbone: the scratch comparison is on by default
    out = capsys.readouterr().out
    assert "seed sensitivity over 2 seeds" in out and "pretrained beats scratch on macro_f1_4" in out
    assert "sensitivity.json" in out
    assert main(["audit", "sensitivity", "--config", str(cfg_path), "--seeds", "1", "--out", str(tmp_path)]) == 2
    assert "at least 2 seeds" in capsys.readouterr().err
    assert main(["audit", "sensitivity", "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path)]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["audit", "sensitivity", "--config", str(cfg_path), "--backbone", "scratch", "--compare-scratch",
                 "--seeds", "0", "1", "--out", str(tmp_path / "s")]) == 2
    assert "needs a pretrained backbone" in capsys.readouterr().err
    assert main(["audit"]) == 2
    assert "sensitivity or diversity" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pure logic
def _eval(headline: float, track: float | None, shower: float = 0.5) -> dict:
    return {"task": "semseg", "events": 3, "points": 100, "macro_f1_4": headline, "classes": ["shower", "track"],
            "f1": {"shower": shower, "track": track}, "confusion": [[1, 0], [0, 1]], "class_weights": [1.0, 2.0]}


def test_flatten_keeps_scores_and_drops_bookkeeping() -> None:
    flat = flatten_metrics(_eval(0.7, None))
    assert flat == {"macro_f1_4": 0.7, "f1.shower": 0.5, "f1.track": None}
    per_particle = {"per_particle": {"track": {"pieces": 12, "mean_recall": 0.9, "tagged": 0.75}}}
    assert flatten_metrics({**_eval(0.7, None), **per_particle}) == {
        **flat, "per_particle.track.mean_recall": 0.9, "per_particle.track.tagged": 0.75}


def test_aggregate_ignores_undefined_values() -> None:
    spread = aggregate_metrics([_eval(0.5, 0.2), _eval(0.7, None), _eval(0.9, 0.4)])
    head = spread["macro_f1_4"]
    assert head.mean == pytest.approx(0.7) and head.std == pytest.approx(0.2)
    assert head.spread == pytest.approx(0.4)
    track = spread["f1.track"]
    assert track.values == (0.2, None, 0.4) and track.defined == 2
    assert track.mean == pytest.approx(0.3) and track.std == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert aggregate_metrics([_eval(0.5, None), _eval(0.6, None)])["f1.track"].mean is None


def test_conclusions_hold_for_all_seeds_or_name_the_seed_that_breaks_them() -> None:
    pre = [_eval(0.80, 0.6), _eval(0.75, 0.5), _eval(0.82, None)]
    scratch = [_eval(0.60, 0.4), _eval(0.70, 0.55), _eval(0.65, 0.3)]
    found = {c.metric: c for c in compare_to_scratch(pre, scratch, [0, 1, 2], "macro_f1_4")}
    assert set(found) == {"macro_f1_4", "f1.shower", "f1.track"}
    assert found["macro_f1_4"].holds_for_all_seeds
    assert [p["holds"] for p in found["macro_f1_4"].per_seed] == [True, True, True]
    track = found["f1.track"]  # fails at seed 1, undefined at seed 2
    assert not track.holds_for_all_seeds and track.holding_seeds == 1
    assert [p["holds"] for p in track.per_seed] == [True, False, None]
    assert track.to_dict()["per_seed"][1] == {"seed": 1, "pretrained": 0.5, "scratch": 0.55, "holds": False}
    assert not found["f1.shower"].holds_for_all_seeds  # a tie is not a win


def test_bad_requests_fail_before_training(base_config: FinetuneConfig, tmp_path: Path) -> None:
    with pytest.raises(DetfmError, match="at least 2 seeds"):
        sensitivity_audit(base_config, [3], tmp_path / "a")
    with pytest.raises(DetfmError, match="distinct"):
        sensitivity_audit(base_config, [1, 1], tmp_path / "a")
    with pytest.raises(DetfmError, match="needs a pretrained backbone"):
        sensitivity_audit(dataclasses.replace(base_config, backbone="scratch"), [0, 1], tmp_path / "a",
                          compare_scratch=True)
    assert not (tmp_path / "a").exists()

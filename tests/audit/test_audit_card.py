"""Model cards: metrics from eval.json, failure modes, attached results, lineage, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from detfm.audit.card import model_card
from detfm.engine.manifest import file_sha256, write_manifest
from detfm.audit.registry import Registry
from detfm.cli import main

CLASSES = ["shower", "track", "michel", "delta", "low_energy"]
EVAL = {
    "task": "semseg", "mode": "finetune", "backbone": "?", "labels": 10, "split": "test", "events": 5,
    "points": 1234, "classes": CLASSES, "macro_f1_5": 0.5432, "macro_f1_4": 0.6123, "accuracy_5": 0.8111,
    "f1": {"shower": 0.9, "track": 0.8, "michel": 0.1234, "delta": 0.3, "low_energy": None},
    "precision": {c: 0.5 for c in CLASSES}, "recall": {c: 0.5 for c in CLASSES},
    "confusion": [[90, 10, 0, 0, 0], [5, 95, 0, 0, 0], [0, 14, 6, 0, 0], [2, 0, 0, 8, 0], [0, 0, 0, 0, 0]],
}


def write_run(folder: Path, seed: int, config: str, data: Path, files: dict[str, object] | None = None) -> Path:
    folder.mkdir(parents=True)
    save_file({"backbone.w": np.random.default_rng(seed).normal(size=(8,)).astype(np.float32)},
              str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text(config)
    write_manifest(folder, inputs=[data], seeds={"train.seed": seed}, config={"seed": seed}, device="cpu",
                   started=1.0e9, ended=1.0e9 + 60, extra={"dataset_len": 17})
    for name, content in (files or {}).items():
        (folder / name).write_text(json.dumps(content))
    return folder


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    """A registry holding ``mae:1`` (pretraining) and ``seg:1``, fine-tuned from it."""
    data = tmp_path / "events.h5"
    data.write_bytes(b"simulated events")
    pre = write_run(tmp_path / "pre", 1, "# PretrainConfig\nmodel: pointmae_micro\n", data)
    split = {"usable_events": 50, "split": [0.8, 0.1, 0.1], "split_seed": 0, "labeled": list(range(10)),
             "train": list(range(40)), "val": list(range(5)), "test": list(range(5))}
    write_run(tmp_path / "ft", 2, f"# FinetuneConfig\nbackbone: {pre}\ntask: semseg\nmode: finetune\nlabels: 10\n",
              data, {"eval.json": EVAL, "split.json": split})
    reg = Registry(tmp_path / "reg")
    reg.add(pre, "mae")
    reg.add(tmp_path / "ft", "seg")
    return reg


def test_card_has_metrics_failure_modes_and_lineage(registry: Registry, tmp_path: Path) -> None:
    card = model_card(registry.get("seg:1"))
    assert card.startswith("# Model card: seg:1")
    assert "| macro_f1_4 | 0.6123 |" in card and "| macro_f1_5 | 0.5432 |" in card
    assert "| michel | 0.1234 | 0.5000 | 0.5000 |" in card                      # per-class table
    assert "lowest F1: **michel** (0.123)" in card and "lowest F1: **delta** (0.300)" in card
    assert "no test examples (F1 undefined): low_energy" in card
    assert "70.0% of true **michel** predicted as **track**" in card            # 14 of 20
    data_sha = file_sha256(tmp_path / "events.h5")
    lineage = card[card.index("## Lineage"):]
    assert "seg:1 (finetune)" in lineage and "<- backbone mae:1 (pretrain)" in lineage
    assert lineage.count(data_sha) == 2
    assert f"`{data_sha}`" in card and "events in the training set (after filters): 17" in card
    assert "labeled 10, train 40, val 5, test 5" in card
    for section in ("## Systematics", "## Calibration", "### Spread over seeds"):
        assert "not evaluated" in card[card.index(section):].split("\n##", 1)[0], section
    assert "seeds: train.seed=2" in card and "wall 60.0000 s" in card


def test_attached_results_replace_not_evaluated(registry: Registry, tmp_path: Path) -> None:
    study = {"metric": "macro_f1_4", "runs": [{"backbone": "pretrained", "mode": "finetune", "labels": 10, "seed": 2,
                                               "run": "/study/ft", "macro_f1_4": 0.6123}],
             "summary": {"pretrained": {"10": {"mean": 0.61, "std": 0.02, "n": 3}},
                                                 "scratch": {"10": {"mean": 0.41, "std": 0.05, "n": 3}}}}
    files = {"label_efficiency": study, "systematics": {"energy_scale_+5%": {"macro_f1_4": -0.031}},
             "calibration": {"ece": 0.0421, "temperature": 1.7}}
    paths = {}
    for role, content in files.items():
        paths[role] = tmp_path / f"{role}.json"
        paths[role].write_text(json.dumps(content))
    entry, created = registry.add(tmp_path / "ft", "seg", attach=paths)
    assert not created and {"label_efficiency", "systematics", "calibration"} <= set(entry.files)
    card = model_card(entry)
    assert "| pretrained / 10 | 0.6100 | 0.0200 | 3 |" in card and "| scratch / 10 | 0.4100 |" in card
    assert "| energy_scale_+5%.macro_f1_4 | -0.0310 |" in card
    assert "| ece | 0.0421 |" in card and "| temperature | 1.7000 |" in card
    assert "one point of the study: pretrained (finetune), 10 labels, seed 2: macro_f1_4 0.6123" in card
    assert "not evaluated" not in card


def test_a_systematics_report_gives_variations_and_calibration(registry: Registry, tmp_path: Path) -> None:
    def interval(value: float) -> dict[str, float]:
        return {"value": value, "lo": value - 0.01, "hi": value + 0.01}

    report = {"kind": "detfm-systematics/1", "events": 12, "variations": ["nominal", "noisy", "escale_up"],
              "metrics": {"nominal": {"macro_f1_4": interval(0.6)}, "noisy": {"macro_f1_4": interval(0.5)},
                          "escale_up": {"macro_f1_4": interval(0.59)}},
              "differences": {"nominal": {"macro_f1_4": interval(0.0)}, "noisy": {"macro_f1_4": interval(-0.1)},
                              "escale_up": {"macro_f1_4": interval(-0.01)}},
              "flip_fraction": {"noisy": {"mean": 0.2}, "escale_up": {"mean": 0.05}},
              "calibration": {"temperature": 1.3, "ece_before": {"nominal": 0.08}, "ece_after": {"nominal": 0.02}},
              "conformal": {"alpha": 0.1, "method": "aps", "coverage": {"nominal": 0.91}, "set_size": {"nominal": 1.4}}}
    (tmp_path / "ft" / "report.json").write_text(json.dumps(report))  # picked up from the run directory
    entry, _ = registry.add(tmp_path / "ft", "seg")
    card = model_card(entry)
    assert "| noisy | 0.5000 [0.4900, 0.5100] | -0.1000 [-0.1100, -0.0900] | 0.2000 |" in card
    assert "| temperature (fitted on nominal) | 1.3000 |" in card
    assert "| ECE after temperature scaling, nominal | 0.0200 |" in card
    assert "coverage, nominal (target 0.9000) | 0.9100 |" in card
    assert "largest drop: **noisy** (macro_f1_4 -0.100)" in card


def test_pretraining_card_and_cli(registry: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = model_card(registry.get("mae"))
    assert "self-supervised" in card and "Downstream metrics: not evaluated" in card
    assert "Per-class failure modes: not evaluated" in card
    out = tmp_path / "cards" / "seg.md"
    assert main(["card", "seg:1", "--registry", str(registry.root), "--out", str(out)]) == 0
    assert out.read_text() == model_card(registry.get("seg:1"))
    capsys.readouterr()
    assert main(["card", "seg", "--registry", str(registry.root)]) == 0
    assert "| macro_f1_4 | 0.6123 |" in capsys.readouterr().out
    assert main(["card", "seg:4", "--registry", str(registry.root)]) == 2
    assert "has no version 4" in capsys.readouterr().err


def test_an_attached_sensitivity_audit_gives_the_spread_and_conclusions(registry: Registry, tmp_path: Path) -> None:
    from detfm.audit.card import SENSITIVITY_KIND
    from detfm.audit.sensitivity import KIND

    assert SENSITIVITY_KIND == KIND

    def spread(values: list[float]) -> dict[str, object]:
        arr = np.array(values)
        return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)), "min": float(arr.min()),
                "max": float(arr.max()), "spread": float(arr.max() - arr.min()), "values": values}

    report = {"kind": KIND, "seeds": [0, 1, 2], "headline": "macro_f1_4",
              "metrics": {"macro_f1_4": spread([0.5, 0.6, 0.7]), "f1.track": spread([0.8, 0.9, 0.85]),
                          "precision.track": spread([0.1, 0.2, 0.3])},
              "scratch_metrics": {"macro_f1_4": spread([0.4, 0.5, 0.45])},
              "conclusions": [{"statement": "pretrained beats scratch on macro_f1_4", "holds_for_all_seeds": True,
                               "holding_seeds": 3, "per_seed": [{}, {}, {}]},
                              {"statement": "pretrained beats scratch on f1.track", "holds_for_all_seeds": False,
                               "holding_seeds": 1, "per_seed": [{}, {}, {}]}],
              "runs": {"model": ["/audit/seed_0", "/audit/ft", "/audit/seed_2"], "scratch": []}}
    path = tmp_path / "sensitivity.json"
    path.write_text(json.dumps(report))
    entry, _ = registry.add(tmp_path / "ft", "seg", attach={"sensitivity": path})
    card = model_card(entry)
    spread_section = card[card.index("### Spread over seeds"):].split("\n##", 1)[0]
    assert "over 3 seeds (0, 1, 2)" in spread_section
    assert "| macro_f1_4 | 0.6000 | 0.1000 | 0.5000 | 0.7000 | 0.4500 |" in spread_section
    assert "| f1.track | 0.8500 | 0.0500 | 0.8000 | 0.9000 | - |" in spread_section
    assert "precision.track" not in spread_section                      # per-class F1 and headline only
    assert "macro_f1_4: holds for every seed" in spread_section
    assert "f1.track: **does not hold for every seed** (1/3)" in spread_section
    assert "replica `ft`" in spread_section and "not evaluated" not in spread_section

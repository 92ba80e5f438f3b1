"""The adaptation recipe end to end: splits and label draws, the four modes, scores, predictions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from detfm_testing import TINY
from safetensors.torch import load_file, save_file
from torch import nn

from detfm.recipes.adapt import (
    FinetuneConfig,
    load_finetuned,
    predict_file,
    run_finetune,
    split_events,
)
from detfm.cli import main
from detfm.data import EventDataset, collate
from detfm.engine import TrainConfig, build_optimizer
from detfm.errors import ConfigError, DataFormatError, DetfmError
from detfm.evaluate.display import show_file
from detfm.io import Event, layout, read_events, write_events
from detfm.models.lora import LoRALinear
from detfm.recipes.pretrain import DataConfig


@pytest.fixture(scope="module")
def events(tiny_events: Path) -> Path:
    """The shared 20-event file (read-only)."""
    return tiny_events


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained: Path) -> Path:
    """A (barely) pretrained backbone run: 2 steps of masked point modeling (shared, read-only)."""
    return tiny_pretrained


def config(events: Path, backbone: str | Path = "scratch", **kw: object) -> FinetuneConfig:
    train = TrainConfig(steps=3, batch_size=2, warmup_steps=1, lr=3e-3, progress=False, log_every=1)
    base = FinetuneConfig(backbone=str(backbone), model_overrides=TINY, labels=4,
                          data=DataConfig(paths=(str(events),), rotate=False), train=train, max_eval_events=2)
    train_kw = {k[6:]: kw.pop(k) for k in list(kw) if k.startswith("train_")}
    return dataclasses.replace(base, train=dataclasses.replace(train, **train_kw), **kw)  # type: ignore[arg-type]


def backbone_weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(path)).items() if k.startswith("backbone.")}


# ----------------------------------------------------------------------------- splits
def test_label_draws_are_seeded_nested_and_disjoint_from_val_test(events: Path) -> None:
    cfg = config(events, labels=10)
    split = split_events(100, cfg)
    assert (len(split.train), len(split.val), len(split.test)) == (80, 10, 10)
    held_out = set(split.val) | set(split.test)
    assert set(split.labeled) <= set(split.train) and not set(split.labeled) & held_out
    assert np.array_equal(split.labeled, split_events(100, cfg).labeled)  # reproducible
    more = split_events(100, dataclasses.replace(cfg, labels=40))
    assert set(split.labeled) <= set(more.labeled)  # same seed: nested label sets
    assert np.array_equal(more.test, split.test) and np.array_equal(more.val, split.val)  # fixed split
    other = split_events(100, dataclasses.replace(cfg, label_seed=1))
    assert not np.array_equal(other.labeled, split.labeled)
    assert np.array_equal(other.test, split.test)  # the seed of the draw never moves the split
    with pytest.raises(DetfmError, match="train split has only 80"):
        split_events(100, dataclasses.replace(cfg, labels=81))


# ----------------------------------------------------------------------------- modes
def test_frozen_modes_leave_the_backbone_bitwise_unchanged(events: Path, pretrained: Path,
                                                           tmp_path: Path) -> None:
    original = backbone_weights(pretrained / "model.safetensors")
    for mode in ("probe", "head"):
        result = run_finetune(config(events, pretrained, mode=mode), tmp_path / mode)
        tuned = backbone_weights(tmp_path / mode / "model.safetensors")
        assert tuned.keys() == original.keys()
        for key, value in original.items():
            assert torch.equal(tuned[key], value), (mode, key)
        head = {k: v for k, v in load_file(str(tmp_path / mode / "model.safetensors")).items()
                if k.startswith("head.")}
        assert head and result.train.steps == 3
    # the probe is linear: no point embedding, no hidden layer
    assert not any("classifier" in k for k in load_file(str(tmp_path / "probe" / "model.safetensors")))


def test_finetune_applies_layer_wise_lr_decay(events: Path, pretrained: Path, tmp_path: Path) -> None:
    # One AdamW step from fresh moments moves every weight with a non-zero gradient by
    # exactly lr * scale (m / sqrt(v) = g / |g|), so the step sizes reveal each group's rate.
    lr, decay = 1e-3, 0.5
    cfg = config(events, pretrained, mode="finetune", layer_decay=decay, train_steps=1, train_lr=lr,
                 train_warmup_steps=0, train_weight_decay=0.0, train_min_lr=0.0, max_eval_events=1)
    run_finetune(cfg, tmp_path / "ft")
    before = backbone_weights(pretrained / "model.safetensors")
    after = backbone_weights(tmp_path / "ft" / "model.safetensors")

    def step(name: str) -> float:
        delta = (after[name] - before[name]).abs().flatten()
        return float(delta[delta > 0].median())

    # depth 2: tokenizer layer 0 -> decay^3, block 0 -> decay^2, block 1 -> decay, final norm -> 1
    expected = {"backbone.tokenizer.embed.second.3.weight": decay ** 3,
                "backbone.encoder.blocks.0.attn.qkv.weight": decay ** 2,
                "backbone.encoder.blocks.1.mlp.0.weight": decay,
                "backbone.encoder.norm.weight": 1.0}
    for name, scale in expected.items():
        assert step(name) == pytest.approx(lr * scale, rel=0.02), name


def test_lora_mode_trains_only_lora_and_predicts_merged(events: Path, pretrained: Path, tmp_path: Path) -> None:
    run = tmp_path / "lora"
    run_finetune(config(events, pretrained, mode="lora", lora_rank=2, lora_alpha=4.0), run)
    saved = load_file(str(run / "model.safetensors"))
    original = backbone_weights(pretrained / "model.safetensors")
    for key, value in original.items():
        assert torch.equal(saved[key], value), key  # base weights frozen
    lora_b = [v for k, v in saved.items() if k.endswith("lora_B")]
    assert len(lora_b) == TINY["depth"] * 4 and any(float(v.abs().sum()) > 0 for v in lora_b)
    task = load_finetuned(run)
    assert any(isinstance(m, LoRALinear) for m in task.modules())
    dataset = EventDataset([events], min_points=0, labels=False)
    with torch.no_grad():
        want = task.predict_proba(collate([dataset[0]]))
    predict_file(run, events, tmp_path / "p.h5", dtype="float32")  # merges LoRA before predicting
    with h5py.File(tmp_path / "p.h5") as h5:
        got = h5["probs"][0].reshape(-1, 5)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- scores, reload, predict
def test_eval_json_reload_and_aligned_predictions(events: Path, tmp_path: Path) -> None:
    run = tmp_path / "scratch"
    result = run_finetune(config(events, mode="head", exclude_low_energy=True), run)
    ev = json.loads((run / "eval.json").read_text())
    assert ev == json.loads(json.dumps(result.eval))
    assert ev["events"] == 2 and ev["labels"] == 4 and ev["mode"] == "head"
    assert set(ev["f1"]) == set(layout.SEMANTIC_CLASSES) and set(ev["f1_4"]) == set(layout.SEMANTIC_CLASSES[:4])
    for key in ("macro_f1_5", "macro_f1_4", "accuracy_5", "accuracy_4"):
        assert 0.0 <= ev[key] <= 1.0
    cm = np.array(ev["confusion"])
    assert cm.shape == (5, 5) and cm.sum() == ev["points"]
    assert np.array(ev["confusion_4"]).sum() == cm[:4].sum()  # low-energy points dropped
    split = json.loads((run / "split.json").read_text())
    assert not set(split["labeled"]) & (set(split["val"]) | set(split["test"]))
    assert len(split["labeled"]) == 4

    # reload: same probabilities as the trained task
    task = load_finetuned(run)
    dataset = EventDataset([events], min_points=0, labels=False)
    with torch.no_grad():
        want = task.predict_proba(collate([dataset[3]])).numpy()
    report = predict_file(run, events, tmp_path / "preds.h5")
    stored = read_events(events)
    assert report.events == len(stored) and report.events_per_second > 0
    with h5py.File(tmp_path / "preds.h5") as h5:
        assert np.array_equal(h5["event_index"][:], np.arange(len(stored)))
        assert h5.attrs["energy_threshold"] == pytest.approx(0.13)
        for i, event in enumerate(stored):
            n = int((event.energy >= 0.13).sum())  # aligned with the input after the threshold
            assert h5["n_points"][i] == n
            probs = h5["probs"][i].reshape(n, 5).astype(np.float32)
            assert probs.dtype == np.float32 and h5["probs"][i].dtype == np.float16
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=5e-3)
            pred = h5["pred"][i]
            assert pred.shape == (n,)
            assert np.all(probs[np.arange(n), pred] >= probs.max(axis=1) - 1e-3)
        np.testing.assert_allclose(h5["probs"][3].reshape(-1, 5), want, atol=2e-3)
    assert report.points == sum(int((e.energy >= 0.13).sum()) for e in stored)
    # the event display draws the prediction next to the truth; a wrong file is refused
    png = show_file(events, 3, tmp_path / "cmp.png", predictions=tmp_path / "preds.h5")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DetfmError, match="not a per-point prediction file"):
        show_file(events, 0, tmp_path / "x.png", predictions=events)


def test_predict_handles_unlabeled_files_and_empty_events(events: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run_finetune(config(events, mode="probe", train_steps=1), run)
    first = read_events(events)[:2]
    unlabeled = [Event(e.points, np.where(np.arange(e.clusters.shape[1]) >= layout.C_SEMANTIC, -1,
                                          e.clusters).astype(np.float32), e.cluster_extra) for e in first]
    faint = Event(first[0].points.copy(), first[0].clusters, first[0].cluster_extra)
    faint.points[:, layout.VALUE] = 0.01  # nothing survives the threshold
    write_events(tmp_path / "unlabeled.h5", [*unlabeled, faint])
    predict_file(run, tmp_path / "unlabeled.h5", tmp_path / "p.h5")
    with h5py.File(tmp_path / "p.h5") as h5:
        assert list(h5["n_points"][:]) == [int((e.energy >= 0.13).sum()) for e in first] + [0]
        assert len(h5["probs"][2]) == 0 and len(h5["pred"][2]) == 0
    # training on it is refused with a clear message
    with pytest.raises(DataFormatError, match="no usable semantic labels"):
        run_finetune(dataclasses.replace(config(events), data=DataConfig(paths=(str(tmp_path / "unlabeled.h5"),))),
                     tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs_fail_clearly_and_write_nothing(events: Path, pretrained: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(DetfmError, match="no such run directory"):
        run_finetune(config(events, tmp_path / "missing"), out)
    with pytest.raises(DetfmError, match="not a pretraining run"):
        run_finetune(config(events, tmp_path), out)
    with pytest.raises(DetfmError, match="labeled events, but the train split has only 16"):
        run_finetune(config(events, labels=17), out)
    with pytest.raises(DetfmError, match="larger than the 4 labeled"):
        run_finetune(config(events, train_batch_size=8), out)
    with pytest.raises(ConfigError, match="mode must be one of"):
        config(events, mode="adapter")
    # an incompatible backbone: the run's weights belong to another architecture
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.yaml").write_text((pretrained / "config.yaml").read_text())
    save_file({"backbone.encoder.norm.weight": torch.ones(7)}, str(broken / "model.safetensors"))
    with pytest.raises(DetfmError, match="do not fit"):
        run_finetune(config(events, broken), out)
    assert not out.exists()
    with pytest.raises(DetfmError, match="not a fine-tuning run"):
        load_finetuned(pretrained)
    with pytest.raises(DetfmError, match="not a fine-tuning run"):
        predict_file(tmp_path / "nothing", events, tmp_path / "p.h5")
    assert not (tmp_path / "p.h5").exists()


# ----------------------------------------------------------------------------- optimiser hook
class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)
        self.b = nn.Linear(3, 3)

    def param_lr_scales(self) -> dict[str, float]:
        return {"a.weight": 0.25, "a.bias": 0.25}


def test_optimizer_groups_follow_param_lr_scales() -> None:
    cfg = TrainConfig(lr=1e-2, weight_decay=0.1)
    groups = build_optimizer(_Scaled(), cfg).param_groups
    summary = sorted((g["weight_decay"], g["lr_scale"], g["lr"], len(g["params"])) for g in groups)
    assert summary == [(0.0, 0.25, 2.5e-3, 1), (0.0, 1.0, 1e-2, 1), (0.1, 0.25, 2.5e-3, 1), (0.1, 1.0, 1e-2, 1)]
    plain = build_optimizer(nn.Linear(3, 3), cfg).param_groups  # no hook: decayed, then not decayed
    assert [(g["weight_decay"], g["lr_scale"]) for g in plain] == [(0.1, 1.0), (0.0, 1.0)]


# ----------------------------------------------------------------------------- CLI
@pytest.mark.e2e
def test_cli_finetune_scratch_with_arch_and_predict(events: Path, pretrained: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "cli"
    argv = ["finetune", "--backbone", "scratch", "--arch", str(pretrained), "--data", str(events), "--task",
            "semseg", "--labels", "4", "--mode", "finetune", "--steps", "2", "--batch-size", "2", "--lr", "1e-3",
            "--seed", "3", "--out", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "macro-F1" in out and "eval.json" in out
    tagged = json.loads((run / "eval.json").read_text())["per_particle"]["track"]
    assert tagged["pieces"] > 0 and f"track {tagged['tagged']:.3f} of {tagged['pieces']}" in out
    arch = (run / "backbone.yaml").read_text()
    assert "num_groups: 32" in arch and "depth: 2" in arch  # the pretraining run's architecture
    tuned, original = backbone_weights(run / "model.safetensors"), backbone_weights(pretrained / "model.safetensors")
    assert tuned.keys() == original.keys() and any(not torch.equal(tuned[k], original[k]) for k in original)
    assert main(["predict", "--model", str(run), "--data", str(events), "--out", str(tmp_path / "p.h5"),
                 "--quiet"]) == 0
    assert "events/s" in capsys.readouterr().out
    assert main(["predict", "--model", str(run), "--data", str(events), "--out", str(tmp_path / "p.h5")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # a finished run is not overwritten by a second finetune into the same folder
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["finetune", "--data", str(events), "--out", str(tmp_path / "x")]) == 2
    assert "--backbone" in capsys.readouterr().err
    assert main(["finetune", "--backbone", str(pretrained), "--model", "pointmae_tiny", "--data", str(events),
                 "--out", str(tmp_path / "y")]) == 2
    assert "scratch only" in capsys.readouterr().err
    kept = ["finetune", "--backbone", str(pretrained), "--data", str(events), "--labels", "4", "--steps", "2",
            "--batch-size", "2", "--cache-features"]
    assert main([*kept, "--mode", "probe", "--out", str(tmp_path / "kept")]) == 0
    written = (tmp_path / "kept" / "config.yaml").read_text()
    assert "cache_features: true" in written and "rotate: false" in written  # the flag turns rotation off
    assert main([*kept, "--mode", "finetune", "--out", str(tmp_path / "kept_ft")]) == 2
    assert "mode probe or head" in capsys.readouterr().err


def test_pid_task_through_the_recipe(events: Path, tmp_path: Path) -> None:
    run = tmp_path / "pid"
    result = run_finetune(config(events, task="pid", mode="head", max_eval_events=None), run)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["classes"] == list(layout.PID_CLASSES[:5]) and ev["instances"] > 0
    assert np.array(ev["confusion"]).sum() == ev["instances"]
    assert set(ev["efficiency"]) == set(ev["purity"]) == set(ev["f1"]) == set(ev["classes"])
    assert 0.0 <= ev["macro_f1"] <= 1.0 and result.eval["task"] == "pid"
    assert len(ev["class_weights"]) == 5
    # predict: per-particle probabilities, aligned with the instances of each event
    predict_file(run, events, tmp_path / "pid.h5", dtype="float32")
    first = read_events(events)[0]
    with h5py.File(tmp_path / "pid.h5") as h5:
        assert h5.attrs["task"] == "pid" and len(h5["pid_pred"]) == len(read_events(events))
        groups = h5["group"][0]
        kept = first.instance[first.energy >= 0.13]
        assert list(groups) == sorted(set(kept[kept >= 0].tolist()))
        probs = h5["pid_probs"][0].reshape(len(groups), 5)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert np.array_equal(h5["pid_pred"][0], probs.argmax(axis=1))
    with pytest.raises(ConfigError, match=r"applies to tasks with an excluded class \(semseg\)"):
        config(events, task="pid", exclude_low_energy=True)


def test_event_task_through_the_recipe(events: Path, tmp_path: Path) -> None:
    run = tmp_path / "event"
    result = run_finetune(config(events, task="event", mode="head", max_eval_events=None), run)
    ev = json.loads((run / "eval.json").read_text())
    assert result.eval["task"] == "event" and ev["classes"] == list(layout.PID_CLASSES[:5])
    assert 0 < ev["scored_events"] <= ev["events"] and np.array(ev["confusion"]).sum() == ev["scored_events"]
    assert 0.0 <= ev["accuracy"] <= 1.0
    predict_file(run, events, tmp_path / "event.h5", dtype="float32")
    with h5py.File(tmp_path / "event.h5") as h5:
        probs = h5["event_probs"][:]
        assert probs.shape == (len(read_events(events)), 5) and h5.attrs["task"] == "event"
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert np.array_equal(h5["event_pred"][:], probs.argmax(axis=1))


@pytest.mark.parametrize("backbone", ["scratch", "pretrained"])
def test_same_seed_same_config_same_data_same_numbers(events: Path, pretrained: Path, tmp_path: Path,
                                                      backbone: str) -> None:
    """Two fine-tuning runs of one config give identical weights and scores; another seed does not."""
    source = "scratch" if backbone == "scratch" else pretrained
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        runs[name] = tmp_path / name
        run_finetune(config(events, source, train_seed=seed, data=DataConfig(paths=(str(events),), rotate=True)),
                     runs[name], progress=False)
    weights = {k: load_file(str(p / "model.safetensors")) for k, p in runs.items()}
    assert weights["a"].keys() == weights["b"].keys()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
    scores = {k: json.loads((p / "eval.json").read_text()) for k, p in runs.items()}
    assert scores["a"] == scores["b"]


def test_class_balance_weights_follow_the_class_fractions(events: Path) -> None:
    from detfm.recipes.adapt import class_balance_weights

    ds = EventDataset(events, labels=True)
    counts = np.zeros(5, dtype=np.int64)
    for i in range(len(ds)):
        counts += np.bincount(ds[i].semantic, minlength=5)[:5]
    fraction = counts / counts.sum()
    default = np.array(class_balance_weights(ds))
    expected = np.where(counts > 0, 1 / np.sqrt(np.maximum(fraction, 0.01)), 1.0)
    np.testing.assert_allclose(default, expected, rtol=1e-12)
    assert default.max() <= 10.0 + 1e-9  # the floor caps the inverse square root at 10
    inverse = np.array(class_balance_weights(ds, min_fraction=0.002, power=1.0))
    np.testing.assert_allclose(inverse, np.where(counts > 0, 1 / np.maximum(fraction, 0.002), 1.0), rtol=1e-12)
    rare, common = int(np.argmin(np.where(counts > 0, counts, counts.max()))), int(np.argmax(counts))
    assert inverse[rare] / inverse[common] > default[rare] / default[common]
    with pytest.raises(ConfigError, match="class_weight_power must lie in"):
        FinetuneConfig(class_weight_power=-1.0)


def test_kept_backbone_outputs_train_the_head_as_running_the_backbone_does(events: Path, pretrained: Path,
                                                                           tmp_path: Path) -> None:
    """``cache_features``: the backbone runs once per labeled event; the weights match a run without it."""
    results = {name: run_finetune(config(events, pretrained, mode="head", cache_features=keep, train_steps=6),
                                  tmp_path / name, progress=False)
               for name, keep in (("plain", False), ("kept", True))}
    kept = results["kept"].eval["feature_cache"]
    assert kept["events"] == 4 and kept["events_computed"] == 4 and kept["events_served"] == 8
    assert "feature_cache" not in results["plain"].eval
    plain, cached = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("plain", "kept"))
    assert plain.keys() == cached.keys()
    for key in plain:
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="mode probe or head"):
        config(events, mode="finetune", cache_features=True)
    with pytest.raises(ConfigError, match="data.rotate: false"):
        config(events, mode="head", cache_features=True, data=DataConfig(paths=(str(events),), rotate=True))

"""Particle ID by boosted trees on a semseg run (`fit_pid_trees_run`, `detfm pid-trees`), scored through
`score_run` and `detfm score --pid-trees`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from detfm_testing import assert_events_scored_alone, tiny_finetune_config

from detfm.cli import main
from detfm.data import EventDataset, collate
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.boosted_trees import TreeSettings
from detfm.evaluate.particle_trees import (TreeParticleID, load_pid_trees, particle_table, save_pid_trees,
                                          table_columns)
from detfm.recipes.adapt import load_finetuned, predict_file, run_finetune, score_run
from detfm.recipes.particle_trees import fit_pid_trees_run, labeled_particles, working_point_offset
from detfm.tasks.pid import find_instances
from detfm.tasks.registry import get_task

pytest.importorskip("sklearn")

SETTINGS = TreeSettings(iterations=8, leaves=5)


@pytest.fixture(scope="module")
def semseg_run(tiny_events: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("pid_trees") / "run"
    cfg = dataclasses.replace(tiny_finetune_config(tiny_events, split=(0.6, 0.0, 0.4)), labels=12)
    run_finetune(cfg, run)
    return run


@pytest.fixture(scope="module")
def fitted(semseg_run: Path) -> dict:  # type: ignore[type-arg]
    return fit_pid_trees_run(semseg_run, views=2, settings=SETTINGS, working_point="electron", folds=2)


def events_of(run: Path, part: str) -> EventDataset:
    from detfm.recipes.adapt import load_finetune_config, run_split_events

    cfg = load_finetune_config(run)
    events = EventDataset(list(cfg.data.paths), energy_threshold=cfg.data.energy_threshold,
                          min_points=cfg.data.min_points, labels=True, seed=cfg.train.seed)
    return run_split_events(run, events, part)


def test_the_table_has_one_named_row_per_particle_read_from_its_own_event(semseg_run: Path) -> None:
    segmentation = load_finetuned(semseg_run)
    events = events_of(semseg_run, "test")
    batch = collate([events[i] for i in range(3)])
    rows, inst = particle_table(segmentation, batch)
    columns = table_columns(segmentation.backbone.num_features, get_task("semseg").class_names)
    assert rows.shape == (len(find_instances(batch.offsets, batch.instance, batch.pid)), len(columns))
    assert bool(torch.isfinite(rows).all())
    probs = rows[:, [columns.index(f"mean_prob_{c}") for c in get_task("semseg").class_names]]
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(rows)), atol=1e-5)  # mean class probabilities
    alone, _ = particle_table(segmentation, collate([events[1]]))
    first = int((inst.event == 0).sum())
    assert torch.allclose(rows[first:first + len(alone)], alone, atol=1e-5)


def test_fitting_writes_the_trees_and_the_working_point_from_held_out_folds(semseg_run: Path, fitted: dict) -> None:  # type: ignore[type-arg]
    info = fitted
    assert json.loads((semseg_run / "pid_trees.json").read_text()) == info
    labeled = json.loads((semseg_run / "split.json").read_text())["labeled"]
    assert info["labeled_events"] == len(labeled) and info["views"] == 2
    assert info["class_names"] == list(get_task("pid").class_names)
    assert sum(info["fitted_particles"].values()) * 2 == info["fitted_rows"]
    point = info["working_point"]
    assert point["class"] == "electron" and point["folds"] == 2
    assert info["offsets"][1] == pytest.approx(point["offset"], abs=1e-4)
    assert [o for c, o in enumerate(info["offsets"]) if c != 1] == [0.0] * 4
    trees, offsets, loaded = load_pid_trees(semseg_run)
    assert loaded == info and trees.num_features == len(info["columns"])
    assert offsets[1] == pytest.approx(point["offset"], abs=1e-6)


def test_the_rows_of_two_views_are_the_particles_twice(semseg_run: Path) -> None:
    segmentation = load_finetuned(semseg_run)
    events = events_of(semseg_run, "labeled")
    rows, labels, owners = labeled_particles(segmentation, events, views=2, batch_size=4)
    half = len(rows) // 2
    assert torch.equal(labels[:half], labels[half:]) and torch.equal(owners[:half], owners[half:])
    assert not torch.allclose(rows[:half], rows[half:])  # the second view is the events turned
    assert set(owners.tolist()) <= set(events.event_ids.tolist())


def test_scoring_with_the_trees_gives_pid_scores_on_the_test_split(semseg_run: Path, fitted: dict) -> None:  # type: ignore[type-arg]
    scores = score_run(semseg_run, pid_trees=True)
    assert scores["task"] == "pid" and scores["classes"] == list(get_task("pid").class_names)
    assert scores["scored"]["pid_trees"]["working_point"]["class"] == "electron"
    test = events_of(semseg_run, "test")
    batch = collate([test[i] for i in range(len(test))])
    assert scores["instances"] == int((find_instances(batch.offsets, batch.instance, batch.pid).label >= 0).sum())
    assert 0.0 <= scores["macro_f1"] <= 1.0 and set(scores["efficiency"]) == set(scores["classes"])


def test_the_tree_task_scores_each_event_alone_and_applies_its_offsets(semseg_run: Path, fitted: dict) -> None:  # type: ignore[type-arg]
    trees, offsets, _ = load_pid_trees(semseg_run)
    segmentation = load_finetuned(semseg_run)
    task = TreeParticleID(segmentation, trees, offsets)
    events = events_of(semseg_run, "test")
    assert_events_scored_alone(task, events)
    batch = collate([events[i] for i in range(2)])
    labels, logp = task.scored_items(batch)
    assert torch.allclose(logp.exp().sum(dim=1), torch.ones(len(logp)), atol=1e-5)
    plain = TreeParticleID(segmentation, trees)
    _, base = plain.scored_items(batch)
    shifted = torch.log_softmax(base.double() + offsets.double(), dim=1)
    assert torch.allclose(shifted.float(), logp, atol=1e-5)
    with pytest.raises(ConfigError, match="offsets"):
        TreeParticleID(segmentation, trees, torch.zeros(3))


def test_predictions_with_the_trees_are_pid_rows_per_particle(semseg_run: Path, fitted: dict,  # type: ignore[type-arg]
                                                               tmp_path: Path) -> None:
    import h5py

    from detfm.recipes.adapt import load_finetune_config

    cfg = load_finetune_config(semseg_run)
    data = cfg.data.paths[0]
    out = predict_file(semseg_run, data, tmp_path / "pid.h5", dtype="float32", pid_trees=True)
    trees, offsets, _ = load_pid_trees(semseg_run)
    task = TreeParticleID(load_finetuned(semseg_run), trees, offsets)
    events = EventDataset([data], energy_threshold=cfg.data.energy_threshold, min_points=0, labels=True)
    with h5py.File(out.path, "r") as h5:
        assert h5.attrs["task"] == "pid" and json.loads(h5.attrs["pid_trees"])["working_point"]["class"] == "electron"
        for i in (0, 3):
            if events[i].n_points == 0:
                continue
            logp, _, group = task.item_outputs(collate([events[i]]))
            probs = h5["pid_probs"][i].reshape(-1, 5)
            assert torch.allclose(torch.from_numpy(probs), logp.exp(), atol=1e-5)
            assert h5["group"][i].tolist() == group.tolist()
            assert h5["pid_pred"][i].tolist() == logp.argmax(dim=1).tolist()


def test_a_working_point_balances_efficiency_and_purity() -> None:
    # 10 electrons (class 1) against 30 photons (class 0); the electron logit rises with the index
    truth = torch.tensor([0] * 30 + [1] * 10)
    logits = torch.zeros(40, 5)
    logits[:, 1] = torch.linspace(-2.0, 1.0, 40)
    offset, eff, pur = working_point_offset(logits, truth, 1)
    assert eff == pytest.approx(pur, abs=0.15) and min(eff, pur) >= 0.8
    shifted = logits.clone()
    shifted[:, 1] += offset
    pred = shifted.argmax(dim=1)
    assert float(((pred == 1) & (truth == 1)).sum() / (truth == 1).sum()) == pytest.approx(eff)


def test_bad_requests_are_refused_before_the_model_pass(semseg_run: Path, tmp_path: Path,
                                                        fitted: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError, match="not a PID class"):
        fit_pid_trees_run(semseg_run, working_point="kaon", settings=SETTINGS)
    with pytest.raises(ConfigError, match="folds"):
        fit_pid_trees_run(semseg_run, folds=1, settings=SETTINGS)
    with pytest.raises(ConfigError, match="fragment"):
        score_run(semseg_run, pid_trees=True, fragment_vote=True)
    bare = tmp_path / "bare"
    shutil.copytree(semseg_run, bare)
    (bare / "pid_trees.json").unlink()
    with pytest.raises(DetfmError, match="detfm pid-trees --model"):
        score_run(bare, pid_trees=True)
    info = json.loads((semseg_run / "pid_trees.json").read_text())
    (bare / "pid_trees.json").write_text(json.dumps({**info, "format": "other/0"}))
    with pytest.raises(DetfmError, match="format"):
        load_pid_trees(bare)
    trees, offsets, _ = load_pid_trees(semseg_run)
    save_pid_trees(trees, offsets, {**info, "class_names": info["class_names"][:3]}, bare)
    with pytest.raises(DetfmError, match="does not match"):
        load_pid_trees(bare)
    (bare / "pid_trees.safetensors").write_bytes(b"not a safetensors file")
    (bare / "pid_trees.json").write_text(json.dumps(info))
    with pytest.raises(DetfmError, match="not a readable safetensors"):
        load_pid_trees(bare)


@pytest.mark.e2e
def test_the_commands_fit_and_score(semseg_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(semseg_run, run)
    for name in ("pid_trees.json", "pid_trees.safetensors"):
        (run / name).unlink(missing_ok=True)
    assert main(["pid-trees", "--model", str(run), "--iterations", "4", "--leaves", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "detfm score --model" in out
    assert main(["pid-trees", "--model", str(run), "--quiet"]) == 2  # exists: needs --overwrite
    assert "--overwrite" in capsys.readouterr().err
    scores = tmp_path / "scores.json"
    assert main(["score", "--model", str(run), "--pid-trees", "--quiet", "--out", str(scores)]) == 0
    out = capsys.readouterr().out
    assert "boosted trees" in out and "efficiency / purity: photon" in out
    assert json.loads(scores.read_text())["task"] == "pid"

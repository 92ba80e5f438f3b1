"""Scoring a fine-tuned run again (`score_run`, `detfm score`) and orientation averaging through
the recipes: the fine-tune's own test scores, predictions and their agreement."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from detfm_testing import register_test_models, tiny_finetune_config

from detfm.cli import main
from detfm.data import EventDataset, PackedBatch, collate
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.orientations import OrientationAverage
from detfm.recipes.adapt import FinetuneConfig, load_finetuned, predict_file, run_finetune, score_run


def config(events: Path, **kw: object) -> FinetuneConfig:
    return tiny_finetune_config(events, **kw)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def run(tiny_events: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("score") / "run"
    run_finetune(config(tiny_events, test_views=2), out)
    return out


def _core(scores: dict) -> dict:  # type: ignore[type-arg]
    return {k: scores[k] for k in ("events", "points", "confusion", "macro_f1_4", "orientation_views")}


def test_scoring_again_gives_the_runs_own_test_scores(run: Path, tiny_events: Path, tmp_path: Path) -> None:
    ev = json.loads((run / "eval.json").read_text())
    assert ev["orientation_views"] == {"views": 2, "seed": 0}  # test_views: 2 in the config
    again = score_run(run, views=2)
    assert _core(again) == _core(ev) and again["scored"]["events"] == "test split of the run"
    plain = score_run(run)
    assert "orientation_views" not in plain and plain["points"] == ev["points"]
    assert plain["confusion"] != ev["confusion"]  # the averaged calls differ from the plain ones
    assert score_run(run, views=2, max_events=1)["events"] == 1
    # the run's file moved: a clear error, and --data with the run's own split finds its events again
    moved = tmp_path / "moved.h5"
    shutil.copy(tiny_events, moved)
    cfg_file = run.parent / "run_moved"
    shutil.copytree(run, cfg_file)
    text = (cfg_file / "config.yaml").read_text().replace(str(tiny_events), str(tmp_path / "gone.h5"))
    (cfg_file / "config.yaml").write_text(text)
    with pytest.raises(DetfmError, match="no such file.*pass --data"):
        score_run(cfg_file)
    assert _core(score_run(cfg_file, [moved], own_split=True, views=2)) == _core(ev)
    everything = score_run(run, [tiny_events])
    assert everything["scored"]["events"] == "all usable" and everything["events"] > ev["events"]


def test_a_split_that_does_not_fit_the_files_is_refused(run: Path, tmp_path: Path) -> None:
    other = run.parent / "run_other"
    shutil.copytree(run, other)
    split = json.loads((other / "split.json").read_text())
    split["test"] = [10_000]
    (other / "split.json").write_text(json.dumps(split))
    unknown = r"1 test events of split.json are not among the usable events of .*ev\.h5: the files"
    with pytest.raises(DetfmError, match=unknown):
        score_run(other)
    with pytest.raises(ConfigError, match="max_events"):
        score_run(run, max_events=0)


def test_predictions_with_views_are_the_averaged_probabilities(run: Path, tiny_events: Path,
                                                               tmp_path: Path) -> None:
    predict_file(run, tiny_events, tmp_path / "p.h5", dtype="float32", views=3, view_seed=4)
    task = OrientationAverage(load_finetuned(run), 3, seed=4)
    sample = EventDataset([tiny_events], min_points=0, labels=False)[3]
    with torch.no_grad():
        want = task.item_outputs(collate([sample]))[0].exp().numpy()
    with h5py.File(tmp_path / "p.h5") as h5:
        assert json.loads(h5.attrs["orientation_views"]) == {"views": 3, "seed": 4}
        np.testing.assert_allclose(h5["probs"][3].reshape(-1, 5), want, atol=1e-5)
    predict_file(run, tiny_events, tmp_path / "plain.h5", dtype="float32")
    with h5py.File(tmp_path / "plain.h5") as h5:
        assert "orientation_views" not in h5.attrs
        assert not np.allclose(h5["probs"][3].reshape(-1, 5), want, atol=1e-4)


def test_the_fragment_vote_through_score_and_predict(run: Path, tiny_events: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``fragment_vote`` wraps the (view-averaged) task in a FragmentVote: scores and predictions
    are those of the voted probabilities and say so; other tasks refuse it."""
    from detfm.evaluate.fragments import FragmentVote
    from detfm.io import layout

    voted = score_run(run, views=2, fragment_vote=True)
    assert voted["fragment_vote"] == {"classes": ["shower", "michel", "delta"]}
    assert voted["orientation_views"] == {"views": 2, "seed": 0}
    assert "fragment_vote" not in score_run(run)
    predict_file(run, tiny_events, tmp_path / "v.h5", dtype="float32", views=2, fragment_vote=True)
    group = (layout.SHOWER, layout.MICHEL, layout.DELTA)
    task = FragmentVote(OrientationAverage(load_finetuned(run), 2), group, excluded=layout.LOW_ENERGY)
    sample = EventDataset([tiny_events], min_points=0, labels=False)[3]
    with torch.no_grad():
        want = task.item_outputs(collate([sample]))[0].exp().numpy()
    with h5py.File(tmp_path / "v.h5") as h5:
        assert json.loads(h5.attrs["fragment_vote"]) == ["shower", "michel", "delta"]
        np.testing.assert_allclose(h5["probs"][3].reshape(-1, 5), want, atol=1e-5)
    assert main(["score", "--model", str(run), "--fragment-vote", "--quiet"]) == 0
    assert "fragment vote over shower, michel, delta" in capsys.readouterr().out
    assert main(["predict", "--model", str(run), "--data", str(tiny_events), "--out", str(tmp_path / "c.h5"),
                 "--views", "2", "--fragment-vote", "--float32", "--quiet"]) == 0
    with h5py.File(tmp_path / "c.h5") as h5:
        np.testing.assert_allclose(h5["probs"][3].reshape(-1, 5), want, atol=1e-5)
    pid_run = tmp_path / "pid"
    run_finetune(config(tiny_events, task="pid"), pid_run)
    with pytest.raises(ConfigError, match="this is a 'pid' task, which has no fragment classes: leave out the fragment vote"):
        score_run(pid_run, fragment_vote=True)
    with pytest.raises(ConfigError, match="this is a 'pid' task, which has no fragment classes"):
        predict_file(pid_run, tiny_events, tmp_path / "x.h5", fragment_vote=True)
    assert not (tmp_path / "x.h5").exists()


def test_the_config_key_is_checked(tiny_events: Path) -> None:
    for bad in (0, True, 1.5):
        with pytest.raises(ConfigError, match="test_views must be an integer >= 1"):
            config(tiny_events, test_views=bad)
    with pytest.raises(ConfigError, match="finds its own particles"):
        config(tiny_events, task="particles", test_views=2)
    assert dataclasses.replace(config(tiny_events), test_views=3).test_views == 3


def test_cli_score_prints_and_writes_the_scores(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    out = tmp_path / "scores.json"
    assert main(["score", "--model", str(run), "--views", "2", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "averaged over 2 orientations" in printed and "macro-F1" in printed
    assert _core(json.loads(out.read_text())) == _core(json.loads((run / "eval.json").read_text()))
    assert main(["score", "--model", str(run), "--out", str(out)]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err
    assert main(["score", "--model", str(run), "--views", "0"]) == 2
    assert "views must be an integer >= 1" in capsys.readouterr().err
    assert main(["score", "--model", str(run), "--own-split"]) == 2
    assert "--own-split needs --data" in capsys.readouterr().err


def test_a_pid_run_names_the_particles_a_particles_run_finds(run: Path, tiny_events: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Two stages: the decoder's particles (masks, energies) stay as they are, their classes are
    the pid head's pooled logits over each found particle's points; the wrong kinds of run are
    refused."""
    from detfm.evaluate.particles import ParticlesWithPid, collect_particle_records, particle_scores
    from detfm.tasks.particles import ParticlePredictions, particle_targets

    register_test_models()
    small = {"num_heads": 2, "num_queries": 6, "decoder_blocks": 1}
    particles_run, pid_run = tmp_path / "particles", tmp_path / "pid"
    pointwise = {"model": "pointwise_test", "model_overrides": {}}
    run_finetune(dataclasses.replace(config(tiny_events, task="particles", head_hidden=16, task_settings=small),
                                     **pointwise), particles_run)
    # the pid head also reads the particle measurements, here of the particles the decoder finds
    run_finetune(dataclasses.replace(config(tiny_events, task="pid", task_settings={"measurements": True}),
                                     **pointwise), pid_run)
    particles, pid = load_finetuned(particles_run), load_finetuned(pid_run)
    assert pid.measure is not None

    def truth_as_found(batch: PackedBatch) -> ParticlePredictions:  # a decoder that finds every particle
        t = particle_targets(batch)
        k = len(t)
        return ParticlePredictions(point_particle=t.point_particle, event=t.event, query=torch.arange(k),
                                   logits=torch.linspace(-2, 2, 6 * k).reshape(k, 6),
                                   label=torch.zeros(k, dtype=torch.long),
                                   energy=torch.arange(k).float(), start=torch.zeros(k, 3), size=t.size,
                                   semantic_logits=torch.zeros(batch.num_points, 5))

    particles.predict = truth_as_found  # type: ignore[method-assign]
    both = ParticlesWithPid(particles, pid)
    events = EventDataset([str(tiny_events)], labels=True)
    batch = collate([events[i] for i in range(3)])
    alone, named = truth_as_found(batch), both.predict(batch)
    assert len(alone) > 3
    assert torch.equal(named.point_particle, alone.point_particle) and torch.equal(named.energy, alone.energy)
    with torch.no_grad():
        expected = pid.pooled_logits(batch, alone.point_particle, len(alone)).softmax(-1)
    p_named, p_alone = named.logits.softmax(-1), alone.logits.softmax(-1)
    torch.testing.assert_close(p_named[:, 5], p_alone[:, 5])  # the decoder's p(no object) is kept
    torch.testing.assert_close(p_named[:, :5], (1 - p_alone[:, 5:]) * expected)  # the classes are the pid head's
    assert torch.equal(named.label, expected.argmax(-1))
    scores = particle_scores(collect_particle_records(both, events), ["photon", "electron", "muon", "pion", "proton"])
    assert scores["finding"]["efficiency_all"] == 1.0
    assert np.asarray(scores["confusion"]).sum() == scores["particles"]  # every particle named by the pid head
    # through score_run and the command line
    again = score_run(particles_run, pid_run=pid_run)
    assert again["scored"]["pid_run"] == str(pid_run)
    own = json.loads((particles_run / "eval.json").read_text())
    assert again["parameters"] == own["parameters"] and again["finding"] == own["finding"]
    with pytest.raises(ConfigError, match="the second stage must be a pid run"):
        score_run(particles_run, pid_run=run)
    with pytest.raises(ConfigError, match="is a semseg run"):
        score_run(run, pid_run=pid_run)
    assert main(["score", "--model", str(particles_run), "--pid", str(tmp_path / "nowhere")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    # predictions: the same particles, the pid run recorded
    plain, two = tmp_path / "plain.h5", tmp_path / "two.h5"
    predict_file(particles_run, tiny_events, plain)
    predict_file(particles_run, tiny_events, two, pid_run=pid_run)
    with h5py.File(plain) as a, h5py.File(two) as b:
        assert b.attrs["pid_run"] == str(pid_run.resolve()) and "pid_run" not in a.attrs
        for i in range(len(a["particle_sizes"])):
            assert np.array_equal(a["particle_points"][i], b["particle_points"][i])
            np.testing.assert_allclose(a["particle_score"][i], b["particle_score"][i], rtol=1e-5)
    with pytest.raises(ConfigError, match="is a semseg run"):
        predict_file(run, tiny_events, tmp_path / "x.h5", pid_run=pid_run)

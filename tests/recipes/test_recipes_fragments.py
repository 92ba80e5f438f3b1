"""Fitting a semseg run's fragment classifier (`fit_fragment_run`, `detfm fragments`) and applying it
through `score_run`, `predict_file`, `detfm score` and `detfm predict`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from detfm_testing import tiny_finetune_config
from safetensors.torch import load_file

from detfm.cli import main
from detfm.data import EventDataset, collate
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.fragment_classifier import FragmentRelabel, load_fragment_stage
from detfm.evaluate.orientations import OrientationAverage
from detfm.recipes.adapt import FinetuneConfig, load_finetuned, predict_file, run_finetune, score_run
from detfm.recipes.fragments import fit_fragment_run, fit_fragment_stage, fragment_groups, labeled_outputs
from detfm.tasks.registry import get_task


def config(events: Path, **kw: object) -> FinetuneConfig:
    return tiny_finetune_config(events, **kw)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def fitted(tiny_events: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    run = tmp_path_factory.mktemp("fragments") / "run"
    run_finetune(config(tiny_events), run)
    info = fit_fragment_run(run, views=2, epochs=20, members=2, track_side=True)
    return run, info


def test_the_groups_of_semseg_are_the_fragment_classes_then_track() -> None:
    assert fragment_groups(get_task("semseg")) == ((0, 1, 2, 3), ((0, 2, 3),))
    assert fragment_groups(get_task("semseg"), track_side=True) == ((0, 1, 2, 3), ((0, 2, 3), (1,)))
    with pytest.raises(ConfigError, match="no fragment classes"):
        fragment_groups(get_task("pid"))


Fitted = tuple[Path, dict]  # type: ignore[type-arg]


def test_fitting_writes_the_classifier_and_what_it_was_fitted_on(fitted: Fitted) -> None:
    run, info = fitted
    assert json.loads((run / "fragment_classifier.json").read_text()) == info
    labeled = json.loads((run / "split.json").read_text())["labeled"]
    assert info["views"] == 2 and info["labeled_events"] == len(labeled)
    assert [side["classes"] for side in info["sides"]] == [["shower", "michel", "delta"], ["track"]]
    assert info["scored"] == ["shower", "track", "michel", "delta"] and info["epochs"] == 20 and info["members"] == 2
    for side in info["sides"]:
        assert 0 < sum(side["fitted_fragments"].values()) <= side["fragments"]
    assert set(info["labeled_scores"]) == {"before", "after"}
    stage, _ = load_fragment_stage(run)
    assert [tuple(g) for g in info["groups"]] == list(stage.groups)
    # the same run, data and seed give the same classifier
    again = run.parent / "again"
    shutil.copytree(run, again)
    fit_fragment_run(again, views=2, epochs=20, members=2, track_side=True)
    first, second = load_file(str(run / "fragment_classifier.safetensors")), load_file(
        str(again / "fragment_classifier.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_the_stage_fits_on_stored_outputs_as_the_run_does(fitted: Fitted) -> None:
    run, info = fitted
    out = labeled_outputs(run, views=2)
    labeled = json.loads((run / "split.json").read_text())["labeled"]
    assert len(torch.unique(out.event)) == len(labeled) and out.probs.shape == (len(out.truth), 5)
    stage, report = fit_fragment_stage(out, get_task("semseg"), epochs=20, members=2, track_side=True)
    assert report["labeled_scores"] == info["labeled_scores"] and report["sides"] == info["sides"]
    stored = load_file(str(run / "fragment_classifier.safetensors"))
    assert all(torch.equal(v, stored[k]) for k, v in stage.state_dict().items())
    # a selection keeps the chosen events' points, ids unchanged
    some = out.select(torch.tensor([0, 2]))
    assert set(torch.unique(some.event).tolist()) == {0, 2}
    assert len(some.truth) == int(((out.event == 0) | (out.event == 2)).sum())


def test_score_and_predict_apply_the_fitted_classifier(fitted: Fitted, tiny_events: Path, tmp_path: Path) -> None:
    run, _ = fitted
    scores = score_run(run, views=2, fragment_classifier=True)
    assert scores["fragment_classifier"] == {"sides": [["shower", "michel", "delta"], ["track"]], "fitted_views": 2,
                                             "point_refiner": False}
    assert scores["orientation_views"] == {"views": 2, "seed": 0}
    stage, _ = load_fragment_stage(run)
    task = FragmentRelabel(OrientationAverage(load_finetuned(run), 2), stage)
    sample = EventDataset([tiny_events], min_points=0, labels=False)[3]
    with torch.no_grad():
        want = task.item_outputs(collate([sample]))[0].exp().numpy()
    predict_file(run, tiny_events, tmp_path / "p.h5", dtype="float32", views=2, fragment_classifier=True)
    with h5py.File(tmp_path / "p.h5") as h5:
        assert json.loads(h5.attrs["fragment_classifier"])["fitted_views"] == 2
        np.testing.assert_allclose(h5["probs"][3].reshape(-1, 5), want, atol=1e-5)
    with pytest.raises(ConfigError, match="use one"):
        score_run(run, fragment_vote=True, fragment_classifier=True)


def test_the_point_refiner_is_fitted_after_the_fragments_and_applied_with_them(fitted: Fitted, tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]
                                                                               ) -> None:
    run, _ = fitted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["fragments", "--model", str(copy), "--epochs", "5", "--point-refiner", "--point-epochs", "1",
                 "--point-rounds", "2", "--point-cells", "4", "--overwrite", "--quiet"]) == 0
    assert "point refiner: 2 round(s) fitted on" in capsys.readouterr().out
    info = json.loads((copy / "fragment_classifier.json").read_text())
    refined = info["point_refiner"]
    assert refined["line_classes"] == [1] and refined["hops"] == [1, 2, 4, 8] and refined["epochs"] == 1
    assert refined["rounds"] == 2 and len(refined["offsets"]) == 2 and refined["cells"] == [4]
    assert refined["features"][-1] == "box4_line_energy_minus_own"
    assert refined["points"] > 0 and list(refined["offsets"][1]) == ["shower", "track", "michel", "delta"]
    stage, _ = load_fragment_stage(copy)
    assert len(stage.refiners) == 2 and stage.refiners[1].cells == (4,)
    # the second round reads the first's calls: the stage's output is the two applied in turn
    out = labeled_outputs(copy)
    with torch.no_grad():
        first = stage.refiners[0](out.probs, out.probs, out.coord, out.event, out.energy)
        manual = stage.refiners[1](first, out.probs, out.coord, out.event, out.energy)
        sides = stage.apply_side(0, out.probs, out.coord, out.event, out.energy)
        through = stage.refiners[1](stage.refiners[0](sides, out.probs, out.coord, out.event, out.energy),
                                    out.probs, out.coord, out.event, out.energy)
    assert torch.allclose(stage(out.probs, out.coord, out.event, out.energy), through)
    assert not torch.allclose(manual, through)  # the sides come first
    scores = score_run(copy, fragment_classifier=True)
    assert scores["fragment_classifier"]["point_refiner"] is True
    # the refiner changes the calls of the fragments-only stage
    plain = score_run(run, fragment_classifier=True)
    assert scores["confusion"] != plain["confusion"] or scores["macro_f1"] != plain["macro_f1"]
    assert main(["fragments", "--model", str(copy), "--point-refiner", "--point-epochs", "0", "--overwrite"]) == 2
    assert "--point-epochs must be >= 1" in capsys.readouterr().err
    assert main(["fragments", "--model", str(copy), "--point-refiner", "--point-rounds", "0", "--overwrite"]) == 2
    assert "--point-rounds must be >= 1" in capsys.readouterr().err
    for bad in ("0", "4,4", "four"):
        assert main(["fragments", "--model", str(copy), "--point-refiner", "--point-cells", bad, "--overwrite"]) == 2
        assert "--point-cells takes distinct whole voxel counts" in capsys.readouterr().err


def test_runs_without_a_classifier_and_other_tasks_are_refused_before_writing(fitted: Fitted, tiny_events: Path,
                                                                                tmp_path: Path) -> None:
    run, _ = fitted
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    for name in ("fragment_classifier.safetensors", "fragment_classifier.json"):
        (bare / name).unlink()
    with pytest.raises(DetfmError, match="no fragment classifier.*detfm fragments --model"):
        score_run(bare, fragment_classifier=True)
    with pytest.raises(DetfmError, match="no fragment classifier"):
        predict_file(bare, tiny_events, tmp_path / "x.h5", fragment_classifier=True)
    assert not (tmp_path / "x.h5").exists()
    pid_run = tmp_path / "pid"
    run_finetune(config(tiny_events, task="pid"), pid_run)
    with pytest.raises(ConfigError, match="this is a 'pid' task, which has no fragment classes"):
        fit_fragment_run(pid_run)
    with pytest.raises(ConfigError, match="this is a 'pid' task"):
        score_run(pid_run, fragment_classifier=True)


def test_the_commands(fitted: Fitted, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = fitted
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert main(["fragments", "--model", str(copy), "--epochs", "5", "--quiet"]) == 2  # no silent overwrite
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["fragments", "--model", str(copy), "--epochs", "5", "--overwrite", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "fragments of shower, michel, delta:" in printed and "macro-F1" in printed
    assert json.loads((copy / "fragment_classifier.json").read_text())["views"] == 1
    assert main(["fragments", "--model", str(copy), "--views", "0", "--overwrite"]) == 2
    assert "--views must be >= 1" in capsys.readouterr().err
    assert main(["fragments", "--model", str(tmp_path / "nowhere")]) == 2
    assert main(["score", "--model", str(copy), "--fragment-classifier", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "fragment classifier (fitted on 1-view outputs) names the connected fragments of: shower, michel, delta\n" \
        in printed
    with pytest.raises(SystemExit):  # argparse: one or the other
        main(["score", "--model", str(copy), "--fragment-classifier", "--fragment-vote"])

"""Point refiner: neighbourhood sums against a dense count, features by hand, events kept apart,
refinement, fitting, and the refiner inside the fragment stage and its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.fragment_classifier import FragmentStage, load_fragment_stage, save_fragment_stage
from detfm.evaluate.point_refiner import (DEFAULT_CELLS, DEFAULT_HOPS, PointRefiner, box_sums, fit_class_offsets,
                                          fit_point_refiner, neighbourhood_sums, point_feature_names, point_features,
                                          refine_points, shift_classes)

SH, TR, MI, DE, LE = range(5)
SCORED = (SH, TR, MI, DE)
COL = {name: i for i, name in enumerate(point_feature_names(5))}


def _track_with_branch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A track of 20 voxels along x (x = 0..19, y = z = 10), called track, and a branch of 5 voxels
    leaving its voxel x = 10 along y (y = 11..15), called delta: (coord, event, probs, energy)."""
    coord = torch.tensor([[x, 10, 10] for x in range(20)] + [[10, 11 + j, 10] for j in range(5)], dtype=torch.float32)
    probs = torch.zeros(25, 5)
    probs[:20, TR] = 1.0
    probs[20:, DE] = 1.0
    return coord, torch.zeros(25, dtype=torch.long), probs, torch.linspace(0.5, 2.0, 25)


def test_neighbourhood_sums_count_the_paths_of_the_26_neighbour_graph() -> None:
    gen = torch.Generator().manual_seed(0)
    coord = torch.randint(0, 6, (60, 3), generator=gen).float()
    event = torch.randint(0, 2, (60,), generator=gen)
    key = event * 1000 + (coord[:, 0] * 100 + coord[:, 1] * 10 + coord[:, 2]).long()
    first = torch.tensor([int((key == k).nonzero()[0]) for k in torch.unique(key)])  # one point per voxel
    coord, event = coord[first], event[first]
    values = torch.randn(len(coord), 2, generator=gen, dtype=torch.float64)
    # dense: linked when in one event, different, and at most one voxel apart on every axis
    near = ((coord[:, None] - coord[None]).abs().amax(dim=-1) <= 1) & (event[:, None] == event[None])
    step = near.double()  # I + A: the diagonal is the point itself
    got = neighbourhood_sums(values, coord, event, (1, 3))
    assert torch.allclose(got[0], step @ values)
    assert torch.allclose(got[1], step @ step @ step @ values)
    with pytest.raises(ConfigError, match="hops must be >= 1"):
        neighbourhood_sums(values, coord, event, (0,))


def test_box_sums_add_the_points_of_the_27_cells_around_each_points_cell() -> None:
    gen = torch.Generator().manual_seed(2)
    coord = torch.randint(0, 30, (80, 3), generator=gen).float()
    event = torch.randint(0, 2, (80,), generator=gen)
    values = torch.randn(80, 3, generator=gen, dtype=torch.float64)
    for cell in (1, 4):
        c = torch.div(coord.long(), cell, rounding_mode="floor")
        # dense: same event and cells at most one apart on every axis (a point's own cell included)
        near = ((c[:, None] - c[None]).abs().amax(dim=-1) <= 1) & (event[:, None] == event[None])
        assert torch.allclose(box_sums(values, coord, event, cell), near.double() @ values)
    with pytest.raises(ConfigError, match="cells must be >= 1"):
        box_sums(values, coord, event, 0)


def test_a_box_reaches_across_a_gap_that_the_hops_do_not() -> None:
    # a piece 3 voxels beyond the end of a branch called Michel, the piece called shower
    coord = torch.tensor([[x, 0, 0] for x in range(4)] + [[x, 0, 0] for x in range(7, 12)], dtype=torch.float32)
    probs = torch.zeros(9, 5)
    probs[:4, MI] = 1.0
    probs[4:, SH] = 1.0
    event, energy = torch.zeros(9, dtype=torch.long), torch.ones(9)
    names = {n: i for i, n in enumerate(point_feature_names(5, (1, 8), (4,)))}
    f = point_features(probs, probs, coord, event, energy, [TR], (1, 8), (4,))
    assert f.shape == (9, len(names))
    assert f[4, names["hop8_mean_prob_2"]] == 0  # the hops stay inside the piece
    assert f[4, names["box4_mean_prob_2"]] == pytest.approx(4 / 9)  # x = 7 sees cells 0..2: every point
    assert f[8, names["box4_mean_prob_2"]] == 0  # x = 11 (cell 2) sees cells 1..3: x >= 4
    assert f[4, names["box4_log_voxels"]] == pytest.approx(math.log(9))


def test_features_of_a_branch_leaving_a_track() -> None:
    coord, event, probs, energy = _track_with_branch()
    f = point_features(probs, probs, coord, event, energy, [TR])
    assert f.shape == (25, len(COL)) and len(COL) == 11 + (4 + 2) * 15  # 4 hop radii, 2 box sizes
    assert torch.equal(f[:, COL["prob_3"]], probs[:, DE])
    assert torch.allclose(f[:, COL["log_energy"]], torch.log1p(energy))
    # the track's own voxels lie on its line, the branch's at their distance from it (y - 10)
    d = f[:, COL["hop4_log_line_distance"]]
    assert torch.allclose(d[:20], torch.zeros(20), atol=1e-5)
    assert d[20:24].tolist() == pytest.approx([math.log1p(k) for k in (1, 2, 3, 4)], abs=1e-5)
    assert f[24, COL["hop4_line_fraction"]] == 0 and d[24] == 0  # no track voxel within 4 steps of y = 15
    assert f[0, COL["hop2_line_linearity"]] == pytest.approx(1.0, abs=1e-5)
    assert f[0, COL["hop2_all_linearity"]] == pytest.approx(1.0, abs=1e-5)
    assert f[10, COL["hop2_all_linearity"]] < 0.8  # the junction is not a line
    # along the track's line: 0 in the middle of its neighbourhood, beyond 1 spread at its end
    assert f[10, COL["hop4_line_end"]] == pytest.approx(0.0, abs=1e-5)
    assert f[0, COL["hop4_line_end"]] > 1.0 and f[0, COL["hop4_all_end"]] > 1.0
    # the track's energy around a point, against its own (energy rises along the points)
    assert f[0, COL["hop2_line_energy_minus_own"]] > 0 > f[19, COL["hop2_line_energy_minus_own"]]
    assert f[24, COL["hop4_line_energy_minus_own"]] == 0
    # voxel x = 0 reaches x = 1 once in one step: 2 paths in (I + A) . 1
    assert f[0, COL["hop1_log_voxels"]] == pytest.approx(math.log(2), abs=1e-6)
    # the mean call around the end of the branch is delta, around the track's end track
    assert f[24, COL["hop1_mean_prob_3"]] == pytest.approx(1.0) and f[0, COL["hop1_mean_prob_1"]] == pytest.approx(1.0)


def test_features_do_not_depend_on_the_other_events_or_the_chunking() -> None:
    coord, event, probs, energy = _track_with_branch()
    alone = point_features(probs, probs, coord, event, energy, [TR])
    # the same event twice, the second copy on top of the first, and the points shuffled
    both = (torch.cat([coord, coord]), torch.cat([event, event + 1]), torch.cat([probs, probs]),
            torch.cat([energy, energy]))
    order = torch.randperm(50, generator=torch.Generator().manual_seed(1))
    refiner = PointRefiner(SCORED, (TR,), 5, hidden=4, members=1, chunk=1)
    got = refiner.features(*(t[order] for t in (both[2], both[2], both[0], both[1], both[3])))
    want = torch.cat([alone, alone])[order]
    assert torch.allclose(got, want, atol=1e-5)
    refiner.chunk = 64
    assert torch.allclose(refiner.features(*(t[order] for t in (both[2], both[2], both[0], both[1], both[3]))), want,
                          atol=1e-5)


def test_refinement_keeps_each_points_scored_mass_and_its_input() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.1, 0.1, 0.5], [0.7, 0.1, 0.1, 0.1, 0.0]])
    before = probs.clone()
    out = refine_points(probs, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]]), SCORED)
    assert torch.equal(probs, before)
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 0.5, 0.0, 0.5], [0.25, 0.25, 0.25, 0.25, 0.0]]))


def test_fitting_separates_separable_points_and_is_deterministic() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 5, generator=gen)
    target = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    target[:100] = -1  # points without a scored class are left out
    clf = fit_point_refiner(x, target, 4, hidden=16, members=2, epochs=30, batch_size=128, max_points=2000)
    with torch.no_grad():
        accuracy = (clf(x).argmax(dim=1) == target)[target >= 0].float().mean()
    assert accuracy > 0.95
    again = fit_point_refiner(x, target, 4, hidden=16, members=2, epochs=30, batch_size=128, max_points=2000)
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ConfigError, match="no point with a scored class"):
        fit_point_refiner(x, torch.full((3000,), -1), 4)
    with pytest.raises(ConfigError, match="must be >= 1"):
        fit_point_refiner(x, target, 4, epochs=0)


def test_class_offsets_call_an_under_called_class_more_often_and_keep_each_total() -> None:
    # class 1 is true for 100 of 1000 points, but its probability only reaches 0.45 there
    target = torch.zeros(1000, dtype=torch.long)
    target[:100] = 1
    probs = torch.tensor([[0.6, 0.4]]).repeat(1000, 1)
    probs[:100] = torch.tensor([0.55, 0.45])
    offsets = fit_class_offsets(probs, target, grid=(-0.3, 0.0, 0.3))
    # +0.3 on class 1 (or -0.3 on class 0) calls exactly the 100 points class 1
    assert ((torch.log(probs) + offsets).argmax(dim=1) == target).all()
    assert torch.equal(fit_class_offsets(probs, torch.full((1000,), -1)), torch.zeros(2))
    shifted = shift_classes(probs * 0.5, offsets)
    assert torch.allclose(shifted.sum(dim=1), torch.full((1000,), 0.5))
    assert (shifted[:100, 1] > shifted[:100, 0]).all() and (shifted[100:, 0] > shifted[100:, 1]).all()


def test_the_refiner_checks_its_settings() -> None:
    with pytest.raises(ConfigError, match="distinct and >= 1"):
        PointRefiner(SCORED, (TR,), 5, hops=(1, 1))
    with pytest.raises(ConfigError, match="cells must be distinct and >= 1 voxel"):
        PointRefiner(SCORED, (TR,), 5, cells=(0,))
    with pytest.raises(ConfigError, match="at least one line class"):
        PointRefiner(SCORED, (), 5)
    with pytest.raises(ConfigError, match="5-class task"):
        PointRefiner(SCORED, (7,), 5)
    with pytest.raises(ConfigError, match="the point refiner scores"):
        FragmentStage([(SH, MI, DE)], SCORED, 5, refiners=[PointRefiner((SH, TR), (TR,), 5)])


def test_the_stage_applies_the_refiner_after_its_sides_and_keeps_it_in_its_files(tmp_path: Path) -> None:
    coord, event, probs, energy = _track_with_branch()
    refiner = PointRefiner(SCORED, (TR,), 5, hidden=8, members=2)
    stage = FragmentStage([(SH, MI, DE)], SCORED, 5, hidden=8, members=2, refiners=[refiner])
    refiner.offsets.copy_(torch.tensor([0.0, -0.3, 0.3, 0.6]))
    with torch.no_grad():
        sides = stage.apply_side(0, probs, coord, event, energy)
        point_probs = refiner.classifier(refiner.features(sides, probs, coord, event, energy)).exp()
        want = refine_points(sides, shift_classes(point_probs, refiner.offsets), SCORED)
    assert torch.allclose(stage(probs, coord, event, energy), want)
    info = {"format": "detfm-fragment-classifier/1", "groups": [[SH, MI, DE]], "scored_ids": list(SCORED),
            "num_classes": 5, "hidden": 8, "members": 2, "views": 1,
            "point_refiner": {"line_classes": [TR], "hops": list(DEFAULT_HOPS), "cells": list(DEFAULT_CELLS),
                              "hidden": 8, "members": 2, "features": list(point_feature_names(5))}}
    save_fragment_stage(stage, info, tmp_path)
    back, _ = load_fragment_stage(tmp_path)
    assert len(back.refiners) == 1 and back.refiners[0].hops == DEFAULT_HOPS and back.refiners[0].cells == DEFAULT_CELLS
    assert torch.equal(back.refiners[0].offsets, refiner.offsets)
    assert torch.equal(back(probs, coord, event, energy), stage(probs, coord, event, energy))
    # without its refiner in the json, the weights no longer match; a refiner entry must be whole
    (tmp_path / "fragment_classifier.json").write_text(json.dumps({**info, "point_refiner": None}))
    with pytest.raises(DetfmError, match="does not match"):
        load_fragment_stage(tmp_path)
    # a refiner fitted on other features (an older detfm's) is refused with what to do
    older = {**info["point_refiner"], "features": list(point_feature_names(5))[:-1]}
    (tmp_path / "fragment_classifier.json").write_text(json.dumps({**info, "point_refiner": older}))
    with pytest.raises(DetfmError, match="other point features.*detfm fragments --model"):
        load_fragment_stage(tmp_path)
    # a file from before the boxes (no "cells") holds a refiner of the hops alone
    hops_only = PointRefiner(SCORED, (TR,), 5, hidden=8, members=2, cells=())
    stage = FragmentStage([(SH, MI, DE)], SCORED, 5, hidden=8, members=2, refiners=[hops_only])
    without = {k: v for k, v in info["point_refiner"].items() if k != "cells"}
    save_fragment_stage(stage, {**info, "point_refiner": {**without, "features": list(hops_only.feature_names)}},
                        tmp_path)
    assert load_fragment_stage(tmp_path)[0].refiners[0].cells == ()
    (tmp_path / "fragment_classifier.json").write_text(json.dumps({**info, "point_refiner": {"hops": [1]}}))
    with pytest.raises(DetfmError, match="point_refiner lacks line_classes, hidden, members"):
        load_fragment_stage(tmp_path)

"""Fragment classifier: fragment features by hand, truth, fitting, relabelling, the stage and its files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from detfm_testing import check_point_step, energy_logits_task
from torch import nn

from detfm.data import EventDataset, collate
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.fragment_classifier import (FragmentRelabel, FragmentStage, FragmentTable, feature_names,
                                                fit_fragment_classifier, fragment_table, fragment_truth,
                                                load_fragment_stage, relabel_fragments, save_fragment_stage)

SH, TR, MI, DE, LE = range(5)
SCORED = (SH, TR, MI, DE)
SHOWER_LIKE = (SH, MI, DE)
COL = {name: i for i, name in enumerate(feature_names(5))}


def _near(value: float) -> object:
    """float32 features: equal to 1e-5."""
    return pytest.approx(value, abs=1e-5)


def _calls(classes: list[int]) -> torch.Tensor:
    """Probabilities 0.7 on each point's class, 0.075 on the others."""
    p = torch.full((len(classes), 5), 0.075)
    p[torch.arange(len(classes)), torch.as_tensor(classes)] = 0.7
    return p


def _muon_with_michel_and_delta() -> tuple[torch.Tensor, ...]:
    """A track of 21 voxels along x (x = 10..30, y = z = 50), a Michel blob of 4 voxels just past its
    end (x = 31..32) and a delta ray of 3 voxels leaving its middle along y (x = 20, y = 51..53)."""
    track = [(x, 50, 50) for x in range(10, 31)]
    michel = [(31, 50, 50), (32, 50, 50), (32, 51, 50), (32, 52, 50)]
    delta = [(20, 51, 50), (20, 52, 50), (20, 53, 50)]
    coord = torch.tensor(track + michel + delta, dtype=torch.float32)
    classes = [TR] * len(track) + [MI] * len(michel) + [DE] * len(delta)
    energy = torch.ones(len(classes))
    energy[len(track):len(track) + len(michel)] = 2.0
    energy[len(track) - 1] = 3.0  # the track's last voxel, where the Michel starts
    return coord, torch.zeros(len(classes), dtype=torch.long), _calls(classes), energy, torch.as_tensor(classes)


def test_features_of_a_michel_at_the_end_and_a_delta_along_the_track() -> None:
    coord, event, probs, energy, _ = _muon_with_michel_and_delta()
    table = fragment_table(probs, coord, event, energy, SHOWER_LIKE, SCORED)
    assert table.count == 2 and table.features.shape == (2, len(feature_names(5)))
    michel, delta = int(table.labels[21]), int(table.labels[25])
    assert (table.labels[:21] == -1).all() and (table.labels[21:25] == michel).all()
    assert (table.labels[25:] == delta).all() and michel != delta
    f = table.features
    assert f[michel, COL["log_points"]] == _near(math.log1p(4))
    assert f[michel, COL["log_energy"]] == _near(math.log1p(8.0))
    assert f[delta, COL["log_mean_energy"]] == _near(math.log(1.0 + 1e-3))
    assert f[michel, COL["mean_prob_2"]] == _near(0.7) and f[michel, COL["mean_prob_1"]] == _near(0.075)
    # both touch the one track (21 voxels long, 20 voxels between its end points)
    for frag in (michel, delta):
        assert f[frag, COL["touches"]] == 1 and f[frag, COL["log_touched_components"]] == _near(math.log(2))
        assert f[frag, COL["log_touched_size"]] == _near(math.log1p(21))
        assert f[frag, COL["log_touched_length"]] == _near(math.log1p(20))
    # the Michel touches the track at its end (only x = 31 touches x = 30); the delta at its middle:
    # x = 19..21 touch (20, 51, 50), whose mean is the middle of the track
    assert f[michel, COL["log_contact_points"]] == _near(math.log1p(1))
    assert f[michel, COL["log_contact_energy"]] == _near(math.log1p(3.0))  # the track's last voxel
    assert f[delta, COL["log_contact_energy"]] == _near(math.log1p(1.0))
    assert f[delta, COL["log_touched_mean_energy"]] == _near(math.log1p(23.0 / 21))
    assert f[michel, COL["contact_from_end_fraction"]] == _near(0.0)
    assert f[delta, COL["contact_from_end_fraction"]] == _near(0.5)
    assert f[delta, COL["log_contact_from_end"]] == _near(math.log1p(10))
    # a line has one spread only; the Michel blob is not a line
    track = fragment_table(probs, coord, event, energy, (TR,), SCORED)
    assert track.count == 1 and (track.labels[:21] == 0).all() and (track.labels[21:] == -1).all()
    assert track.features[0, COL["spread_2_over_1"]] < 1e-3
    assert track.features[0, COL["log_touched_components"]] == _near(math.log(3))
    assert f[michel, COL["spread_2_over_1"]] > 0.1


def test_the_largest_touched_track_is_chosen_whatever_the_point_order() -> None:
    """A blob touching a long track (12 voxels) and a short one (3 voxels): the contact features
    describe the long one, and every feature is the same for any order of the input points."""
    long_track = [(x, 50, 50) for x in range(10, 22)]
    short_track = [(22, 51 + k, 50) for k in range(1, 4)]
    blob = [(22, 50, 50), (22, 51, 50)]
    coord = torch.tensor(long_track + short_track + blob, dtype=torch.float32)
    probs = _calls([TR] * 15 + [SH] * 2)
    energy, event = torch.ones(17), torch.zeros(17, dtype=torch.long)
    table = fragment_table(probs, coord, event, energy, SHOWER_LIKE, SCORED)
    assert table.count == 1
    assert table.features[0, COL["log_touched_components"]] == _near(math.log1p(2))
    assert table.features[0, COL["log_touched_size"]] == _near(math.log1p(12))
    assert table.features[0, COL["log_touched_length"]] == _near(math.log1p(11))
    for seed in range(5):
        order = torch.randperm(17, generator=torch.Generator().manual_seed(seed))
        shuffled = fragment_table(probs[order], coord[order], event, energy[order], SHOWER_LIKE, SCORED)
        assert torch.allclose(shuffled.features, table.features, atol=1e-6)


def test_fragments_and_contacts_stay_within_their_event() -> None:
    coord, _, probs, energy, _ = _muon_with_michel_and_delta()
    n = len(coord)
    # the Michel and delta voxels alone in a second event, at the same coordinates
    two = torch.cat([coord, coord[21:]])
    event = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n - 21, dtype=torch.long)])
    table = fragment_table(torch.cat([probs, probs[21:]]), two, event, torch.cat([energy, energy[21:]]),
                           SHOWER_LIKE, SCORED)
    assert table.count == 4
    alone = table.labels[n:]
    assert not set(alone.tolist()) & set(table.labels[:n].tolist())
    assert (table.features[alone, COL["touches"]] == 0).all()
    assert (table.features[alone, COL["log_contact_from_end"]] == -1).all()
    empty = fragment_table(_calls([TR] * 3), coord[:3], torch.zeros(3, dtype=torch.long), energy[:3],
                           SHOWER_LIKE, SCORED)
    assert empty.count == 0 and (empty.labels == -1).all()


def test_a_fragment_is_named_by_the_majority_of_its_scored_points() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, -1, 2])
    table = FragmentTable(labels, torch.zeros(3, len(feature_names(5))))
    truth = torch.tensor([MI, MI, SH, LE, LE, TR, DE])
    target, counts = fragment_truth(table, truth, SCORED)
    assert target.tolist() == [SCORED.index(MI), -1, SCORED.index(DE)]  # fragment 1 holds low-energy points only
    assert counts.tolist() == [[1, 0, 2, 0], [0, 0, 0, 0], [0, 0, 0, 1]]


def test_fitting_separates_separable_fragments_and_is_deterministic() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 5, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0.5).long()  # classes 0..3
    points = torch.randint(1, 50, (200,), generator=g).float()
    clf = fit_fragment_classifier(x, y, points, 4, epochs=300)
    with torch.no_grad():
        accuracy = (clf(x).argmax(dim=1) == y).float().mean()
    assert accuracy > 0.95
    again = fit_fragment_classifier(x, y, points, 4, epochs=300)
    assert all(torch.equal(a, b) for a, b in zip(clf.state_dict().values(), again.state_dict().values()))
    other = fit_fragment_classifier(x, y, points, 4, epochs=300, seed=1)
    assert not torch.equal(other.members[0][0].weight, clf.members[0][0].weight)
    assert not torch.equal(clf.members[0][0].weight, clf.members[1][0].weight)  # each member its own start
    # the output is the log of the members' mean probability
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m((x - clf.center) / clf.scale), dim=-1) for m in clf.members]).mean(0)
        assert torch.allclose(clf(x).exp(), mean, atol=1e-6)
    assert len(fit_fragment_classifier(x, y, points, 4, epochs=2, members=2).members) == 2
    with pytest.raises(ConfigError, match="members and hidden must be >= 1"):
        fit_fragment_classifier(x, y, points, 4, members=0)
    # fragments without a target are left out; none at all is an error
    masked = y.clone()
    masked[:100] = -1
    fit_fragment_classifier(x, masked, points, 4, epochs=5)
    with pytest.raises(ConfigError, match="no fragment with a scored point"):
        fit_fragment_classifier(x, torch.full_like(y, -1), points, 4)


def test_relabelling_moves_each_points_scored_mass_onto_its_fragments_classes() -> None:
    probs = torch.tensor([[0.5, 0.1, 0.2, 0.1, 0.1], [0.1, 0.6, 0.1, 0.1, 0.1], [0.2, 0.1, 0.1, 0.2, 0.4]])
    table = FragmentTable(torch.tensor([0, -1, 0]), torch.zeros(1, len(feature_names(5))))
    q = torch.tensor([[0.1, 0.2, 0.6, 0.1]])
    out = relabel_fragments(probs, table, q, SCORED)
    assert torch.equal(probs[1], out[1])  # not a member
    assert torch.allclose(out[:, LE], probs[:, LE])  # the excluded class keeps its probability
    assert torch.allclose(out[0, :4], 0.9 * q[0]) and torch.allclose(out[2, :4], 0.6 * q[0])
    assert torch.allclose(out.sum(dim=1), probs.sum(dim=1))
    assert probs[0, 0] == 0.5  # the input is not modified


def test_the_stage_checks_its_groups_and_applies_its_sides_in_turn() -> None:
    with pytest.raises(ConfigError, match="non-empty subset of the scored classes"):
        FragmentStage([(SH, LE)], SCORED, 5)
    with pytest.raises(ConfigError, match="non-empty subset"):
        FragmentStage([()], SCORED, 5)
    with pytest.raises(ConfigError, match="not classes of a 5-class task"):
        FragmentStage([(SH,)], (SH, 7), 5)
    coord, event, probs, energy, _ = _muon_with_michel_and_delta()
    stage = FragmentStage([SHOWER_LIKE, (TR,)], SCORED, 5, hidden=8)
    with torch.no_grad():  # side 0 calls every fragment track, side 1 then sees one track of 28 voxels
        for clf in stage.classifiers:
            for mlp in clf.members:
                mlp[-1].bias.copy_(torch.tensor([0.0, 20.0, 0.0, 0.0]))
                mlp[-1].weight.zero_()
    first = stage.apply_side(0, probs, coord, event, energy)
    assert (first[:, :4].argmax(dim=1) == TR).all()
    assert stage.tables(first, coord, event, energy, 1).count == 1
    out = stage(probs, coord, event, energy)
    assert (out[:, :4].argmax(dim=1) == TR).all() and torch.allclose(out.sum(dim=1), probs.sum(dim=1))


def test_the_stage_round_trips_through_its_files(tmp_path: Path) -> None:
    coord, event, probs, energy, _ = _muon_with_michel_and_delta()
    stage = FragmentStage([SHOWER_LIKE, (TR,)], SCORED, 5, hidden=8, members=2)
    info = {"format": "detfm-fragment-classifier/1", "groups": [list(SHOWER_LIKE), [TR]], "scored_ids": list(SCORED),
            "num_classes": 5, "hidden": 8, "members": 2, "views": 1}
    with pytest.raises(DetfmError, match="no fragment classifier.*detfm fragments --model"):
        load_fragment_stage(tmp_path)
    save_fragment_stage(stage, info, tmp_path)
    back, back_info = load_fragment_stage(tmp_path)
    assert back_info == info
    assert torch.equal(back(probs, coord, event, energy), stage(probs, coord, event, energy))
    (tmp_path / "fragment_classifier.json").write_text(json.dumps({**info, "hidden": 4}))
    with pytest.raises(DetfmError, match="does not match"):
        load_fragment_stage(tmp_path)
    (tmp_path / "fragment_classifier.json").write_text(json.dumps({k: v for k, v in info.items() if k != "members"}))
    with pytest.raises(DetfmError, match="lacks members"):
        load_fragment_stage(tmp_path)
    (tmp_path / "fragment_classifier.json").write_text(json.dumps({**info, "format": "other/2"}))
    with pytest.raises(DetfmError, match="format 'other/2'"):
        load_fragment_stage(tmp_path)
    (tmp_path / "fragment_classifier.json").write_text("{")
    with pytest.raises(DetfmError, match="not valid JSON"):
        load_fragment_stage(tmp_path)


def test_the_wrapper_relabels_the_tasks_probabilities(tiny_events: Path) -> None:
    data = EventDataset([tiny_events], labels=True).subset(range(3))
    batch = collate([data[i] for i in range(3)])
    task = energy_logits_task((1.0, 0.5, -1.0, 0.0, -2.0))
    stage = FragmentStage([SHOWER_LIKE, (TR,)], SCORED, 5, hidden=8)
    with torch.no_grad():
        expected = stage(torch.softmax(task.forward_logits(batch), dim=-1), batch.coord, batch.batch_index(),
                         batch.energy)
    check_point_step(FragmentRelabel(task, stage), batch, expected)
    with pytest.raises(ConfigError, match="per-point"):
        FragmentRelabel(nn.Linear(2, 2), stage)

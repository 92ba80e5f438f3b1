"""Particle set prediction: truth particles, matching, losses, inference, bad input, and a
fine-tune / predict / score run on both test backbone families."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from detfm_testing import TEST_MODELS, register_test_models

from detfm.data import EventDataset, PackedBatch, Sample, collate
from detfm.data.particle_truth import instance_truth, kinetic_energy_mev, particle_truth
from detfm.data.transforms.rotation import RandomRotation
from detfm.data.transforms.subsample import Subsample
from detfm.engine import TrainConfig
from detfm.errors import ConfigError, DataFormatError
from detfm.io import Event, layout
from detfm.models.contract import BackboneOutput
from detfm.models import create_model
from detfm.recipes.adapt import FinetuneConfig, load_finetuned, predict_file, run_finetune
from detfm.recipes.pretrain import DataConfig
from detfm.tasks.particles import (
    NO_OBJECT,
    Particles,
    ParticlesConfig,
    assign_points,
    dice_cost,
    hungarian_match,
    iou_matrix,
    match_by_iou,
    matching_cost,
    older_particles_settings,
    particle_targets,
    query_points,
)
from detfm.tasks.registry import get_task

register_test_models()

SMALL = {"hidden": 16, "num_heads": 2, "num_queries": 6, "decoder_blocks": 2}


def hand_batch(sizes: list[int], instance: list[int], pid: list[int], semantic: list[int],
               energy: list[float] | None = None, with_truth: bool = True) -> PackedBatch:
    """A labeled batch with points along a line per instance; truth energy = 10 * (group + 1) MeV
    and start = the first point of the instance."""
    n = sum(sizes)
    offsets = torch.tensor([0, *np.cumsum(sizes).tolist()])
    inst = torch.tensor(instance)
    coord = torch.stack([torch.arange(n).float() * 3.0 + 100.0, 50.0 * (inst.float() + 2.0),
                         torch.full((n,), 300.0)], 1)
    e = torch.tensor(energy) if energy is not None else torch.ones(n)
    p_energy = torch.where(inst >= 0, 10.0 * (inst.float() + 1.0), float("nan")) if with_truth else None
    p_start = None
    if with_truth:
        p_start = torch.full((n, 3), float("nan"))
        for b in range(len(sizes)):
            a, z = int(offsets[b]), int(offsets[b + 1])
            for g in inst[a:z].unique().tolist():
                if g >= 0:
                    rows = torch.nonzero(inst[a:z] == g).squeeze(1) + a
                    p_start[rows] = coord[rows[0]]
    return PackedBatch(coord=coord, feat=torch.rand(n, 1, generator=torch.Generator().manual_seed(0)),
                       offsets=offsets, energy=e, semantic=torch.tensor(semantic), pid=torch.tensor(pid),
                       instance=inst, index=torch.arange(len(sizes)), particle_energy=p_energy,
                       particle_start=p_start)


def small_task(model: str = "pointwise_test", **kw: object) -> Particles:
    return Particles(create_model(model), ParticlesConfig(**{**SMALL, **kw}))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- config
def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="multiple of num_heads"):
        ParticlesConfig(hidden=30, num_heads=4)
    with pytest.raises(ConfigError, match="5 PID classes"):
        ParticlesConfig(num_classes=4)
    with pytest.raises(ConfigError, match="no_object_weight"):
        ParticlesConfig(no_object_weight=-1.0)
    with pytest.raises(ConfigError, match="num_queries"):
        ParticlesConfig(num_queries=0)
    with pytest.raises(ConfigError, match="overlap_threshold"):
        ParticlesConfig(overlap_threshold=1.5)
    with pytest.raises(ConfigError, match="query_init must be one of learned, points"):
        ParticlesConfig(query_init="fps")
    with pytest.raises(ConfigError, match="assign must be one of ranked, argmax"):
        ParticlesConfig(assign="nms")
    assert ParticlesConfig().num_queries == 32


# ----------------------------------------------------------------------------- truth
def test_truth_particles_leave_out_stuff_and_unlabeled_groups() -> None:
    # event 0: group 0 muon (3 pts), group 1 pid none only (not a particle), 1 low-energy point
    # event 1: group 0 proton (2 pts, one of them semantic low-energy -> stuff), group 3 electron
    batch = hand_batch([5, 4], instance=[0, 0, 0, 1, -1, 0, 0, 3, 3], pid=[2, 2, 2, 5, 5, 4, 4, 1, 1],
                       semantic=[1, 1, 1, 1, 4, 1, 4, 0, 0])
    t = particle_targets(batch)
    assert t.event.tolist() == [0, 1, 1] and t.group.tolist() == [0, 0, 3]
    assert t.label.tolist() == [2, 4, 1] and t.size.tolist() == [3, 1, 2]
    assert t.point_particle.tolist() == [0, 0, 0, -1, -1, 1, -1, 2, 2]
    assert t.energy.tolist() == [10.0, 10.0, 40.0]
    torch.testing.assert_close(t.start[2], batch.coord[7])
    unlabeled = dataclasses.replace(batch, instance=None)
    with pytest.raises(DataFormatError, match="instance and pid labels"):
        particle_targets(unlabeled)
    no_truth = particle_targets(dataclasses.replace(batch, particle_energy=None, particle_start=None))
    assert torch.isnan(no_truth.energy).all() and torch.isnan(no_truth.start).all()


def _event(rows: list[tuple[int, int, int, int]], extra: list[list[float]]) -> Event:
    """rows: (n_points, fragment, group, pid); row 0 is the low-energy bucket."""
    clusters = np.zeros((len(rows), layout.N_CLUSTER), np.float32)
    for i, (n, frag, group, pid) in enumerate(rows):
        clusters[i] = [n, frag, group, 0, layout.LOW_ENERGY if group < 0 else layout.TRACK, pid]
    n_points = sum(r[0] for r in rows)
    points = np.zeros((n_points, layout.N_POINT), np.float32)
    points[:, layout.VALUE] = 1.0
    return Event(points, clusters, np.asarray(extra, np.float32))


def test_particle_truth_reads_the_primary_row_and_marks_missing_rows() -> None:
    # group 0: a muon (p = 0.2 GeV) with a Michel electron (pid 1, more points would not
    # matter: the muon holds the most points); group 1: its only row has no cluster_extra.
    event = _event([(2, -1, -1, 5), (5, 0, 0, 2), (3, 7, 0, 1), (4, 1, 1, 4)],
                   [[0, 0, 0, 0, 0], [105.66, 0.2, 10, 20, 30], [0.511, 0.05, 40, 40, 40], [0, 0, 0, 0, 0]])
    table = instance_truth(event)
    assert table[0][0] == pytest.approx(float(kinetic_energy_mev(np.array(105.66), np.array(0.2))))
    assert table[0][1].tolist() == [10, 20, 30]
    assert np.isnan(table[1][0]) and np.isnan(table[1][1]).all()
    energy, start = particle_truth(event)
    assert np.isnan(energy[:2]).all() and np.allclose(energy[2:10], table[0][0]) and np.isnan(energy[10:]).all()
    assert start.shape == (14, 3) and np.allclose(start[2], [10, 20, 30])
    assert kinetic_energy_mev(np.array(0.0), np.array(0.1)) == pytest.approx(100.0)


def test_dataset_carries_truth_and_rotation_turns_the_start_with_the_points(tiny_events: Path) -> None:
    dataset = EventDataset([tiny_events])
    sample = dataset[0]
    assert sample.particle_energy is not None and sample.particle_start is not None
    inside = sample.instance >= 0  # type: ignore[operator]
    assert np.isfinite(sample.particle_energy[inside]).all() and (sample.particle_energy[inside] > 0).all()
    assert np.isnan(sample.particle_energy[~inside]).all()
    turned = RandomRotation(keep_inside=False)(sample, np.random.default_rng(3))
    k = int(np.flatnonzero(inside)[0])
    before = np.linalg.norm(sample.coord[k] - sample.particle_start[k])
    after = np.linalg.norm(turned.coord[k] - turned.particle_start[k])  # type: ignore[index]
    assert after == pytest.approx(before, rel=1e-4) and not np.allclose(turned.coord[k], sample.coord[k])
    batch = collate([Subsample(50)(sample, np.random.default_rng(0)), dataset[1]])
    assert batch.particle_energy is not None and batch.particle_energy.shape == (batch.num_points,)
    assert batch.particle_start is not None and batch.particle_start.shape == (batch.num_points, 3)
    bare = Sample(coord=sample.coord[:3], energy=sample.energy[:3])
    assert collate([bare]).particle_energy is None
    with pytest.raises(ValueError, match="particle_start"):
        Sample(coord=sample.coord[:3], energy=sample.energy[:3], particle_start=np.zeros((3, 2), np.float32))


# ----------------------------------------------------------------------------- matching
def test_hungarian_match_finds_the_optimum_and_leaves_the_excess_unmatched() -> None:
    cost = torch.tensor([[4.0, 1.0, 3.0], [2.0, 0.0, 5.0], [3.0, 2.0, 2.0]])
    q, t = hungarian_match(cost)
    assert sorted(zip(q.tolist(), t.tolist(), strict=True)) == [(0, 1), (1, 0), (2, 2)]  # 1 + 2 + 2
    # more truth particles (4) than queries (2): two pairs, the two cheapest-to-serve others missed
    wide = torch.tensor([[0.0, 9.0, 9.0, 1.0], [9.0, 9.0, 0.0, 9.0]])
    q, t = hungarian_match(wide)
    assert q.tolist() == [0, 1] and t.tolist() == [0, 2]
    q, t = hungarian_match(torch.zeros(3, 0))
    assert len(q) == 0 and len(t) == 0
    with pytest.raises(DataFormatError, match="non-finite"):
        hungarian_match(torch.tensor([[float("nan")]]))


def test_matching_cost_prefers_the_right_mask_and_class() -> None:
    masks = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.float32)
    labels = torch.tensor([2, 4])
    big = 8.0
    mask_logits = torch.tensor([[-big, -big, big, big], [big, big, -big, -big]])  # query 0 = truth 1
    cls = torch.full((2, NO_OBJECT + 1), -5.0)
    cls[0, 4], cls[1, 2] = 5.0, 5.0
    cost = matching_cost(cls, mask_logits, labels, masks)
    q, t = hungarian_match(cost)
    assert dict(zip(q.tolist(), t.tolist(), strict=True)) == {0: 1, 1: 0}
    assert cost[0, 1] < cost[0, 0] and cost[1, 0] < cost[1, 1]
    d = dice_cost(torch.tensor([[big, big, -big, -big]]), masks)
    assert d[0, 0] == pytest.approx(0.0, abs=1e-3) and d[0, 1] == pytest.approx(1.0 - 1.0 / 5.0, abs=1e-3)


def test_iou_matching_is_one_to_one_at_half() -> None:
    pred = np.array([0, 0, 0, 1, 1, -1, 2, 2])
    truth = np.array([0, 0, 1, 1, 1, 1, -1, -1])
    iou = iou_matrix(pred, truth, 3, 2)
    assert iou[0, 0] == pytest.approx(2 / 3) and iou[1, 1] == pytest.approx(2 / 4) and iou[2].sum() == 0
    p, t = match_by_iou(iou)
    assert p.tolist() == [0, 1] and t.tolist() == [0, 1]
    p, t = match_by_iou(iou, threshold=0.6)
    assert p.tolist() == [0] and t.tolist() == [0]
    p, t = match_by_iou(np.zeros((0, 2)))
    assert len(p) == 0


# ----------------------------------------------------------------------------- loss
def test_loss_is_a_mean_over_events_and_reaches_every_head() -> None:
    a = hand_batch([6], instance=[0, 0, 0, 1, 1, -1], pid=[2, 2, 2, 4, 4, 5], semantic=[1, 1, 1, 1, 1, 4])
    b = hand_batch([5], instance=[2, 2, 2, 2, -1], pid=[1, 1, 1, 1, 5], semantic=[0, 0, 0, 0, 4])
    both = collate_batches(a, b)
    task = small_task().eval()
    loss_a, loss_b, loss_ab = task(a)["loss"], task(b)["loss"], task(both)["loss"]
    assert loss_ab.item() == pytest.approx((loss_a.item() + loss_b.item()) / 2, rel=1e-5)
    task.train()
    out = task(both)
    out["loss"].backward()
    for name in ("class_embed", "class_pool", "mask_embed", "energy_head", "start_embed", "semantic_head",
                 "query_feat"):
        grads = [p.grad for p in getattr(task, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name
    assert out["outputs"]["particles"] == 3


def test_the_class_reads_the_mean_feature_of_the_points_the_mask_holds() -> None:
    """The pooled feature a query's class reads: the probability-weighted mean over the points
    its mask holds (features of the other points do not matter), over all points by
    probability for a query that holds none."""
    from detfm.tasks.particles import _mask_mean

    prob = torch.tensor([[[0.9, 0.8, 0.1, 0.2], [0.05, 0.1, 0.2, 0.3]]])  # (1, 2 queries, 4 points)
    feat = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 5.0], [0.0, 7.0]]])
    mean = _mask_mean(prob, feat)
    # query 0 holds points 0, 1 (prob >= 0.5): (0.9 * 1 + 0.8 * 3) / 1.7; query 1 holds none: all points by prob
    torch.testing.assert_close(mean[0, 0], torch.tensor([3.3 / 1.7, 0.0]))
    torch.testing.assert_close(mean[0, 1], torch.tensor([0.05 + 0.3, 0.2 * 5 + 0.3 * 7]) / 0.65)
    outside = feat.clone()
    outside[0, 2:] += 10.0
    torch.testing.assert_close(_mask_mean(prob, outside)[0, 0], mean[0, 0])


def test_assign_points_ranked_keeps_one_of_two_duplicate_queries() -> None:
    """Two queries hold the same 8 points, each a little more sure of every other point.
    argmax shares the points between them point by point, so each keeps half of its own mask
    and both are dropped at overlap 0.8: the particle is lost. ranked lets the better query
    (class score times mean mask probability) take all 8, and drops the duplicate. A
    low-energy (stuff) point is never taken."""
    prob = torch.tensor([[0.9, 0.7] * 4 + [0.9, 0.1],
                         [0.7, 0.9] * 4 + [0.9, 0.1]])
    stuff = torch.tensor([False] * 8 + [True, False])
    score = torch.tensor([0.8, 0.8])
    taken, own = assign_points("argmax", score, prob, stuff)
    assert taken.tolist() == [0, 1] * 4 + [-1, -1]
    assert own.sum(1).tolist() == [9, 9]  # argmax's own masks count the stuff point
    assert all((taken == j).sum() < 0.8 * own[j].sum() for j in range(2))  # both dropped
    for better in (0, 1):
        score = torch.tensor([0.8, 0.8])
        score[better] = 0.81
        taken, own = assign_points("ranked", score, prob, stuff)
        assert taken.tolist() == [better] * 8 + [-1, -1]
        assert own.sum(1).tolist() == [8, 8]
    with pytest.raises(ConfigError, match="assign must be one of"):
        assign_points("nms", score, prob, stuff)


def collate_batches(*batches: PackedBatch) -> PackedBatch:
    """Concatenate single-event hand batches into one."""
    sizes = [x.num_points for x in batches]
    cat = {name: torch.cat([getattr(x, name) for x in batches])
           for name in ("coord", "feat", "energy", "semantic", "pid", "instance", "particle_energy", "particle_start")}
    return PackedBatch(offsets=torch.tensor([0, *np.cumsum(sizes).tolist()]), index=torch.arange(len(batches)),
                       **cat)


def test_bad_input_more_particles_than_queries_no_particles_no_truth() -> None:
    many = hand_batch([10], instance=[0, 0, 1, 1, 2, 2, 3, 3, 4, 4], pid=[2, 2, 4, 4, 1, 1, 0, 0, 3, 3],
                      semantic=[1] * 10)
    task = small_task(num_queries=2)
    out = task(many)
    assert torch.isfinite(out["loss"]) and out["outputs"]["particles"] == 5
    pred = task.eval().predict(many)
    assert len(pred) <= 2  # at most one particle per query: the excess is missed
    stuff_only = hand_batch([4], instance=[-1] * 4, pid=[5] * 4, semantic=[4] * 4)
    task.train()
    out = task(stuff_only)
    assert torch.isfinite(out["loss"]) and out["outputs"]["particles"] == 0
    out["loss"].backward()
    assert task.class_embed.weight.grad is not None and task.class_embed.weight.grad.abs().sum() > 0
    unused = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None and "backbone." not in n]
    assert unused == []  # every parameter is in the graph (DDP without find_unused_parameters)
    assert out["outputs"]["mask_loss"] == 0 and out["outputs"]["energy_loss"] == 0
    no_truth = hand_batch([4], instance=[0, 0, 1, 1], pid=[2, 2, 4, 4], semantic=[1] * 4, with_truth=False)
    out = task(no_truth)
    assert torch.isfinite(out["loss"]) and out["outputs"]["energy_loss"] == 0 and out["outputs"]["start_loss"] == 0
    with pytest.raises(DataFormatError, match="labels"):
        task(dataclasses.replace(no_truth, pid=None))


# ----------------------------------------------------------------------------- point queries
def test_query_points_spread_over_the_candidates_of_each_event() -> None:
    # event 0: 6 points on a line, the last two not candidates; event 1: 2 points, none a
    # candidate (so all of its points are used); event 2: empty
    coord = torch.tensor([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [9, 0, 0], [50, 0, 0], [60, 0, 0],
                          [5.0, 5, 5], [7, 5, 5]])
    batch = PackedBatch(coord=coord, feat=torch.ones(8, 1), energy=torch.ones(8), offsets=torch.tensor([0, 6, 8, 8]),
                        index=torch.arange(3))
    candidate = torch.tensor([True, True, True, True, False, False, False, False])
    slot = query_points(batch, candidate, num_queries=3)
    assert slot.shape == (3, 3)
    # farthest-point order from the first candidate: 0, then 3 (farthest candidate), then 1 or 2
    assert slot[0, :2].tolist() == [0, 3] and slot[0, 2] in (1, 2)
    assert sorted(slot[1].tolist()) == [0, 0, 1]  # 2 points for 3 queries: reused in turn
    assert slot[2].tolist() == [0, 0, 0]  # an empty event points at padding position 0
    # an event's slots do not depend on the other events of the batch
    alone = PackedBatch(coord=coord[:6], feat=torch.ones(6, 1), energy=torch.ones(6), offsets=torch.tensor([0, 6]),
                        index=torch.arange(1))
    assert query_points(alone, candidate[:6], num_queries=3).tolist() == slot[:1].tolist()


def test_point_queries_train_every_parameter_and_keep_events_apart() -> None:
    a = hand_batch([6], instance=[0, 0, 0, 1, 1, -1], pid=[2, 2, 2, 4, 4, 5], semantic=[1, 1, 1, 1, 1, 4])
    b = hand_batch([5], instance=[2, 2, 2, 2, -1], pid=[1, 1, 1, 1, 5], semantic=[0, 0, 0, 0, 4])
    both = collate_batches(a, b)
    task = small_task(query_init="points").eval()
    assert task(both)["loss"].item() == pytest.approx((task(a)["loss"].item() + task(b)["loss"].item()) / 2,
                                                      rel=1e-5)
    sets_a = task.forward_sets(a)[0]
    sets_ab = task.forward_sets(both)[0]
    torch.testing.assert_close(sets_ab[-1].cls[0], sets_a[-1].cls[0], atol=1e-5, rtol=1e-5)
    task.train()
    out = task(both)
    out["loss"].backward()
    unused = [n for n, p in task.named_parameters() if p.requires_grad and p.grad is None and "backbone." not in n]
    assert unused == []  # DDP without find_unused_parameters
    assert task.query_from_point.weight.grad.abs().sum() > 0  # type: ignore[union-attr]
    learned = small_task()
    assert learned.query_from_point is None  # the default keeps the learned queries (and old checkpoints)


class _SameFeatures(torch.nn.Module):
    """A backbone that gives every point the same features: only coordinates tell points apart."""

    num_features, num_local_features = 8, 0

    def forward_features(self, batch: PackedBatch, generator: torch.Generator | None = None) -> BackboneOutput:
        return BackboneOutput(point=torch.ones(batch.num_points, 8), local=torch.zeros(batch.num_points, 0))


def test_mask_position_lets_queries_split_particles_that_only_their_place_tells_apart() -> None:
    """Two alike photons 150 voxels apart, on features that are the same at every point: without
    mask_position every query's mask logit is one number over the event; with it, training finds both."""
    batch = hand_batch([16], instance=[0] * 8 + [1] * 8, pid=[0] * 16, semantic=[0] * 16)
    plain = Particles(_SameFeatures(), ParticlesConfig(**{**SMALL, "freeze_backbone": True, "mask_position": False}))
    masks = plain.forward_sets(batch)[0][-1].mask
    torch.testing.assert_close(masks, masks[..., :1].expand_as(masks))  # no query can split the event
    task = Particles(_SameFeatures(), ParticlesConfig(**{**SMALL, "freeze_backbone": True, "mask_position": True,
                                                         "seed": 1}))
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(150):
        loss = task(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    task.eval()
    labels, _ = task.scored_items(batch)
    assert len(labels) == 2, "both particles found at mask IoU >= 0.5"


@pytest.mark.parametrize("query_init", ["learned", "points"])
def test_a_tiny_model_overfits_two_events(tiny_events: Path, query_init: str) -> None:
    dataset = EventDataset([tiny_events], transform=Subsample(300))
    batch = collate([dataset[0], dataset[1]])
    task = small_task(hidden=32, num_queries=12, decoder_blocks=2, seed=1, query_init=query_init)
    opt = torch.optim.AdamW(task.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])
    task.eval()
    labels, _ = task.scored_items(batch)
    assert len(labels) >= 1  # some truth particle is found at IoU >= 0.5
    pred = task.predict(batch)
    owned = pred.point_particle[pred.point_particle >= 0]
    assert torch.bincount(owned, minlength=len(pred)).tolist() == pred.size.tolist()  # disjoint masks
    assert (pred.energy >= 0).all() and torch.isfinite(pred.start).all()


# ----------------------------------------------------------------------------- recipe
@pytest.mark.parametrize("model", TEST_MODELS)
def test_finetune_predict_and_score_particles(model: str, tiny_events: Path, tmp_path: Path) -> None:
    spec = get_task("particles")
    assert spec.unit == "particle" and spec.headline == "pq"
    cfg = FinetuneConfig(model=model, model_overrides={}, task="particles", labels=4, max_eval_events=3,
                         data=DataConfig(paths=(str(tiny_events),), rotate=True, max_points=400),
                         train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, progress=False))
    run = tmp_path / "run"
    result = run_finetune(cfg, run, progress=False)
    scores = json.loads((run / "eval.json").read_text())
    assert scores["task"] == "particles" and scores["events"] == len(result.split.test[:3])
    assert scores["finding"]["truth_particles"] == scores["particles"] > 0
    assert 0.0 <= scores["pq"] <= 1.0 and set(scores["energy"]) == set(spec.class_names)
    assert result.eval["electron_photon"]["target"] == 0.8
    out = tmp_path / "pred.h5"
    report = predict_file(run, tiny_events, out, batch_size=4)
    with h5py.File(out) as h5:
        assert len(h5["particle_probs"]) == report.events == len(h5["event_index"])
        for i in range(report.events):
            k = len(h5["particle_pred"][i])
            sizes, points = h5["particle_sizes"][i], h5["particle_points"][i]
            assert len(sizes) == k and sizes.sum() == len(points) == len(set(points.tolist()))
            assert (points < h5["n_points"][i]).all()
            assert h5["particle_probs"][i].shape == (5 * k,) and h5["particle_start"][i].shape == (3 * k,)
            assert h5["particle_energy"][i].shape == h5["particle_score"][i].shape == (k,)


def test_runs_trained_before_mask_position_or_class_from_mask_load_as_trained(tiny_events: Path,
                                                                             tmp_path: Path) -> None:
    """An older run's config names neither mask_position (off by default then) nor
    class_from_mask (which did not exist) and its weights hold no centre or pooled-class
    layers: it loads with both off and predicts as before; a run that has the layers loads
    with them on."""
    cfg0 = ParticlesConfig()
    assert cfg0.mask_position and cfg0.class_from_mask
    assert older_particles_settings({"mask_embed.layers.0.weight"}) == {"mask_position": False,
                                                                       "class_from_mask": False}
    assert older_particles_settings({"center_embed.layers.0.weight"}) == {"class_from_mask": False}
    assert older_particles_settings({"center_embed.0.weight", "class_pool.0.weight"}) == {}
    data = DataConfig(paths=(str(tiny_events),), rotate=False)
    for on in (False, True):
        cfg = FinetuneConfig(model="pointwise_test", model_overrides={}, task="particles", labels=4,
                             max_eval_events=2, data=data, head_hidden=16,
                             task_settings={"num_heads": 2, "num_queries": 6, "decoder_blocks": 1,
                                            "mask_position": on, "class_from_mask": on},
                             train=TrainConfig(steps=1, batch_size=2, warmup_steps=1, progress=False))
        run = tmp_path / f"run_{on}"
        run_finetune(cfg, run, progress=False)
        trained = load_finetuned(run)
        config = run / "config.yaml"
        settings = yaml.safe_load(config.read_text())
        assert settings["task_settings"].pop("mask_position") is on
        assert settings["task_settings"].pop("class_from_mask") is on
        config.write_text(yaml.safe_dump(settings))  # the config as detfm wrote it before
        reloaded = load_finetuned(run)
        assert reloaded.config.mask_position is on and reloaded.config.class_from_mask is on
        batch = collate([EventDataset([str(tiny_events)], labels=True)[i] for i in range(2)])
        before, after = trained.predict(batch), reloaded.predict(batch)
        assert torch.equal(before.point_particle, after.point_particle)
        assert torch.allclose(before.energy, after.energy)


def test_command_line_finetune_and_predict(tiny_events: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from detfm.cli import main

    run = tmp_path / "run"
    assert main(["finetune", "--backbone", "scratch", "--model", "pointwise_test", "--data", str(tiny_events),
                 "--task", "particles", "--labels", "4", "--steps", "1", "--batch-size", "2",
                 "--out", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "PQ" in printed and "finding efficiency" in printed
    assert main(["predict", "--model", str(run), "--data", str(tiny_events), "--out", str(tmp_path / "p.h5")]) == 0
    with h5py.File(tmp_path / "p.h5") as h5:
        assert h5.attrs["task"] == "particles" and "particle_points" in h5

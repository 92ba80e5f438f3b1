"""Per-point segmentation: feature propagation, head, focal loss, the task on simulated events;
and particle ID per instance, which shares the head and the loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import detfm.models.interpolation as interpolation_module
from detfm.data import EventDataset, PackedBatch, collate
from detfm.errors import ConfigError, DataFormatError
from detfm.models import PointMAE, create_model
from detfm.data.synthetic import synthetic_batch
from detfm.sim.simulate import SimConfig, simulate_to_file
from detfm.models.encoder import local_point_features
from detfm.models.interpolation import interpolate, knn_interpolation
from detfm.tasks.heads import PointHead
from detfm.tasks.pid import PIDConfig, ParticleID, find_instances
from detfm.tasks.segmentation import SegmentationConfig, SemanticSegmentation, segmentation_loss

TINY = {"num_groups": 32, "radius": 12.0, "cover_radius": 12.0, "group_size": 16, "depth": 1}


def tiny_backbone(seed: int = 0) -> PointMAE:
    m = create_model("pointmae_micro", seed=seed, **TINY)
    assert isinstance(m, PointMAE)
    return m


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> EventDataset:
    path = tmp_path_factory.mktemp("seg") / "ev.h5"
    simulate_to_file(SimConfig(events=6, seed=3), path, progress=False)
    return EventDataset([path], min_points=32, labels=True)


def batch_of(dataset: EventDataset, items: list[int]) -> PackedBatch:
    return collate([dataset[i] for i in items])


# ----------------------------------------------------------------------------- interpolation
def brute_force(coord: np.ndarray, offsets: np.ndarray, centers: np.ndarray, mask: np.ndarray,
                values: np.ndarray, k: int) -> np.ndarray:
    """Reference: a loop over points, each looking at the real centres of its own event."""
    out = np.zeros((coord.shape[0], values.shape[-1]))
    for b in range(len(offsets) - 1):
        real = np.flatnonzero(mask[b])
        for p in range(offsets[b], offsets[b + 1]):
            d2 = ((centers[b, real] - coord[p]) ** 2).sum(axis=1)
            near = np.argsort(d2, kind="stable")[:k]
            w = 1.0 / (d2[near] + 1e-8)
            out[p] = (w[:, None] * values[b, real[near]]).sum(axis=0) / w.sum()
    return out


def random_case(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    counts = [40, 25, 33]
    coord = torch.from_numpy(rng.uniform(0, 100, size=(sum(counts), 3)).astype(np.float32))
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(counts)]), dtype=torch.long)
    centers = torch.from_numpy(rng.uniform(0, 100, size=(3, 6, 3)).astype(np.float32))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    values = torch.from_numpy(rng.normal(size=(3, 6, 4)).astype(np.float32))
    return coord, offsets, centers, mask, values


def test_interpolation_matches_brute_force_and_stays_in_event() -> None:
    coord, offsets, centers, mask, values = random_case(0)
    interp = knn_interpolation(coord, offsets, centers, mask, k=3)
    got = interpolate(values, interp)
    want = brute_force(coord.numpy(), offsets.numpy(), centers.numpy(), mask.numpy(), values.numpy(), 3)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(interp.weight.sum(dim=1), torch.ones(coord.shape[0]))
    event = torch.repeat_interleave(torch.arange(3), offsets[1:] - offsets[:-1])
    used = interp.weight > 0
    assert bool(((interp.index // 6)[used] == event[:, None].expand(-1, 3)[used]).all())
    assert bool(mask.flatten()[interp.index[used]].all())  # never a padded centre
    # event 1 has only 2 real centres: its third slot carries no weight
    assert bool((interp.weight[40:65, 2] == 0).all())


def test_interpolation_chunks_give_identical_results(monkeypatch: pytest.MonkeyPatch) -> None:
    coord, offsets, centers, mask, _ = random_case(1)
    whole = knn_interpolation(coord, offsets, centers, mask)
    monkeypatch.setattr(interpolation_module, "_MAX_PAIRS", 7 * 6)  # 7 points per chunk
    chunked = knn_interpolation(coord, offsets, centers, mask)
    assert torch.equal(whole.index, chunked.index) and torch.equal(whole.weight, chunked.weight)


def test_point_on_a_centre_takes_its_token() -> None:
    coord = torch.tensor([[10.0, 10.0, 10.0], [20.0, 10.0, 10.0]])
    centers = torch.tensor([[[10.0, 10.0, 10.0], [50.0, 50.0, 50.0], [90.0, 10.0, 10.0]]])
    values = torch.tensor([[[1.0], [5.0], [9.0]]])
    interp = knn_interpolation(coord, torch.tensor([0, 2]), centers, torch.ones(1, 3, dtype=torch.bool))
    out = interpolate(values, interp)
    assert abs(float(out[0, 0]) - 1.0) < 1e-6
    # the second point: weights 1/d^2 to centres at d^2 = 100, 4100, 4900
    w = np.array([1 / 100, 1 / 4100, 1 / 4900])
    assert abs(float(out[1, 0]) - float((w * [1, 5, 9]).sum() / w.sum())) < 1e-5


def test_interpolation_bad_input() -> None:
    coord, offsets, centers, mask, _ = random_case(2)
    with pytest.raises(DataFormatError, match="at least one real patch"):
        knn_interpolation(coord, offsets, centers, torch.zeros_like(mask))
    with pytest.raises(DataFormatError, match="do not match"):
        knn_interpolation(coord, offsets[:-1], centers, mask)
    with pytest.raises(ConfigError, match="k must be"):
        knn_interpolation(coord, offsets, centers, mask, k=0)


# ----------------------------------------------------------------------------- head
def test_linear_head_is_one_linear_map_of_the_concatenation() -> None:
    batch = synthetic_batch(np.random.default_rng(0), [150, 90])
    backbone = tiny_backbone().eval()
    out = backbone.forward_features(batch)
    head = PointHead(backbone.num_features, backbone.num_local_features, 5, kind="linear")
    logits = head(out)
    # explicit form: interpolated token features, then [tokens, offset, energy] @ W^T + b
    tok = backbone.encode_tokens(batch)
    interp = knn_interpolation(batch.coord, batch.offsets, tok.centers, tok.mask)
    features = torch.cat([interpolate(tok.tokens, interp), local_point_features(batch, tok)], dim=1)
    weight = torch.cat([head.token_proj.weight, head.point_proj.weight], dim=1)
    torch.testing.assert_close(logits, features @ weight.t() + head.token_proj.bias, rtol=1e-4, atol=1e-5)
    assert logits.shape == (batch.num_points, 5)


def test_head_rejects_features_of_another_width() -> None:
    rng = np.random.default_rng(1)
    backbone = tiny_backbone().eval()
    head = PointHead(backbone.num_features, backbone.num_local_features + 2, 5)
    with pytest.raises(ConfigError, match="local features"):
        head(backbone.forward_features(synthetic_batch(rng, [100])))
    with pytest.raises(ConfigError, match="head kind"):
        PointHead(96, 4, 5, kind="conv")  # type: ignore[arg-type]
    no_local = PointHead(backbone.num_features, 0, 3)  # a backbone with nothing to pass through
    out = backbone.forward_features(synthetic_batch(rng, [50]))
    assert no_local(replace(out, local=out.local[:, :0])).shape == (50, 3)


# ----------------------------------------------------------------------------- loss
def test_focal_loss_reduces_to_weighted_cross_entropy_per_event() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=g)
    target = torch.randint(0, 5, (50,), generator=g)
    offsets = torch.tensor([0, 20, 50])
    w = torch.tensor([1.0, 2.0, 0.5, 3.0, 1.5])
    got = segmentation_loss(logits, target, offsets, w, gamma=0.0)
    # torch's weighted CE is the weighted mean within an event; then the mean of the events
    want = 0.5 * (F.cross_entropy(logits[:20], target[:20], weight=w)
                  + F.cross_entropy(logits[20:], target[20:], weight=w))
    torch.testing.assert_close(got, want)
    # focal: (1 - p)^gamma down-weights confident points, so the loss is smaller
    assert float(segmentation_loss(logits, target, offsets, w, gamma=2.0)) < float(got)


def test_loss_is_a_mean_over_events_and_ignores_low_energy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(70, 5, generator=g, requires_grad=True)
    target = torch.randint(0, 5, (70,), generator=g)
    target[:3] = 4
    a = segmentation_loss(logits[:10], target[:10], torch.tensor([0, 10]))
    b = segmentation_loss(logits[10:], target[10:], torch.tensor([0, 60]))
    both = segmentation_loss(logits, target, torch.tensor([0, 10, 70]))
    torch.testing.assert_close(both, 0.5 * (a + b))  # not weighted by the 10 vs 60 points
    ignored = segmentation_loss(logits, target, torch.tensor([0, 10, 70]), ignore_class=4)
    ignored.backward()
    low = target == 4
    assert float(logits.grad[low].abs().sum()) == 0.0 and float(logits.grad[~low].abs().sum()) > 0
    # an event made only of ignored points adds 0 and still counts in the mean
    only_low = torch.full((10,), 4)
    loss = segmentation_loss(logits.detach()[:20], torch.cat([only_low, target[10:20]]),
                             torch.tensor([0, 10, 20]), ignore_class=4)
    alone = segmentation_loss(logits.detach()[10:20], target[10:20], torch.tensor([0, 10]), ignore_class=4)
    torch.testing.assert_close(loss, 0.5 * alone)


# ----------------------------------------------------------------------------- task
def test_task_loss_is_the_mean_of_its_events(events: EventDataset) -> None:
    task = SemanticSegmentation(tiny_backbone(), SegmentationConfig(freeze_backbone=True)).eval()
    with torch.no_grad():
        one = [float(task(batch_of(events, [i]))["loss"]) for i in (0, 1, 2)]
        together = float(task(batch_of(events, [0, 1, 2]))["loss"])
    assert abs(together - np.mean(one)) < 1e-5 * max(1.0, abs(together))


def test_head_overfits_a_few_events_and_frozen_backbone_is_untouched(events: EventDataset) -> None:
    batch = batch_of(events, [0, 1])
    truth = batch.semantic
    majority = float(torch.bincount(truth, minlength=5).max()) / len(truth)
    task = SemanticSegmentation(tiny_backbone(), SegmentationConfig(freeze_backbone=True))
    before = {k: v.clone() for k, v in task.backbone.state_dict().items()}
    task.train()
    assert not task.backbone.training and task.head.training  # a frozen backbone stays in eval mode
    trainable = [p for p in task.parameters() if p.requires_grad]
    assert all(p is not q for p in trainable for q in task.backbone.parameters())
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    first = None
    for _ in range(30):
        out = task(batch)
        first = first if first is not None else float(out["outputs"]["accuracy"].detach())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    task.eval()
    acc = float((task.predict_proba(batch).argmax(dim=1) == truth).float().mean())
    # 5 classes (chance 0.2); the largest class holds `majority` of the points
    assert acc >= 0.7 and acc >= majority + 0.15, (acc, majority, first)
    for k, v in task.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_finetune_mode_gets_backbone_gradients_and_layer_decay(events: EventDataset) -> None:
    backbone = create_model("pointmae_micro", **{**TINY, "depth": 2})
    task = SemanticSegmentation(backbone, SegmentationConfig(layer_decay=0.5)).train()
    out = task(batch_of(events, [0]), generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert task.backbone.encoder.blocks[0].attn.qkv.weight.grad is not None
    scales = task.param_lr_scales()
    assert set(scales) == {n for n, _ in task.named_parameters()}
    # depth 2: tokenizer/pos layer 0 -> 0.5^3, block 0 -> 0.5^2, block 1 -> 0.5, rest -> 1
    assert scales["backbone.tokenizer.embed.first.0.weight"] == 0.125
    assert scales["backbone.pos_embed.mlp.0.weight"] == 0.125
    assert scales["backbone.encoder.blocks.0.attn.qkv.weight"] == 0.25
    assert scales["backbone.encoder.blocks.1.mlp.2.bias"] == 0.5
    assert scales["backbone.encoder.norm.weight"] == 1.0
    assert scales["head.token_proj.weight"] == 1.0


def test_exclude_low_energy_metrics(events: EventDataset) -> None:
    batch = batch_of(events, [0])
    task = SemanticSegmentation(tiny_backbone(), SegmentationConfig(exclude_low_energy=True,
                                                                    freeze_backbone=True)).eval()
    with torch.no_grad():
        out = task(batch)
    assert int(out["outputs"]["scored_points"]) == int((batch.semantic != 4).sum())
    assert 0.0 <= float(out["outputs"]["accuracy"]) <= 1.0


def test_task_bad_input(events: EventDataset) -> None:
    batch = batch_of(events, [0])
    task = SemanticSegmentation(tiny_backbone(), SegmentationConfig(freeze_backbone=True)).eval()
    with pytest.raises(DataFormatError, match="semantic labels"):
        task(replace(batch, semantic=None))
    with pytest.raises(DataFormatError, match="0..4"):
        task(replace(batch, semantic=torch.full_like(batch.semantic, 7)))
    with pytest.raises(ConfigError, match="class_weights"):
        SegmentationConfig(class_weights=(1.0, 2.0))
    with pytest.raises(ConfigError, match="layer_decay"):
        SegmentationConfig(layer_decay=0.0)
    with pytest.raises(ConfigError, match="focal_gamma"):
        SegmentationConfig(focal_gamma=-1.0)


# ----------------------------------------------------------------------------- particle ID
# Particle ID shares the head (per-point features) and the event-mean focal loss.
def test_find_instances_numbers_groups_and_takes_the_majority_pid() -> None:
    offsets = torch.tensor([0, 7, 11])
    instance = torch.tensor([-1, 0, 0, 0, 2, 2, 2, 0, 0, 1, 1])
    pid = torch.tensor([5, 2, 2, 1, 4, 5, 5, 3, 1, 5, 5])
    inst = find_instances(offsets, instance, pid)
    assert inst.event.tolist() == [0, 0, 1, 1] and inst.group.tolist() == [0, 2, 0, 1]
    # event 0 group 0: muon, muon, electron (a delta ray) -> muon; group 2: "none" does not vote;
    # event 1 group 0: a tie pion/electron -> the lower id; group 1: nobody votes -> unscored
    assert inst.label.tolist() == [2, 4, 1, -1]
    assert inst.size.tolist() == [3, 3, 2, 2]
    assert inst.point_instance.tolist() == [-1, 0, 0, 0, 1, 1, 1, 2, 2, 3, 3]


def test_pid_probe_is_linear_in_the_pooled_features_and_loss_is_per_event(events: EventDataset) -> None:
    batch = batch_of(events, [0, 1])
    task = ParticleID(tiny_backbone(), PIDConfig(head="linear", freeze_backbone=True)).eval()
    with torch.no_grad():
        logits, inst = task.forward_instances(batch)
        per_point = task.head(task.backbone.forward_features(batch))
        for m in (0, len(inst) - 1):
            torch.testing.assert_close(logits[m], per_point[inst.point_instance == m].mean(dim=0),
                                       rtol=1e-4, atol=1e-5)
        one = [float(task(batch_of(events, [i]))["loss"]) for i in (0, 1)]
        both = float(task(batch)["loss"])
    assert abs(both - np.mean(one)) < 1e-5 * max(1.0, both)
    with pytest.raises(DataFormatError, match="instance and pid"):
        task(replace(batch, pid=None))
    with pytest.raises(ConfigError, match="5 classes"):
        PIDConfig(num_classes=4)


def test_pid_head_overfits_the_particles_of_two_events(events: EventDataset) -> None:
    batch = batch_of(events, [0, 1])
    task = ParticleID(tiny_backbone(), PIDConfig(freeze_backbone=True, focal_gamma=0.0)).train()
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    with torch.no_grad():
        logits, inst = task.eval().forward_instances(batch)
    scored = inst.label >= 0
    labels = inst.label[scored]
    majority = float(torch.bincount(labels).max()) / len(labels)
    acc = float((logits[scored].argmax(dim=1) == labels).float().mean())
    assert acc >= 0.9 and acc > majority + 0.2, (acc, majority, len(labels))


def test_pid_mean_max_pooling_concatenates_the_mean_and_the_channel_maximum(events: EventDataset) -> None:
    batch = batch_of(events, [0, 1])
    task = ParticleID(tiny_backbone(), PIDConfig(freeze_backbone=True, pooling="mean_max")).eval()
    captured: list[torch.Tensor] = []
    task.classifier.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    with torch.no_grad():
        logits, inst = task.forward_instances(batch)
        per_point = task.point_outputs(batch)
    pooled = captured[-1]
    assert logits.shape == (len(inst), 5) and pooled.shape == (len(inst), 2 * task.config.hidden)
    for m in (0, len(inst) - 1):
        mine = per_point[inst.point_instance == m]
        torch.testing.assert_close(pooled[m, :task.config.hidden], mine.mean(dim=0), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pooled[m, task.config.hidden:], mine.max(dim=0).values)
    with pytest.raises(ConfigError, match="linear probe pools by the mean"):
        PIDConfig(head="linear", pooling="mean_max")
    with pytest.raises(ConfigError, match="pooling must be one of mean, mean_max, mean_attention"):
        PIDConfig(pooling="median")


def test_group_softmax_is_a_softmax_within_each_group() -> None:
    from detfm.tasks.pid import group_softmax

    score = torch.tensor([1.0, 2.0, 3.0, -1.0, 50.0, 49.0])
    index = torch.tensor([0, 0, 0, 2, 1, 1])
    weight = group_softmax(score, index, 3)
    torch.testing.assert_close(weight[:3], torch.softmax(score[:3], 0))
    torch.testing.assert_close(weight[4:], torch.softmax(score[4:], 0))  # large scores stay finite
    assert weight[3] == 1.0


def test_pid_attention_pooling_reads_the_points_it_learns_to_weigh(events: EventDataset) -> None:
    batch = batch_of(events, [0, 1])
    task = ParticleID(tiny_backbone(), PIDConfig(freeze_backbone=True, pooling="mean_attention")).eval()
    captured: list[torch.Tensor] = []
    task.classifier.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
    hidden = task.config.hidden
    with torch.no_grad():
        task.attention_score.weight.zero_()  # equal scores: the attended mean is the mean
        logits, inst = task.forward_instances(batch)
        per_point = task.point_outputs(batch)
        pooled = captured[-1]
        assert logits.shape == (len(inst), 5) and pooled.shape == (len(inst), 2 * hidden)
        torch.testing.assert_close(pooled[:, hidden:], pooled[:, :hidden], rtol=1e-4, atol=1e-5)
        direction = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
        task.attention_score.weight.copy_(3000.0 * direction[None])  # unequal scores (the features are ~0.01)
        task.forward_instances(batch)
        for m in (0, len(inst) - 1):
            mine = per_point[inst.point_instance == m]
            weight = torch.softmax(3000.0 * mine @ direction, dim=0)
            assert weight.max() > 2.0 / len(mine)  # not the plain mean any more
            torch.testing.assert_close(captured[-1][m, hidden:], weight @ mine, rtol=1e-3, atol=1e-4)
    loss = task.train()(batch)["loss"]
    loss.backward()
    assert task.attention_score.weight.grad is not None and task.attention_score.weight.grad.abs().sum() > 0


def test_finetune_config_takes_pooling_only_where_points_are_pooled() -> None:
    from detfm.recipes.adapt import FinetuneConfig, build_task

    cfg = FinetuneConfig(task="pid", pooling="mean_max")
    task = build_task(cfg, tiny_backbone())
    assert isinstance(task, ParticleID) and task.config.pooling == "mean_max"
    event = build_task(FinetuneConfig(task="event", pooling="mean_attention"), tiny_backbone())
    assert event.config.pooling == "mean_attention" and event.attention_score is not None
    with pytest.raises(ConfigError, match="pooling applies to tasks that pool points"):
        FinetuneConfig(task="semseg", pooling="mean_max")
    with pytest.raises(ConfigError, match="linear probe pools by the mean"):
        FinetuneConfig(task="pid", mode="probe", pooling="mean_max")


def test_finetune_task_settings_reach_the_task_config_and_typos_are_named() -> None:
    from detfm.recipes.adapt import FinetuneConfig, build_task
    from detfm.tasks.particles import Particles

    cfg = FinetuneConfig(task="particles", task_settings={"num_queries": 7, "decoder_blocks": 1})
    task = build_task(cfg, tiny_backbone())
    assert isinstance(task, Particles)
    assert task.config.num_queries == 7 and task.config.decoder_blocks == 1
    with pytest.raises(ConfigError, match=r"unknown key task_settings.num_querys .*did you mean 'num_queries'"):
        FinetuneConfig(task="particles", task_settings={"num_querys": 7})
    with pytest.raises(ConfigError, match=r"task_settings.hidden is set by the finetune config itself \(head_hidden\)"):
        FinetuneConfig(task="particles", task_settings={"hidden": 64})
    with pytest.raises(ConfigError, match="unknown key task_settings.num_queries for task 'semseg'"):
        FinetuneConfig(task="semseg", task_settings={"num_queries": 7})

"""Event classification: the leading-particle label, the loss, and a forward pass."""

from __future__ import annotations

import pytest
import torch

from detfm.data import PackedBatch
from detfm.errors import ConfigError, DataFormatError
from detfm.models import create_model
from detfm.tasks.event import EventClassification, EventConfig, event_focal_loss, leading_particle_label


def make_batch(sizes: list[int], instance: list[int], pid: list[int], energy: list[float]) -> PackedBatch:
    n = sum(sizes)
    offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    gen = torch.Generator().manual_seed(0)
    coord = torch.randint(0, 64, (n, 3), generator=gen).float()
    return PackedBatch(coord=coord, feat=torch.rand(n, 1, generator=gen), offsets=offsets,
                       energy=torch.tensor(energy), semantic=torch.zeros(n, dtype=torch.long),
                       pid=torch.tensor(pid), instance=torch.tensor(instance),
                       index=torch.arange(len(sizes)))


def test_leading_particle_is_the_labeled_instance_with_most_energy() -> None:
    # event 0: group 0 (muon, 3 MeV over 2 points) vs group 1 (electron, 5 MeV over 1 point)
    # event 1: group 0 (proton 1 MeV), group 2 (pid none, 9 MeV: not a candidate), low-energy point
    # event 2: only unlabeled points -> -1
    batch = make_batch([3, 3, 2],
                       instance=[0, 0, 1, 0, 2, -1, -1, 3],
                       pid=[2, 2, 1, 4, 5, 5, 5, 5],
                       energy=[1.0, 2.0, 5.0, 1.0, 9.0, 3.0, 1.0, 1.0])
    assert leading_particle_label(batch).tolist() == [1, 4, -1]


def test_event_focal_loss_is_a_mean_over_events_with_weights() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    label = torch.tensor([0, 0, -1])
    ce = torch.nn.functional.cross_entropy(logits[:2], label[:2], reduction="none")
    assert event_focal_loss(logits, label, gamma=0.0) == pytest.approx((ce.sum() / 3).item())
    weights = torch.tensor([2.0, 1.0])
    assert event_focal_loss(logits, label, weights, gamma=0.0) == pytest.approx((2 * ce.sum() / 3).item())
    p = torch.softmax(logits[:2], -1)[:, 0]
    want = (((1 - p) ** 2) * ce).sum() / 3
    assert event_focal_loss(logits, label, gamma=2.0) == pytest.approx(want.item(), rel=1e-6)


def test_event_classification_forward_and_errors() -> None:
    backbone = create_model("pointmae_micro", num_groups=4, group_size=4, radius=20.0, cover_radius=20.0, depth=1)
    task = EventClassification(backbone, EventConfig(seed=1))
    batch = make_batch([6, 5], instance=[0] * 6 + [1] * 5, pid=[2] * 6 + [4] * 5, energy=[1.0] * 11)
    out = task(batch)
    assert task.forward_logits(batch).shape == (2, 5)
    assert torch.isfinite(out["loss"]) and out["outputs"]["events"] == 2
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.classifier.parameters())
    with pytest.raises(ConfigError):
        EventConfig(num_classes=3)
    unlabeled = PackedBatch(coord=batch.coord, feat=batch.feat, offsets=batch.offsets, energy=batch.energy)
    with pytest.raises(DataFormatError, match="instance and pid labels"):
        task(unlabeled)

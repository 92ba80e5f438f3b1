"""Masked point modeling: masking, loss normalisation, determinism, overfitting, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detfm.data import PackedBatch
from detfm.errors import ConfigError
from detfm.models import create_model
from detfm.data.synthetic import synthetic_batch
from detfm.tasks import MaskedPointModeling, Task

SMALL = dict(embed_dim=32, depth=2, num_heads=2, num_groups=24, group_size=8, pointnet_hidden=(16, 32),
             drop_path_rate=0.0)


def make_task(seed: int = 0, **kw: object) -> MaskedPointModeling:
    backbone = create_model("pointmae_tiny", **SMALL)
    return MaskedPointModeling(backbone, decoder_depth=1, energy_hidden=16, seed=seed, **kw)  # type: ignore[arg-type]


def concat(*batches: PackedBatch) -> PackedBatch:
    offsets, shift = [torch.zeros(1, dtype=torch.long)], 0
    for b in batches:
        offsets.append(b.offsets[1:] + shift)
        shift += b.num_points
    return PackedBatch(coord=torch.cat([b.coord for b in batches]), feat=torch.cat([b.feat for b in batches]),
                       offsets=torch.cat(offsets), energy=torch.cat([b.energy for b in batches]))


def test_engine_contract() -> None:
    task = make_task()
    assert isinstance(task, Task)
    out = task(synthetic_batch(np.random.default_rng(0), [300, 120]))
    assert set(out) == {"loss", "outputs"}
    assert out["loss"].ndim == 0 and out["loss"].requires_grad
    assert {"chamfer", "energy"} <= set(out["outputs"])
    for v in out["outputs"].values():
        assert v.ndim == 0 and not v.requires_grad
    torch.testing.assert_close(out["loss"].detach(), out["outputs"]["chamfer"] + out["outputs"]["energy"])


def test_random_masking_ratio_per_event() -> None:
    task = make_task(mask_ratio=0.6)
    counts = torch.tensor([10, 1, 2, 7, 0])
    patch_mask = torch.arange(10)[None, :] < counts[:, None]
    masked = task.random_masking(patch_mask, torch.Generator().manual_seed(0))
    assert masked.sum(dim=1).tolist() == [6, 0, 1, 4, 0]  # floor(0.6 n), >= 1 hidden, >= 1 visible
    assert not (masked & ~patch_mask).any()
    other = task.random_masking(patch_mask, torch.Generator().manual_seed(1))
    assert not torch.equal(masked, other)
    # over many draws every real patch gets hidden at about the ratio
    big = torch.ones(1, 50, dtype=torch.bool)
    freq = torch.stack([task.random_masking(big, torch.Generator().manual_seed(s)) for s in range(200)]).float().mean()
    assert abs(float(freq) - 0.6) < 1e-6  # exactly floor(0.6 * 50) / 50 per draw


def test_loss_is_a_mean_over_real_hidden_patches() -> None:
    rng = np.random.default_rng(1)
    a, b = synthetic_batch(rng, [400]), synthetic_batch(rng, [60])
    task = make_task().eval()

    def stage_losses(batch: PackedBatch, masked_rows: list[torch.Tensor]) -> tuple[float, int]:
        patches = task.backbone.group(batch)
        masked = torch.zeros_like(patches.mask)
        for i, row in enumerate(masked_rows):
            masked[i, : row.numel()] = row
        enc = task.forward_encoder(patches, masked)
        rec = task.forward_decoder(enc, patches, masked)
        return float(task.forward_loss(rec)["loss"].detach()), int(masked.sum())

    pa, pb = task.backbone.group(a), task.backbone.group(b)
    ma = task.random_masking(pa.mask, torch.Generator().manual_seed(3))[0, : int(pa.mask.sum())]
    mb = task.random_masking(pb.mask, torch.Generator().manual_seed(4))[0, : int(pb.mask.sum())]
    la, na = stage_losses(a, [ma])
    lb, nb = stage_losses(b, [mb])
    lab, nab = stage_losses(concat(a, b), [ma, mb])
    assert nab == na + nb
    assert lab == pytest.approx((na * la + nb * lb) / (na + nb), rel=1e-4)


def test_same_seed_same_run_and_resume_is_exact() -> None:
    batch = synthetic_batch(np.random.default_rng(2), [300, 150, 40])

    def run(task: MaskedPointModeling, steps: int, opt: torch.optim.Optimizer) -> list[float]:
        losses = []
        for _ in range(steps):
            out = task(batch)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
            losses.append(float(out["loss"].detach()))
        return losses

    t1, t2 = make_task(seed=5), make_task(seed=5)
    o1, o2 = torch.optim.SGD(t1.parameters(), lr=0.01), torch.optim.SGD(t2.parameters(), lr=0.01)
    first = run(t1, 3, o1)
    assert first == run(t2, 3, o2)
    assert int(t1.step) == 3
    # resume: a fresh task loading t1's state continues exactly as t1 does
    t3 = make_task(seed=5)
    t3.load_state_dict(t1.state_dict())
    o3 = torch.optim.SGD(t3.parameters(), lr=0.01)
    o3.load_state_dict(o1.state_dict())
    assert run(t3, 2, o3) == run(t1, 2, o1)


def test_streams_differ_by_seed_step_and_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    def draw(task: MaskedPointModeling) -> torch.Tensor:
        return torch.rand(16, generator=task.make_generator())

    t = make_task(seed=5)
    first, second = draw(t), draw(t)  # step 0, step 1
    assert not torch.equal(first, second)
    assert torch.equal(draw(make_task(seed=5)), first)
    assert not torch.equal(draw(make_task(seed=6)), first)
    monkeypatch.setattr("detfm.tasks.mpm._rank", lambda: 1)
    assert not torch.equal(draw(make_task(seed=5)), first)  # another DDP rank


def test_eval_mode_is_repeatable_and_does_not_advance() -> None:
    batch = synthetic_batch(np.random.default_rng(3), [250, 90])
    task = make_task().eval()
    with torch.no_grad():
        a, b = task(batch)["loss"], task(batch)["loss"]
    assert torch.equal(a, b) and int(task.step) == 0


def test_single_patch_events() -> None:
    task = make_task()
    one = synthetic_batch(np.random.default_rng(4), [1, 1])
    out = task(one)
    assert float(out["loss"].detach()) == 0.0 and float(out["outputs"]["hidden_patches"]) == 0
    out["loss"].backward()  # still a graph the engine can step on
    mixed = task(concat(one, synthetic_batch(np.random.default_rng(5), [200])))
    assert float(mixed["loss"].detach()) > 0 and torch.isfinite(mixed["loss"])


def test_overfits_a_tiny_batch() -> None:
    batch = synthetic_batch(np.random.default_rng(6), [250, 180, 300, 120])
    task = make_task()
    opt = torch.optim.AdamW(task.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    start, end = np.mean(losses[:3]), np.mean(losses[-5:])
    assert end < 0.6 * start, (start, end)


def test_config_errors() -> None:
    backbone = create_model("pointmae_tiny", **SMALL)
    with pytest.raises(ConfigError, match="mask_ratio"):
        MaskedPointModeling(backbone, mask_ratio=1.0)
    with pytest.raises(ConfigError, match="energy_channel 1"):
        MaskedPointModeling(backbone, energy_channel=1)
    with pytest.raises(ConfigError, match="divisible"):
        MaskedPointModeling(backbone, decoder_dim=30, decoder_heads=4)
    with pytest.raises(ConfigError, match="loss weights"):
        MaskedPointModeling(backbone, chamfer_weight=0.0, energy_weight=0.0)


def test_decoder_width_can_differ_from_encoder() -> None:
    backbone = create_model("pointmae_tiny", **SMALL)
    task = MaskedPointModeling(backbone, decoder_dim=16, decoder_heads=2, decoder_depth=1)
    out = task(synthetic_batch(np.random.default_rng(7), [200, 100]))
    out["loss"].backward()
    assert task.backbone.encoder.blocks[0].attn.qkv.weight.grad is not None

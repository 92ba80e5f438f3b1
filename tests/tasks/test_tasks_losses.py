"""Chamfer distance against a brute-force double loop."""

from __future__ import annotations

import torch

from detfm.tasks.losses import chamfer_distance, masked_mean


def brute_chamfer(p: torch.Tensor, t: torch.Tensor) -> float:
    fwd = sum(min(float(((a - b) ** 2).sum()) for b in t) for a in p) / len(p)
    bwd = sum(min(float(((a - b) ** 2).sum()) for a in p) for b in t) / len(t)
    return fwd + bwd


def test_chamfer_matches_brute_force_with_padding() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(5, 7, 3, generator=g), torch.randn(5, 7, 3, generator=g)
    n_pred, n_target = [7, 3, 1, 5, 2], [7, 4, 1, 2, 6]
    pm = torch.arange(7)[None, :] < torch.tensor(n_pred)[:, None]
    tm = torch.arange(7)[None, :] < torch.tensor(n_target)[:, None]
    got = chamfer_distance(pred, target, pm, tm)
    want = torch.tensor([brute_chamfer(pred[i, :n_pred[i]], target[i, :n_target[i]]) for i in range(5)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # padded slots do not matter
    pred2, target2 = pred.clone(), target.clone()
    pred2[~pm], target2[~tm] = 1e3, -1e3
    torch.testing.assert_close(chamfer_distance(pred2, target2, pm, tm), got, atol=1e-5, rtol=1e-5)


def test_chamfer_zero_for_identical_sets_and_order_free() -> None:
    t = torch.randn(2, 9, 3, generator=torch.Generator().manual_seed(1))
    assert float(chamfer_distance(t, t).abs().max()) < 1e-5
    shuffled = t[:, torch.randperm(9, generator=torch.Generator().manual_seed(2))]
    assert float(chamfer_distance(shuffled, t).abs().max()) < 1e-5
    moved = t + torch.tensor([0.5, 0.0, 0.0])
    assert float(chamfer_distance(moved, t).min()) > 0


def test_chamfer_gradient_is_finite() -> None:
    p = torch.randn(3, 4, 3, requires_grad=True)
    mask = torch.tensor([[True, True, False, False]] * 3)
    chamfer_distance(p, p.detach().clone(), mask, mask).sum().backward()
    assert p.grad is not None and torch.isfinite(p.grad).all()
    assert float(p.grad[:, 2:].abs().max()) == 0.0


def test_masked_mean() -> None:
    v = torch.tensor([[1.0, 2.0, 100.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[True, True, False], [True, False, False]])
    assert masked_mean(v, m, dim=1).tolist() == [1.5, 4.0]

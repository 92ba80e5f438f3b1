"""LoRA: starts at the base model, trains only its own matrices, merges exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detfm.errors import ConfigError
from detfm.models import PointMAE, create_model
from detfm.models.lora import DEFAULT_TARGETS, LoRALinear, apply_lora, lora_modules, merge_lora, unmerge_lora
from detfm.data.synthetic import synthetic_batch

SMALL = dict(embed_dim=32, depth=2, num_heads=2, num_groups=16, group_size=8, pointnet_hidden=(16, 32))


def backbone(seed: int = 0) -> PointMAE:
    m = create_model("pointmae_micro", seed=seed, **SMALL)
    assert isinstance(m, PointMAE)
    return m.eval()


def perturb(model: nn.Module, seed: int = 1) -> None:
    """Give every LoRA B a non-zero value (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_modules(model):
            layer.lora_B.copy_(0.05 * torch.randn(layer.lora_B.shape, generator=g))


def test_lora_linear_starts_at_base_and_merges_exactly() -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    x = torch.randn(5, 12)
    expected = base(x).detach()
    lora = LoRALinear.from_linear(base, rank=3, alpha=6.0, generator=torch.Generator().manual_seed(2))
    assert lora.weight is base.weight  # the base parameters are reused, not copied
    torch.testing.assert_close(lora(x), expected, rtol=0, atol=0)  # B = 0 at start
    with torch.no_grad():
        lora.lora_B.normal_(generator=torch.Generator().manual_seed(3))
    # the update is (alpha / r) B A, added to the output
    manual = expected + 2.0 * x @ (lora.lora_B @ lora.lora_A).t()
    unmerged = lora(x).detach()
    torch.testing.assert_close(unmerged, manual, rtol=1e-5, atol=1e-5)
    before = lora.weight.detach().clone()
    lora.merge()
    lora.merge()  # idempotent
    torch.testing.assert_close(lora(x), unmerged, rtol=1e-5, atol=1e-5)
    lora.unmerge()
    torch.testing.assert_close(lora.weight, before, rtol=0, atol=1e-6)


def test_apply_lora_wraps_targets_and_freezes_the_rest() -> None:
    model = backbone()
    names = apply_lora(model, rank=4, alpha=8.0, seed=0)
    assert len(names) == SMALL["depth"] * len(DEFAULT_TARGETS)
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(trainable) == 2 * len(names)
    # base weights keep their names: a plain backbone's state dict loads into the wrapped one
    missing, unexpected = model.load_state_dict(backbone().state_dict(), strict=False)
    assert not unexpected and all("lora_" in k for k in missing)
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model)


def test_lora_backbone_starts_equal_and_merged_equals_unmerged() -> None:
    batch = synthetic_batch(np.random.default_rng(0), [300, 180])
    plain = backbone()
    ref = plain.encode_tokens(batch).tokens.detach()
    model = backbone()
    apply_lora(model, rank=4, alpha=8.0)
    torch.testing.assert_close(model.encode_tokens(batch).tokens, ref, rtol=0, atol=0)
    perturb(model)
    unmerged = model.encode_tokens(batch).tokens.detach()
    assert (unmerged - ref).abs().max() > 1e-3  # the update changes the output
    assert merge_lora(model) == len(lora_modules(model))
    merged = model.encode_tokens(batch).tokens.detach()
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    # a plain backbone with the merged weights gives the same output: no LoRA code needed
    merged_state = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    plain.load_state_dict(merged_state)
    torch.testing.assert_close(plain.encode_tokens(batch).tokens, unmerged, rtol=1e-4, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model.encode_tokens(batch).tokens, unmerged, rtol=1e-4, atol=1e-5)


def test_lora_gradients_reach_only_lora_matrices() -> None:
    batch = synthetic_batch(np.random.default_rng(1), [200])
    model = backbone().train()
    apply_lora(model, rank=2, alpha=4.0)
    out = model.encode_tokens(batch, generator=torch.Generator().manual_seed(0))
    out.tokens[out.mask].pow(2).sum().backward()
    for name, p in model.named_parameters():
        if "lora_" in name:
            assert p.grad is not None
        else:
            assert p.grad is None, name
    # B starts at zero, so only B gets a gradient at the first step (A's is B^T-weighted: 0)
    assert any(float(layer.lora_B.grad.abs().sum()) > 0 for layer in lora_modules(model))


def test_lora_init_is_seeded_and_leaves_global_rng_alone() -> None:
    a, b, c = backbone(), backbone(), backbone()
    state = torch.random.get_rng_state()
    apply_lora(a, seed=5)
    apply_lora(b, seed=5)
    apply_lora(c, seed=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    la, lb, lc = lora_modules(a), lora_modules(b), lora_modules(c)
    assert all(torch.equal(x.lora_A, y.lora_A) for x, y in zip(la, lb, strict=True))
    assert not torch.equal(la[0].lora_A, lc[0].lora_A)


def test_lora_bad_settings() -> None:
    with pytest.raises(ConfigError, match="rank"):
        apply_lora(backbone(), rank=0)
    with pytest.raises(ConfigError, match="alpha"):
        LoRALinear(4, 4, rank=2, alpha=0.0)
    with pytest.raises(ConfigError, match="no layer"):
        apply_lora(backbone(), targets=("nonexistent",))
    with pytest.raises(ConfigError, match="not a Linear"):
        apply_lora(backbone(), targets=("norm1",))

"""Backbone: shapes, padding independence, intermediates, point features, heads, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detfm.data import PackedBatch
from detfm.errors import ConfigError, DataFormatError
from detfm.models import (
    PointMAE,
    PointMAEConfig,
    build_model,
    create_model,
    list_models,
    model_config,
)
from detfm.models.contract import BackboneOutput, layer_ids
from detfm.models.layers import DropPath
from detfm.data.synthetic import synthetic_batch

SMALL = dict(embed_dim=32, depth=3, num_heads=2, num_groups=24, group_size=8, pointnet_hidden=(16, 32))


def concat(*batches: PackedBatch) -> PackedBatch:
    """Join batches event-wise (points back to back, offsets shifted)."""
    offsets, shift = [torch.zeros(1, dtype=torch.long)], 0
    for b in batches:
        offsets.append(b.offsets[1:] + shift)
        shift += b.num_points
    return PackedBatch(coord=torch.cat([b.coord for b in batches]), feat=torch.cat([b.feat for b in batches]),
                       offsets=torch.cat(offsets), energy=torch.cat([b.energy for b in batches]))


def model(**kw: object) -> PointMAE:
    m = create_model("pointmae_tiny", **{**SMALL, **kw})
    assert isinstance(m, PointMAE)
    return m.eval()


def test_forward_features_shapes() -> None:
    batch = synthetic_batch(np.random.default_rng(0), [800, 30, 1])
    out = model().encode_tokens(batch)
    b, g, d = out.tokens.shape
    assert (b, d) == (3, 32) and g == 24
    assert out.mask.sum(dim=1).tolist()[2] == 1 and out.mask.sum(dim=1).tolist()[0] == 24
    assert out.centers.shape == (3, g, 3)
    assert out.point_patch.shape == (batch.num_points,)
    assert torch.isfinite(out.tokens[out.mask]).all()


def test_real_event_unchanged_by_padded_neighbours() -> None:
    rng = np.random.default_rng(1)
    big, small, tiny = synthetic_batch(rng, [600]), synthetic_batch(rng, [25]), synthetic_batch(rng, [2])
    m = model()
    with torch.no_grad():
        alone = m.encode_tokens(big)
        mixed = m.encode_tokens(concat(small, big, tiny))
    n = int(alone.mask.sum())
    assert torch.equal(mixed.mask[1], alone.mask[0])
    assert torch.equal(mixed.centers[1], alone.centers[0])
    torch.testing.assert_close(mixed.tokens[1, :n], alone.tokens[0, :n], atol=1e-5, rtol=1e-5)
    # the small event is padded in the mixed batch, and its tokens match its own run too
    alone_small = m.encode_tokens(small)
    k = int(alone_small.mask.sum())
    assert int(mixed.mask[0].sum()) == k < mixed.mask.shape[1]
    torch.testing.assert_close(mixed.tokens[0, :k], alone_small.tokens[0, :k], atol=1e-5, rtol=1e-5)


def test_numba_backend_gives_identical_tokens() -> None:
    batch = synthetic_batch(np.random.default_rng(2), [400, 90])
    a = model().encode_tokens(batch)
    b = model(backend="numba").encode_tokens(batch)
    assert torch.equal(a.patches.index, b.patches.index)
    assert torch.equal(a.tokens, b.tokens)


def test_forward_intermediates() -> None:
    batch = synthetic_batch(np.random.default_rng(3), [300, 60])
    m = model()
    final, inter = m.token_intermediates(batch, layers=[0, -1])
    assert len(inter) == 2 and inter[0].shape == final.tokens.shape
    assert not torch.allclose(inter[0], inter[1])
    _, normed = m.token_intermediates(batch, layers=1, norm=True)
    torch.testing.assert_close(normed[0], final.tokens)
    _, every = m.token_intermediates(batch)
    assert len(every) == 3
    with pytest.raises(ConfigError, match="block index 3 out of range"):
        m.token_intermediates(batch, layers=[3])
    with pytest.raises(ConfigError, match="last 4 blocks"):
        m.token_intermediates(batch, layers=4)


def test_point_features_are_interpolated_tokens_and_carry_gradients() -> None:
    """The contract: (P, D) features aligned with the batch's points, ``local`` the offset
    from the own patch centre and the inputs, gradients flowing to the encoder."""
    batch = synthetic_batch(np.random.default_rng(4), [500, 40])
    m = model()
    out = m.forward_features(batch)
    assert isinstance(out, BackboneOutput)
    assert out.point.shape == (batch.num_points, 32) and out.local.shape == (batch.num_points, 3 + 1)
    assert m.num_local_features == 4
    tok = out.extras["tokens"]
    # every point maps to a real patch of its own event
    g = tok.tokens.shape[1]
    event = torch.bucketize(torch.arange(batch.num_points), batch.offsets[1:], right=True)
    assert torch.equal(tok.point_patch // g, event)
    assert tok.mask.reshape(-1)[tok.point_patch].all()
    # a point sitting on a patch centre takes (almost exactly) that patch's token
    centre = tok.centers[0, 0]
    on_centre = torch.nonzero((batch.coord - centre).abs().sum(dim=1) < 1e-6)
    if len(on_centre):
        torch.testing.assert_close(out.point[on_centre[0, 0]], tok.tokens[0, 0], atol=1e-3, rtol=0)
    torch.testing.assert_close(out.local[:, 3:], batch.feat)
    out.point.sum().backward()
    assert m.tokenizer.embed.first[0].weight.grad is not None


def test_group_matcher_covers_every_parameter_in_depth_order() -> None:
    m = model()
    ids = layer_ids([n for n, _ in m.named_parameters()], m.group_matcher())
    assert ids["tokenizer.embed.first.0.weight"] == 0 and ids["pos_embed.mlp.0.weight"] == 0
    assert [ids[f"encoder.blocks.{i}.attn.qkv.weight"] for i in range(3)] == [1, 2, 3]
    assert ids["encoder.norm.weight"] == 4
    m.register_parameter("stray", torch.nn.Parameter(torch.zeros(1)))
    with pytest.raises(ConfigError, match="'stray' matches no rule"):
        layer_ids([n for n, _ in m.named_parameters()], m.group_matcher())


def test_head_reset_and_forward() -> None:
    batch = synthetic_batch(np.random.default_rng(6), [200, 50])
    m = model(num_classes=5)
    assert m(batch).shape == (2, 5)
    m.reset_head(3)
    assert m(batch).shape == (2, 3) and m.num_classes == 3
    m.reset_head(0)
    assert m(batch).shape == (2, 64)  # pooled mean + max
    assert m.num_features == 32 and m.default_cfg.embed_dim == 32
    with pytest.raises(ConfigError, match="num_classes"):
        m.reset_head(-1)


def test_drop_path_draws_only_from_the_given_generator() -> None:
    batch = synthetic_batch(np.random.default_rng(7), [300, 80])
    m = model(drop_path_rate=0.5).train()
    runs = [m.encode_tokens(batch, generator=torch.Generator().manual_seed(s)).tokens for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    with pytest.raises(ValueError, match="Generator"):
        DropPath(0.1).train()(torch.ones(2, 3))


def test_same_config_same_weights_and_global_rng_untouched() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = create_model("pointmae_micro")
    after = torch.rand(1)
    assert torch.equal(before, after)
    b = create_model("pointmae_micro")
    c = create_model("pointmae_micro", seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_registry_names_sizes_and_errors() -> None:
    assert {"pointmae_tiny", "pointmae_small"} <= set(list_models())
    assert list_models("*small") == ["pointmae_small", "ptv3_small", "uresnet_small"]
    sizes = [m for m in list_models("pointmae_*") if not m.endswith("_test")]  # tests register *_test models
    assert sizes == ["pointmae_base", "pointmae_micro", "pointmae_small", "pointmae_tiny"]
    tiny, small = model_config("pointmae_tiny"), model_config("pointmae_small")
    assert (tiny.embed_dim, tiny.depth, tiny.num_heads) == (192, 12, 3)  # ViT-Tiny
    assert (small.embed_dim, small.depth, small.num_heads) == (384, 12, 6)  # ViT-Small
    with pytest.raises(ConfigError, match="unknown model 'pointmae_smal'; did you mean 'pointmae_small'"):
        create_model("pointmae_smal")
    with pytest.raises(ConfigError, match="'dpeth' \\(did you mean 'depth'\\?\\).*'radus' \\(did you mean 'radius'"):
        create_model("pointmae_tiny", dpeth=2, radus=3.0)
    with pytest.raises(ConfigError, match="divisible"):
        create_model("pointmae_tiny", embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError, match="grouping"):
        model_config("pointmae_tiny", grouping={"radious": 2.0})


def test_defaults_follow_polarmae() -> None:
    # PoLAr-MAE 5-voxel tokenizer (polarmae/layers/tokenizer.py, _5voxel_tokenizer):
    # context 512 groups of 32 points, ball radius 5 voxels.
    g = model_config("pointmae_small").grouping
    assert (g.num_groups, g.group_size, g.radius, g.reduction) == (512, 32, 5.0, "fps")


def test_config_yaml_round_trip_rebuilds_the_model() -> None:
    cfg = model_config("pointmae_tiny", **SMALL, num_classes=4)
    back = PointMAEConfig.from_yaml(cfg.to_yaml())
    assert back == cfg
    m1, m2 = PointMAE(cfg), build_model(back)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    with pytest.raises(ConfigError, match="'depht'"):
        PointMAEConfig.from_dict({"depht": 3})


def test_wrong_feature_channels() -> None:
    batch = synthetic_batch(np.random.default_rng(8), [50])
    m = model(in_channels=2)
    with pytest.raises(DataFormatError, match="expects 2 feature channel"):
        m.encode_tokens(batch)

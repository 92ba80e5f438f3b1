"""PTv3 backbone: the contract, equivariance, batch independence, round trips, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from detfm.data.batch import PackedBatch
from detfm.errors import ConfigError, DataFormatError
from detfm.models.contract import Backbone, layer_ids
from detfm.models.ptv3 import PTV3_SIZES, PTv3, PTv3Config
from detfm.models.sparse.geometry import build_geometry
from detfm.models.sparse.serialization import encode

TINY = PTv3Config(name="ptv3_tiny_test", enc_depths=(1, 1, 2), enc_channels=(8, 16, 32),
                  enc_num_head=(1, 2, 4), enc_patch_size=(16, 16, 8), dec_depths=(1, 1),
                  dec_channels=(8, 16), dec_num_head=(2, 2), dec_patch_size=(16, 16),
                  drop_path=0.2, layer_scale=0.5, mask_token=True)


def _event(n: int, seed: int) -> torch.Tensor:
    """A random-walk track of about ``n`` unique voxels."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.randint(-1, 2, (n, 3), generator=g)
    coord = (torch.cumsum(steps, 0) + 300 + 10 * seed).clamp(0, 767)
    coord = torch.unique(coord, dim=0)
    return coord[torch.randperm(coord.shape[0], generator=g)].float()


def _batch(events: list[torch.Tensor], seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    coord = torch.cat(events)
    counts = torch.tensor([e.shape[0] for e in events])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    feat = torch.rand(coord.shape[0], 1, generator=g) * 2 - 1
    return PackedBatch(coord=coord, feat=feat, offsets=offsets, energy=torch.rand(coord.shape[0], generator=g))


def _sub(batch: PackedBatch, idx: torch.Tensor, offsets: torch.Tensor) -> PackedBatch:
    return PackedBatch(coord=batch.coord[idx], feat=batch.feat[idx], offsets=offsets, energy=batch.energy[idx])


@pytest.fixture(scope="module")
def model() -> PTv3:
    return PTv3(TINY).eval()


def test_contract_surface(model: PTv3) -> None:
    assert isinstance(model, Backbone)
    batch = _batch([_event(150, 1), _event(60, 2)])
    out = model.forward_features(batch)
    assert out.point.shape == (batch.num_points, model.num_features)
    assert out.local.shape == (batch.num_points, model.num_local_features)
    assert [lv.shape[1] for lv in out.levels] == list(TINY.enc_channels)
    assert all(lv.shape[0] == batch.num_points for lv in out.levels)
    assert out.multilevel().shape[1] == sum(TINY.enc_channels)
    assert bool(torch.isfinite(out.point).all())
    names = [n for n, _ in model.named_parameters()]
    ids = layer_ids(names, model.group_matcher())  # every parameter matches a rule
    assert ids["embedding.stem.linear.weight"] == 0
    assert ids["enc.enc0.block0.attn.qkv.weight"] < ids["enc.enc1.down.proj.weight"]
    assert ids["enc.enc2.block1.mlp.0.fc1.weight"] < ids["dec.dec1.up.proj.0.weight"]
    assert ids["dec.dec1.block0.attn.qkv.weight"] < ids["dec.dec0.block0.attn.qkv.weight"]
    assert max(ids.values()) == 1 + sum(TINY.enc_depths) + (TINY.num_stages - 1) + sum(TINY.dec_depths) + 2 - 1
    modules = dict(model.named_modules())
    assert model.lora_targets() and all(isinstance(modules[t], nn.Linear) for t in model.lora_targets())
    assert model.default_cfg is TINY


def test_encoder_only_point_is_the_multilevel_concatenation() -> None:
    cfg = TINY.replace(dec_depths=(), dec_channels=(), dec_num_head=(), dec_patch_size=())
    enc = PTv3(cfg).eval()
    out = enc.forward_features(_batch([_event(120, 3)]))
    assert enc.num_features == sum(cfg.enc_channels)
    assert torch.equal(out.point, out.multilevel())


def test_permutation_equivariance(model: PTv3) -> None:
    events = [_event(200, 4), _event(90, 5), _event(33, 6)]
    batch = _batch(events)
    g = torch.Generator().manual_seed(7)
    perm = torch.cat([batch.offsets[i] + torch.randperm(len(e), generator=g) for i, e in enumerate(events)])
    with torch.no_grad():
        ref = model.forward_features(batch)
        got = model.forward_features(_sub(batch, perm, batch.offsets))
    torch.testing.assert_close(got.point, ref.point[perm], atol=1e-5, rtol=1e-5)
    for a, b in zip(got.levels, ref.levels, strict=True):
        torch.testing.assert_close(a, b[perm], atol=1e-5, rtol=1e-5)


def test_event_does_not_depend_on_its_batch(model: PTv3) -> None:
    target = _event(170, 8)
    others = [_event(400, 9), _event(3, 10), _event(50, 11)]
    with torch.no_grad():
        alone = model.forward_features(_batch([target]))
        batch = _batch(others[:2] + [target] + others[2:])
        # the same input features for the target in both runs
        start, stop = int(batch.offsets[2]), int(batch.offsets[3])
        solo = PackedBatch(coord=target, feat=batch.feat[start:stop], offsets=torch.tensor([0, stop - start]),
                           energy=batch.energy[start:stop])
        alone = model.forward_features(solo)
        mixed = model.forward_features(batch)
    torch.testing.assert_close(mixed.point[start:stop], alone.point, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.multilevel()[start:stop], alone.multilevel(), atol=1e-5, rtol=1e-5)


def test_training_draws_only_from_the_generator() -> None:
    model = PTv3(TINY).train()
    batch = _batch([_event(150, 12), _event(80, 13)])
    state = torch.random.get_rng_state()
    a = model.forward_features(batch, generator=torch.Generator().manual_seed(3)).point
    b = model.forward_features(batch, generator=torch.Generator().manual_seed(3)).point
    c = model.forward_features(batch, generator=torch.Generator().manual_seed(4)).point
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    loss = model.forward_features(batch, generator=torch.Generator().manual_seed(5),
                                  mask=torch.arange(batch.num_points) % 3 == 0).point.square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not bool(p.grad.abs().sum() > 0)]
    assert not missing


def test_save_load_round_trip(model: PTv3, tmp_path: Path) -> None:
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.yaml").write_text(model.cfg.to_yaml())
    cfg = PTv3Config.from_yaml((tmp_path / "config.yaml").read_text())
    assert cfg == model.cfg
    again = PTv3(cfg.replace(seed=99)).eval()
    again.load_state_dict(load_file(tmp_path / "model.safetensors"))
    batch = _batch([_event(100, 14)])
    with torch.no_grad():
        assert torch.equal(again.forward_features(batch).point, model.forward_features(batch).point)


def test_one_voxel_events_and_events_larger_than_a_window(model: PTv3) -> None:
    big = _event(2000, 15)
    assert big.shape[0] > 20 * TINY.enc_patch_size[0]
    one = torch.tensor([[5.0, 6.0, 7.0]])
    batch = _batch([one, big, one + 100, torch.tensor([[700.0, 1.0, 2.0], [700.0, 1.0, 3.0]])])
    with torch.no_grad():
        out = model.forward_features(batch)
    assert bool(torch.isfinite(out.point).all())
    alone = model.forward_features(_sub(batch, torch.tensor([0]), torch.tensor([0, 1])))
    torch.testing.assert_close(out.point[:1], alone.point, atol=1e-5, rtol=1e-5)


def test_windows_cover_each_event_once() -> None:
    batch = _batch([_event(300, 16), _event(5, 17), _event(64, 18)])
    geo = build_geometry(batch, ("z", "hilbert"), 2)
    level = geo.levels[0]
    for o in range(2):
        for k in (1, 7, 16, 64, 1000):
            win = level.windows(o, k)
            events = level.batch[win.gather]
            assert bool((events == events[:, :1]).all()), "a window mixes events"
            flat = win.gather.reshape(-1)
            rows_voxel = flat[win.rows]
            assert torch.equal(rows_voxel, torch.arange(level.num_voxels)), "a voxel's output row is not its own"
            if win.mask is not None:
                assert bool(win.mask.reshape(-1)[win.rows].all())


def test_duplicate_voxels_are_merged() -> None:
    model = PTv3(TINY).eval()
    event = _event(120, 19)
    batch = _batch([event])
    dup = torch.cat([torch.arange(event.shape[0]), torch.tensor([3, 3, 10])])
    doubled = _sub(batch, dup, torch.tensor([0, dup.numel()]))
    shifted = PackedBatch(coord=doubled.coord + 0.3, feat=doubled.feat, offsets=doubled.offsets,
                          energy=doubled.energy)  # non-integer coordinates floor to the same voxels
    with torch.no_grad():
        ref = model.forward_features(batch).point
        got = model.forward_features(doubled).point
        got_shifted = model.forward_features(shifted).point
    torch.testing.assert_close(got, ref[dup], atol=1e-5, rtol=1e-5)
    n = event.shape[0]
    # the three copies of point 3 share one voxel and so one output row
    assert torch.equal(got_shifted[n], got_shifted[3]) and torch.equal(got_shifted[n + 1], got_shifted[3])
    assert torch.equal(got_shifted[n + 2], got_shifted[10])


def test_bad_input_is_named(model: PTv3) -> None:
    event = _event(50, 20)
    outside = event.clone()
    outside[7, 2] = 768.0
    with pytest.raises(DataFormatError, match=r"event 1.*outside the detector box"):
        model.forward_features(_batch([event, outside]))
    nan = event.clone()
    nan[3, 0] = float("nan")
    with pytest.raises(DataFormatError, match="event 0"):
        model.forward_features(_batch([nan]))
    negative = event.clone()
    negative[0, 1] = -0.5
    with pytest.raises(DataFormatError, match="coord"):
        model.forward_features(_batch([negative]))
    wide = _batch([event])
    with pytest.raises(DataFormatError, match="feat"):
        model.forward_features(PackedBatch(coord=wide.coord, feat=torch.zeros(wide.num_points, 2),
                                           offsets=wide.offsets, energy=wide.energy))


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="did you mean 'enc_depths'"):
        TINY.replace(enc_depth=(1, 1, 1))
    with pytest.raises(ConfigError, match="arch"):
        PTv3Config.from_dict({**TINY.to_dict(), "arch": "uresnet"})
    with pytest.raises(ConfigError, match="divisible"):
        TINY.replace(enc_num_head=(3, 2, 4))
    with pytest.raises(ConfigError, match="dec_depths"):
        TINY.replace(dec_depths=(1,))
    with pytest.raises(ConfigError, match="orders"):
        TINY.replace(orders=("peano",))
    assert PTv3Config.from_dict(TINY.to_dict()) == TINY
    for name, (cfg, _) in PTV3_SIZES.items():
        assert cfg.name == name and cfg.arch == "ptv3"


def test_intermediates(model: PTv3) -> None:
    batch = _batch([_event(80, 21)])
    out, blocks = model.forward_intermediates(batch, layers=[0, -1])
    assert blocks[0].shape == (batch.num_points, TINY.enc_channels[0])
    assert blocks[1].shape == (batch.num_points, TINY.dec_channels[0])
    torch.testing.assert_close(blocks[1], out.point)
    with pytest.raises(ConfigError, match="out of range"):
        model.forward_intermediates(batch, layers=[model.num_blocks])


def test_registration_and_rebuild_from_saved_config() -> None:
    from detfm.models import (
        build_model,
        config_from_yaml,
        create_model,
        list_models,
        unregister_model,
    )
    from detfm.models.ptv3 import register_all
    from detfm.models.uresnet import UResNet
    from detfm.models.uresnet import register_all as register_uresnet

    added = []
    if "ptv3_micro" not in list_models():
        register_all()
        added += list(PTV3_SIZES)
    if "uresnet_micro" not in list_models():
        register_uresnet()
        added += ["uresnet_micro", "uresnet_small"]
    try:
        model = create_model("ptv3_micro", seed=3)
        assert isinstance(model, PTv3) and model.cfg.seed == 3 and model.cfg.name == "ptv3_micro"
        again = build_model(config_from_yaml(model.cfg.to_yaml()))
        assert isinstance(again, PTv3) and again.cfg == model.cfg
        assert isinstance(create_model("uresnet_micro"), UResNet)
        with pytest.raises(ConfigError, match="did you mean 'enc_depths'"):
            create_model("ptv3_micro", enc_depth=(1,))
    finally:
        for name in added:
            unregister_model(name)


def test_reference_grid_and_per_event_depth_keep_events_independent() -> None:
    cfg = TINY.replace(grid_size=0.001, serialization_depth=None, orders=("hilbert", "hilbert-trans"))
    model = PTv3(cfg).eval()
    small = _event(40, 22)  # a small event: its own serialization depth is below the big one's
    big = torch.cat([_event(300, 23), torch.tensor([[0.0, 0.0, 0.0], [767.0, 767.0, 767.0]])])
    batch = _batch([big, small])
    start = int(batch.offsets[1])
    solo = PackedBatch(coord=small, feat=batch.feat[start:], offsets=torch.tensor([0, small.shape[0]]),
                       energy=batch.energy[start:])
    geo = model.geometry(batch)
    assert int(geo.levels[0].grid[geo.levels[0].batch == 0].min()) == 0  # shifted per event
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(batch).point[start:],
                                   model.forward_features(solo).point, atol=1e-5, rtol=1e-5)
    g = torch.Generator().manual_seed(1)
    perm = torch.cat([torch.randperm(start, generator=g), start + torch.randperm(small.shape[0], generator=g)])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(_sub(batch, perm, batch.offsets)).point,
                                   model.forward_features(batch).point[perm], atol=1e-5, rtol=1e-5)


def test_per_event_depth_is_picked_anew_at_every_level() -> None:
    """As in the reference, level s is serialized at ``bit_length(max cell + 1)`` of its own
    cells: for an event whose largest cell is 508 (depth 9) that is 8 at level 2, not 9 - 2."""
    g = torch.Generator().manual_seed(5)
    edge = torch.cat([torch.randint(0, 509, (3000, 3), generator=g), torch.tensor([[508, 0, 0]])])
    small = torch.randint(0, 90, (500, 3), generator=g)
    events = [torch.unique(e, dim=0).float() for e in (edge, small)]
    orders = ("hilbert", "hilbert-trans", "z", "z-trans")
    geo = build_geometry(_batch(events), orders, 4, depth=None)
    for s, level in enumerate(geo.levels):
        for b in range(len(events)):
            grid = level.grid[level.batch == b]
            depth = (int(grid.max()) + 1).bit_length()
            for o, order in enumerate(orders):
                perm = level.order(o)[0]
                ours = level.grid[perm[level.batch[perm] == b]]
                assert torch.equal(ours, grid[torch.argsort(encode(grid, order, depth=depth))]), (s, b, order)


def test_mixed_precision_forward_and_backward() -> None:
    """Under autocast (bf16 here, on CPU) the sparse convolution follows autocast's dtype."""
    model = PTv3(TINY).train()
    batch = _batch([_event(150, 24), _event(40, 25)])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.forward_features(batch, generator=torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(out.point.float()).all())
    out.point.float().square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n != "embedding.mask_token"}
    assert all(g is not None and g.dtype == torch.float32 and bool(torch.isfinite(g).all())
               for g in grads.values())


def test_per_event_depth_handles_a_one_voxel_batch() -> None:
    # Panda's per-event serialization depth: a batch whose only event is one voxel near the
    # origin has cells 0..1, yet every level must still be built (each level picks its own
    # depth, at least 1), as for any other event.
    model = PTv3(TINY.replace(serialization_depth=None)).eval()
    one = _batch([torch.tensor([[1.0, 0.0, 0.0]])])
    with torch.no_grad():
        out = model.forward_features(one)
    assert out.point.shape == (1, model.num_features) and bool(torch.isfinite(out.point).all())
    geo = build_geometry(one, ("z", "hilbert"), 5, depth=None)  # Panda-Base's 5 levels
    assert [lv.grid.shape[0] for lv in geo.levels] == [1] * 5 and all(lv.depth >= 1 for lv in geo.levels)
    with pytest.raises(ConfigError, match="levels need a serialization depth of at least"):
        build_geometry(one, ("z",), 5, depth=2)

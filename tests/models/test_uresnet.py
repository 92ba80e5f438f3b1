"""UResNet backbone: strided convolutions against conv3d, the contract, independence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from detfm.data.batch import PackedBatch
from detfm.errors import ConfigError, DataFormatError
from detfm.models.contract import Backbone, layer_ids
from detfm.models.sparse.geometry import build_geometry
from detfm.models.uresnet import URESNET_SIZES, CellConv, UResNet, UResNetConfig

TINY = UResNetConfig(name="uresnet_tiny_test", channels=(8, 16, 24), reps=1, coord_features=True)


def _event(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    coord = (torch.cumsum(torch.randint(-1, 2, (n, 3), generator=g), 0) + 200 + 7 * seed).clamp(0, 767)
    coord = torch.unique(coord, dim=0)
    return coord[torch.randperm(coord.shape[0], generator=g)].float()


def _batch(events: list[torch.Tensor], seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    coord = torch.cat(events)
    counts = torch.tensor([e.shape[0] for e in events])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    return PackedBatch(coord=coord, feat=torch.rand(coord.shape[0], 1, generator=g), offsets=offsets,
                       energy=torch.rand(coord.shape[0], generator=g))


def test_cell_convolutions_match_strided_conv3d() -> None:
    size = 8
    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(size ** 3, generator=g)[:150]
    grid = torch.stack([flat // 64, (flat // 8) % 8, flat % 8], 1).float()
    batch = PackedBatch(coord=grid, feat=torch.zeros(150, 1), offsets=torch.tensor([0, 150]),
                        energy=torch.zeros(150))
    geo = build_geometry(batch, ("z",), 2)
    fine, coarse, pool = geo.levels[0], geo.levels[1], geo.pools[0]
    x = torch.randn(fine.num_voxels, 3, generator=g, dtype=torch.float64)
    down = CellConv(3, 5, transpose=False).double()
    dense = torch.zeros(1, 3, size, size, size, dtype=torch.float64)
    dense[0, :, fine.grid[:, 0], fine.grid[:, 1], fine.grid[:, 2]] = x.t()
    ref = F.conv3d(dense, down.weight.permute(0, 4, 1, 2, 3), stride=2)[0]
    got = down(x, fine, pool)
    torch.testing.assert_close(got, ref[:, coarse.grid[:, 0], coarse.grid[:, 1], coarse.grid[:, 2]].t())
    up = CellConv(5, 3, transpose=True).double()
    y = torch.randn(coarse.num_voxels, 5, generator=g, dtype=torch.float64)
    dense_c = torch.zeros(1, 5, size // 2, size // 2, size // 2, dtype=torch.float64)
    dense_c[0, :, coarse.grid[:, 0], coarse.grid[:, 1], coarse.grid[:, 2]] = y.t()
    ref_up = F.conv_transpose3d(dense_c, up.weight.permute(4, 0, 1, 2, 3), stride=2)[0]
    torch.testing.assert_close(up(y, fine, pool), ref_up[:, fine.grid[:, 0], fine.grid[:, 1], fine.grid[:, 2]].t())


def test_contract_and_independence() -> None:
    model = UResNet(TINY)
    assert isinstance(model, Backbone)
    target = _event(150, 1)
    batch = _batch([_event(300, 2), target, torch.tensor([[3.0, 4.0, 5.0]])])
    start, stop = int(batch.offsets[1]), int(batch.offsets[2])
    solo = PackedBatch(coord=target, feat=batch.feat[start:stop], offsets=torch.tensor([0, stop - start]),
                       energy=batch.energy[start:stop])
    for train in (True, False):  # LayerNorm: independent in training too
        model.train(train)
        mixed = model.forward_features(batch)
        alone = model.forward_features(solo)
        torch.testing.assert_close(mixed.point[start:stop], alone.point, atol=1e-5, rtol=1e-5)
    assert mixed.point.shape == (batch.num_points, model.num_features)
    assert mixed.local.shape == (batch.num_points, 1)
    assert [lv.shape[1] for lv in mixed.levels] == list(TINY.channels)
    ids = layer_ids([n for n, _ in model.named_parameters()], model.group_matcher())
    assert ids["stem.weight"] == 0 and ids["norm.weight"] == max(ids.values())
    assert ids["enc.enc2.block0.conv1.weight"] < ids["dec.dec1.up.weight"] < ids["dec.dec0.fuse.weight"]
    model.train()
    model.forward_features(batch).point.square().mean().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.parameters())


def test_permutation_equivariance_and_round_trip(tmp_path: Path) -> None:
    model = UResNet(TINY).eval()
    events = [_event(200, 3), _event(40, 4)]
    batch = _batch(events)
    g = torch.Generator().manual_seed(5)
    perm = torch.cat([batch.offsets[i] + torch.randperm(len(e), generator=g) for i, e in enumerate(events)])
    permuted = PackedBatch(coord=batch.coord[perm], feat=batch.feat[perm], offsets=batch.offsets,
                           energy=batch.energy[perm])
    with torch.no_grad():
        ref = model.forward_features(batch).point
        torch.testing.assert_close(model.forward_features(permuted).point, ref[perm], atol=1e-5, rtol=1e-5)
    save_file(model.state_dict(), tmp_path / "model.safetensors")
    cfg = UResNetConfig.from_yaml(model.cfg.to_yaml())
    again = UResNet(cfg.replace(seed=5)).eval()
    again.load_state_dict(load_file(tmp_path / "model.safetensors"))
    with torch.no_grad():
        assert torch.equal(again.forward_features(batch).point, ref)


def test_bad_input_and_config() -> None:
    model = UResNet(TINY)
    event = _event(30, 6)
    event[2, 0] = -1.0
    with pytest.raises(DataFormatError, match="event 0.*outside"):
        model.forward_features(_batch([event]))
    with pytest.raises(ConfigError, match="did you mean 'channels'"):
        TINY.replace(channel=(1, 2))
    with pytest.raises(ConfigError, match="arch"):
        UResNetConfig.from_dict({**TINY.to_dict(), "arch": "ptv3"})
    assert UResNetConfig.from_dict(TINY.to_dict()) == TINY
    for name, (cfg, _) in URESNET_SIZES.items():
        assert cfg.name == name
    _, inter = model.forward_intermediates(_batch([_event(60, 7)]), layers=2)
    assert [t.shape[1] for t in inter] == [16, 8]

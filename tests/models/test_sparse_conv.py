"""The pure-torch submanifold convolution equals conv3d on the same voxels in a dense grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detfm.errors import ConfigError
from detfm.models.sparse import (
    SubMConv3d,
    grid_pool_map,
    kernel_map,
    max_pool,
    serialize,
    submanifold_conv3d,
    unpool,
)


def _voxels(n: int, size: int, events: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique random voxels of ``events`` events in a size^3 grid, a few isolated."""
    g = torch.Generator().manual_seed(seed)
    grids, batches = [], []
    for b in range(events):
        flat = torch.randperm(size ** 3, generator=g)[:n]
        grid = torch.stack([flat // (size * size), (flat // size) % size, flat % size], dim=1)
        grids.append(grid)
        batches.append(torch.full((n,), b))
    return torch.cat(grids), torch.cat(batches)


def _dense_reference(x: torch.Tensor, grid: torch.Tensor, batch: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor, size: int, events: int) -> torch.Tensor:
    c_in = x.shape[1]
    dense = x.new_zeros(events, size, size, size, c_in)
    dense = dense.index_put((batch, grid[:, 0], grid[:, 1], grid[:, 2]), x)
    w = weight.permute(0, 4, 1, 2, 3)  # (out, in, k0, k1, k2)
    out = F.conv3d(dense.permute(0, 4, 1, 2, 3), w, bias, padding=1)
    return out.permute(0, 2, 3, 4, 1)[batch, grid[:, 0], grid[:, 1], grid[:, 2]]


@pytest.mark.parametrize("density", [60, 400])
def test_forward_and_gradients_match_dense_conv3d(density: int) -> None:
    size, events = 9, 2
    grid, batch = _voxels(density, size, events, seed=density)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(grid.shape[0], 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 3, 3, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(7, generator=g, dtype=torch.float64, requires_grad=True)
    kmap = kernel_map(grid, batch)
    out = submanifold_conv3d(x, kmap, weight, bias)
    ref = _dense_reference(x, grid, batch, weight, bias, size, events)
    torch.testing.assert_close(out, ref)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * upstream).sum(), (x, weight, bias))
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (x, weight, bias))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_offsets_follow_the_stored_column_order() -> None:
    """A kernel with one non-zero tap at (k0, k1, k2) = (2, 1, 1) reads the voxel at x + 1."""
    grid = torch.tensor([[4, 4, 4], [5, 4, 4], [4, 5, 4]])
    batch = torch.zeros(3, dtype=torch.long)
    x = torch.tensor([[1.0], [10.0], [100.0]])
    weight = torch.zeros(1, 3, 3, 3, 1)
    weight[0, 2, 1, 1, 0] = 1.0
    out = submanifold_conv3d(x, kernel_map(grid, batch), weight)
    assert out[:, 0].tolist() == [10.0, 0.0, 0.0]


def test_events_do_not_see_each_other() -> None:
    grid = torch.tensor([[3, 3, 3], [3, 3, 4]])
    kmap = kernel_map(grid, torch.tensor([0, 1]))
    assert kmap.num_active == 2  # each voxel sees only itself
    assert torch.equal(kmap.table()[:, 13], torch.tensor([0, 1]))


def test_kernel_map_matches_brute_force() -> None:
    grid, batch = _voxels(150, 6, 3, seed=11)
    table = kernel_map(grid, batch).table()
    n = grid.shape[0]
    offsets = torch.stack(torch.meshgrid(*(torch.arange(-1, 2),) * 3, indexing="ij"), -1).reshape(27, 3)
    for p in range(0, n, 7):
        for k in range(27):
            match = ((grid == grid[p] + offsets[k]).all(1) & (batch == batch[p])).nonzero().flatten()
            assert int(table[p, k]) == (int(match[0]) if match.numel() else n)


def test_box_faces_do_not_wrap() -> None:
    """Voxels on opposite faces of the box are not neighbours through the bit-field wrap."""
    grid = torch.tensor([[0, 5, 0], [0, 4, 767], [767, 5, 0], [0, 5, 1]])
    kmap = kernel_map(grid, torch.zeros(4, dtype=torch.long))
    assert kmap.num_active == 4 + 2  # self-pairs plus the one true pair (0,5,0)-(0,5,1)


def test_rejects_duplicates_and_out_of_range() -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        kernel_map(torch.tensor([[1, 1, 1], [1, 1, 1]]), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ConfigError, match="2047"):
        kernel_map(torch.tensor([[1, 1, 2047]]), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ConfigError, match="weight"):
        submanifold_conv3d(torch.zeros(1, 2), kernel_map(torch.tensor([[1, 1, 1]]), torch.zeros(1, dtype=torch.long)),
                           torch.zeros(3, 3, 3, 3, 4))


def test_module_layout_and_gradcheck() -> None:
    conv = SubMConv3d(3, 4).double()
    assert tuple(conv.weight.shape) == (4, 3, 3, 3, 3)
    grid, batch = _voxels(30, 5, 1, seed=3)
    kmap = kernel_map(grid, batch)
    x = torch.randn(grid.shape[0], 3, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(lambda t: conv(t, kmap), (x,))


def test_grid_pool_is_max_over_stride2_cells() -> None:
    grid, batch = _voxels(120, 8, 2, seed=5)
    code, _, _ = serialize(grid, batch, ("z", "hilbert"))
    pool = grid_pool_map(code)
    cells = torch.cat([batch[:, None], grid // 2], dim=1)
    unique_cells = torch.unique(cells, dim=0)
    assert pool.num_coarse == unique_cells.shape[0]
    # same cluster <=> same cell
    same_cluster = pool.cluster[:, None] == pool.cluster[None, :]
    same_cell = (cells[:, None, :] == cells[None, :, :]).all(-1)
    assert torch.equal(same_cluster, same_cell)
    # coarse codes are the codes of the coarse grid
    coarse_code, _, _ = serialize(grid[pool.head] // 2, batch[pool.head], ("z", "hilbert"), depth=9)
    assert torch.equal(pool.code, coarse_code)
    feat = torch.randn(grid.shape[0], 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    pooled = max_pool(feat, pool)
    for c in range(pool.num_coarse):
        members = feat[pool.cluster == c]
        torch.testing.assert_close(pooled[c], members.max(0).values)
    pooled.sum().backward()
    assert feat.grad is not None and int((feat.grad != 0).sum()) >= 3 * pool.num_coarse - 3
    assert torch.equal(unpool(pooled, pool), pooled[pool.cluster])


def test_inference_kernel_cache_follows_weight_updates() -> None:
    conv = SubMConv3d(2, 3)
    grid, batch = _voxels(40, 5, 1, seed=4)
    kmap = kernel_map(grid, batch)
    x = torch.randn(grid.shape[0], 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = conv(x, kmap)
        conv.weight.mul_(2.0)
        conv.bias.zero_()
        after = conv(x, kmap)
    reference = submanifold_conv3d(x, kmap, conv.weight.detach(), conv.bias.detach())
    torch.testing.assert_close(after, reference)
    assert not torch.allclose(before, after)

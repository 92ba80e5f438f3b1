"""Ball query, patches and the point -> patch map, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detfm.errors import ConfigError, DataFormatError
from detfm.models.fps import farthest_point_sampling
from detfm.models.grouping import GroupingConfig, assign_points, ball_query, group_points
from detfm.data.synthetic import synthetic_batch


def brute_ball(coord: torch.Tensor, a: int, e: int, centre: int, radius: float) -> list[int]:
    """Packed indices within ``radius`` of ``centre``, nearest first, ties by index."""
    d = coord[a:e] - coord[centre]
    dist = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
    inside = [(float(dist[i]), a + i) for i in range(e - a) if float(dist[i]) <= radius**2]
    return [i for _, i in sorted(inside)]


@pytest.mark.parametrize("k", [8, 400])
def test_ball_query_matches_brute_force(k: int) -> None:
    batch = synthetic_batch(np.random.default_rng(0), [600, 150, 1])
    coord, offsets = batch.coord, batch.offsets
    radius = 4.0
    centres = farthest_point_sampling(coord, offsets, 40).index
    got = ball_query(coord, offsets, centres, radius, k)
    assert got.shape == (3, centres.shape[1], k)
    for b in range(3):
        a, e = int(offsets[b]), int(offsets[b + 1])
        for g in range(centres.shape[1]):
            if centres[b, g] < 0:
                assert (got[b, g] == -1).all()
                continue
            truth = brute_ball(coord, a, e, int(centres[b, g]), radius)[:k]
            row = got[b, g].tolist()
            assert row[: len(truth)] == truth  # same points, same order
            assert all(i == -1 for i in row[len(truth):])


def test_ball_query_same_result_when_candidates_are_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = synthetic_batch(np.random.default_rng(9), [2000, 300])
    centres = farthest_point_sampling(batch.coord, batch.offsets, 64).index
    whole = ball_query(batch.coord, batch.offsets, centres, 6.0, 100)
    monkeypatch.setattr("detfm.models.grouping._MAX_CANDIDATES", 500)
    assert torch.equal(ball_query(batch.coord, batch.offsets, centres, 6.0, 100), whole)


def test_ball_query_radius_is_inclusive_and_respected() -> None:
    coord = torch.tensor([[0, 0, 0], [5, 0, 0], [3, 4, 0], [5, 1, 0], [0, 0, 6]], dtype=torch.float32)
    got = ball_query(coord, torch.tensor([0, 5]), torch.tensor([[0]]), 5.0, 8)
    assert got[0, 0].tolist()[:3] == [0, 1, 2]  # distance 0, 5, 5 (ties by index)
    assert set(got[0, 0].tolist()[3:]) == {-1}  # sqrt(26) and 6 are outside


def test_ball_query_ignores_other_events() -> None:
    coord = torch.zeros(6, 3)  # two events stacked on the same coordinates
    got = ball_query(coord, torch.tensor([0, 3, 6]), torch.tensor([[0], [3]]), 1.0, 8)
    assert sorted(x for x in got[0, 0].tolist() if x >= 0) == [0, 1, 2]
    assert sorted(x for x in got[1, 0].tolist() if x >= 0) == [3, 4, 5]


@pytest.mark.parametrize("reduction", ["fps", "nearest"])
def test_patches_are_consistent(reduction: str) -> None:
    batch = synthetic_batch(np.random.default_rng(1), [3000, 40, 1])
    cfg = GroupingConfig(num_groups=64, group_size=16, radius=5.0, reduction=reduction, upscale_points=64)
    p = group_points(batch.coord, batch.feat, batch.offsets, cfg)
    b, g, k = p.index.shape
    assert (b, k) == (3, 16) and g <= 64
    assert p.counts.tolist()[0] == 64  # dense event: whole budget
    assert p.counts.tolist()[2] == 1  # one-point event: one patch of one point
    assert int(p.point_mask[2, 0].sum()) == 1
    # real points first, padding after; every real patch holds its centre
    assert torch.equal(p.point_mask, p.point_mask.cummin(dim=2).values)
    assert (p.point_mask.any(dim=2) == p.mask).all()
    assert (p.index[..., 0][p.mask] == p.center_index[p.mask]).all()
    # points lie within the radius, in the right event, and are scaled by it
    real = p.point_mask
    assert float(p.xyz[real].norm(dim=-1).max()) <= 1.0 + 1e-6
    assert float(p.xyz[~real].abs().max()) == 0.0
    event = torch.arange(b)[:, None, None].expand(b, g, k)
    pe = torch.bucketize(p.index[real], batch.offsets[1:], right=True)
    assert torch.equal(pe, event[real])
    expected = (batch.coord[p.index[real]] - p.centers[..., None, :].expand(b, g, k, 3)[real]) / 5.0
    assert torch.allclose(p.xyz[real], expected)
    assert torch.equal(p.feat[real], batch.feat[p.index[real]])
    assert p.points().shape == (b, g, k, 4)


def test_fps_reduction_spans_the_ball_nearest_does_not() -> None:
    batch = synthetic_batch(np.random.default_rng(2), [4000])
    base = dict(num_groups=32, group_size=8, radius=5.0, upscale_points=256)
    fps = group_points(batch.coord, batch.feat, batch.offsets, GroupingConfig(reduction="fps", **base))
    near = group_points(batch.coord, batch.feat, batch.offsets, GroupingConfig(reduction="nearest", **base))
    full = fps.point_mask.all(dim=2)  # patches whose ball held >= 8 points
    spread_fps = fps.xyz.norm(dim=-1)[full].mean()
    spread_near = near.xyz.norm(dim=-1)[full].mean()
    assert float(spread_fps) > float(spread_near)


def test_assign_points_prefers_containing_patch_then_nearest_centre() -> None:
    batch = synthetic_batch(np.random.default_rng(3), [2500, 300])
    cfg = GroupingConfig(num_groups=48, group_size=8, radius=4.0)
    p = group_points(batch.coord, batch.feat, batch.offsets, cfg)
    owner = assign_points(p)
    g = p.index.shape[1]
    assert owner.shape == (batch.num_points,)
    members: dict[int, list[int]] = {}
    for flat in range(p.index.shape[0] * g):
        for i in p.index.view(-1, p.index.shape[2])[flat].tolist():
            if i >= 0:
                members.setdefault(i, []).append(flat)
    centres = p.centers.view(-1, 3)
    orphans = 0
    for i in range(batch.num_points):
        ev = int(torch.bucketize(torch.tensor(i), batch.offsets[1:], right=True))
        candidates = members.get(i)
        if candidates is None:
            orphans += 1
            candidates = [ev * g + j for j in range(g) if p.mask[ev, j]]
        dist = [(float(((batch.coord[i] - centres[c]) ** 2).sum()), c) for c in candidates]
        best = min(d for d, _ in dist)
        assert int(owner[i]) in [c for d, c in dist if d <= best + 1e-4]
    assert orphans > 0  # the test exercised both rules


def test_config_and_input_errors() -> None:
    with pytest.raises(ConfigError, match="radius"):
        GroupingConfig(radius=0.0)
    with pytest.raises(ConfigError, match="upscale_points"):
        GroupingConfig(group_size=64, upscale_points=32)
    with pytest.raises(ConfigError, match="reduction"):
        GroupingConfig(reduction="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backend"):
        GroupingConfig(backend="cuda")  # type: ignore[arg-type]
    batch = synthetic_batch(np.random.default_rng(4), [20])
    with pytest.raises(DataFormatError, match="feat"):
        group_points(batch.coord, batch.feat[:5], batch.offsets, GroupingConfig())
    bad = batch.feat.clone()
    bad[3] = float("inf")
    with pytest.raises(DataFormatError, match="non-finite point feature"):
        group_points(batch.coord, bad, batch.offsets, GroupingConfig())

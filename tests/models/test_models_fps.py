"""Farthest-point sampling: exact against a plain reference, both back ends agree, policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detfm.errors import ConfigError, DataFormatError
from detfm.models.fps import farthest_point_sampling


def reference_fps(points: np.ndarray, k: int, cover: float | None) -> tuple[list[int], list[int]]:
    """Textbook FPS on one event, float32 arithmetic, same convention as the library."""
    pts = points.astype(np.float32)
    n = len(pts)
    nearest = np.full(n, np.inf, np.float32)
    owner = np.zeros(n, np.int64)
    chosen: list[int] = []
    thr = np.float32(cover) ** 2 if cover is not None else np.float32(-1)
    current = 0
    for g in range(min(k, n)):
        if g > 0:
            current = int(np.argmax(nearest))
            if not nearest[current] > thr:
                break
        chosen.append(current)
        d = pts - pts[current]
        dist = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1] + d[:, 2] * d[:, 2]
        closer = dist < nearest
        owner[closer] = g
        nearest = np.where(closer, dist, nearest)
    return chosen, owner.tolist()


def ragged(rng: np.random.Generator, sizes: list[int], integer: bool) -> tuple[torch.Tensor, torch.Tensor]:
    pts = [rng.integers(0, 60, (n, 3)).astype(np.float32) if integer
           else rng.uniform(0, 60, (n, 3)).astype(np.float32) for n in sizes]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.long)
    return torch.from_numpy(np.concatenate(pts)), offsets


@pytest.mark.parametrize("backend", ["torch", "numba"])
@pytest.mark.parametrize("cover", [None, 6.0])
def test_matches_reference_exactly(backend: str, cover: float | None) -> None:
    rng = np.random.default_rng(1)
    sizes = [300, 1, 57, 7]
    coord, offsets = ragged(rng, sizes, integer=False)
    res = farthest_point_sampling(coord, offsets, 40, cover_radius=cover, backend=backend)
    for b, (a, e) in enumerate(zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)):
        chosen, owner = reference_fps(coord[a:e].numpy(), 40, cover)
        got = res.index[b][res.index[b] >= 0] - a
        assert got.tolist() == chosen
        assert int(res.counts[b]) == len(chosen)
        assert res.nearest[a:e].tolist() == owner


@pytest.mark.parametrize("integer", [True, False])
@pytest.mark.parametrize("cover", [None, 0.0, 4.5])
def test_backends_agree_exactly(integer: bool, cover: float | None) -> None:
    rng = np.random.default_rng(2)
    coord, offsets = ragged(rng, [500, 3, 1, 120, 250], integer)
    coord[510:520] = coord[505]  # duplicated points: ties everywhere
    a = farthest_point_sampling(coord, offsets, 64, cover_radius=cover, backend="torch")
    b = farthest_point_sampling(coord, offsets, 64, cover_radius=cover, backend="numba")
    assert torch.equal(a.index, b.index)
    assert torch.equal(a.counts, b.counts)
    assert torch.equal(a.nearest, b.nearest)


def test_small_events_get_fewer_centres_and_padding() -> None:
    coord, offsets = ragged(np.random.default_rng(3), [5, 40], integer=False)
    res = farthest_point_sampling(coord, offsets, 16)
    assert res.counts.tolist() == [5, 16]
    assert res.index.shape == (2, 16)
    assert (res.index[0, 5:] == -1).all()
    assert sorted(res.index[0, :5].tolist()) == [0, 1, 2, 3, 4]  # each point once


def test_cover_radius_covers_every_point_and_spaces_centres() -> None:
    rng = np.random.default_rng(4)
    coord, offsets = ragged(rng, [2000], integer=True)
    cover = 7.0
    res = farthest_point_sampling(coord, offsets, 1000, cover_radius=cover)
    n = int(res.counts[0])
    assert 1 < n < 1000  # stopped by the covering rule, not the budget
    centres = coord[res.index[0, :n]]
    nearest = torch.cdist(coord, centres).min(dim=1).values
    assert float(nearest.max()) <= cover + 1e-4
    pair = torch.cdist(centres, centres) + torch.eye(n) * 1e9
    assert float(pair.min()) > cover  # FPS: each new centre was farther than `cover`
    # nearest slot is the true nearest centre
    assert torch.equal(torch.cdist(coord, centres).argmin(dim=1), res.nearest)


def test_dense_event_uses_whole_budget_evenly() -> None:
    coord, offsets = ragged(np.random.default_rng(5), [3000], integer=False)
    res = farthest_point_sampling(coord, offsets, 64, cover_radius=1.0)
    assert int(res.counts[0]) == 64
    centres = coord[res.index[0]]
    pair = torch.cdist(centres, centres) + torch.eye(64) * 1e9
    covering = torch.cdist(coord, centres).min(dim=1).values.max()
    # FPS guarantee: covering radius <= smallest centre spacing
    assert float(covering) <= float(pair.min()) + 1e-4


def test_result_of_an_event_does_not_depend_on_the_batch() -> None:
    rng = np.random.default_rng(6)
    coord, offsets = ragged(rng, [80, 300], integer=False)
    alone = farthest_point_sampling(coord[:80], torch.tensor([0, 80]), 32)
    both = farthest_point_sampling(coord, offsets, 32)
    assert torch.equal(both.index[0, : int(alone.counts[0])], alone.index[0])


def test_bad_input() -> None:
    coord = torch.zeros(4, 3)
    with pytest.raises(DataFormatError, match="event 1.*no points"):
        farthest_point_sampling(coord, torch.tensor([0, 4, 4]), 2)
    with pytest.raises(DataFormatError, match="end at the number of points"):
        farthest_point_sampling(coord, torch.tensor([0, 3]), 2)
    bad = coord.clone()
    bad[2, 1] = float("nan")
    with pytest.raises(DataFormatError, match="non-finite coordinate at packed point 2"):
        farthest_point_sampling(bad, torch.tensor([0, 4]), 2)
    with pytest.raises(DataFormatError, match=r"\(P, 3\)"):
        farthest_point_sampling(torch.zeros(4, 2), torch.tensor([0, 4]), 2)
    with pytest.raises(ConfigError, match="unknown FPS backend 'cuda'"):
        farthest_point_sampling(coord, torch.tensor([0, 4]), 2, backend="cuda")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_samples"):
        farthest_point_sampling(coord, torch.tensor([0, 4]), 0)
    with pytest.raises(ConfigError, match="cover_radius"):
        farthest_point_sampling(coord, torch.tensor([0, 4]), 2, cover_radius=-1.0)

"""Space-filling-curve codes match the reference table exactly, are unique, and invert."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detfm.errors import ConfigError
from detfm.models.sparse import ORDERS, encode, inverse_permutation, serialize

# Input/output pairs of the reference implementation's curve encoder, kept with the tests.
TABLE = Path(__file__).resolve().parent / "data" / "serialization_codes.tsv"


def _table() -> tuple[torch.Tensor, list[str], torch.Tensor]:
    lines = [ln.rstrip("\n").split("\t") for ln in TABLE.read_text().splitlines()
             if ln and not ln.startswith("#")]
    header, rows = lines[0], [[int(v) for v in r] for r in lines[1:]]
    data = torch.tensor(rows, dtype=torch.long)
    return data[:, :3], header[3:], data[:, 3:]


def test_codes_match_reference_table() -> None:
    grid, names, codes = _table()
    assert names == list(ORDERS) and grid.shape[0] == 64
    for j, order in enumerate(names):
        got = encode(grid, order)
        bad = (got != codes[:, j]).nonzero().flatten().tolist()
        assert not bad, f"{order}: rows {bad} differ, e.g. {grid[bad[0]].tolist()}"


def test_batch_index_goes_in_the_high_bits() -> None:
    grid, _, codes = _table()
    batch = torch.arange(64) % 3
    for j, order in enumerate(ORDERS):
        assert torch.equal(encode(grid, order, batch), codes[:, j] | (batch << 30))


def _all_voxels(size: int) -> torch.Tensor:
    r = torch.arange(size)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


@pytest.mark.parametrize("order", ORDERS)
def test_codes_are_a_bijection_of_the_cube(order: str) -> None:
    grid = _all_voxels(8)
    code = encode(grid, order, depth=3)
    assert torch.equal(torch.sort(code).values, torch.arange(512))


def test_hilbert_steps_are_unit_moves() -> None:
    """Consecutive Hilbert codes are face neighbours (the defining property of the curve)."""
    grid = _all_voxels(16)
    for order in ("hilbert", "hilbert-trans"):
        walk = grid[torch.argsort(encode(grid, order, depth=4))]
        steps = (walk[1:] - walk[:-1]).abs().sum(1)
        assert bool((steps == 1).all())


def test_serialize_unique_and_inverse_restores_order() -> None:
    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(768 ** 3 // 64, generator=g)[:500] * 64 + 7
    grid = torch.stack([flat // 768 ** 2, (flat // 768) % 768, flat % 768], 1)
    batch = torch.randint(0, 3, (500,), generator=g)
    code, order, inverse = serialize(grid, batch, ORDERS)
    for o in range(len(ORDERS)):
        assert torch.unique(code[o]).numel() == 500
        sorted_code = code[o, order[o]]
        assert bool((sorted_code[1:] > sorted_code[:-1]).all())
        assert torch.equal(sorted_code[inverse[o]], code[o])
        assert torch.equal(inverse_permutation(order[o]), inverse[o])
        # events stay contiguous in every order
        assert bool((batch[order[o]][1:] >= batch[order[o]][:-1]).all())


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ConfigError, match="order"):
        encode(torch.zeros(1, 3, dtype=torch.long), "peano")
    with pytest.raises(ConfigError, match=r"\[0, 1024\)"):
        encode(torch.tensor([[0, 0, 1024]]), "z")
    with pytest.raises(ConfigError, match="integers"):
        encode(torch.zeros(1, 3), "z")


@pytest.mark.parametrize("order", ORDERS)
def test_per_point_depth_equals_encoding_at_that_depth(order: str) -> None:
    """A point ``shallower`` levels below the batch depth gets its own-depth code."""
    g = torch.Generator().manual_seed(3)
    for depth in (4, 7):
        grid = torch.randint(0, 1 << depth, (300, 3), generator=g)
        for extra in (1, 2, 3, 4):
            shallower = torch.full((300,), extra)
            assert torch.equal(encode(grid, order, depth=depth + extra, shallower=shallower),
                               encode(grid, order, depth=depth))

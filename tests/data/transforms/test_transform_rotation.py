from __future__ import annotations

import numpy as np
import pytest
from data_helpers import random_sample

from detfm.data import Sample
from detfm.data.transforms import RandomRotation, random_rotation_matrix
from detfm.data.transforms.rotation import BOX_CENTRE
from detfm.errors import ConfigError


def _pairwise(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[:, None, :].astype(np.float64) - x[None, :, :], axis=-1)


def test_rotation_is_rigid_about_the_box_centre() -> None:
    s = random_sample(np.random.default_rng(0), 40)
    centre = np.full((1, 3), BOX_CENTRE, np.float32)
    s = Sample(coord=np.concatenate([s.coord, centre]), energy=np.ones(41, np.float32), index=0)
    out = RandomRotation(keep_inside=False)(s, np.random.default_rng(1))
    assert out.coord.dtype == np.float32
    np.testing.assert_allclose(_pairwise(out.coord), _pairwise(s.coord), atol=2e-3)  # voxel units kept
    np.testing.assert_allclose(out.coord[-1], centre[0], atol=1e-3)  # the centre stays put
    assert not np.allclose(out.coord, s.coord)


@pytest.mark.parametrize("axis, column", [("x", 0), ("y", 1), ("z", 2)])
def test_axis_rotation_keeps_that_coordinate(axis: str, column: int) -> None:
    s = random_sample(np.random.default_rng(2), 30)
    out = RandomRotation(axis=axis)(s, np.random.default_rng(3))
    np.testing.assert_allclose(out.coord[:, column], s.coord[:, column], atol=1e-3)
    r = random_rotation_matrix(np.random.default_rng(4), axis)
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_events_turned_out_of_the_box_are_moved_back_rigidly() -> None:
    rng = np.random.default_rng(5)
    corner = (rng.uniform(0, 60, size=(50, 3))).astype(np.float32)  # a 60-voxel blob in a corner
    s = Sample(coord=corner, energy=np.ones(50, np.float32), index=0)
    for seed in range(20):
        out = RandomRotation()(s, np.random.default_rng(seed))
        assert out.coord.min() >= 0 and out.coord.max() < 768
        np.testing.assert_allclose(_pairwise(out.coord), _pairwise(corner), atol=2e-3)  # moved, not squashed
    long = Sample(coord=np.array([[0, 384, 384], [767, 384, 384]], np.float32), energy=np.ones(2, np.float32),
                  index=0)  # longer than the box along any turned axis but x: clipped onto the walls
    out = RandomRotation(axis="z")(long, np.random.default_rng(0))
    assert out.coord.min() >= 0 and out.coord.max() < 768


def test_quarter_turn_maps_voxels_onto_voxels() -> None:
    # About the centre 383.5, a 90-degree turn sends voxel indices 0..767 to 767..0.
    r = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    corners = np.array([[0, 0, 5], [767, 0, 5], [767, 767, 5]], np.float64)
    turned = (corners - BOX_CENTRE) @ r.T + BOX_CENTRE
    np.testing.assert_allclose(turned, [[767, 0, 5], [767, 767, 5], [0, 767, 5]])


def test_full_rotations_are_uniform_on_so3() -> None:
    # Haar measure on SO(3): the rotation angle theta has density (1 - cos theta) / pi, so
    # E[trace R] = E[1 + 2 cos theta] = 0, E[trace^2] = 1, and P(theta < pi/2) = (pi/2 - 1)/pi
    # = 0.1817 (e.g. Miles, Biometrika 52 (1965) 636). Tolerances: ~4 standard errors at n = 4000.
    rng = np.random.default_rng(7)
    traces = np.array([np.trace(random_rotation_matrix(rng)) for _ in range(4000)])
    assert abs(traces.mean()) < 0.065
    assert (traces**2).mean() == pytest.approx(1.0, abs=0.08)
    theta = np.arccos(np.clip((traces - 1) / 2, -1, 1))
    assert (theta < np.pi / 2).mean() == pytest.approx((np.pi / 2 - 1) / np.pi, abs=0.025)


def test_rejects_unknown_axis() -> None:
    with pytest.raises(ConfigError, match="axis"):
        RandomRotation(axis="w")

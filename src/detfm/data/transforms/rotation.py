"""Random rotation of an event about the centre of the detector box."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from detfm.data.dataset import Sample
from detfm.errors import ConfigError
from detfm.io import layout

# Centre of the box in voxel-index coordinates: indices run 0..767, so a 90-degree turn about
# (767/2, 767/2, 767/2) maps voxel indices onto voxel indices.
BOX_CENTRE = (layout.BOX_VOXELS - 1) / 2.0

_AXES = {"x": 0, "y": 1, "z": 2}


def random_rotation_matrix(rng: np.random.Generator, axis: str | None = None) -> np.ndarray:
    """A (3, 3) rotation: uniform over SO(3) if ``axis`` is None, else about that axis.

    The uniform case normalises a 4-vector of standard normals into a unit quaternion,
    which is uniformly distributed on the 3-sphere and hence gives Haar-uniform rotations.
    """
    if axis is None:
        q = rng.standard_normal(4)
        w, x, y, z = q / np.linalg.norm(q)
        return np.array([
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ])
    angle = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    i = _AXES[axis]
    j, k = [a for a in range(3) if a != i]
    r = np.eye(3)
    r[j, j], r[j, k], r[k, j], r[k, k] = c, -s, s, c
    return r


@dataclass(frozen=True)
class RandomRotation:
    """Rotate coordinates about ``centre`` (default: the box centre), keeping voxel units.

    ``axis=None`` draws a uniform rotation in 3D; ``"x"``, ``"y"`` or ``"z"`` a uniform angle
    about that axis (e.g. ``"x"`` keeps the drift direction if x is the drift axis). Rotated
    coordinates are not rounded. With ``keep_inside`` (default) an event that a rotation
    turned partly out of the detector box is moved back in by the smallest shift along each
    axis (events are never outside a detector; point-resolution backbones refuse such
    coordinates); an event longer than the box along an axis keeps its centre there and has
    the points beyond the walls clipped onto them.
    """

    axis: str | None = None
    centre: float = BOX_CENTRE
    keep_inside: bool = True

    def __post_init__(self) -> None:
        if self.axis is not None and self.axis not in _AXES:
            raise ConfigError(f"RandomRotation axis must be None, 'x', 'y' or 'z', got {self.axis!r}")

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        r = random_rotation_matrix(rng, self.axis)
        coord, shift = turn_points(sample.coord, r, self.centre, self.keep_inside)
        if sample.particle_start is not None:  # particle start points turn (and move) with the points
            start = (sample.particle_start.astype(np.float64) - self.centre) @ r.T + self.centre + shift
            return replace(sample, coord=coord, particle_start=start.astype(np.float32))
        return replace(sample, coord=coord)


def turn_points(coord: np.ndarray, r: np.ndarray, centre: float = BOX_CENTRE, keep_inside: bool = True
                ) -> tuple[np.ndarray, np.ndarray]:
    """``coord`` (N, 3) turned by the rotation ``r`` about ``centre`` (float32), and the shift
    (3,) that then moved it back inside the box (zeros without ``keep_inside``); see
    :class:`RandomRotation`. The input is not changed."""
    out = (np.asarray(coord, dtype=np.float64) - centre) @ r.T + centre
    shift = _inside_shift(out) if keep_inside and len(out) else np.zeros(3)
    out = out + shift
    if keep_inside:
        out = np.clip(out, 0.0, np.nextafter(np.float32(layout.BOX_VOXELS), 0))
    return out.astype(np.float32), shift


def _inside_shift(coord: np.ndarray) -> np.ndarray:
    """The smallest per-axis shift that puts the points' bounding box inside [0, BOX_VOXELS)
    (for an axis where it does not fit, the shift that centres it)."""
    lo, hi = coord.min(axis=0), coord.max(axis=0)
    top = layout.BOX_VOXELS - 1e-3
    fits = hi - lo <= top
    shift = np.where(lo < 0, -lo, np.where(hi > top, top - hi, 0.0))
    return np.where(fits, shift, (top - hi - lo) / 2.0)

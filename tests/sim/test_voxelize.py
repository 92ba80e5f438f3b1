"""Path-length voxelization: a step's deposit is shared among every voxel its segment crosses.

Reference for the topology numbers: in Geant4-voxelized LArTPC data (PILArNet-M) a charged
particle lights every voxel it crosses, so under 1 % of track voxels lack a lit face
neighbour; depositing each 3 mm step at its midpoint left 44 % of them isolated.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detfm.errors import DataFormatError
from detfm.io import Event, layout
from detfm.sim.detector import NOMINAL
from detfm.sim.response import diffused_segments, render, step_pieces
from detfm.sim.simulate import SimConfig, simulate_event, simulate_truth
from detfm.sim.truth import Deposits, Fragments, Role, TruthEvent

VOX = layout.VOXEL_SIZE_CM
N = layout.BOX_VOXELS
SHARP = dataclasses.replace(NOMINAL, name="sharp", diffusion_long_cm2_s=0.0, diffusion_trans_cm2_s=0.0,
                            threshold_mev=0.0)


def unkey(key: np.ndarray) -> np.ndarray:
    return np.stack([key // (N * N), (key // N) % N, key % N], axis=1)


def test_axis_aligned_segment_is_shared_by_path_length() -> None:
    # From x = 10.25 to x = 12.5 voxels: 0.75, 1.0 and 0.5 voxels of path in voxels 10, 11, 12.
    start = np.array([[10.25, 5.5, 5.5]]) * VOX
    end = np.array([[12.5, 5.5, 5.5]]) * VOX
    row, key, frac = step_pieces(start, end)
    assert row.tolist() == [0, 0, 0]
    assert unkey(key)[:, 0].tolist() == [10, 11, 12]
    np.testing.assert_allclose(frac, np.array([0.75, 1.0, 0.5]) / 2.25)


def test_diagonal_segment_lights_a_face_connected_chain() -> None:
    rng = np.random.default_rng(0)
    start = rng.uniform(100, 110, (200, 3)) * VOX
    end = start + rng.normal(0, 3, (200, 3)) * VOX
    row, key, frac = step_pieces(start, end)
    np.testing.assert_allclose(np.bincount(row, weights=frac, minlength=200), 1.0, atol=1e-9)
    for i in range(200):
        v = unkey(key[row == i])
        # consecutive voxels share a face, and the chain runs from the start to the end voxel
        assert (np.abs(np.diff(v, axis=0)).sum(axis=1) == 1).all()
        assert v[0].tolist() == np.floor(start[i] / VOX).astype(int).tolist()
        assert v[-1].tolist() == np.floor(end[i] / VOX).astype(int).tolist()
        # as many voxels as boundaries crossed, plus one
        assert len(v) == 1 + np.abs(np.floor(end[i] / VOX) - np.floor(start[i] / VOX)).sum()


def test_point_deposits_and_pieces_outside_the_box() -> None:
    start = np.array([[1.0, 1.0, 1.0], [0.1, 0.1, 0.1]])
    end = np.array([[1.0, 1.0, 1.0], [-0.5, 0.1, 0.1]])  # the second leaves through x = 0
    row, key, frac = step_pieces(start, end)
    assert row.tolist() == [0, 1]
    assert frac[0] == 1.0
    assert frac[1] == pytest.approx(0.1 / 0.6)  # only the part inside the box is kept
    assert unkey(key).tolist() == [[3, 3, 3], [0, 0, 0]]


def _track(n_steps: int, step_cm: float, direction: np.ndarray, start_cm: np.ndarray) -> TruthEvent:
    u = direction / np.linalg.norm(direction)
    mid = start_cm + (np.arange(n_steps) + 0.5)[:, None] * step_cm * u
    fragments = Fragments(role=np.array([Role.TRACK], np.int8), pid=np.array([layout.PID_MUON], np.int8),
                          pdg=np.array([13], np.int32), group=np.zeros(1, np.int32),
                          interaction=np.zeros(1, np.int32), mass_mev=np.array([105.7], np.float32),
                          momentum_gev=np.array([0.3], np.float32), vertex_cm=start_cm[None].astype(np.float32),
                          energy_mev=np.array([200.0], np.float32))
    deposits = Deposits(pos_cm=mid, de_mev=np.full(n_steps, 2.1 * step_cm), dx_cm=np.full(n_steps, step_cm),
                        time_ns=np.zeros(n_steps), frag=np.zeros(n_steps, np.int32),
                        direction=np.tile(u, (n_steps, 1)))
    return TruthEvent([], fragments, deposits)


def test_render_conserves_energy_and_path_length() -> None:
    truth = _track(300, 0.3, np.array([1.0, 0.7, 0.4]), np.array([20.0, 30.0, 40.0]))
    ev = render(truth, SHARP, np.random.default_rng(0))
    assert ev.points[:, layout.DE].sum() == pytest.approx(truth.deposits.de_mev.sum(), rel=1e-5)
    assert ev.points[:, layout.DX].sum() == pytest.approx(10 * truth.deposits.dx_cm.sum(), rel=1e-5)
    # a straight diagonal line lights about its L1 extent in voxels
    l1 = np.abs(truth.deposits.direction[0]).sum() * 300 * 0.3 / VOX
    assert ev.n_points == pytest.approx(l1, rel=0.02)


def test_diffused_track_stays_connected() -> None:
    truth = _track(200, 0.3, np.array([0.3, 1.0, 0.5]), np.array([200.0, 30.0, 40.0]))  # ~2 mm sigma
    shift = np.random.default_rng(1).normal(0, 0.19, (200, 3))
    start, end = diffused_segments(truth.deposits, shift)
    np.testing.assert_allclose(start[1:], end[:-1], atol=1e-9)  # one connected line
    np.testing.assert_allclose(start, truth.deposits.pos_cm - 0.15 * truth.deposits.direction + shift)


def test_direction_is_checked() -> None:
    truth = _track(5, 0.3, np.array([1.0, 0.0, 0.0]), np.array([20.0, 30.0, 40.0]))
    truth.deposits.direction = np.full((5, 3), np.nan)
    with pytest.raises(DataFormatError, match="deposits.direction"):
        render(truth, NOMINAL, np.random.default_rng(0))


def isolated_fraction(ev: Event, semantic: int = layout.TRACK, threshold_mev: float = 0.0) -> tuple[float, int]:
    """Fraction of ``semantic`` voxels (value >= threshold) with none of their 6 face neighbours lit."""
    keep = ev.energy >= threshold_mev
    c = ev.coords[keep].astype(np.int64)
    key = (c[:, 0] * N + c[:, 1]) * N + c[:, 2]
    lit = np.sort(key)
    mine = ev.semantic[keep] == semantic
    has = np.zeros(int(mine.sum()), bool)
    for step in (N * N, N, 1):
        for sign in (1, -1):
            probe = key[mine] + sign * step
            at = np.minimum(np.searchsorted(lit, probe), len(lit) - 1)
            has |= lit[at] == probe
    return float((~has).mean()) if len(has) else 0.0, int(mine.sum())


def test_muon_gun_tracks_are_continuous() -> None:
    # 100 MeV muons from the box centre through the nominal detector (diffusion on), as written
    # to file (0.05 MeV recording threshold). Midpoint deposits left 44 % isolated and lit
    # 0.65 voxels per voxel of the track's L1 extent; crossing every voxel gives about 1.
    cfg = SimConfig(events=40, seed=3, mix="gun", gun="mu-:100")
    isolated = lit = extent = 0.0
    for i in range(cfg.events):
        truth, rng = simulate_truth(cfg, i)
        ev = render(truth, NOMINAL, rng)
        frac, n = isolated_fraction(ev)
        isolated += frac * n
        lit += n
        dep = truth.deposits
        mine = dep.frag == 0
        extent += float((np.abs(dep.direction[mine]).sum(axis=1) * dep.dx_cm[mine]).sum()) / VOX
    assert isolated / lit < 0.01
    assert 0.9 < lit / extent < 1.3


def test_voxelization_is_deterministic() -> None:
    cfg = SimConfig(events=2, seed=4)
    a, b = simulate_event(cfg, 1), simulate_event(cfg, 1)
    assert np.array_equal(a.points, b.points) and np.array_equal(a.clusters, b.clusters)
    truth, _ = simulate_truth(cfg, 1)
    assert np.abs(np.linalg.norm(truth.deposits.direction, axis=1)[truth.deposits.dx_cm > 0] - 1).max() < 1e-9

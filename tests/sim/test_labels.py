"""PILArNet labeling rules: voxel ownership priority, the delta/Compton voxel-count cuts and
Supera's 4 MeV energy cut."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from detfm.io import layout
from detfm.sim.detector import NOMINAL
from detfm.sim.labels import (COMPTON_MAX_LOW_VOXELS, DELTA_MIN_VOXELS, LOW_ENERGY_MAX_MEV, PRIORITY_OF_ROLE,
                              SEMANTIC_OF_ROLE, SMALL_FRAGMENT_VOXELS,
                              apply_size_cuts, semantic_of, touching_merges, voxel_owner)
from detfm.sim.response import render
from detfm.sim.truth import Deposits, Fragments, Role, TruthEvent

VOX = layout.VOXEL_SIZE_CM
SHARP = dataclasses.replace(NOMINAL, name="sharp", diffusion_long_cm2_s=0.0, diffusion_trans_cm2_s=0.0)

# Most to least important (PHYSICS.md): track > Michel > shower > delta > low-energy.
PRIORITY = [Role.TRACK, Role.MICHEL, Role.SHOWER, Role.DELTA, Role.LOW_ENERGY]


def test_role_tables_cover_every_role_and_follow_the_truth_docstring() -> None:
    assert len(SEMANTIC_OF_ROLE) == len(PRIORITY_OF_ROLE) == len(Role)
    assert semantic_of(np.array(list(Role))).tolist() == [
        layout.TRACK, layout.SHOWER, layout.MICHEL, layout.DELTA, layout.SHOWER, layout.LOW_ENERGY]
    # Compton electrons compete as the shower they become if they survive the cut.
    assert PRIORITY_OF_ROLE[Role.COMPTON] == PRIORITY_OF_ROLE[Role.SHOWER]


@pytest.mark.parametrize("high, low", list(itertools.combinations(PRIORITY, 2)))
def test_higher_priority_owns_a_shared_voxel_whatever_the_energy(high: Role, low: Role) -> None:
    role = np.array([low, high])
    # The low-priority fragment deposits 100x more; the order of contributions must not matter.
    for order in ([0, 1], [1, 0]):
        frag = np.array([0, 1])[order]
        energy = np.array([10.0, 0.1])[order]
        assert voxel_owner(np.zeros(2, int), frag, energy, role, 1).tolist() == [1]


def test_ties_go_to_the_largest_energy_then_the_lowest_fragment() -> None:
    role = np.full(3, Role.SHOWER)
    # Voxel 0: fragment 2 has the most energy in total (two contributions add up).
    voxel = np.array([0, 0, 0, 0, 1, 1])
    frag = np.array([0, 2, 1, 2, 1, 0])
    energy = np.array([0.5, 0.3, 0.4, 0.3, 0.2, 0.2])
    assert voxel_owner(voxel, frag, energy, role, 2).tolist() == [2, 0]
    # Compton at shower priority, same energy: the lower fragment id wins.
    role = np.array([Role.COMPTON, Role.SHOWER])
    assert voxel_owner(np.zeros(2, int), np.array([1, 0]), np.array([0.2, 0.2]), role, 1).tolist() == [0]


def test_noise_never_owns_a_voxel_with_a_fragment_and_unsorted_input_is_fine() -> None:
    rng = np.random.default_rng(0)
    n, n_vox, n_frag = 400, 60, 7
    voxel = rng.integers(0, n_vox, n)
    frag = rng.integers(-1, n_frag, n)
    energy = np.where(frag >= 0, rng.exponential(1.0, n), 0.0)
    role = rng.integers(0, len(Role), n_frag)
    owner = voxel_owner(voxel, frag, energy, role, n_vox + 1)  # last voxel: no contribution
    perm = rng.permutation(n)
    assert np.array_equal(owner, voxel_owner(voxel[perm], frag[perm], energy[perm], role, n_vox + 1))
    # Brute force: per voxel, the best (priority, -energy, fragment) among real fragments.
    for v in range(n_vox + 1):
        here = (voxel == v) & (frag >= 0)
        if not here.any():
            assert owner[v] == -1
            continue
        totals = {f: energy[here & (frag == f)].sum() for f in set(frag[here].tolist())}
        best = min(totals, key=lambda f: (PRIORITY_OF_ROLE[role[f]], -totals[f], f))
        assert owner[v] == best, v


@pytest.mark.parametrize("role, n_voxels, survives", [
    (Role.DELTA, DELTA_MIN_VOXELS - 1, False), (Role.DELTA, DELTA_MIN_VOXELS, True),
    (Role.COMPTON, COMPTON_MAX_LOW_VOXELS, False), (Role.COMPTON, COMPTON_MAX_LOW_VOXELS + 1, True),
    (Role.LOW_ENERGY, 50, False),
    (Role.TRACK, SMALL_FRAGMENT_VOXELS - 1, False), (Role.TRACK, SMALL_FRAGMENT_VOXELS, True),
    (Role.MICHEL, SMALL_FRAGMENT_VOXELS - 1, False), (Role.MICHEL, SMALL_FRAGMENT_VOXELS, True),
    (Role.SHOWER, SMALL_FRAGMENT_VOXELS - 1, False), (Role.SHOWER, SMALL_FRAGMENT_VOXELS, True),
])
def test_size_cuts(role: Role, n_voxels: int, survives: bool) -> None:
    owner = np.array([-1] + [1] * n_voxels + [0] * 12)
    roles = np.array([Role.TRACK, role])
    before = owner.copy()
    out = apply_size_cuts(owner, roles)
    assert np.array_equal(owner, before)  # input untouched
    assert (out == 1).sum() == (n_voxels if survives else 0)
    assert (out == -1).sum() == 1 + (0 if survives else n_voxels)
    assert (out == 0).sum() == 12
    # Supera's DeltaSize, ComptonSize and the size under which any particle is low-energy
    assert (DELTA_MIN_VOXELS, COMPTON_MAX_LOW_VOXELS, SMALL_FRAGMENT_VOXELS) == (10, 10, 10)


def test_small_delta_rays_merge_into_their_parent_track() -> None:
    # fragments: 0 track, 1 delta of 0 with 9 voxels, 2 delta of 0 with 10 voxels,
    # 3 delta of delta 1 (merges through 1 into 0), 4 delta without a parent (low-energy)
    owner = np.array([0] * 20 + [1] * 9 + [2] * 10 + [3] * 2 + [4] * 5 + [-1])
    roles = np.array([Role.TRACK, Role.DELTA, Role.DELTA, Role.DELTA, Role.DELTA])
    parent = np.array([-1, 0, 0, 1, -1])
    out = apply_size_cuts(owner, roles, parent)
    assert (out == 0).sum() == 20 + 9 + 2
    assert (out == 2).sum() == 10
    assert (out == -1).sum() == 5 + 1
    assert not np.isin(out, [1, 3, 4]).any()


def _truth(pieces: list[tuple[Role, int, list[tuple[int, int, int]], float]]) -> TruthEvent:
    """Fragments of (role, pid, voxels, MeV per voxel), one deposit at each voxel centre."""
    n = len(pieces)
    pos = np.concatenate([(np.array(v, float) + 0.5) * VOX for _, _, v, _ in pieces])
    de = np.concatenate([np.full(len(v), e) for _, _, v, e in pieces])
    frag = np.concatenate([np.full(len(v), k, np.int32) for k, (_, _, v, _) in enumerate(pieces)])
    fragments = Fragments(
        role=np.array([p[0] for p in pieces], np.int8), pid=np.array([p[1] for p in pieces], np.int8),
        pdg=np.zeros(n, np.int32), group=np.zeros(n, np.int32), interaction=np.zeros(n, np.int32),
        mass_mev=np.zeros(n, np.float32), momentum_gev=np.zeros(n, np.float32),
        vertex_cm=np.zeros((n, 3), np.float32), energy_mev=np.zeros(n, np.float32))
    return TruthEvent([], fragments, Deposits(pos, de, de / 2.105, np.zeros(len(de)), frag))


def _run(*pieces: tuple[Role, int, list[tuple[int, int, int]], float]):  # noqa: ANN202
    return render(_truth(list(pieces)), SHARP, np.random.default_rng(0))


def row(axis_start: tuple[int, int, int], n: int) -> list[tuple[int, int, int]]:
    return [(axis_start[0], axis_start[1], axis_start[2] + k) for k in range(n)]


def test_small_deltas_and_comptons_in_rendered_events() -> None:
    track = (Role.TRACK, layout.PID_MUON, row((10, 10, 10), 40), 0.63)
    truth = _truth([track,
                    (Role.DELTA, layout.PID_ELECTRON, row((100, 10, 10), 9), 0.5),     # 9, no parent -> low-energy
                    (Role.DELTA, layout.PID_ELECTRON, row((120, 10, 10), 10), 0.5),    # 10 voxels -> delta
                    (Role.COMPTON, layout.PID_ELECTRON, row((200, 10, 10), 10), 0.5),  # 10 -> low-energy
                    (Role.COMPTON, layout.PID_ELECTRON, row((220, 10, 10), 11), 0.5),  # 11 -> shower
                    (Role.LOW_ENERGY, layout.PID_ELECTRON, row((300, 10, 10), 30), 0.5),  # always low-energy
                    (Role.DELTA, layout.PID_ELECTRON, row((10, 11, 10), 9), 0.5)])     # 9 of track 0 -> track
    truth.fragments.parent[6] = 0
    ev = render(truth, SHARP, np.random.default_rng(0))
    c = ev.clusters
    assert c[:, layout.C_FRAGMENT].tolist() == [-1, 0, 2, 4]
    assert c[:, layout.C_SEMANTIC].tolist() == [layout.LOW_ENERGY, layout.TRACK, layout.DELTA, layout.SHOWER]
    assert c[:, layout.C_PID].tolist() == [layout.PID_NONE, layout.PID_MUON, layout.PID_ELECTRON,
                                           layout.PID_ELECTRON]
    assert c[:, layout.C_NPOINTS].tolist() == [9 + 10 + 30, 40 + 9, 10, 11]
    assert np.all(ev.semantic[ev.fragment == -1] == layout.LOW_ENERGY)


def test_a_delta_leaving_its_track_counts_only_the_voxels_it_owns() -> None:
    track = (Role.TRACK, layout.PID_MUON, row((10, 10, 10), 20), 0.63)
    # Eleven delta voxels, the first on the track: the track owns it, the delta keeps 10 -> delta.
    delta = (Role.DELTA, layout.PID_ELECTRON, [(10, 10 + k, 15) for k in range(11)], 2.0)
    ev = _run(track, delta)
    assert ev.clusters[:, layout.C_FRAGMENT].tolist() == [-1, 0, 1]
    assert ev.clusters[:, layout.C_NPOINTS].tolist() == [0, 20, 10]
    shared = np.all(ev.coords == [10, 10, 15], axis=1)
    assert ev.fragment[shared].tolist() == [0]
    assert ev.points[shared, layout.DE][0] == pytest.approx(2.63, rel=1e-5)  # both energies recorded
    # With ten voxels, one on the track, it keeps 9 and merges into the track it came from.
    truth = _truth([track, (Role.DELTA, layout.PID_ELECTRON, [(10, 10 + k, 15) for k in range(10)], 2.0)])
    truth.fragments.parent[1] = 0
    ev = render(truth, SHARP, np.random.default_rng(0))
    assert ev.clusters[:, layout.C_NPOINTS].tolist() == [0, 29]
    # A Michel sharing a voxel with a shower takes it; a shower with a delta takes it.
    michel = (Role.MICHEL, layout.PID_ELECTRON, row((50, 50, 50), 12), 0.4)  # 4.8 MeV: above 4 MeV
    shower = (Role.SHOWER, layout.PID_ELECTRON, row((50, 50, 60), 12), 3.0)
    delta = (Role.DELTA, layout.PID_ELECTRON, row((50, 50, 70), 12), 3.0)
    ev = _run(michel, shower, delta)
    coords = ev.coords.astype(int).tolist()
    by_voxel = {tuple(k): f for k, f in zip(coords, ev.fragment.tolist(), strict=True)}
    assert [by_voxel[(50, 50, z)] for z in range(58, 74)] == [0] * 4 + [1] * 10 + [2] * 2
    # ... and the delta, left with 10 voxels of its own, survives as a delta.
    assert ev.clusters[:, layout.C_SEMANTIC].tolist() == [layout.LOW_ENERGY, layout.MICHEL, layout.SHOWER,
                                                          layout.DELTA]


def test_cuts_count_recorded_voxels_only() -> None:
    # An 11-voxel Compton electron with one voxel below threshold records 10 -> low-energy.
    voxels = row((100, 100, 100), 11)
    pieces = _truth([(Role.COMPTON, layout.PID_ELECTRON, voxels, 0.5)])
    pieces.deposits.de_mev[0] = 0.01
    ev = render(pieces, SHARP, np.random.default_rng(0))
    assert ev.n_points == 10
    assert ev.clusters[:, layout.C_NPOINTS].tolist() == [10]


@pytest.mark.parametrize("role", [Role.TRACK, Role.SHOWER, Role.MICHEL, Role.DELTA, Role.COMPTON])
def test_fragments_under_4_mev_are_low_energy(role: Role) -> None:
    # Supera (SuperaMCParticleCluster::process): vs.size() < ComptonSize or vs.sum() < ComptonEnergy
    # (4 MeV) -> kShapeLEScatter, for every stored particle.
    assert LOW_ENERGY_MAX_MEV == 4.0
    owner = np.array([1] * 20 + [0] * 12)
    roles = np.array([Role.TRACK, role])
    energy = np.array([50.0, LOW_ENERGY_MAX_MEV - 0.01])
    assert (apply_size_cuts(owner, roles, None, energy) == -1).sum() == 20
    energy[1] = LOW_ENERGY_MAX_MEV
    assert (apply_size_cuts(owner, roles, None, energy) == 1).sum() == 20
    # a small delta ray merged into its track adds its energy to the track's
    roles = np.array([Role.TRACK, Role.DELTA])
    owner = np.array([0] * 12 + [1] * 3)
    out = apply_size_cuts(owner, roles, np.array([-1, 0]), np.array([3.0, 1.5]))
    assert out.tolist() == [0] * 15


def test_a_compton_electron_under_4_mev_is_low_energy_and_yields_shared_voxels() -> None:
    # 12 voxels of 0.3 MeV (3.6 MeV): more than 10 voxels but under 4 MeV -> low-energy. It deposits
    # at higher priority in the two voxels they share with a delta ray; since Supera writes low-energy labels
    # first and lets the others overwrite them, the delta ray gets those voxels back.
    compton = (Role.COMPTON, layout.PID_ELECTRON, row((60, 60, 60), 12), 0.3)
    delta = (Role.DELTA, layout.PID_ELECTRON, row((60, 60, 70), 12), 0.4)
    ev = _run(compton, delta)
    assert ev.clusters[:, layout.C_FRAGMENT].tolist() == [-1, 1]
    assert ev.clusters[:, layout.C_NPOINTS].tolist() == [10, 12]
    assert ev.clusters[:, layout.C_SEMANTIC].tolist() == [layout.LOW_ENERGY, layout.DELTA]
    # with 6 MeV of its own the Compton electron is a shower and keeps the shared voxels
    ev = _run((Role.COMPTON, layout.PID_ELECTRON, row((60, 60, 60), 12), 0.5), delta)
    assert ev.clusters[:, layout.C_SEMANTIC].tolist() == [layout.LOW_ENERGY, layout.SHOWER, layout.DELTA]
    assert ev.clusters[:, layout.C_NPOINTS].tolist() == [0, 12, 10]


def test_children_merge_into_an_ancestor_they_touch_and_stay_apart_where_they_do_not() -> None:
    # Supera: MergeShowerTouchingLEScatter (a Compton or photo-electron touching any ancestor
    # joins it) and MergeShowerFamilyTouching (a brem photon's conversion pair touching the
    # radiating electron's shower joins it). Fragments: 0 shower (40 voxels along z);
    # 1 Compton electron of 0, 3 voxels touching 0 diagonally (corner) -> merges, shower;
    # 2 Compton electron of 0, 3 voxels two voxels away -> low-energy;
    # 3 conversion pair of a brem photon of 0, 6 voxels touching 0 -> shower, part of 0;
    # 4 conversion pair of a brem photon of 0, 12 voxels of 0.5 MeV far away -> a shower of its own;
    # 5 conversion pair of a brem photon of 0, 5 voxels far away -> low-energy;
    # 6 Compton electron of 4, touching 4 -> joins 4; 7 Compton electron of a muon touching it -> track.
    shower = (Role.SHOWER, layout.PID_ELECTRON, row((50, 50, 50), 40), 0.6)
    truth = _truth([shower,
                    (Role.COMPTON, layout.PID_ELECTRON, row((51, 51, 90), 3), 0.5),
                    (Role.COMPTON, layout.PID_ELECTRON, row((50, 52, 60), 3), 0.5),
                    (Role.SHOWER, layout.PID_PHOTON, row((51, 50, 70), 6), 0.5),
                    (Role.SHOWER, layout.PID_PHOTON, row((150, 50, 50), 12), 0.5),
                    (Role.SHOWER, layout.PID_PHOTON, row((200, 50, 50), 5), 0.5),
                    (Role.COMPTON, layout.PID_ELECTRON, row((151, 50, 62), 2), 0.5),
                    (Role.COMPTON, layout.PID_ELECTRON, row((300, 11, 10), 2), 0.5),
                    (Role.TRACK, layout.PID_MUON, row((300, 10, 10), 30), 0.63)])
    truth.fragments.parent[:] = [-1, 0, 0, 0, 0, 0, 4, 8, -1]
    ev = render(truth, SHARP, np.random.default_rng(0))
    c = ev.clusters
    assert c[:, layout.C_FRAGMENT].tolist() == [-1, 0, 4, 8]
    assert c[:, layout.C_SEMANTIC].tolist() == [layout.LOW_ENERGY, layout.SHOWER, layout.SHOWER, layout.TRACK]
    assert c[:, layout.C_NPOINTS].tolist() == [3 + 5, 40 + 3 + 6, 12 + 2, 30 + 2]
    # the bare rule: 26-neighbour touching (a shared corner counts), nothing more
    assert (touching_merges(np.array([0, 1]), np.array([[0, 0, 0], [1, 1, 1]]), np.array([Role.SHOWER] * 2),
                            np.array([-1, 0])).tolist() == [0, 0])
    assert (touching_merges(np.array([0, 1]), np.array([[0, 0, 0], [2, 1, 1]]), np.array([Role.SHOWER] * 2),
                            np.array([-1, 0])).tolist() == [0, 1])

"""PILArNet labeling rules: which fragment owns a voxel, and which fragments are too small.

The rules (PHYSICS.md, "How PILArNet-M events are made and labeled"):

* A voxel belongs to one fragment. When several fragments deposit in it, the priority is
  track > Michel > shower > delta > low-energy; among equal priority the fragment that
  deposited the most energy there wins (then the lowest fragment id, for determinism).
  Compton electrons compete at shower priority, the class they get if they survive.
* After ownership, a delta ray owning fewer than 10 voxels (voxels the track did not
  already take) is merged into the track it came from, as Supera does (PILArNet's labeler,
  ``SuperaMCParticleCluster::MergeShowerDeltas``, ``DeltaSize`` 10 by default): a stub
  along a track is part of that track. A delta ray without a known parent becomes
  low-energy instead. Compton electrons owning 10 voxels or fewer become low-energy
  deposits (Supera: ``kCompton`` up to ``ComptonSize`` 10 voxels is ``kShapeLEScatter``);
  ``Role.LOW_ENERGY`` fragments always do.
* Then any fragment left with fewer than 10 voxels (a proton stub, a tiny shower or
  Michel) **or with less than 4 MeV of true energy in its recorded voxels** becomes
  low-energy: when Supera writes the semantic labels it switches every stored particle with
  ``vs.size() < ComptonSize`` (10) or ``vs.sum() < ComptonEnergy`` (4 MeV by default) to
  ``kShapeLEScatter`` (``SuperaMCParticleCluster::process``; the same pair of cuts defines a
  "high-energy" Compton electron, ``kComptonHE``, in ``ApplyEnergyThreshold``). A Compton
  electron of a few MeV that lights a dozen voxels is therefore low-energy in PILArNet.
* Supera writes the low-energy voxels first and lets every other label overwrite them, so a
  voxel shared by a low-energy fragment and any other fragment takes the other one's label.
  We do the same: once the cuts are known, ownership is decided again with every fragment
  that became low-energy at low-energy priority, and every merged delta ray at its track's.

* Before the cuts, a fragment that Supera keeps apart from its parent only while they do
  not touch merges into it where any of its voxels touches (shares a face, edge or corner
  with) a voxel of its parent's fragment, or of a further ancestor's: Compton and
  photo-electrons (Supera's ``MergeShowerTouchingLEScatter``: a low-energy scatter touching
  any ancestor joins it, a track included) and the conversion pair of a bremsstrahlung
  photon (``MergeShowerConversion`` puts the pair into its photon,
  ``MergeShowerFamilyTouching`` the photon into the radiating electron's shower, Michel or
  delta ray where they touch). Pieces that fly away from their parent before they deposit
  stay apart, and the cuts label the small ones low-energy. Before this rule every
  bremsstrahlung photon's pair joined the radiating electron's fragment however far away,
  and every Compton electron stayed apart from it however close.

Low-energy deposits are marked with owner ``-1`` (the low-energy bucket, cluster row 0).

Before this rule, delta rays with fewer than 3 voxels became low-energy (PHYSICS.md's
summary); Supera's source merges them into their parent track, and counting them as delta
or low-energy made the delta share of the default mix 4x PILArNet-M's. Before the 4 MeV
rule, Compton electrons with more than 10 voxels were shower whatever their energy.
"""

from __future__ import annotations

import numpy as np

from detfm.io import layout
from detfm.sim import _voxelize
from detfm.sim.truth import Role


def _table(by_role: dict[Role, int]) -> np.ndarray:
    """A read-only lookup array indexed by Role value."""
    out = np.array([by_role[r] for r in Role], dtype=np.int64)
    out.flags.writeable = False
    return out


# Role -> semantic class (Role docstring in truth.py; a COMPTON that survives the cut is shower).
SEMANTIC_OF_ROLE = _table({Role.TRACK: layout.TRACK, Role.SHOWER: layout.SHOWER, Role.MICHEL: layout.MICHEL,
                           Role.DELTA: layout.DELTA, Role.COMPTON: layout.SHOWER,
                           Role.LOW_ENERGY: layout.LOW_ENERGY})

# Role -> rank when fragments share a voxel (lower wins): track > Michel > shower > delta > low-energy.
PRIORITY_OF_ROLE = _table({Role.TRACK: 0, Role.MICHEL: 1, Role.SHOWER: 2, Role.COMPTON: 2, Role.DELTA: 3,
                           Role.LOW_ENERGY: 4})
NO_FRAGMENT_PRIORITY = 5  # noise hits: lose to any fragment

# PILArNet-M voxel-count cuts (Supera's SuperaMCParticleCluster defaults).
DELTA_MIN_VOXELS = 10    # delta rays owning fewer voxels merge into their parent track
COMPTON_MAX_LOW_VOXELS = 10  # Compton electrons with this many voxels or fewer become low-energy
SMALL_FRAGMENT_VOXELS = 10   # any fragment with fewer voxels becomes low-energy
# Supera's ComptonEnergy (default 4 MeV): a fragment whose recorded voxels hold less true
# energy becomes low-energy (SuperaMCParticleCluster::process, when writing semantics).
LOW_ENERGY_MAX_MEV = 4.0
LOW_ENERGY_PRIORITY = PRIORITY_OF_ROLE[Role.LOW_ENERGY]


def voxel_owner(voxel: np.ndarray, fragment: np.ndarray, energy: np.ndarray, role: np.ndarray,
                n_voxels: int, priority: np.ndarray | None = None) -> np.ndarray:
    """The fragment owning each voxel, or -1 where only noise contributed.

    Args:
        voxel: (P,) voxel index 0..n_voxels-1 of each (voxel, fragment) contribution.
        fragment: (P,) fragment row, or -1 for a contribution with no fragment (noise).
        energy: (P,) true energy that contribution deposited in that voxel (MeV).
        role: (F,) Role of every fragment.
        n_voxels: number of voxels.
        priority: (F,) rank of every fragment when it shares a voxel (lower wins); default
            ``PRIORITY_OF_ROLE[role]``. The second pass of :func:`label_owner` ranks the
            fragments that became low-energy last.

    Contributions may repeat a (voxel, fragment) pair; their energies add up. Input
    already sorted by (voxel, fragment), as the response stage passes it, skips a sort.
    """
    voxel = np.asarray(voxel, np.int64)
    fragment = np.asarray(fragment, np.int64)
    energy = np.asarray(energy, np.float64)
    owner = np.full(n_voxels, -1, np.int64)
    if voxel.size == 0:
        return owner
    pair = voxel * (len(role) + 1) + (fragment + 1)  # sorts by voxel, then fragment
    if not (pair[1:] >= pair[:-1]).all():
        order = np.argsort(pair, kind="stable")
        pair, voxel, fragment, energy = pair[order], voxel[order], fragment[order], energy[order]
    # Sum energy per (voxel, fragment) pair.
    start = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
    v, f, e = voxel[start], fragment[start], np.add.reduceat(energy, start)
    # A voxel with a single contributor needs no arbitration (the common case).
    boundary = v[1:] != v[:-1]
    alone = np.r_[True, boundary] & np.r_[boundary, True]
    owner[v[alone]] = f[alone]
    v, f, e = v[~alone], f[~alone], e[~alone]
    if len(v) == 0:
        return owner
    rank = PRIORITY_OF_ROLE[np.asarray(role, np.int64)] if priority is None else np.asarray(priority, np.int64)
    prio = np.where(f >= 0, rank[np.maximum(f, 0)], NO_FRAGMENT_PRIORITY)
    # Per shared voxel keep the best priority, then the most energy; pairs are in fragment
    # order, so the first remaining candidate has the lowest fragment id.
    vstart = np.flatnonzero(np.r_[True, v[1:] != v[:-1]])
    size = np.diff(np.r_[vstart, len(v)])
    candidate = prio == np.repeat(np.minimum.reduceat(prio, vstart), size)
    candidate &= e == np.repeat(np.maximum.reduceat(np.where(candidate, e, -np.inf), vstart), size)
    v, f = v[candidate], f[candidate]
    first = np.r_[True, v[1:] != v[:-1]]
    owner[v[first]] = f[first]
    return owner


# Roles of the fragments that merge into their parent where they touch it (module docstring).
TOUCH_MERGE_ROLES = (Role.COMPTON, Role.SHOWER)
# Ancestors looked at for a touching merge (parent, grandparent, ...); Supera walks the whole
# chain, ours rarely has more than a few links that own voxels.
TOUCH_MERGE_DEPTH = 4


def touching_merges(owner: np.ndarray, coords: np.ndarray, role: np.ndarray, parent: np.ndarray) -> np.ndarray:
    """``target[f]``: the fragment whose voxels fragment ``f``'s join by touching (module docstring).

    Args:
        owner: (V,) owner fragment of each recorded voxel (-1: noise).
        coords: (V, 3) integer voxel indices of the same voxels.
        role: (F,) Role of every fragment.
        parent: (F,) parent fragment (-1: none).

    A candidate (role in :data:`TOUCH_MERGE_ROLES`, with a parent) merges into the first of
    its ancestors whose current group (the ancestor with everything merged into it so far)
    has a voxel within one voxel of one of the candidate's group, as Supera repeats its
    merges until none is left.
    """
    role = np.asarray(role, np.int64)
    parent = np.asarray(parent, np.int64)
    n_frag = len(role)
    target = np.arange(n_frag)
    candidate = np.isin(role, TOUCH_MERGE_ROLES) & (parent >= 0)
    owner = np.asarray(owner, np.int64)
    on_candidate = (owner >= 0) & candidate[np.maximum(owner, 0)]
    if not on_candidate.any():
        return target
    n = layout.BOX_VOXELS
    coords = np.asarray(coords, np.int64)
    keys = (coords[:, 0] * n + coords[:, 1]) * n + coords[:, 2]
    order = np.argsort(keys, kind="stable")
    src, dst = _voxelize.touching_pairs(keys[order], owner[order], candidate, n)
    if len(src) == 0:
        return target
    # ancestors of every fragment, nearest first
    ancestors = np.empty((TOUCH_MERGE_DEPTH, n_frag), np.int64)
    a = parent
    for k in range(TOUCH_MERGE_DEPTH):
        ancestors[k] = a
        a = np.where(a >= 0, parent[np.maximum(a, 0)], -1)
    width = n_frag + 1
    pair = np.unique(src * width + dst)
    return _voxelize.touch_merge_targets(pair // width, pair % width, candidate, ancestors)


def size_cuts(owner: np.ndarray, role: np.ndarray, parent: np.ndarray | None = None,
              fragment_energy: np.ndarray | None = None, touch_target: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """The PILArNet cuts (module docstring) as two per-fragment arrays ``(target, low)``.

    ``target[f]`` is the fragment whose voxels fragment ``f``'s become (itself, or the track a
    small delta ray merges into); ``low[f]`` says whether they become low-energy.
    ``owner`` holds the owner of every recorded voxel (after threshold and dead regions),
    since the voxel cuts count the voxels a fragment actually leaves; ``parent[f]`` is the
    fragment delta ray ``f`` came from (-1: unknown; ``None``: all unknown);
    ``fragment_energy[f]`` the true energy (MeV) fragment ``f`` left in recorded voxels
    (``None``: the 4 MeV rule is not applied); ``touch_target`` the merges of
    :func:`touching_merges` (``None``: none), applied first.
    """
    role = np.asarray(role, np.int64)
    owner = np.asarray(owner, np.int64)
    parent = np.full(len(role), -1, np.int64) if parent is None else np.asarray(parent, np.int64)
    touched = np.arange(len(role)) if touch_target is None else np.asarray(touch_target, np.int64)
    counts = np.bincount(touched[owner[owner >= 0]], minlength=len(role))
    small_delta = (role == Role.DELTA) & (counts < DELTA_MIN_VOXELS) & (touched == np.arange(len(role)))
    merge = small_delta & (parent >= 0)
    target = np.where(merge, parent, touched)
    # a parent may itself be a merged delta (a delta of a delta): follow the chain
    for _ in range(8):
        nxt = target[target]
        if np.array_equal(nxt, target):
            break
        target = nxt
    merged = np.where(owner < 0, -1, target[np.maximum(owner, 0)])
    counts = np.bincount(merged[merged >= 0], minlength=len(role))
    low = ((role == Role.LOW_ENERGY) | (small_delta & ~merge) | (counts < SMALL_FRAGMENT_VOXELS)
           | ((role == Role.COMPTON) & (counts <= COMPTON_MAX_LOW_VOXELS)))
    if fragment_energy is not None:
        energy = np.bincount(target, weights=np.asarray(fragment_energy, np.float64), minlength=len(role))
        low |= energy < LOW_ENERGY_MAX_MEV
    return target, low[target]


def relabel(owner: np.ndarray, target: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Owner after the cuts of :func:`size_cuts`; low-energy deposits get -1."""
    owner = np.asarray(owner, np.int64)
    safe = np.maximum(owner, 0)
    return np.where((owner < 0) | low[safe], -1, target[safe])


def apply_size_cuts(owner: np.ndarray, role: np.ndarray, parent: np.ndarray | None = None,
                    fragment_energy: np.ndarray | None = None) -> np.ndarray:
    """Owner after the PILArNet cuts (module docstring); low-energy deposits get -1.

    Arguments as in :func:`size_cuts`. The input is not modified.
    """
    return relabel(owner, *size_cuts(owner, role, parent, fragment_energy))


def label_owner(voxel: np.ndarray, fragment: np.ndarray, energy: np.ndarray, role: np.ndarray,
                n_voxels: int, recorded: np.ndarray, parent: np.ndarray | None = None,
                coords: np.ndarray | None = None) -> np.ndarray:
    """The labeled owner of every recorded voxel (-1: low-energy), Supera's way.

    Args as in :func:`voxel_owner`; ``recorded`` (n_voxels,) bool marks the voxels that are
    written (threshold, dead regions); ``coords`` (n_voxels, 3) the voxel indices, for the
    touching merges of :func:`touching_merges` (``None``: no touching merges). First the
    owners, the touching merges and the cuts of :func:`size_cuts`
    (voxel counts of owned recorded voxels, each fragment's true energy in all the recorded
    voxels it touches, as Supera's ``vs.sum()``); then, as Supera writes low-energy labels
    first and lets any other label overwrite them, ownership is decided again with every
    fragment that became low-energy ranked last and every merged delta at its track's rank.
    """
    voxel = np.asarray(voxel, np.int64)
    fragment = np.asarray(fragment, np.int64)
    role = np.asarray(role, np.int64)
    owner = voxel_owner(voxel, fragment, energy, role, n_voxels)
    ok = (fragment >= 0) & recorded[voxel]
    fragment_energy = np.bincount(fragment[ok], weights=np.asarray(energy, np.float64)[ok],
                                  minlength=len(role))
    touch_target = None
    if coords is not None and parent is not None:
        touch_target = touching_merges(owner[recorded], np.asarray(coords)[recorded], role, parent)
    target, low = size_cuts(owner[recorded], role, parent, fragment_energy, touch_target)
    if low.any():
        rank = np.where(low, LOW_ENERGY_PRIORITY, PRIORITY_OF_ROLE[role[target]])
        owner = voxel_owner(voxel, fragment, energy, role, n_voxels, rank)
    return relabel(owner[recorded], target, low)


def semantic_of(role: np.ndarray) -> np.ndarray:
    """Semantic class (io.layout codes) of fragments with these roles that survive the cuts."""
    return SEMANTIC_OF_ROLE[np.asarray(role, np.int64)]

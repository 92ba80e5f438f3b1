"""Numba kernels of the response stage: share each step's deposit among the voxels it crosses.

A charged particle's step is a segment; Geant4-voxelized data (PILArNet-M) light every
voxel such a segment passes through. :func:`segment_pieces` walks each segment through
the voxel grid with the Amanatides-Woo traversal (J. Amanatides, A. Woo, "A fast voxel
traversal algorithm for ray tracing", Eurographics 1987): from the start voxel, step to
whichever face of the current voxel the segment reaches first, until the end point. Each
voxel gets the fraction of the segment's length that lies inside it, so energy, charge and
path length are shared in proportion to path length and add up exactly. Pieces outside
the box are dropped (their charge is lost, as for deposits that leave the box).

The same file holds the two grid kernels of the labels (:func:`touching_pairs`,
:func:`touch_merge_targets`): which fragments have voxels within one voxel of each other,
and Supera's touching merges that follow from it (:func:`detfm.sim.labels.touching_merges`).

Kept apart from :mod:`detfm.sim._kernels` (transport) so that editing one does not
invalidate the other's numba cache.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


def max_pieces(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Upper bound on the voxels each segment crosses: 1 + the voxel boundaries on each axis."""
    return 1 + np.abs(np.floor(end) - np.floor(start)).astype(np.int64).sum(axis=1)


@njit(cache=True)
def _walk(p0, p1, n_box, row, out_row, out_key, out_frac, k):
    """Append the pieces of the segment p0 -> p1 (voxel units) to the outputs from index k."""
    dx = p1[0] - p0[0]
    dy = p1[1] - p0[1]
    dz = p1[2] - p0[2]
    ix = int(math.floor(p0[0]))
    iy = int(math.floor(p0[1]))
    iz = int(math.floor(p0[2]))
    jx = int(math.floor(p1[0]))
    jy = int(math.floor(p1[1]))
    jz = int(math.floor(p1[2]))
    n_steps = abs(jx - ix) + abs(jy - iy) + abs(jz - iz)
    inf = np.inf
    sx = 1 if dx > 0 else -1
    sy = 1 if dy > 0 else -1
    sz = 1 if dz > 0 else -1
    # parameter t in [0, 1] along the segment at which the next face on each axis is crossed
    tx = ((ix + (1 if dx > 0 else 0)) - p0[0]) / dx if dx != 0.0 else inf
    ty = ((iy + (1 if dy > 0 else 0)) - p0[1]) / dy if dy != 0.0 else inf
    tz = ((iz + (1 if dz > 0 else 0)) - p0[2]) / dz if dz != 0.0 else inf
    ddx = abs(1.0 / dx) if dx != 0.0 else inf
    ddy = abs(1.0 / dy) if dy != 0.0 else inf
    ddz = abs(1.0 / dz) if dz != 0.0 else inf
    t = 0.0
    for s in range(n_steps + 1):
        t_next = min(tx, ty, tz, 1.0) if s < n_steps else 1.0
        frac = t_next - t
        if frac > 0.0 and 0 <= ix < n_box and 0 <= iy < n_box and 0 <= iz < n_box:
            out_row[k] = row
            out_key[k] = (ix * n_box + iy) * n_box + iz
            out_frac[k] = frac
            k += 1
        if s == n_steps:
            break
        t = t_next
        if tx <= ty and tx <= tz:
            ix += sx
            tx += ddx
        elif ty <= tz:
            iy += sy
            ty += ddy
        else:
            iz += sz
            tz += ddz
    return k


@njit(cache=True)
def segment_pieces(start, end, n_box, capacity):
    """(row, key, fraction) of every (segment, voxel) piece inside the box.

    Args:
        start, end: (K, 3) segment end points in voxel units (coordinate / voxel size).
        n_box: voxels per axis; key = (ix * n_box + iy) * n_box + iz.
        capacity: at least ``max_pieces(start, end).sum()``.

    Rows come out in input order, pieces of one segment from its start to its end; the
    fractions of a segment fully inside the box sum to 1.
    """
    out_row = np.empty(capacity, np.int64)
    out_key = np.empty(capacity, np.int64)
    out_frac = np.empty(capacity, np.float64)
    k = 0
    for i in range(start.shape[0]):
        k = _walk(start[i], end[i], n_box, i, out_row, out_key, out_frac, k)
    return out_row[:k], out_key[:k], out_frac[:k]


@njit(cache=True)
def segment_deposits(start, end, frag, de, elec, dx, time, n_box, capacity, longest):
    """Per (voxel, fragment) run: what every segment leaves in every voxel it crosses.

    Like :func:`segment_pieces`, with each segment's ``de``, ``elec`` and ``dx`` shared by
    path fraction and consecutive pieces of one fragment in one voxel (a track's steps
    meeting inside a voxel) summed into one entry, which keeps the response's sort short.

    Args:
        start, end: (K, 3) segment end points in voxel units.
        frag: (K,) int64 fragment of each segment.
        de, elec, dx, time: (K,) energy, electrons, length and time of each segment.
        n_box: voxels per axis.
        capacity: at least ``max_pieces(start, end).sum()``.
        longest: at least ``max_pieces(start, end).max()``.

    Returns:
        (key, frag, de, elec, dx, time) per entry; time is the earliest segment's.
    """
    o_key = np.empty(capacity, np.int64)
    o_frag = np.empty(capacity, np.int64)
    o_de = np.empty(capacity, np.float64)
    o_elec = np.empty(capacity, np.float64)
    o_dx = np.empty(capacity, np.float64)
    o_time = np.empty(capacity, np.float64)
    s_row = np.empty(longest, np.int64)
    s_key = np.empty(longest, np.int64)
    s_frac = np.empty(longest, np.float64)
    n = 0
    for i in range(start.shape[0]):
        m = _walk(start[i], end[i], n_box, i, s_row, s_key, s_frac, 0)
        f = frag[i]
        for j in range(m):
            w = s_frac[j]
            if n > 0 and o_key[n - 1] == s_key[j] and o_frag[n - 1] == f:
                o_de[n - 1] += de[i] * w
                o_elec[n - 1] += elec[i] * w
                o_dx[n - 1] += dx[i] * w
                o_time[n - 1] = min(o_time[n - 1], time[i])
            else:
                o_key[n] = s_key[j]
                o_frag[n] = f
                o_de[n] = de[i] * w
                o_elec[n] = elec[i] * w
                o_dx[n] = dx[i] * w
                o_time[n] = time[i]
                n += 1
    return o_key[:n], o_frag[:n], o_de[:n], o_elec[:n], o_dx[:n], o_time[:n]


@njit(cache=True)
def diffused_endpoints(pos, dx, direction, shift, frag):
    """(start, end) of every step segment moved by diffusion (see response.diffused_segments)."""
    k = pos.shape[0]
    start = np.empty((k, 3))
    end = np.empty((k, 3))
    for i in range(k):
        for a in range(3):
            half = 0.5 * dx[i] * direction[i, a]
            start[i, a] = pos[i, a] - half + shift[i, a]
            end[i, a] = pos[i, a] + half + shift[i, a]
    for i in range(k - 1):
        if frag[i + 1] != frag[i] or dx[i] <= 0.0 or dx[i + 1] <= 0.0:
            continue
        if (direction[i, 0] == 0.0 and direction[i, 1] == 0.0 and direction[i, 2] == 0.0) or (
                direction[i + 1, 0] == 0.0 and direction[i + 1, 1] == 0.0 and direction[i + 1, 2] == 0.0):
            continue
        gap = 0.0
        for a in range(3):
            e0 = pos[i, a] + 0.5 * dx[i] * direction[i, a]
            s1 = pos[i + 1, a] - 0.5 * dx[i + 1] * direction[i + 1, a]
            gap = max(gap, abs(s1 - e0))
        if gap < 1e-6:  # step i + 1 continues step i: its start and i's end move together
            for a in range(3):
                end[i, a] = pos[i, a] + 0.5 * dx[i] * direction[i, a] + shift[i + 1, a]
    return start, end


@njit(cache=True)
def touching_pairs(keys, owner, candidate, n_box):
    """(fragment, neighbouring fragment) pairs, repeated, for every voxel of a candidate fragment.

    ``keys`` (V,) sorted voxel keys ``(x * n + y) * n + z`` with ``owner`` (V,) their owning
    fragment (-1: none); ``candidate`` (F,) bool. For each voxel owned by a candidate, each
    of its 26 neighbours (faces, edges, corners: Supera's ``IsTouching``) that is lit and
    owned by another fragment gives one pair. The neighbours in column (x + dx, y + dy) from
    z - 1 to z + 1 are consecutive keys, and where that run starts only grows as the voxels
    are visited in key order: one pointer per column offset walks through the keys once.
    """
    n_keys = keys.shape[0]
    count = 0
    for i in range(n_keys):
        if owner[i] >= 0 and candidate[owner[i]]:
            count += 26
    src = np.empty(count, np.int64)
    dst = np.empty(count, np.int64)
    pointer = np.zeros(9, np.int64)
    m = 0
    for i in range(n_keys):
        f = owner[i]
        if f < 0 or not candidate[f]:
            continue
        k = keys[i]
        x = k // (n_box * n_box)
        y = (k // n_box) % n_box
        z = k % n_box
        d = -1
        for dx in range(-1, 2):
            for dy in range(-1, 2):
                d += 1
                a, b = x + dx, y + dy
                if a < 0 or b < 0 or a >= n_box or b >= n_box:
                    continue
                lo = (a * n_box + b) * n_box + max(z - 1, 0)
                hi = (a * n_box + b) * n_box + min(z + 1, n_box - 1)
                j = pointer[d]
                while j < n_keys and keys[j] < lo:
                    j += 1
                pointer[d] = j
                while j < n_keys and keys[j] <= hi:
                    if owner[j] >= 0 and owner[j] != f:
                        src[m] = f
                        dst[m] = owner[j]
                        m += 1
                    j += 1
    return src[:m], dst[:m]


@njit(cache=True)
def _root(target, f):
    while target[f] != f:
        f = target[f]
    return f


@njit(cache=True)
def touch_merge_targets(src, dst, candidate, ancestors):
    """The group root of every fragment after the touching merges of ``labels.touching_merges``.

    ``src``/``dst``: fragment pairs with touching voxels; ``candidate`` (F,): may merge
    into an ancestor; ``ancestors`` (D, F): parent, grandparent, ... (-1: none). In each
    pass every candidate group root merges into the nearest ancestor's group it touches;
    passes repeat until nothing merges (Supera repeats its merges the same way). A group
    only ever joins an ancestor's, whose id is lower, so no cycle can form.
    """
    n_frag = candidate.shape[0]
    depth = ancestors.shape[0]
    target = np.arange(n_frag)
    best_k = np.empty(n_frag, np.int64)
    best_to = np.empty(n_frag, np.int64)
    for _ in range(n_frag + 1):
        best_k[:] = depth
        for i in range(src.shape[0]):
            g = _root(target, src[i])
            h = _root(target, dst[i])
            if g == h or not candidate[g]:
                continue
            for k in range(best_k[g]):
                a = ancestors[k, g]
                if a < 0:
                    break
                if _root(target, a) == h:
                    best_k[g] = k
                    best_to[g] = h
                    break
        changed = False
        for g in range(n_frag):
            if best_k[g] < depth:
                target[g] = best_to[g]
                changed = True
        if not changed:
            break
    for f in range(n_frag):
        target[f] = _root(target, f)
    return target

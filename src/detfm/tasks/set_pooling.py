"""Set pooling: a small point-set encoder that reads a particle's points in the particle's own frame.

Mean and maximum pooling see every point of a particle alone: nothing in them knows where
a point lies within its particle, or whether the particle touches another one. Yet that is
what tells an electron from a photon: a photon's shower starts centimetres away from the
vertex it came from (the conversion gap), an electron's touches it. Set pooling is a
two-stage PointNet over each particle's points (groups of the packed batch):

1. every point gets its per-point head output, its log energy, its position
   relative to the particle's centroid in units of the particle's RMS radius (and that
   distance), and its *contact distance*: how far (in voxels) the nearest point of another
   particle of the same event lies, as ``log1p(d) / 3``, clipped at
   :data:`CONTACT_CLIP_VOXELS`;
2. an MLP maps each point to ``width`` channels; the particle's channel-wise maximum is
   handed back to each of its points (each point now knows the whole particle), and a
   second MLP maps the pair to ``out_features``;
3. the particle's mean and maximum of that output, and three scalars (log of its number
   of points, of its summed energy and of its RMS radius), are the pooled feature.

The contact distance needs the partition of the event into groups, so it fits tasks that
are given the particles (particle ID on truth instances); for a group that is a whole
event (event classification) it is the clip value everywhere. It is an input computed
without gradients (a k-d tree per group on CPU, :func:`contact_distance`).

Measured (docs/results/point_backbones.md, "Particle ID read from the segmentation model"):
on frozen segmentation features it scores like ``mean_max``, not better.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from detfm.models.layers import init_weights
from detfm.models.packing import group_max, group_mean

__all__ = ["CONTACT_CLIP_VOXELS", "SetPooling", "contact_distance"]

CONTACT_CLIP_VOXELS = 30.0  # 9 cm: beyond this a particle counts as apart from the rest


def contact_distance(coord: torch.Tensor, event: torch.Tensor, group: torch.Tensor,
                     clip: float = CONTACT_CLIP_VOXELS) -> torch.Tensor:
    """(P,) distance from every point to the nearest point of *another* group of the same
    event, clipped at ``clip``. ``event`` (P,) and ``group`` (P,) number the points' events and
    groups (groups numbered across the batch; -1: in no group). Points in no group, and the
    points of a group that is alone in its event, get ``clip``."""
    xyz = coord.detach().to("cpu", torch.float64).numpy()
    ev = event.detach().cpu().numpy()
    grp = group.detach().cpu().numpy()
    out = np.full(len(grp), clip, dtype=np.float64)
    inside = np.flatnonzero(grp >= 0)
    order = inside[np.argsort(ev[inside], kind="stable")]
    starts = np.flatnonzero(np.r_[True, np.diff(ev[order]) != 0])
    for a, b in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        rows = order[a:b]
        groups = grp[rows]
        for g in np.unique(groups):
            mine, other = rows[groups == g], rows[groups != g]
            if len(other):
                d, _ = cKDTree(xyz[other]).query(xyz[mine], distance_upper_bound=clip)
                out[mine] = np.minimum(d, clip)
    return torch.from_numpy(out).to(coord.device, coord.dtype)


class SetPooling(nn.Module):
    """Pool the rows of each group by the two-stage set encoder of the module docstring.

    Args:
        in_features: channels of the per-point values (the head outputs); the log energy,
            the geometry and the contact distance are added here.
        width: channels of the first stage; out_features: of the second.
    """

    def __init__(self, in_features: int, width: int = 64, out_features: int = 128) -> None:
        super().__init__()
        extra = 6  # log energy; relative x, y, z; relative distance; contact distance
        self.first = nn.Sequential(nn.Linear(in_features + extra, width), nn.GELU(), nn.Linear(width, width))
        self.second = nn.Sequential(nn.Linear(2 * width, out_features), nn.GELU(),
                                    nn.Linear(out_features, out_features))
        self.out_features = 2 * out_features + 3
        self.apply(init_weights)

    def forward(self, values: torch.Tensor, coord: torch.Tensor, energy: torch.Tensor, contact: torch.Tensor,
                index: torch.Tensor, num_groups: int) -> torch.Tensor:
        """(num_groups, out_features) pooled features.

        ``values`` (P, in_features), ``coord`` (P, 3) voxels, ``energy`` (P,) MeV, ``contact``
        (P,) voxels (:func:`contact_distance`), ``index`` (P,) the group of each row,
        0..num_groups-1. A group without rows pools to zeros but for its scalars."""
        size = torch.bincount(index, minlength=num_groups).clamp(min=1).to(values.dtype)
        relative = coord - group_mean(coord, index, num_groups)[index]
        radius = group_mean((relative ** 2).sum(dim=1, keepdim=True), index, num_groups).sqrt().clamp(min=1.0)
        scaled = relative / radius[index]
        log_energy = torch.log(energy.clamp(min=1e-3))[:, None] / 3.0
        closeness = torch.log1p(contact)[:, None] / 3.0
        extra = torch.cat([log_energy, scaled, scaled.norm(dim=1, keepdim=True), closeness], dim=1)
        first = self.first(torch.cat([values, extra], dim=1))
        second = self.second(torch.cat([first, group_max(first, index, num_groups)[index]], dim=1))
        total = values.new_zeros(num_groups).index_add(0, index, energy)
        scalars = torch.stack([size.log() / 5.0, total.clamp(min=1e-3).log() / 5.0, radius[:, 0].log() / 3.0], dim=1)
        return torch.cat([group_mean(second, index, num_groups), group_max(second, index, num_groups), scalars], dim=1)

"""Between packed (ragged) and padded point tensors, and input checks for both.

A :class:`~detfm.data.batch.PackedBatch` stores the points of all events back to back
(``coord[offsets[i]:offsets[i+1]]`` is event ``i``). Vectorised geometry (farthest-point
sampling, ball query) is easier on a padded (B, N_max, ...) layout; these helpers convert.
"""

from __future__ import annotations

import torch

from detfm.errors import DataFormatError


def check_points(coord: torch.Tensor, offsets: torch.Tensor) -> None:
    """Raise :class:`DataFormatError` unless ``coord``/``offsets`` describe non-empty events.

    Checks the shapes, that offsets start at 0, end at P and never decrease, that every
    event has at least one point, and that every coordinate is finite.
    """
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise DataFormatError(f"expected shape (P, 3), got {tuple(coord.shape)}", field="coord")
    if offsets.ndim != 1 or offsets.numel() < 2:
        raise DataFormatError(f"expected shape (B + 1,) with B >= 1, got {tuple(offsets.shape)}",
                              field="offsets")
    if offsets.dtype.is_floating_point:
        raise DataFormatError(f"expected an integer tensor, got {offsets.dtype}", field="offsets")
    if int(offsets[0]) != 0 or int(offsets[-1]) != coord.shape[0]:
        raise DataFormatError(f"must start at 0 and end at the number of points {coord.shape[0]}, "
                              f"got {int(offsets[0])} ... {int(offsets[-1])}", field="offsets")
    counts = offsets[1:] - offsets[:-1]
    if bool((counts < 0).any()):
        raise DataFormatError("must not decrease", field="offsets")
    if bool((counts == 0).any()):
        empty = int(torch.nonzero(counts == 0)[0, 0])
        raise DataFormatError("event has no points; drop empty events before tokenizing "
                              "(e.g. with a minimum point count in the dataset)", event=empty)
    if not bool(torch.isfinite(coord).all()):
        bad = int(torch.nonzero(~torch.isfinite(coord).all(dim=1))[0, 0])
        raise DataFormatError(f"non-finite coordinate at packed point {bad}", field="coord")


def local_index(offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(event, position within event) of every packed point, each (P,) int64."""
    counts = offsets[1:] - offsets[:-1]
    event = torch.repeat_interleave(torch.arange(counts.numel(), device=offsets.device), counts)
    position = torch.arange(int(offsets[-1]), device=offsets.device) - offsets[:-1][event]
    return event, position


def packed_to_padded(values: torch.Tensor, offsets: torch.Tensor, fill: float = 0.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter packed (P, ...) values into (B, N_max, ...) with ``fill`` in the padding.

    Returns the padded tensor and a (B, N_max) bool mask that is True for real points.
    """
    counts = offsets[1:] - offsets[:-1]
    batch, n_max = counts.numel(), int(counts.max())
    event, position = local_index(offsets)
    padded = values.new_full((batch, n_max, *values.shape[1:]), fill)
    padded[event, position] = values
    valid = torch.arange(n_max, device=offsets.device)[None, :] < counts[:, None]
    return padded, valid


def group_mean(values: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(num_groups, C) mean of the (P, C) ``values`` of each group; ``index`` (P,) gives each
    row's group, 0..num_groups-1 (per event: ``batch.batch_index()``; per particle: its
    instance). A group without rows pools to zeros."""
    size = torch.bincount(index, minlength=num_groups).clamp(min=1).to(values.dtype)
    return values.new_zeros(num_groups, values.shape[1]).index_add(0, index, values) / size[:, None]


def group_max(values: torch.Tensor, index: torch.Tensor, num_groups: int) -> torch.Tensor:
    """(num_groups, C) per-channel maximum of each group's rows (groups as in
    :func:`group_mean`); a group without rows pools to zeros."""
    return values.new_zeros(num_groups, values.shape[1]).scatter_reduce(
        0, index[:, None].expand_as(values), values, reduce="amax", include_self=False)

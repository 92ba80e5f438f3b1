"""The backbone contract: what every task, probe, anomaly score and recipe may rely on.

A backbone is an ``nn.Module`` with

* ``forward_features(batch, generator=None) -> BackboneOutput``: per-point features
  ``(P, D)`` aligned with the packed batch's points (row ``i`` belongs to
  ``batch.coord[i]``), plus optional multi-level features;
* ``forward_intermediates(batch, layers=None, norm=False) -> (BackboneOutput, list)``:
  the same and the outputs of chosen blocks (or stages), each carried to the points as a
  per-point ``(P, D_l)`` tensor (what a multi-level linear probe concatenates);
* ``num_features`` (``D``), ``num_local_features`` (width of ``BackboneOutput.local``);
* ``group_matcher()``: rules that put every parameter in a layer group, for layer-wise
  learning-rate decay (:func:`layer_ids` resolves them; an unmatched parameter is an error).
  The last group is the output group: task heads train at its rate;
* ``lora_targets()``: names of the ``nn.Linear`` modules LoRA may wrap;
* ``default_cfg``: its config (a frozen dataclass with ``name`` and ``arch``).

Heads see only :class:`BackboneOutput`: never patches, centres, windows or any other
family-specific geometry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from detfm.errors import ConfigError

__all__ = ["Backbone", "BackboneOutput", "GroupRules", "layer_ids", "multilevel_width", "num_layer_groups"]


@dataclass(frozen=True)
class BackboneOutput:
    """What a backbone gives for a packed batch of ``P`` points.

    Attributes:
        point: (P, D) per-point features, aligned with the batch's points (required).
        local: (P, L) per-point inputs the backbone passes through for heads to embed
            separately (e.g. a point's offset from its patch centre and its energy feature);
            (P, 0) when the backbone has none.
        levels: optional per-point features of several levels of a hierarchy, each (P, D_l),
            coarse stages upsampled to the points (what a multi-level linear probe reads).
        extras: family-specific outputs (tokens, masks, ...) for pretraining objectives of
            that family; heads must not read them.
    """

    point: torch.Tensor
    local: torch.Tensor
    levels: tuple[torch.Tensor, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return int(self.point.shape[0])

    def multilevel(self) -> torch.Tensor:
        """(P, sum D_l): the levels concatenated, or ``point`` when there are none."""
        return torch.cat(self.levels, dim=-1) if self.levels else self.point


# One rule: (regex, prefix). A parameter's key is ``prefix`` followed by the integers the
# regex captured (e.g. ``(r"^stages\.(\d+)\.blocks\.(\d+)\.", (1,))`` gives (1, stage, block)).
# The first matching rule wins; parameters are ordered by key; equal keys share a group.
GroupRules = Sequence[tuple[str, tuple[int, ...]]]


def _key(name: str, rules: GroupRules) -> tuple[int, ...]:
    for pattern, key in rules:
        match = re.match(pattern, name)
        if match:
            try:
                return tuple(key) + tuple(int(g) for g in match.groups())
            except (TypeError, ValueError) as err:
                raise ConfigError(f"group rule {pattern!r} must capture integers; it captured "
                                  f"{match.groups()} for parameter '{name}'") from err
    raise ConfigError(f"parameter '{name}' matches no rule of the backbone's group_matcher(); "
                      f"add a rule for it (rules: {[p for p, _ in rules]})")


def layer_ids(named_params: Sequence[str], rules: GroupRules) -> dict[str, int]:
    """Layer index (0 = closest to the input) of every parameter name under ``rules``.

    Keys are ordered as tuples (timm's ``group_with_matcher`` convention) and numbered
    densely from 0, so a hierarchy's ``(stage, block)`` captures give one id per block.
    Unmatched names raise :class:`ConfigError`: a silent scale of 1 is never given.
    """
    keys = {name: _key(name, rules) for name in named_params}
    order = {k: i for i, k in enumerate(sorted(set(keys.values())))}
    return {name: order[k] for name, k in keys.items()}


def num_layer_groups(module: nn.Module) -> int:
    """How many layer groups ``module.group_matcher()`` makes of its parameters."""
    ids = layer_ids([n for n, _ in module.named_parameters()], module.group_matcher())
    return max(ids.values()) + 1 if ids else 0


@torch.no_grad()
def multilevel_width(backbone: nn.Module) -> int:
    """Width of ``forward_features(batch).multilevel()`` (one forward of a two-voxel event)."""
    from detfm.data import PackedBatch

    was = backbone.training
    backbone.eval()
    tiny = PackedBatch(coord=torch.tensor([[10.0, 10.0, 10.0], [11.0, 10.0, 10.0]]),
                       feat=torch.zeros(2, backbone.default_cfg.in_channels), offsets=torch.tensor([0, 2]),
                       energy=torch.ones(2))
    width = backbone.forward_features(tiny).multilevel().shape[1]
    backbone.train(was)
    return int(width)


@runtime_checkable
class Backbone(Protocol):
    """The surface every registered backbone offers (see the module docstring)."""

    @property
    def num_features(self) -> int: ...

    @property
    def num_local_features(self) -> int: ...

    @property
    def default_cfg(self) -> Any: ...

    def forward_features(self, batch: Any, generator: torch.Generator | None = None
                         ) -> BackboneOutput: ...

    def group_matcher(self) -> GroupRules: ...

    def lora_targets(self) -> list[str]: ...

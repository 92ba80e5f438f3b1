"""Dataset kinds: what a detector's files mean (class names, coordinate extent).

Models and tasks never hard-code a detector: they read its :class:`DatasetSpec`. A new
detector with other units or labels is one more :func:`register_dataset` call, not an edit
of the models.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from detfm.errors import ConfigError
from detfm.io import layout

__all__ = ["DEFAULT_DATASET", "DatasetSpec", "get_dataset", "list_datasets", "register_dataset"]


@dataclass(frozen=True)
class DatasetSpec:
    """One kind of event file.

    Attributes:
        name: registry name.
        semantic_classes: per-point class names, in label order.
        pid_classes: particle classes scored by particle ID and event classification (a
            label outside ``0..len - 1`` means "no particle type").
        excluded_semantic: the semantic class the headline score leaves out (LArTPC: the
            low-energy deposits, as the PoLAr-MAE evaluation does), or None.
        box_size: extent of every coordinate axis, in the files' units; models scale
            coordinates from ``[0, box_size]`` to ``[-1, 1]``.
        units: what one coordinate unit is.
        fragment_classes: the semantic classes whose touching points the test-time fragment
            vote gives one class (:mod:`detfm.evaluate.fragments`; LArTPC: shower, Michel and
            delta, the electron-like deposits); empty: no fragment vote for this kind.
    """

    name: str
    semantic_classes: tuple[str, ...]
    pid_classes: tuple[str, ...]
    excluded_semantic: int | None
    box_size: float
    units: str
    fragment_classes: tuple[int, ...] = ()

    @property
    def headline_semantic_classes(self) -> tuple[str, ...]:
        """The semantic classes the headline score keeps."""
        return tuple(c for i, c in enumerate(self.semantic_classes) if i != self.excluded_semantic)

    def normalise(self, coord: torch.Tensor) -> torch.Tensor:
        """Coordinates scaled from ``[0, box_size]`` to ``[-1, 1]``."""
        half = self.box_size / 2.0
        return (coord - half) / half


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    if spec.name in _DATASETS:
        raise ConfigError(f"dataset kind '{spec.name}' is already registered")
    _DATASETS[spec.name] = spec
    return spec


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    if name not in _DATASETS:
        close = difflib.get_close_matches(name, list(_DATASETS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown dataset kind '{name}'{hint}; known: {', '.join(list_datasets())}")
    return _DATASETS[name]


LARTPC = register_dataset(DatasetSpec(
    name="lartpc", semantic_classes=layout.SEMANTIC_CLASSES, pid_classes=layout.PID_CLASSES[:layout.PID_NONE],
    excluded_semantic=layout.LOW_ENERGY, box_size=float(layout.BOX_VOXELS), units="3 mm voxels",
    fragment_classes=(layout.SHOWER, layout.MICHEL, layout.DELTA)))

DEFAULT_DATASET = LARTPC.name

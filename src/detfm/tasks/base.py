"""What the engine knows about a task: ``out = task(batch)`` -> ``{"loss", "outputs"}``.

A task is a ``torch.nn.Module`` that owns its forward pass and its loss. The engine moves
it to a device, wraps it for DDP, calls it on :class:`~detfm.data.batch.PackedBatch` batches,
back-propagates ``loss`` and logs ``outputs`` (detached 0-d tensors); it knows nothing else.
"""

from __future__ import annotations

from typing import Protocol, TypedDict, runtime_checkable

import torch

from detfm.data import PackedBatch


class TaskOutput(TypedDict):
    """``loss``: scalar to minimise (carries the graph). ``outputs``: detached tensors to
    log or inspect (scalars are 0-d)."""

    loss: torch.Tensor
    outputs: dict[str, torch.Tensor]


@runtime_checkable
class Task(Protocol):
    """Anything callable on a batch that returns a :class:`TaskOutput`."""

    def __call__(self, batch: PackedBatch) -> TaskOutput: ...

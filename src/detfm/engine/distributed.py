"""Processes and devices: single process, or DDP launched by ``torchrun``.

``torchrun --nproc_per_node N`` starts N copies of the program and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them and joins the process group (``nccl`` when training on
CUDA, ``gloo`` on CPU). Without those variables everything runs in one process and no
process group is created. The device is chosen here, never in library code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from detfm.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` and its GPU slot."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None   # None: single process, no process group
    owns_group: bool = False     # True when init_distributed created the group

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int | None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"environment variable {name} is not set; launch with torchrun")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment variables, if any.

    ``device`` is the configured device (``auto``/``cpu``/``cuda[:N]``); it picks the
    backend: ``nccl`` for CUDA, ``gloo`` for CPU. Calling this when a group already exists
    reuses it (and leaves its destruction to whoever created it).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise ConfigError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if world_size == 1 and not tdist.is_initialized():
        return DistInfo()
    rank = _env_int("RANK", None if world_size > 1 else 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK {rank} is outside 0..{world_size - 1}")
    if tdist.is_initialized():
        return DistInfo(rank=tdist.get_rank(), world_size=tdist.get_world_size(),
                        local_rank=local_rank, backend=str(tdist.get_backend()), owns_group=False)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ConfigError(f"environment variable {name} is not set; launch with torchrun")
    backend = "nccl" if _wants_cuda(device) else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    tdist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend,
                    owns_group=True)


def shutdown_distributed(info: DistInfo, wait: bool = True) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and tdist.is_initialized():
        # Wait for every rank first: tearing gloo down while a peer still talks to it
        # aborts that peer ("terminate called without an active exception").
        if wait:
            tdist.barrier()
        tdist.destroy_process_group()


def _wants_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    return device.startswith("cuda")


def pick_device(device: str, info: DistInfo) -> torch.device:
    """The torch device for this process: ``auto`` is ``cuda:LOCAL_RANK`` if CUDA exists, else CPU."""
    if not _wants_cuda(device):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if device in ("auto", "cuda"):
        return torch.device("cuda", info.local_rank)
    index = int(device.split(":")[1])
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r} does not exist ({torch.cuda.device_count()} GPUs)")
    return torch.device("cuda", index)


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``values`` averaged over all ranks (a copy; the input is not modified)."""
    out = values.detach().clone()
    if info.distributed:
        tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        out /= info.world_size
    return out


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op in a single process)."""
    if info.distributed:
        tdist.barrier()

"""The ``--device`` option: checked once, before any work, with one clear message."""

from __future__ import annotations

import re

from detfm.errors import DetfmError

_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d+)$")


def check_device(device: str) -> str:
    """Return ``device`` if it is ``cpu``, ``cuda`` or ``cuda:N`` and present on this machine.

    Raises :class:`DetfmError` naming the device: an unknown name, CUDA without a GPU (or
    without a CUDA build of torch), or a GPU index beyond those present.
    """
    if not _DEVICE_RE.match(device):
        raise DetfmError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if device == "cpu":
        return device
    import torch

    if not torch.cuda.is_available():
        build = "this torch has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise DetfmError(f"device {device!r} is not available: {build}; use --device cpu")
    if ":" in device and int(device.split(":")[1]) >= torch.cuda.device_count():
        raise DetfmError(f"device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s) "
                         f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return device

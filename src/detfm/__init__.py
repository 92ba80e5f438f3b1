"""detfm: foundation models for particle-detector data.

The package flows top to bottom, each layer importing only those above it::

    io -> sim, data -> models -> tasks -> engine -> evaluate -> audit -> cli
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("detfm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"


def load(ref: str, registry: str | os.PathLike[str] | None = None, *, map_location: str = "cpu") -> Any:
    """The registered model ``ref`` (``NAME``, ``NAME:VERSION`` or ``NAME@ALIAS``), ready in eval mode.

    A fine-tuned version comes back as its task (backbone + head), a pretrained one as its
    backbone. ``registry``: a registry folder (default ``$DETFM_REGISTRY``, else the user's
    data folder). See :mod:`detfm.audit.registry`.
    """
    from detfm.audit.registry import load_model

    return load_model(ref, registry, map_location=map_location)


__all__ = ["__version__", "load"]

"""detfm: foundation models for particle-detector data.

The package flows top to bottom, each layer importing only those above it::

    io -> sim, data -> models -> tasks -> engine -> evaluate -> audit -> cli
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("detfm")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]

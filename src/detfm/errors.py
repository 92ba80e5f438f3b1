"""User-facing errors.

Anything a user can cause (a missing file, a wrong layout, a bad option) raises a
subclass of :class:`DetfmError`. The CLI prints its message on one line and exits with a
non-zero status instead of showing a traceback.
"""

from __future__ import annotations


class DetfmError(Exception):
    """Base class for errors caused by user input, printed without a traceback."""


class DataFormatError(DetfmError):
    """A file does not follow the PILArNet-M layout (missing, truncated, corrupt, wrong shape)."""

    def __init__(self, message: str, *, path: str | None = None, event: int | None = None,
                 field: str | None = None) -> None:
        self.path = path
        self.event = event
        self.field = field
        where = []
        if path is not None:
            where.append(str(path))
        if event is not None:
            where.append(f"event {event}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ": ".join([", ".join(where)]) + ": " if where else ""
        super().__init__(prefix + message)


class ConfigError(DetfmError):
    """A configuration value or key is invalid."""

"""The ``--config FILE`` option: a YAML syntax error is one line naming the file, line and column."""

from __future__ import annotations

import os
from pathlib import Path

from detfm.engine.config import read_yaml


def check_yaml(path: str | os.PathLike[str]) -> None:
    """Parse ``path`` as YAML; raise :class:`ConfigError` ``FILE, line L, column C: problem`` if it is
    not valid YAML (the config's keys and values are checked later by ``load_config``)."""
    read_yaml(Path(path))

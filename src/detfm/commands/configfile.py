"""The ``--config FILE`` option: a YAML syntax error is one line naming the file, line and column."""

from __future__ import annotations

import os
from pathlib import Path

from detfm.errors import ConfigError


def check_yaml(path: str | os.PathLike[str]) -> None:
    """Parse ``path`` as YAML; raise :class:`ConfigError` ``FILE, line L, column C: problem`` if it is
    not valid YAML (the config's keys and values are checked later by ``load_config``)."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None

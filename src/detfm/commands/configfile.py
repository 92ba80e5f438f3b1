"""What a training command starts from: ``--config FILE``, the run's own config, or defaults.

A YAML syntax error in the file is one line naming the file, line and column
(:func:`detfm.engine.config.read_yaml`, used by ``load_config``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from detfm.engine.config import load_config

T = TypeVar("T")


def starting_config(cls: type[T], config_file: str | os.PathLike[str] | None, resume: bool,
                    run_dir: str | os.PathLike[str], read_run: Callable[[str | os.PathLike[str]], T]) -> T:
    """``--config FILE`` if given, else the config saved in ``run_dir`` when resuming
    (``read_run``), else the defaults of ``cls``; flags are applied on top by the caller."""
    if config_file:
        return load_config(cls, config_file)
    if resume:
        return read_run(run_dir)
    return cls()

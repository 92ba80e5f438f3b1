"""What a training command starts from: ``--config FILE``, the run's own config, or defaults.

A YAML syntax error in the file is one line naming the file, line and column
(:func:`detfm.engine.config.read_yaml`, used by ``load_config``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import TypeVar

from detfm.engine.config import load_config
from detfm.errors import DetfmError

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


def add_time_limit_option(p: argparse.ArgumentParser) -> None:
    """``--time-limit MINUTES``: the training budget of ``detfm pretrain`` and ``detfm finetune``."""
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop after this many minutes of training with a checkpoint and the weights "
                        "reached (e.g. the time a lent GPU is held, or a fixed CPU budget); --resume "
                        "continues the run with the same budget unless given another (0: none)")


def time_limit_seconds(args: argparse.Namespace) -> dict[str, float]:
    """``{"time_limit_s": ...}`` for the train config when ``--time-limit`` was given, else ``{}``."""
    if args.time_limit is None:
        return {}
    if not args.time_limit >= 0:  # also refuses nan
        raise DetfmError(f"--time-limit must be a number of minutes >= 0 (0: none), got {args.time_limit}")
    return {"time_limit_s": 60.0 * args.time_limit}

"""The ``--seeds`` option, read the same way by every command that trains several replicas.

* one number N: the seeds 0, 1, ..., N-1 (``--seeds 3`` -> 0, 1, 2);
* several numbers, spaced or comma-separated: those seeds (``--seeds 0 3 7``, ``--seeds 0,3,7``;
  ``--seeds 4,`` is the single seed 4).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from detfm.errors import DetfmError


def add_seeds_option(parser: argparse.ArgumentParser, *, default: str, what: str) -> None:
    """Add ``--seeds`` to ``parser``; read its value with :func:`parse_seeds`.

    ``default`` is written as a user would type it (``"3"``, ``"0 1 2"``); ``what`` names what
    the seeds drive, for the help text.
    """
    parser.add_argument("--seeds", nargs="+", default=default.split(), metavar="S",
                        help=f"{what}: one number N means seeds 0..N-1; several numbers (spaces or commas) "
                             f"are the seeds themselves (default: {default})")


def parse_seeds(tokens: Sequence[str]) -> list[int]:
    """The seeds given by the ``--seeds`` tokens (see the module docstring). Whether they suit
    the command (distinct, >= 0, enough of them) is checked by the function that uses them.

    Raises:
        DetfmError: a token is not an integer, none is given, or a count is below 1.
    """
    parts = [p.strip() for p in ",".join(str(t) for t in tokens).split(",")]
    try:
        values = [int(p) for p in parts if p]
    except ValueError:
        raise DetfmError(f"--seeds: expected integers, got {' '.join(map(str, tokens))!r}") from None
    if not values:
        raise DetfmError("--seeds: no seed given")
    if len(values) == 1 and len(parts) == 1:  # a count
        if values[0] < 1:
            raise DetfmError(f"--seeds {values[0]}: one number is a count of seeds and must be >= 1; "
                             f"for the single seed {values[0]}, write --seeds {values[0]},")
        return list(range(values[0]))
    return values

"""``--views N`` and ``--view-seed S``: test-time orientation averaging, shared by the commands
that run a fine-tuned model (:mod:`detfm.evaluate.orientations`)."""

from __future__ import annotations

import argparse


def add_views_options(p: argparse.ArgumentParser, runs: str = "not for particles runs") -> None:
    """Add ``--views`` (default 1) and ``--view-seed`` (default 0); ``runs`` says which runs take them."""
    p.add_argument("--views", type=int, default=1,
                   help=f"average the class probabilities over this many orientations of each event (the first: "
                        f"the event as it is; one forward pass each; default 1; {runs})")
    p.add_argument("--view-seed", type=int, default=0, help="seed of the orientations (default 0)")

"""Test-time options shared by the commands that run a fine-tuned model: ``--views N`` and
``--view-seed S`` (orientation averaging, :mod:`detfm.evaluate.orientations`) and
``--fragment-vote`` (:mod:`detfm.evaluate.fragments`) and ``--fragment-classifier``
(:mod:`detfm.evaluate.fragment_classifier`)."""

from __future__ import annotations

import argparse


def add_views_options(p: argparse.ArgumentParser, runs: str = "not for particles runs") -> None:
    """Add ``--views`` (default 1) and ``--view-seed`` (default 0); ``runs`` says which runs take them."""
    p.add_argument("--views", type=int, default=1,
                   help=f"average the class probabilities over this many orientations of each event (the first: "
                        f"the event as it is; one forward pass each; default 1; {runs})")
    p.add_argument("--view-seed", type=int, default=0, help="seed of the orientations (default 0)")


def add_fragment_options(p: argparse.ArgumentParser) -> None:
    """Add ``--fragment-vote`` and ``--fragment-classifier`` (one or the other, both off by default)."""
    one = p.add_mutually_exclusive_group()
    one.add_argument("--fragment-vote", action="store_true",
                     help="semseg runs: give each connected fragment of shower-like points (shower, Michel, delta) "
                          "the one class with the largest summed probability, after any --views average")
    one.add_argument("--fragment-classifier", action="store_true",
                     help="semseg runs: name each connected fragment with the run's fitted fragment classifier "
                          "(fit it first with `detfm fragments --model RUN`), and then refine every point with its "
                          "point refiner if it was fitted with --point-refiner; after any --views average")

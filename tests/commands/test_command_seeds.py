"""One reading of ``--seeds`` for every command that trains replicas."""

from __future__ import annotations

import argparse

import pytest

from detfm.cli import build_parser
from detfm.commands.seeds import add_seeds_option, parse_seeds
from detfm.errors import DetfmError


@pytest.mark.parametrize(("tokens", "seeds"), [
    (["3"], [0, 1, 2]),            # a count
    (["0", "3", "7"], [0, 3, 7]),  # spaced
    (["0,3,7"], [0, 3, 7]),        # comma-separated
    (["0,3", "7"], [0, 3, 7]),     # both
    (["4,"], [4]),                 # one seed, not a count
    (["5", "2"], [5, 2]),          # the order is kept
])
def test_counts_and_lists(tokens: list[str], seeds: list[int]) -> None:
    assert parse_seeds(tokens) == seeds


@pytest.mark.parametrize(("tokens", "message"), [
    (["0"], "a count of seeds and must be >= 1; for the single seed 0, write --seeds 0,"),
    (["x"], "expected integers"),
    (["1", "2.5"], "expected integers"),
    ([","], "no seed given"),
])
def test_bad_seeds_are_refused(tokens: list[str], message: str) -> None:
    with pytest.raises(DetfmError, match=message):
        parse_seeds(tokens)


def test_every_command_reads_seeds_the_same_way() -> None:
    parser = build_parser()
    commands = {
        "study label-efficiency": ["study", "label-efficiency", "--out", "o"],
        "study sim-to-data": ["study", "sim-to-data", "--data", "d.h5", "--out", "o"],
        "audit sensitivity": ["audit", "sensitivity", "--config", "c.yaml", "--out", "o"],
    }
    for name, argv in commands.items():
        for given, seeds in ((["4"], [0, 1, 2, 3]), (["2", "9"], [2, 9]), (["2,9"], [2, 9])):
            args = parser.parse_args([*argv, "--seeds", *given])
            assert parse_seeds(args.seeds) == seeds, name
    defaults = {name: parse_seeds(parser.parse_args(argv).seeds) for name, argv in commands.items()}
    assert defaults == {"study label-efficiency": [0, 1, 2], "study sim-to-data": [0, 1, 2],
                        "audit sensitivity": [0, 1, 2, 3, 4]}


def test_the_help_states_the_default() -> None:
    parser = argparse.ArgumentParser()
    add_seeds_option(parser, default="0 1 2", what="seeds")
    assert "(default: 0 1 2)" in " ".join(parser.format_help().split())
    assert parse_seeds(parser.parse_args([]).seeds) == [0, 1, 2]

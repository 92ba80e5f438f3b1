"""The ``detfm`` command line: builds the parser from :mod:`detfm.commands`, dispatches, maps errors.

Every subcommand is one module of :mod:`detfm.commands` with ``add_parser(sub)``; this file only
assembles them. User errors (:class:`detfm.errors.DetfmError`, and a path that cannot be read or
written) are printed on one line and exit with status 2; validation failures exit with status 1;
Ctrl-C exits with 130 and leaves no partial output behind.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from detfm import __version__
from detfm.commands import anomalies, audit, card, compare, convert, evaluate, finetune, fragments, info, predict
from detfm.commands import pid_trees, pretrain, probe, registry, report, score, show, simulate, study, validate
from detfm.errors import DetfmError

COMMANDS = (simulate, info, validate, show, compare, pretrain, convert, probe, finetune, fragments, pid_trees, score,
            predict, study, evaluate, anomalies, registry, card, audit, report)
"""The subcommand modules, in the order ``detfm --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detfm", description="Foundation models for particle-detector data.")
    parser.add_argument("--version", action="version", version=f"detfm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except DetfmError as exc:
        print(f"detfm {args.command}: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the command could not read or write, not checked earlier
        from detfm.io.outputs import describe_os_error

        print(f"detfm {args.command}: error: {_one_line(describe_os_error(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"detfm {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130


def _one_line(message: str) -> str:
    """Error messages are one line: fold any line breaks a library message carries."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

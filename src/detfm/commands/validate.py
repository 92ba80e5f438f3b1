"""`detfm validate`: every layout violation of event files, exit status 1 if there is any."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm validate FILE...``."""
    p = sub.add_parser("validate", help="check files against the PILArNet-M layout",
                       description="List every layout violation with its event and field; "
                                   "exit status 1 if there is any.")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--max", type=int, default=1000, help="stop after this many violations per file")
    p.set_defaults(func=_validate)


def _validate(args: argparse.Namespace) -> int:
    from detfm.io import validate_file

    bad = 0
    for path in args.files:
        violations = validate_file(path, max_violations=args.max)
        for v in violations:
            print(v)
        print(f"{path}: {'OK' if not violations else f'{len(violations)} violation(s)'}")
        bad += len(violations)
    return 1 if bad else 0

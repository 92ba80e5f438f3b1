"""`detfm card`: the Markdown model card of a registered version."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm card REF``."""
    p = sub.add_parser("card", help="write the model card of a registered version",
                       description="A Markdown model card (intended use, training data by hash, metrics with "
                                   "spread, systematics, calibration, failure modes, lineage) built from what "
                                   "the registry stored for REF (NAME, NAME:VERSION or NAME@ALIAS).")
    p.add_argument("ref", metavar="REF")
    p.add_argument("--registry", metavar="DIR", help="registry folder (default: $DETFM_REGISTRY, else the "
                                                     "per-user data folder)")
    p.add_argument("--out", metavar="FILE", help="write the card here (default: print it)")
    p.add_argument("--overwrite", action="store_true", help="replace --out FILE if it exists")
    p.set_defaults(func=_card)


def _card(args: argparse.Namespace) -> int:
    from detfm.audit.card import model_card
    from detfm.audit.registry import Registry
    from detfm.io import atomic_write_text, check_output_file

    entry = Registry(args.registry).get(args.ref)
    if args.out:
        check_output_file(args.out, overwrite=args.overwrite)
    text = model_card(entry)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote the model card of {entry.ref} to {args.out}")
    else:
        print(text, end="")
    return 0

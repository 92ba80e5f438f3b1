"""`detfm registry`: register runs by the hash of their weights, list, show lineage, verify, export."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from detfm.errors import DetfmError

if TYPE_CHECKING:
    from detfm.audit.registry import Registry


def _registry_option() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", metavar="DIR",
                        help="registry folder (default: $DETFM_REGISTRY, else $XDG_DATA_HOME/detfm/registry "
                             "or ~/.local/share/detfm/registry)")
    return common


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``detfm registry ACTION``."""
    p = sub.add_parser("registry", help="a content-addressed model registry with lineage",
                       description="Store finished runs by the SHA-256 of their weights, with their config, "
                                   "scores, manifest and lineage (backbone, data files by hash).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    common = _registry_option()

    a = actions.add_parser("add", parents=[common], help="register a finished run",
                           description="Register RUN_DIR (its model.safetensors) under NAME; the same weights "
                                       "under the same name give the existing version.")
    a.add_argument("run_dir", metavar="RUN_DIR")
    a.add_argument("--name", required=True, help="model name (letters, digits, '.', '_', '-')")
    a.add_argument("--alias", help="point NAME@ALIAS at this version (e.g. production)")
    a.add_argument("--attach", action="append", default=[], metavar="ROLE=FILE",
                   help="keep a results file with the version (roles: label_efficiency, sensitivity, systematics, "
                        "calibration, or any lower-case name); repeatable")
    a.set_defaults(func=_add)

    ls = actions.add_parser("list", parents=[common], help="list registered versions")
    ls.add_argument("name", nargs="?", help="only this model")
    ls.set_defaults(func=_list)

    show = actions.add_parser("show", parents=[common], help="a version's files and lineage",
                              description="REF is NAME (latest), NAME:VERSION or NAME@ALIAS.")
    show.add_argument("ref", metavar="REF")
    show.set_defaults(func=_show)

    al = actions.add_parser("alias", parents=[common], help="point NAME@ALIAS at a version")
    al.add_argument("ref", metavar="REF")
    al.add_argument("alias", metavar="ALIAS")
    al.set_defaults(func=_alias)

    v = actions.add_parser("verify", parents=[common], help="re-hash every stored file (exit 1 on damage)",
                           description="Re-hash every stored file and check every hash column against the file "
                                       "it names and that file's role; list leftovers of interrupted writes. "
                                       "Exit status 1 on any damage.")
    v.add_argument("--repair", action="store_true",
                   help="delete the leftovers of interrupted writes (blobs/.incoming-*); damage is only reported")
    v.set_defaults(func=_verify)

    ex = actions.add_parser("export", parents=[common], help="write a version as a loadable run directory")
    ex.add_argument("ref", metavar="REF")
    ex.add_argument("dest", metavar="DIR", help="a new (or empty) folder")
    ex.set_defaults(func=_export)


def _registry(args: argparse.Namespace) -> Registry:
    from detfm.audit.registry import Registry

    return Registry(args.registry)


def _attachments(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        role, sep, path = item.partition("=")
        if not sep or not role or not path:
            raise DetfmError(f"--attach wants ROLE=FILE, got {item!r}")
        out[role] = path
    return out


def _add(args: argparse.Namespace) -> int:
    entry, created = _registry(args).add(args.run_dir, args.name, alias=args.alias,
                                         attach=_attachments(args.attach))
    state = "registered" if created else "already registered as"
    print(f"{state} {entry.ref} ({entry.kind}, weights {entry.weights_sha256[:12]})"
          + (f", alias {args.alias}" if args.alias else ""))
    return 0


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    entries = registry.versions(args.name)
    if not entries:
        print(f"no models in {registry.root}")
        return 0
    header = f"{'REF':<28} {'KIND':<9} {'WEIGHTS':<13} {'CREATED':<30} ALIASES"
    print(header)
    for e in entries:
        print(f"{e.ref:<28} {e.kind:<9} {e.weights_sha256[:12]:<13} {e.created:<30} {','.join(e.aliases) or '-'}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from detfm.audit.registry import format_lineage, format_version

    registry = _registry(args)
    entry = registry.get(args.ref)
    print(format_version(entry))
    print("lineage")
    print("\n".join("  " + line for line in format_lineage(registry.lineage(entry)).splitlines()))
    return 0


def _alias(args: argparse.Namespace) -> int:
    entry = _registry(args).set_alias(args.ref, args.alias)
    print(f"{entry.name}@{args.alias} -> {entry.ref}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    registry = _registry(args)
    report = registry.verify(repair=args.repair)
    for sha, users in report.missing.items():
        print(f"MISSING   {sha}  ({'; '.join(users)})")
    for sha, users in report.tampered.items():
        print(f"TAMPERED  {sha}  ({'; '.join(users)})")
    for line in report.inconsistent:
        print(f"MISMATCH  {line}")
    if report.integrity != "ok":
        print(f"DATABASE  integrity check: {report.integrity}")
    removed = set(report.removed)
    for path in report.leftovers:
        print(f"{'REMOVED' if path in removed else 'LEFTOVER':<9} {path}")
    litter = ""
    if report.leftovers:
        kept = len(report.leftovers) - len(removed)
        litter = (f"; {len(report.leftovers)} leftover temporary file(s)"
                  + (f" ({kept} kept: pass --repair to delete them)" if kept else " removed"))
    print(f"checked {report.checked} stored files in {registry.root}: "
          + ("all intact" if report.ok else f"{len(report.missing)} missing, {len(report.tampered)} altered, "
                                            f"{len(report.inconsistent)} inconsistent")
          + litter)
    return 0 if report.ok else 1


def _export(args: argparse.Namespace) -> int:
    registry = _registry(args)
    entry = registry.get(args.ref)
    out = registry.export(entry, args.dest)
    print(f"exported {entry.ref} to {out}")
    return 0

"""The ``--tracking`` / ``--register-as`` options shared by the training commands (MLflow logging)."""

from __future__ import annotations

import argparse

from detfm.errors import DetfmError


def add_tracking_options(p: argparse.ArgumentParser) -> None:
    """Add ``--tracking URI`` and ``--register-as NAME`` to a training command."""
    p.add_argument("--tracking", metavar="URI",
                   help="also log the finished run to MLflow, e.g. sqlite:///mlflow.db (needs detfm[mlflow])")
    p.add_argument("--register-as", metavar="NAME", help="with --tracking: register the weights under NAME")


def check_tracking(args: argparse.Namespace) -> None:
    """Fail before training when --tracking cannot work."""
    if getattr(args, "register_as", None) and not getattr(args, "tracking", None):
        raise DetfmError("--register-as needs --tracking URI")
    if getattr(args, "tracking", None):
        from detfm.audit.tracking import require_mlflow

        require_mlflow()


def log_tracking(args: argparse.Namespace, run_dir: str) -> None:
    """Log the finished run in ``run_dir`` to MLflow when --tracking was given."""
    if getattr(args, "tracking", None):
        from detfm.audit.tracking import log_run

        run_id = log_run(args.tracking, run_dir, register_as=args.register_as)
        if run_id:
            print(f"logged to {args.tracking} (MLflow run {run_id})")

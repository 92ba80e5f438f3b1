"""Run manifests: what went into a run, written next to its outputs as ``manifest.json``.

A manifest answers "what exactly produced this?" without the person who ran it: the input
files by SHA-256, the code version (package version, git commit and whether the checkout
had uncommitted changes), the Python/torch/numpy versions and platform, the device, the
seeds, the config, the command line and the start/end times. Host and user names are
never recorded.

:func:`detfm.engine.train` writes one into every run directory (rank 0): at the start with
``ended: null``, and again when the run finishes. A resume keeps the first start time and
adds an entry to ``resumes``. Commands that evaluate a model call :func:`write_manifest`
for their own output folders.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from detfm.engine.runs import CONFIG_FILE, MANIFEST_FILE, MODEL_FILE, last_checkpoint
from detfm.errors import DetfmError
from detfm.io import atomic_write_text, file_sha256

SCHEMA = "detfm-manifest/1"
CHUNK = 1 << 20            # bytes per read when hashing (1 MiB)
GIT_TIMEOUT_S = 10.0       # per git call; a slow or hung git gives null, never an error


def file_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"path", "size", "sha256"}`` of a file; a missing or unreadable one gets nulls and ``error``."""
    p = Path(path)
    try:
        size = p.stat().st_size
        return {"path": str(p), "size": size, "sha256": file_sha256(p)}
    except OSError as exc:
        return {"path": str(p), "size": None, "sha256": None, "error": exc.strerror or type(exc).__name__}


def run_inputs(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The files of a training run that a command evaluating its model reads: the weights
    (``model.safetensors``, else the last checkpoint's, as the loaders pick them) and
    ``config.yaml``, those that exist."""
    run = Path(run_dir)
    weights = run / MODEL_FILE
    if not weights.is_file():
        weights = last_checkpoint(run) / MODEL_FILE
    return [p for p in (weights, run / CONFIG_FILE) if p.is_file()]


def iso_utc(t: float | None) -> str | None:
    """A POSIX time as ISO-8601 in UTC (millisecond precision), or None."""
    if t is None:
        return None
    return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).isoformat(timespec="milliseconds")


def _parse_iso(text: str) -> float:
    return _dt.datetime.fromisoformat(text).timestamp()


# ----------------------------------------------------------------------------- code and environment
def _git(args: Sequence[str], cwd: Path) -> str | None:
    """Output of ``git args`` run in ``cwd``, or None if git is absent, fails or hangs."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}  # never take the index lock
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, env=env, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding the package source, or (None, None).

    An installed copy (site-packages) inside some other repository does not count: the
    package folder itself must be tracked by git.
    """
    source = Path(__file__).resolve().parents[1]  # .../detfm
    tracked = _git(["ls-files", "--", "__init__.py"], source)
    if not tracked or not tracked.strip():
        return None, None
    commit = _git(["rev-parse", "HEAD"], source)
    status = _git(["status", "--porcelain", "--untracked-files=no"], source)
    return (commit.strip() if commit else None), (None if status is None else bool(status.strip()))


def code_version() -> dict[str, Any]:
    """``{"detfm": version, "git_commit": sha or None, "git_dirty": bool or None}``."""
    from detfm import __version__

    commit, dirty = _git_state()
    return {"detfm": __version__, "git_commit": commit, "git_dirty": dirty}


def environment() -> dict[str, Any]:
    """Interpreter, library versions and platform; no host or user names."""
    versions: dict[str, Any] = {"python": platform.python_version(),
                                "implementation": platform.python_implementation()}
    for name in ("torch", "numpy"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                module = None
        versions[name] = getattr(module, "__version__", None) if module is not None else None
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
    return {**versions, "cuda": cuda, "platform": platform.platform(terse=False),
            "machine": platform.machine(), "cpu_count": os.cpu_count()}


# ----------------------------------------------------------------------------- config
def _plain(value: Any) -> Any:
    """``value`` as JSON data (dataclasses to dicts, tuples to lists, paths and others to strings)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _config_entry(config: Any) -> tuple[Any, str | None]:
    """(plain config, SHA-256 of its canonical JSON) or (None, None)."""
    if config is None:
        return None, None
    data = _plain(config)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return data, hashlib.sha256(text.encode("utf-8")).hexdigest()


def find_seeds(config: Any, prefix: str = "") -> dict[str, int]:
    """Every integer field whose name contains ``seed`` in a (nested) config, by dotted name."""
    data = _plain(config)
    out: dict[str, int] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict):
                out.update(find_seeds(value, f"{prefix}{key}."))
            elif "seed" in key and isinstance(value, int) and not isinstance(value, bool):
                out[f"{prefix}{key}"] = value
    return out


# ----------------------------------------------------------------------------- write / read
def write_manifest(out_dir: str | os.PathLike[str], *, inputs: Sequence[str | os.PathLike[str]],
                   seeds: Mapping[str, Any], config: Any = None, device: str, started: float,
                   ended: float | None = None, extra: Mapping[str, Any] | None = None,
                   resume: bool = False, name: str = MANIFEST_FILE) -> Path:
    """Write ``out_dir/manifest.json`` (or ``out_dir/<name>``) atomically and return its path.

    Args:
        inputs: files the run read; each is hashed now (SHA-256, nothing cached) and listed
            once, in the given order, however often it is given.
        seeds: the seeds that fix the run's randomness, by name.
        config: the run's config (a dataclass, mapping or None), stored with its hash.
        device: where it ran (``"cpu"``, ``"cuda:0"``, ...).
        started, ended: POSIX times (``time.time()``); ``ended=None`` while running.
        extra: anything else worth keeping (step counts, output hashes, ...), JSON data.
        resume: this call belongs to a resumed run: an existing manifest's first start time
            and ``resumes`` list are kept, and a resume entry for ``started`` is added (or,
            once it exists, completed with ``ended``).
        name: the file name, for a folder holding the outputs of several commands (e.g.
            ``ranked.manifest.json`` beside ``ranked.csv``); a plain file name, no folders.
    """
    if name in ("", ".", "..") or Path(name).name != name:
        raise DetfmError(f"manifest name must be a plain file name, got {name!r}")
    out = Path(out_dir)
    previous = _previous(out, name) if resume else None
    config_data, config_sha = _config_entry(config)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "code": code_version(),
        "environment": environment(),
        "device": str(device),
        "seeds": _plain(dict(seeds)),
        "command": list(sys.argv),
        "started": iso_utc(started),
        "ended": iso_utc(ended),
        "wall_seconds": None if ended is None else round(ended - started, 3),
        "inputs": [file_record(p) for p in dict.fromkeys(Path(p) for p in inputs)],  # each file once
        "config_sha256": config_sha,
        "config": config_data,
        "extra": _plain(dict(extra or {})),
    }
    if resume:
        record.update(_merge_resume(previous, record, started, ended))
    atomic_write_text(out / name, json.dumps(record, indent=2) + "\n")
    return out / name


def _previous(out: Path, name: str = MANIFEST_FILE) -> dict[str, Any] | None:
    """The manifest ``name`` already in ``out`` (None if absent or unreadable: a resume then starts one)."""
    try:
        data = json.loads((out / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def _merge_resume(previous: dict[str, Any] | None, record: dict[str, Any], started: float,
                  ended: float | None) -> dict[str, Any]:
    """The fields of a resumed run's manifest: first start, resumes list, total wall time."""
    entry = {"started": iso_utc(started), "ended": iso_utc(ended), "command": record["command"],
             "device": record["device"], "code": record["code"], "extra": record["extra"]}
    if previous is None:
        return {"resumes": [entry]}
    resumes = [r for r in previous.get("resumes") or [] if isinstance(r, dict)]
    if resumes and resumes[-1].get("started") == entry["started"]:
        resumes[-1] = entry       # the end of this resume
    else:
        resumes.append(entry)     # a new resume starts
    first = previous.get("started") or record["started"]
    merged: dict[str, Any] = {"started": first, "resumes": resumes}
    if ended is not None and first is not None:
        merged["wall_seconds"] = round(ended - _parse_iso(first), 3)  # first start to last end
    return merged


def read_manifest(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a run directory (or the path of a manifest file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / MANIFEST_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetfmError(f"{path}: no manifest (runs write {MANIFEST_FILE} when they start)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DetfmError(f"{path}: cannot read the manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise DetfmError(f"{path}: not a {SCHEMA} manifest")
    return data


__all__ = ["MANIFEST_FILE", "SCHEMA", "code_version", "environment", "file_record", "file_sha256",
           "find_seeds", "iso_utc", "read_manifest", "run_inputs", "write_manifest"]

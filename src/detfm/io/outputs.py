"""Checks on output paths, and the temporaries an interrupted writer leaves behind.

Every command checks its outputs before doing any work, with one rule: an existing output
is replaced only with ``--overwrite``; a path that cannot be written (a read-only folder, a
folder where a file is expected, a file where a folder is expected) is one
:class:`~detfm.errors.DetfmError` naming the path and the problem.

Temporaries. Atomic writers name their temporaries ``.NAME.PID-XXXX.tmp`` (files, and the
checkpoint folders ``.step_N.PID-XXXX.tmp``) and the registry ``.incoming-PID-XXXX``; the PID
tells a leftover of a killed process (that PID no longer runs) from a write in progress.
Names without a PID come from older versions and are always leftovers.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

from detfm.errors import DetfmError

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+\.tmp$")
_INCOMING_RE = re.compile(r"^\.incoming-(?:(?P<pid>\d+)-)?[A-Za-z0-9_]+$")


class OutputError(DetfmError):
    """An output path cannot be written, or exists and may not be replaced."""


def temp_prefix(name: str) -> str:
    """The prefix of this process's temporaries for the final name ``name``."""
    return f".{name}.{os.getpid()}-"


def incoming_prefix() -> str:
    """The prefix of this process's incoming registry blobs."""
    return f".incoming-{os.getpid()}-"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def _stale(match: re.Match[str]) -> bool:
    pid = match.group("pid")
    return pid is None or not _alive(int(pid))


def stale_temporaries(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Leftover temporaries in ``folder`` (of the final name ``name`` only, if given), sorted."""
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    out = []
    for entry in entries:
        m = _TMP_RE.match(entry.name) or _INCOMING_RE.match(entry.name)
        if m is None or not _stale(m):
            continue
        if name is not None and m.groupdict().get("name") != name:
            continue
        out.append(entry)
    return sorted(out)


def remove_paths(paths: list[Path]) -> list[Path]:
    """Delete files and folders (errors ignored); return those that are gone."""
    gone = []
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        if not path.exists() and not path.is_symlink():
            gone.append(path)
    return gone


def remove_stale_temporaries(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Delete the leftover temporaries :func:`stale_temporaries` finds; return those removed."""
    return remove_paths(stale_temporaries(folder, name))


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_parent(path: Path) -> None:
    """The folder that will hold ``path`` exists or can be made, and is writable."""
    parent = path.absolute().parent
    base = _nearest_existing(parent)
    if not base.is_dir():
        raise OutputError(f"{path}: cannot write here: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write here: {base} is not writable (permission denied)")


def check_output_file(path: str | os.PathLike[str], *, overwrite: bool, flag: str = "--overwrite") -> Path:
    """Check a file that is about to be written: not a folder, writable, replaced only with ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputError(f"{path} exists; pass {flag} to replace it")
    _check_parent(path)
    return path


def check_output_dir(path: str | os.PathLike[str], *, overwrite: bool, outputs: tuple[str, ...] = (),
                     flag: str = "--overwrite") -> Path:
    """Check a folder that is about to receive ``outputs``: a folder (or absent), writable, and
    without any of ``outputs`` unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{path}: folder is not writable (permission denied)")
        found = [name for name in outputs if (path / name).exists()]
        if found and not overwrite:
            raise OutputError(f"{path} already holds {', '.join(found)}; pass {flag} to replace "
                              f"{'it' if len(found) == 1 else 'them'}")
    else:
        _check_parent(path)
    return path


def describe_os_error(exc: OSError) -> str:
    """One line naming the path and the problem of an :class:`OSError`."""
    where = exc.filename if exc.filename is not None else None
    what = exc.strerror or str(exc)
    if exc.errno == errno.EACCES or isinstance(exc, PermissionError):
        what = "permission denied"
    elif isinstance(exc, IsADirectoryError):
        what = "is a folder, expected a file"
    elif isinstance(exc, FileExistsError):
        what = "a file is in the way (expected a folder, or a new name)"
    elif isinstance(exc, NotADirectoryError):
        what = "a part of the path is a file, not a folder"
    elif exc.errno == errno.ENOSPC:
        what = "no space left on the device"
    elif exc.errno == errno.EROFS:
        what = "read-only file system"
    return f"{where}: {what}" if where is not None else what

"""Atomic file writes (write to a temporary name beside the target, fsync, rename) and
whole-file SHA-256 hashes.

An interrupted write never leaves a partial file under the final name and never damages
an existing file there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from detfm.io.outputs import OutputError, describe_os_error, remove_stale_temporaries, temp_prefix


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; move it onto ``path`` on success.

    On any exception (including KeyboardInterrupt) the temporary file is removed and the
    target is left untouched.
    """
    final = Path(path)
    if final.is_dir():
        raise OutputError(f"{final}: is a folder; give a file name")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(final.parent, final.name)  # leftovers of killed writers of this file
        fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(final.name), suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {describe_os_error(exc)}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    try:
        yield tmp
        _follow_umask(tmp)  # a writer may have replaced the file with a private one
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise OutputError(f"cannot write {final}: {describe_os_error(exc)}") from None
        _fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(path: Path) -> None:
    """Give a file the permissions a new file gets under the user's umask."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~_umask())


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give ``path`` (and, for a folder, everything in it) the permissions new files and
    folders get under the user's umask; read-only stores (the registry's blobs) opt out."""
    path = Path(path)
    mask = _umask()
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            os.chmod(path, 0o777 & ~mask)
            for sub in path.rglob("*"):
                if not sub.is_symlink():
                    os.chmod(sub, (0o777 if sub.is_dir() else 0o666) & ~mask)
        else:
            os.chmod(path, 0o666 & ~mask)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The SHA-256 (hex) of a file's bytes, read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()

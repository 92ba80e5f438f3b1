"""Output checks, leftover temporaries and permissions of atomic writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detfm.io import OutputError, atomic_path, atomic_write_text, check_output_dir, check_output_file
from detfm.io.outputs import remove_stale_temporaries, stale_temporaries


def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def test_stale_temporaries_are_those_of_dead_writers_only(tmp_path: Path) -> None:
    dead = tmp_path / f".ev.h5.{_dead_pid()}-abc123.tmp"
    legacy = tmp_path / ".ev.h5.q1w2e3r4.tmp"           # written before temporaries carried a PID
    live = tmp_path / f".ev.h5.{os.getpid()}-zzz.tmp"    # a write in progress
    other = tmp_path / f".other.h5.{_dead_pid()}-abc.tmp"
    plain = tmp_path / "ev.h5.tmp"                       # not hidden: a user's file
    for path in (dead, legacy, live, other, plain):
        path.write_text("x")
    assert stale_temporaries(tmp_path, "ev.h5") == sorted([dead, legacy])
    assert set(stale_temporaries(tmp_path)) == {dead, legacy, other}
    assert remove_stale_temporaries(tmp_path, "ev.h5") == sorted([dead, legacy])
    assert live.exists() and other.exists() and plain.exists()


def test_atomic_write_removes_leftovers_of_the_same_file(tmp_path: Path) -> None:
    leftover = tmp_path / f".out.txt.{_dead_pid()}-abc123.tmp"
    leftover.write_text("partial")
    atomic_write_text(tmp_path / "out.txt", "done\n")
    assert (tmp_path / "out.txt").read_text() == "done\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_writes_follow_the_umask_even_for_safetensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from detfm.engine.checkpoint import save_weights

    old = os.umask(0o027)
    try:
        save_weights(torch.nn.Linear(2, 2), tmp_path / "model.safetensors")  # safetensors writes 0600 itself
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "is a folder; give a file name"),
    (lambda p: p.write_text("old"), "exists; pass --overwrite to replace it"),
])
def test_check_output_file(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "out.h5"
    make(path)  # type: ignore[operator]
    with pytest.raises(OutputError, match=message):
        check_output_file(path, overwrite=False)


def test_check_output_paths_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"f/a/b\.h5: cannot write here: .*f is a file, not a folder"):
        check_output_file(tmp_path / "f" / "a" / "b.h5", overwrite=True)
    with pytest.raises(OutputError, match=r"f/run: cannot write here"):
        check_output_dir(tmp_path / "f" / "run", overwrite=True)
    with pytest.raises(OutputError, match="is a file; give a folder"):
        check_output_dir(tmp_path / "f", overwrite=True)
    with pytest.raises(OutputError, match="is a folder; give a file name"), atomic_path(tmp_path):
        pass


def test_check_output_dir_names_the_outputs_it_would_replace(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(OutputError, match=r"already holds report\.json; pass --overwrite"):
        check_output_dir(tmp_path, overwrite=False, outputs=("report.json", "report.txt"))
    assert check_output_dir(tmp_path, overwrite=True, outputs=("report.json",)) == tmp_path
    assert check_output_dir(tmp_path / "new", overwrite=False, outputs=("report.json",)) == tmp_path / "new"


def test_a_folder_without_write_permission_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a user without write permission sees it (root may write anywhere, so ``os.access`` is faked)."""
    from detfm.io import outputs

    monkeypatch.setattr(outputs.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(OutputError, match=rf"{tmp_path}/out\.h5: cannot write here: {tmp_path} is not writable "
                                          r"\(permission denied\)"):
        check_output_file(tmp_path / "out.h5", overwrite=False)
    with pytest.raises(OutputError, match=r"folder is not writable \(permission denied\)"):
        check_output_dir(tmp_path, overwrite=True)


def test_checkpoint_folders_follow_the_umask(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from detfm.engine.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    old = os.umask(0o027)
    try:
        folder = save_checkpoint(tmp_path / "checkpoints" / "step_00000001", model, optimizer, {"step": 1})
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o750
    assert {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()} == {
        "model.safetensors": 0o640, "state.safetensors": 0o640, "state.json": 0o640}

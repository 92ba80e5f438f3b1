"""Registry tampering: six kinds of edits, each found by ``detfm registry verify`` (exit 1, a named line);
export never writes outside its folder; card on a version with a missing blob says so; permissions
of exported runs follow the umask; leftovers of killed writers are reported and repaired."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from detfm.audit.registry import Registry, blob_path
from detfm.cli import main


def _run(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True)
    save_file({"w": np.random.default_rng(seed).normal(size=(32,)).astype(np.float32)},
              str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text("# PretrainConfig\nmodel: pointmae_micro\ntrain:\n  steps: 2\n")
    (folder / "eval.json").write_text('{"macro_f1": 0.5}\n')
    return folder


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    registry = Registry(tmp_path / "reg")
    registry.add(_run(tmp_path / "run"), "m")
    return registry


def _sql(reg: Registry, statement: str, *params: object) -> None:
    con = sqlite3.connect(reg.db_path)
    with con:
        con.execute(statement, params)
    con.close()


def _blob(reg: Registry, role: str) -> Path:
    path = reg.get("m").blob_path(role)
    assert path is not None
    return path


def edit_blob(reg: Registry) -> str:
    path = _blob(reg, "eval")
    path.chmod(0o644)
    path.write_text('{"macro_f1": 0.99}\n')
    return r"^TAMPERED  [0-9a-f]{64}  \(m:1 eval\)$"


def delete_blob(reg: Registry) -> str:
    _blob(reg, "weights").unlink()
    return r"^MISSING   [0-9a-f]{64}  \(m:1 weights\)$"


def edit_file_hash(reg: Registry) -> str:
    _sql(reg, "UPDATE files SET sha256 = ? WHERE role = 'eval'", "0" * 64)
    return r"^MISSING   0{64}  \(m:1 eval\)$"


def edit_version_weights_hash(reg: Registry) -> str:
    _sql(reg, "UPDATE versions SET weights_sha256 = ?", "f" * 64)
    return r"^MISMATCH  m:1 weights: versions.weights_sha256 ffffffffffff is not the hash of its weights file"


def weights_row_points_at_config(reg: Registry) -> str:
    config_sha = reg.get("m").files["config"].sha256
    size = _blob(reg, "config").stat().st_size
    _sql(reg, "UPDATE files SET sha256 = ?, size = ? WHERE role = 'weights'", config_sha, size)
    _sql(reg, "UPDATE versions SET weights_sha256 = ?", config_sha)  # both columns edited together
    return r"^MISMATCH  m:1 weights: the blob [0-9a-f]{12} is not a weights file: not a safetensors file"


def escaping_file_name(reg: Registry) -> str:
    _sql(reg, "UPDATE files SET filename = '../escaped.txt' WHERE role = 'eval'")
    return r"^MISMATCH  m:1 eval: file name '\.\./escaped\.txt' is not a plain file name$"


TAMPERING: list[Callable[[Registry], str]] = [edit_blob, delete_blob, edit_file_hash, edit_version_weights_hash,
                                              weights_row_points_at_config, escaping_file_name]


def test_an_untouched_registry_verifies(reg: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registry", "verify", "--registry", str(reg.root)]) == 0
    assert "all intact" in capsys.readouterr().out


@pytest.mark.parametrize("tamper", TAMPERING, ids=[t.__name__ for t in TAMPERING])
def test_verify_finds_every_kind_of_tampering(tamper: Callable[[Registry], str], reg: Registry,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    expected = tamper(reg)
    assert main(["registry", "verify", "--registry", str(reg.root)]) == 1
    out = capsys.readouterr().out
    assert any(re.search(expected, line) for line in out.splitlines()), out
    assert "all intact" not in out


def test_export_refuses_a_file_name_outside_its_folder(reg: Registry, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    escaping_file_name(reg)
    dest = tmp_path / "exports" / "out"
    capsys.readouterr()
    assert main(["registry", "export", "m", str(dest), "--registry", str(reg.root)]) == 2
    err = capsys.readouterr().err
    assert "'../escaped.txt'" in err and "not a plain file name" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exports" / "escaped.txt").exists() and not dest.exists()
    assert list((tmp_path / "exports").glob("*")) == []  # no temporary folder left either


def test_add_refuses_a_role_that_would_name_a_path(tmp_path: Path) -> None:
    from detfm.errors import DetfmError

    run = _run(tmp_path / "run")
    (tmp_path / "res.json").write_text("{}\n")
    registry = Registry(tmp_path / "reg")
    with pytest.raises(DetfmError, match="bad role"):
        registry.add(run, "m", attach={"../x": tmp_path / "res.json"})
    assert not registry.db_path.exists()


def test_card_of_a_version_with_a_missing_blob_says_so(reg: Registry, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    _blob(reg, "weights").unlink()
    out = tmp_path / "card.md"
    capsys.readouterr()
    assert main(["card", "m", "--registry", str(reg.root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "m:1: the stored model.safetensors (weights" in err and "is missing" in err
    assert not out.exists()


def test_exports_follow_the_umask(reg: Registry, tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        out = reg.export("m", tmp_path / "exported")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o750
    for path in out.iterdir():
        assert path.stat().st_mode & 0o777 == 0o640, path


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_verify_reports_and_repair_removes_incoming_leftovers(reg: Registry,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    blobs = reg.root / "blobs"
    dead = blobs / f".incoming-{_dead_pid()}-abc123"
    legacy = blobs / ".incoming-q1w2e3r4"
    live = blobs / f".incoming-{os.getpid()}-zzz999"  # a write in progress: never touched
    for path in (dead, legacy, live):
        path.write_bytes(b"x" * 1000)
    capsys.readouterr()
    assert main(["registry", "verify", "--registry", str(reg.root)]) == 0  # litter, not damage
    out = capsys.readouterr().out
    assert f"LEFTOVER  {dead}" in out and f"LEFTOVER  {legacy}" in out and str(live) not in out
    assert "2 leftover temporary file(s) (2 kept: pass --repair to delete them)" in out
    assert dead.exists() and legacy.exists()
    assert main(["registry", "verify", "--repair", "--registry", str(reg.root)]) == 0
    out = capsys.readouterr().out
    assert f"REMOVED   {dead}" in out and "removed" in out
    assert not dead.exists() and not legacy.exists() and live.exists()


def test_add_cleans_incoming_leftovers(reg: Registry, tmp_path: Path) -> None:
    dead = reg.root / "blobs" / f".incoming-{_dead_pid()}-abc123"
    dead.write_bytes(b"x" * 1000)
    reg.add(_run(tmp_path / "other", seed=1), "m")
    assert not dead.exists()
    assert blob_path(reg.root, reg.get("m:2").weights_sha256).is_file()


def test_blobs_are_read_only_and_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        registry = Registry(tmp_path / "reg")
        entry, _ = registry.add(_run(tmp_path / "run"), "m")
    finally:
        os.umask(old)
    for file in entry.files.values():
        assert blob_path(registry.root, file.sha256).stat().st_mode & 0o777 == 0o400

"""The command line: help, version, exit codes and one-line user errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from detfm import __version__
from detfm.cli import COMMANDS, build_parser, main
from detfm.io import EventFile


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    names = list(sub.choices)
    assert len(names) == len(COMMANDS) and {"simulate", "info", "validate", "show"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage: detfm " + name in capsys.readouterr().out


@pytest.mark.e2e
def test_simulate_info_validate_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev.h5"
    assert main(["simulate", "--events", "4", "--seed", "3", "--out", str(out), "--quiet"]) == 0
    assert len(EventFile(out)) == 4
    assert main(["validate", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "track" in info and "4" in info
    html = tmp_path / "e.html"
    assert main(["show", str(out), "--event", "1", "--out", str(html)]) == 0
    assert html.stat().st_size > 1000
    # refuses to overwrite without --overwrite, and leaves the file as it was
    before = out.read_bytes()
    assert main(["simulate", "--events", "2", "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize(("argv", "message"), [
    (["simulate", "--events", "2", "--detector", "nominall", "--out", "x.h5"], "nominal"),
    (["simulate", "--events", "2", "--gun", "muon:300", "--out", "x.h5"], "unknown particle 'muon'"),
    (["simulate", "--events", "2", "--mix", "gun", "--out", "x.h5"], "needs --gun"),
    (["simulate", "--events", "2"], "--out"),
    (["info", "missing.h5"], "missing.h5"),
    (["show", "missing.h5", "--out", "x.html"], "missing.h5"),
])
def test_user_errors_are_one_line_without_traceback(
        argv: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.h5").exists()


def test_validate_exit_status_on_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.h5"
    vlen = h5py.vlen_dtype(np.float32)
    with h5py.File(path, "w") as h5:
        p = h5.create_dataset("point", shape=(1,), dtype=vlen)
        p[0] = np.full(8, np.nan, np.float32)
        c = h5.create_dataset("cluster", shape=(1,), dtype=vlen)
        c[0] = np.array([1, 0, 0, 0, 1, 2], np.float32)
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "event 0" in out and "non-finite" in out


def test_every_help_page_renders_without_escaped_percent_signs() -> None:
    """Descriptions are printed as written, help strings are %-formatted: '%%' must not show."""
    import argparse

    from detfm.cli import build_parser

    pages = []

    def walk(parser: argparse.ArgumentParser) -> None:
        pages.append((parser.prog, parser.format_help()))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in dict.fromkeys(action.choices.values()):
                    walk(child)

    walk(build_parser())
    assert len(pages) > 20
    assert [prog for prog, text in pages if "%%" in text] == []

"""Run manifests: file hashes, code version, environment, and the engine's start/end/resume writes."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from detfm.engine import manifest as manifest_mod
from detfm.engine.manifest import SCHEMA, file_sha256, read_manifest, write_manifest
from detfm.engine import TrainConfig, train
from detfm.errors import DetfmError


class Interrupt(Exception):
    """Raised by a callback to stop a run after a given step."""


class Quadratic(nn.Module):
    """The smallest task: pull a linear map's output towards zero."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, batch: torch.Tensor) -> dict[str, Any]:
        return {"loss": self.lin(batch).pow(2).mean(), "outputs": {}}


class FileBacked:
    """A map-style dataset that says which files it reads (``paths``, as EventDataset does)."""

    def __init__(self, paths: list[Path] | None, n: int = 8) -> None:
        if paths is not None:
            self.paths = tuple(paths)
        self.items = torch.from_numpy(np.random.default_rng(0).normal(size=(n, 3)).astype(np.float32))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.items[i]


def cfg(**kw: Any) -> TrainConfig:
    base = dict(steps=4, batch_size=4, lr=1e-2, warmup_steps=1, log_every=1, checkpoint_every=2,
                progress=False, device="cpu", seed=7)
    return TrainConfig(**{**base, **kw})


def stop_at(step: int):  # type: ignore[no-untyped-def]
    def callback(record: dict[str, Any], task: nn.Module) -> None:
        if record["step"] == step:
            raise Interrupt
    return callback


@pytest.fixture
def data_files(tmp_path: Path) -> list[Path]:
    """Two input files, one larger than the 1 MiB hashing chunk."""
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(np.random.default_rng(1).integers(0, 256, size=(5 << 19) + 17, dtype=np.uint8).tobytes())
    small.write_bytes(b"detector events\n")
    return [big, small]


def parse_utc(text: str) -> dt.datetime:
    when = dt.datetime.fromisoformat(text)
    assert when.utcoffset() == dt.timedelta(0)
    return when


def test_manifest_records_hashes_code_environment_and_times(data_files: list[Path], tmp_path: Path) -> None:
    path = write_manifest(tmp_path / "out", inputs=data_files, seeds={"train.seed": 3}, config={"lr": 0.5},
                          device="cpu", started=1_700_000_000.0, ended=1_700_000_012.5, extra={"note": "x"})
    assert path == tmp_path / "out" / "manifest.json"
    m = read_manifest(tmp_path / "out")
    assert m["schema"] == SCHEMA
    for record, file in zip(m["inputs"], data_files, strict=True):
        data = file.read_bytes()
        assert record == {"path": str(file), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert file_sha256(data_files[0]) == hashlib.sha256(data_files[0].read_bytes()).hexdigest()
    code = m["code"]
    assert isinstance(code["detfm"], str)
    assert code["git_dirty"] is None or isinstance(code["git_dirty"], bool)
    assert code["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", code["git_commit"])
    env = m["environment"]
    assert env["torch"] == torch.__version__ and env["numpy"] == np.__version__
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert m["device"] == "cpu" and m["seeds"] == {"train.seed": 3} and m["command"] == sys.argv
    assert parse_utc(m["started"]) == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc)
    assert parse_utc(m["ended"]) > parse_utc(m["started"]) and m["wall_seconds"] == 12.5
    assert m["config"] == {"lr": 0.5} and len(m["config_sha256"]) == 64 and m["extra"] == {"note": "x"}
    host = socket.gethostname()
    if len(host) > 3:
        assert host not in path.read_text()
    assert not list((tmp_path / "out").glob(".*.tmp"))  # written atomically

    # a file given twice (as str and as Path) is listed and hashed once, in the given order
    again = write_manifest(tmp_path / "again", inputs=[data_files[1], str(data_files[0]), data_files[1]], seeds={},
                           device="cpu", started=1.0)
    assert [r["path"] for r in read_manifest(again)["inputs"]] == [str(data_files[1]), str(data_files[0])]


def test_missing_input_is_recorded_not_fatal_and_bad_manifest_is_refused(tmp_path: Path) -> None:
    write_manifest(tmp_path, inputs=[tmp_path / "gone.h5"], seeds={}, device="cpu", started=0.0)
    m = read_manifest(tmp_path / "manifest.json")
    assert m["inputs"][0]["sha256"] is None and m["inputs"][0]["error"]
    assert m["ended"] is None and m["wall_seconds"] is None and m["config"] is None
    (tmp_path / "manifest.json").write_text('{"schema": "other"}')
    with pytest.raises(DetfmError, match="not a detfm-manifest/1 manifest"):
        read_manifest(tmp_path)
    with pytest.raises(DetfmError, match="no manifest"):
        read_manifest(tmp_path / "elsewhere")


def test_without_git_the_commit_is_null(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: Any, **kwargs: Any) -> Any:
        raise FileNotFoundError("git")

    manifest_mod._git_state.cache_clear()
    monkeypatch.setattr(subprocess, "run", no_git)
    try:
        code = manifest_mod.code_version()
    finally:
        manifest_mod._git_state.cache_clear()
    assert code["git_commit"] is None and code["git_dirty"] is None and code["detfm"]


def test_train_writes_the_manifest_and_a_resume_keeps_the_first_start(data_files: list[Path],
                                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(Interrupt):  # stops after step 3; checkpoint at step 2
        train(Quadratic(), FileBacked(data_files), torch.stack, cfg(), run, callbacks=[stop_at(3)])
    first = read_manifest(run)
    assert first["ended"] is None and "resumes" not in first  # written at the start only
    assert [r["sha256"] for r in first["inputs"]] == [file_sha256(p) for p in data_files]
    assert first["seeds"] == {"train.seed": 7} and first["device"] == "cpu"
    assert first["config"]["steps"] == 4 and first["extra"]["dataset_len"] == 8

    train(Quadratic(), FileBacked(data_files), torch.stack, cfg(), run, resume=True)
    final = read_manifest(run)
    assert final["started"] == first["started"]                 # the first start is kept
    assert len(final["resumes"]) == 1
    resume = final["resumes"][0]
    assert resume["extra"]["start_step"] == 2 and resume["ended"] is not None
    assert parse_utc(resume["started"]) >= parse_utc(first["started"])
    assert final["ended"] == resume["ended"] and final["wall_seconds"] >= 0
    weights = run / "model.safetensors"
    assert final["extra"]["outputs"] == {"model.safetensors": file_sha256(weights)}

    train(Quadratic(), FileBacked(data_files), torch.stack, cfg(), run, resume=True)  # finished: a no-op resume
    again = read_manifest(run)
    assert again["started"] == first["started"] and len(again["resumes"]) == 2


def test_datasets_without_paths_give_no_inputs(tmp_path: Path) -> None:
    train(Quadratic(), FileBacked(None), torch.stack, cfg(steps=1), tmp_path / "r")
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert m["inputs"] == [] and m["ended"] is not None and "resumes" not in m

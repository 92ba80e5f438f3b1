"""Checkpoints: pickle-free files, and resume errors that leave the run folder untouched."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from _engine_toy import ToyEvents, ToyTask, toy_collate
from safetensors import safe_open
from torch import nn

from detfm.engine import TrainConfig, load_config, load_weights, read_checkpoint, save_weights, train
from detfm.errors import ConfigError, DetfmError


def small(**kw: Any) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-2, warmup_steps=1, log_every=1, checkpoint_every=2,
                progress=False, device="cpu")
    return TrainConfig(**{**base, **kw})


class Interrupt(Exception):
    pass


def stop_at(step: int):
    def callback(record: dict[str, Any], task: nn.Module) -> None:
        if record["step"] == step:
            raise Interrupt
    return callback


@pytest.fixture
def interrupted(tmp_path: Path) -> Path:
    """A run folder whose run stopped after step 3 (newest checkpoint: step 2)."""
    out = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(ToyTask(), ToyEvents(20), toy_collate, small(), out, callbacks=[stop_at(3)])
    return out


def snapshot(folder: Path) -> dict[str, Any]:
    """Every file's bytes and every link's target under ``folder``."""
    out: dict[str, Any] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            rel = str(path.relative_to(folder))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_file():
                out[rel] = path.read_bytes()
    return out


def test_checkpoint_files_are_safetensors_and_json_only(interrupted: Path) -> None:
    folder = (interrupted / "checkpoints" / "last").resolve()
    assert folder.name == "step_00000002"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["model.safetensors", "state.json", "state.safetensors"]
    for path in folder.glob("*.safetensors"):
        with safe_open(path, framework="pt") as fh:        # parses as safetensors
            assert len(list(fh.keys())) > 0
    state = json.loads((folder / "state.json").read_text())
    assert state["format"] == "detfm-checkpoint/1" and state["step"] == 2
    with safe_open(folder / "state.safetensors", framework="pt") as fh:
        keys = set(fh.keys())
    assert {"0.exp_avg", "0.exp_avg_sq", "0.step"} <= keys     # AdamW moments of parameter 0
    for path in interrupted.rglob("*"):
        if path.is_file():
            assert not path.read_bytes().startswith(b"\x80"), f"{path} looks like a pickle"


def test_resume_never_unpickles(interrupted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    result = train(ToyTask(), ToyEvents(20), toy_collate, small(), interrupted, resume=True)
    assert result.start_step == 2 and result.steps == 6


def corrupt_model(run: Path) -> None:
    path = run / "checkpoints" / "last" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF                                             # one flipped byte in the weights
    path.write_bytes(bytes(data))


def truncate_state(run: Path) -> None:
    path = run / "checkpoints" / "last" / "state.safetensors"
    path.write_bytes(path.read_bytes()[:40])


def drop_json(run: Path) -> None:
    (run / "checkpoints" / "last" / "state.json").unlink()


def garble_json(run: Path) -> None:
    (run / "checkpoints" / "last" / "state.json").write_text("{not json")


def drop_checkpoints(run: Path) -> None:
    for path in sorted((run / "checkpoints").rglob("*"), reverse=True):
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()


@pytest.mark.parametrize(("damage", "message"), [
    (corrupt_model, r"step_00000002 is corrupt: model.safetensors does not match the SHA-256"),
    (truncate_state, r"is corrupt: state.safetensors does not match"),
    (drop_json, r"is incomplete: state.json is missing"),
    (garble_json, r"is corrupt: cannot read state.json"),
    (drop_checkpoints, r"no checkpoint at .*checkpoints/last"),
])
def test_damaged_checkpoint_is_refused_and_folder_left_as_is(interrupted: Path, damage: Any,
                                                              message: str) -> None:
    damage(interrupted)
    before = snapshot(interrupted)
    with pytest.raises(DetfmError, match=message):
        train(ToyTask(), ToyEvents(20), toy_collate, small(num_workers=0), interrupted, resume=True)
    assert snapshot(interrupted) == before


def test_resume_with_another_config_is_refused(interrupted: Path) -> None:
    before = snapshot(interrupted)
    with pytest.raises(ConfigError, match=r"config differs .*lr: 0.01 in the checkpoint, 0.02 now"):
        train(ToyTask(), ToyEvents(20), toy_collate, small(lr=2e-2), interrupted, resume=True)
    with pytest.raises(ConfigError, match=r"trained on 20 events, the dataset now has 24"):
        train(ToyTask(), ToyEvents(24), toy_collate, small(), interrupted, resume=True)
    with pytest.raises(DetfmError, match=r"weights do not fit this model"):
        train(ToyTask(hidden=8), ToyEvents(20), toy_collate, small(), interrupted, resume=True)
    assert snapshot(interrupted) == before


def test_resume_may_change_logging_and_workers(interrupted: Path) -> None:
    result = train(ToyTask(), ToyEvents(20), toy_collate, small(log_every=3, checkpoint_every=3),
                   interrupted, resume=True)
    assert result.steps == 6
    assert "log_every: 3" in (interrupted / "config.yaml").read_text()


def test_resume_without_a_run_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DetfmError, match="no checkpoint at"):
        train(ToyTask(), ToyEvents(20), toy_collate, small(), tmp_path / "fresh", resume=True)
    assert not (tmp_path / "fresh").exists()


def test_weights_helpers(tmp_path: Path) -> None:
    task = ToyTask(seed=1)
    save_weights(task, tmp_path / "w.safetensors")
    other = ToyTask(seed=2)
    load_weights(other, tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(task.state_dict().values(), other.state_dict().values()))
    with pytest.raises(DetfmError, match="weights file not found"):
        load_weights(other, tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk" * 10)
    with pytest.raises(DetfmError, match="not a valid safetensors file"):
        load_weights(other, tmp_path / "junk.safetensors")
    with pytest.raises(DetfmError, match="weights do not fit this model"):
        load_weights(ToyTask(hidden=4), tmp_path / "w.safetensors")
    bigger = ToyTask()
    bigger.extra = nn.Linear(2, 2)
    with pytest.raises(DetfmError, match="missing extra.bias, extra.weight, unexpected none"):
        load_weights(bigger, tmp_path / "w.safetensors")
    load_weights(bigger, tmp_path / "w.safetensors", strict=False)
    assert torch.equal(bigger.net[0].weight, task.net[0].weight)


def test_read_checkpoint_reports_step(interrupted: Path) -> None:
    assert read_checkpoint(interrupted / "checkpoints" / "last").step == 2


@dataclass(frozen=True)
class RunSettings:
    data: str = "a.h5"
    train: TrainConfig = field(default_factory=TrainConfig)


def test_run_config_is_written_and_checked_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(Interrupt):
        train(ToyTask(), ToyEvents(20), toy_collate, small(), out, callbacks=[stop_at(3)],
              run_config=RunSettings(train=small()))
    assert load_config(RunSettings, out / "config.yaml") == RunSettings(train=small())
    with pytest.raises(ConfigError, match=r"run\.data: 'a\.h5' in the checkpoint, 'b\.h5' now"):
        train(ToyTask(), ToyEvents(20), toy_collate, small(), out, resume=True,
              run_config=RunSettings(data="b.h5", train=small()))
    with pytest.raises(ConfigError, match=r"train\.seed: 0 in the checkpoint, 1 now"):
        train(ToyTask(), ToyEvents(20), toy_collate, small(seed=1), out, resume=True,
              run_config=RunSettings(train=small()))
    result = train(ToyTask(), ToyEvents(20), toy_collate, small(), out, resume=True,
                   run_config=RunSettings(train=small()))
    assert result.start_step == 2

"""Killed commands: a pretraining killed before its first checkpoint starts again in place, and the
temporaries a kill leaves (simulate's hidden ``.NAME.*.tmp``, checkpoints' ``.step_N.*.tmp``) are
removed by the next run of the same command. The kills are real SIGKILLs of ``detfm`` processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from detfm_testing import one_torch_thread

from detfm.cli import main

WAIT_S = 180.0


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "detfm.cli", *argv], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds (fail if it exits or takes too long first)."""
    deadline = time.monotonic() + WAIT_S
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the command ended before the kill: {proc.stderr.read().decode() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                pytest.fail("the command did not reach the point of the kill in time")
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
        if proc.stderr is not None:
            proc.stderr.close()


def _dead_pid() -> int:
    out = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                         check=True)
    return int(out.stdout)


def test_simulate_killed_mid_write_leaves_a_temporary_that_the_next_run_removes(tmp_path: Path) -> None:
    out = tmp_path / "ev.h5"
    proc = _start(["simulate", "--events", "100000", "--out", str(out), "--quiet"], tmp_path)
    _kill_when(proc, lambda: any(p.stat().st_size > 0 for p in tmp_path.glob(".ev.h5.*.tmp")))
    leftovers = list(tmp_path.glob(".ev.h5.*.tmp"))
    assert leftovers and not out.exists()  # a kill never leaves a partial file under the final name
    other = tmp_path / ".other.h5.1-abc.tmp"  # a temporary of another output is not this run's business
    other.write_bytes(b"x")
    assert main(["simulate", "--events", "2", "--out", str(out), "--quiet"]) == 0
    assert out.is_file()
    assert list(tmp_path.glob(".ev.h5.*.tmp")) == [] and other.exists()


def test_pretraining_killed_before_its_first_checkpoint_restarts_in_place(
        tiny_events: Path, tiny_pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pretrain.yaml"
    config.write_text((tiny_pretrained / "config.yaml").read_text())
    run = tmp_path / "run"
    proc = _start(["pretrain", "--config", str(config), "--data", str(tiny_events), "--steps", "100000",
                   "--out", str(run)], tmp_path)
    _kill_when(proc, lambda: (run / "config.yaml").is_file() and (run / "manifest.json").is_file())
    assert not (run / "model.safetensors").exists() and not list(run.glob("checkpoints/step_*"))

    # --resume has nothing to resume from, and says what to do instead; nothing is changed
    before = sorted(p.name for p in run.iterdir())
    assert main(["pretrain", "--resume", "--out", str(run)]) == 2
    assert "without --resume to start it again in place" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before

    # a half-written checkpoint of a killed process is litter too
    stale = run / "checkpoints" / f".step_00000002.{_dead_pid()}-abc123.tmp"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    with one_torch_thread():
        assert main(["pretrain", "--config", str(config), "--data", str(tiny_events), "--out", str(run)]) == 0
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "last").exists()
    assert not stale.exists()
    lines = (run / "metrics.jsonl").read_text().strip().splitlines()
    assert lines and '"step": 2' in lines[-1]  # the restarted run's log, not the killed one's


def test_pretraining_stopped_by_its_time_limit_resumes_to_the_end(
        tiny_events: Path, tiny_pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --time-limit far below one step: the run stops after step 1 with a checkpoint and weights,
    # and the message says how to go on; a resume with no budget (0) finishes the run.
    config = tmp_path / "pretrain.yaml"
    config.write_text((tiny_pretrained / "config.yaml").read_text())
    run = tmp_path / "run"
    with one_torch_thread():
        assert main(["pretrain", "--config", str(config), "--data", str(tiny_events), "--steps", "3",
                     "--time-limit", "1e-9", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "stopped by the time limit at step 1 of 3" in out and "--resume" in out
    assert (run / "model.safetensors").is_file() and (run / "checkpoints" / "step_00000001").is_dir()
    assert main(["pretrain", "--out", str(run), "--resume", "--time-limit", "-1"]) == 2
    assert "--time-limit must be a number of minutes >= 0" in capsys.readouterr().err
    with one_torch_thread():
        assert main(["pretrain", "--out", str(run), "--resume", "--time-limit", "0"]) == 0
    assert "stopped by the time limit" not in capsys.readouterr().out
    lines = (run / "metrics.jsonl").read_text().strip().splitlines()
    assert '"step": 3' in lines[-1]


def test_finetuning_stopped_by_its_time_limit_scores_the_weights_reached_and_resumes(
        tiny_events: Path, tiny_pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A fixed training budget for fine-tuning: the run stops after step 1, is still scored, and
    # eval.json says at which step it stopped; a resume without a budget trains to the end and
    # writes the scores of the finished run, without the mark.
    run = tmp_path / "ft"
    argv = ["finetune", "--backbone", str(tiny_pretrained), "--data", str(tiny_events), "--labels", "4",
            "--steps", "3", "--mode", "head", "--out", str(run)]
    with one_torch_thread():
        assert main([*argv, "--time-limit", "1e-9"]) == 0
    out = capsys.readouterr().out
    assert "stopped by the time limit at step 1 of 3" in out and "--resume" in out
    scores = json.loads((run / "eval.json").read_text())
    assert scores["stopped_at_step"] == {"step": 1, "of": 3}
    assert main(["finetune", "--out", str(run), "--resume", "--time-limit", "nan"]) == 2
    assert "--time-limit must be a number of minutes >= 0" in capsys.readouterr().err
    with one_torch_thread():
        assert main(["finetune", "--out", str(run), "--resume", "--time-limit", "0"]) == 0
    assert "stopped by the time limit" not in capsys.readouterr().out
    assert "stopped_at_step" not in json.loads((run / "eval.json").read_text())
    assert '"step": 3' in (run / "metrics.jsonl").read_text().strip().splitlines()[-1]

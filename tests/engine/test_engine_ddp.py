"""DDP through torchrun on 2 CPU processes (gloo) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _engine_toy import ToyEvents, ToyTask, toy_collate
from safetensors.torch import load_file

from detfm.engine import BatchPlan, TrainConfig, read_metrics, save_config, train

WORKER = Path(__file__).resolve().parent / "_engine_ddp_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_two_ranks(cfg: TrainConfig, tmp_path: Path) -> None:
    """Train the toy task with ``cfg`` on 2 torchrun processes into ``tmp_path/ddp``; each rank
    writes the events it read to ``tmp_path/seen_<rank>.json``."""
    save_config(cfg, tmp_path / "train.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    failures = []
    for _ in range(2):  # the launch itself (a port taken between free_port and torchrun) may fail once
        shutil.rmtree(tmp_path / "ddp", ignore_errors=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               str(WORKER), str(tmp_path / "ddp"), str(tmp_path), str(tmp_path / "train.yaml")]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            return
        failures.append(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise AssertionError("two torchrun launches failed:\n" + "\n----\n".join(failures))


def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    # batch 8 = 2 ranks x 2 micro-batches x 2 events; 24 events: 3 steps per epoch
    cfg = TrainConfig(steps=4, batch_size=8, accum_steps=2, lr=1e-2, warmup_steps=1, log_every=1,
                      checkpoint_every=2, progress=False, device="cpu")
    run_two_ranks(cfg, tmp_path)

    single_task = ToyTask()
    single = train(single_task, ToyEvents(24), toy_collate, cfg, tmp_path / "single")

    # same weights (float tolerance: the all-reduce sums in another order)
    ddp_w, one_w = load_file(tmp_path / "ddp" / "model.safetensors"), load_file(single.model_path)
    for key in one_w:
        torch.testing.assert_close(ddp_w[key], one_w[key], atol=1e-5, rtol=0)
    # same gradient, step by step (AdamW hides a gradient scale error in the weights; the norm does not)
    ddp_m = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    one_m = read_metrics(tmp_path / "single" / "metrics.jsonl")
    assert [r["step"] for r in ddp_m] == [1, 2, 3, 4]         # rank 0 alone wrote the log
    assert [r["grad_norm"] for r in ddp_m] == pytest.approx([r["grad_norm"] for r in one_m], rel=1e-5)
    assert [r["loss"] for r in ddp_m] == pytest.approx([r["loss"] for r in one_m], rel=1e-5)

    # each rank read its own disjoint shard of every global batch
    plan = BatchPlan(num_events=24, batch_size=8, accum_steps=2, world_size=2, seed=cfg.seed)
    seen = [json.loads((tmp_path / f"seen_{r}.json").read_text()) for r in (0, 1)]
    for rank in (0, 1):
        assert seen[rank] == [i for s in range(4) for m in range(2) for i in plan.micro_batch(s, m, rank)]
    for step in range(4):
        a, b = seen[0][step * 4:(step + 1) * 4], seen[1][step * 4:(step + 1) * 4]
        assert not set(a) & set(b)
        assert sorted(a + b) == sorted(single_task.seen[step * 8:(step + 1) * 8])
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == \
        ["last", "step_00000002", "step_00000004"]


def test_two_process_ddp_stops_together_at_the_time_limit(tmp_path: Path) -> None:
    # A budget below one step: rank 0's clock decides, both ranks stop after step 1 (no rank
    # waits for a collective the other never joins), and rank 0 writes the step-1 checkpoint.
    cfg = TrainConfig(steps=4, batch_size=8, accum_steps=2, lr=1e-2, warmup_steps=1, log_every=1,
                      checkpoint_every=0, progress=False, device="cpu", time_limit_s=1e-9)
    run_two_ranks(cfg, tmp_path)
    assert [r["step"] for r in read_metrics(tmp_path / "ddp" / "metrics.jsonl")] == [1]
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["last", "step_00000001"]
    seen = [json.loads((tmp_path / f"seen_{r}.json").read_text()) for r in (0, 1)]
    assert [len(s) for s in seen] == [4, 4]  # one step of 2 micro-batches x 2 events on each rank

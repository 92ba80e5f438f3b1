"""scripts/gpu_pretrain.sh, run on the CPU with a tiny budget: it simulates, calibrates the
step time, sizes --steps to the budget and brings back a run that loads as a backbone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from detfm.engine.runs import load_backbone

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.e2e
def test_gpu_pretrain_script_fills_its_budget_and_returns_a_backbone(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path / "out"), "EVENTS": "12", "MINUTES": "0.2", "BATCH": "2",
           "CALIBRATE_STEPS": "2", "WORKERS": "1", "PYTHON": sys.executable,
           "DATA": str(tmp_path / "events.h5"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_pretrain.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "out" / "distill_gpu"
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["backbone.yaml", "config.yaml", "device.txt", "manifest.json", "metrics.jsonl", "model.safetensors",
         "pretrain.log"])
    log = (run / "pretrain.log").read_text()
    planned = int(re.search(r"pretraining for (\d+) steps", log).group(1))
    # the calibrated plan fills 95 % of 12 s; it is at least one step and not absurdly many
    assert 1 <= planned <= 200
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert 1 <= last["step"] <= planned
    backbone = load_backbone(run)
    assert sum(p.numel() for p in backbone.parameters()) > 1_000_000

"""Model cost: tokenizer scaling with event size, and MPM training-step throughput / FLOP/s.

Run on demand (not part of the test suite)::

    .venv/bin/python benchmarks/bench_models.py [--quick]

Writes benchmarks/results/models.json. Measures, in one run on one machine:

* ``matmul_peak_gflops``: fp32 ``torch.matmul`` of square 1024^2 ... 4096^2 matrices (the
  best rate seen), the yardstick for the achieved FLOP/s below;
* ``tokenizer``: grouping time (FPS + ball query + gathers, both FPS back ends) and patch
  PointNet time for single synthetic events of 1k ... 100k points, and the fitted power
  law exponent (1.0 = linear);
* ``train_step``: masked-point-modeling steps (forward + backward + AdamW) of
  ``pointmae_tiny`` and ``pointmae_small`` at default tokenisation on a batch of 8 synthetic
  events (1k-8k points, ~4k mean; PILArNet-M averages roughly 4k points per event if its
  168 GB / 1.2 M events are ~32-byte points): events/s, FLOPs per step (torch's FLOP
  counter; matmuls and attention), achieved FLOP/s as a fraction of the matmul peak, the
  grouping share of a step, and peak memory (each model in a fresh process).

Timings are medians; the host is shared, so compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from detfm.io import atomic_write_text
from detfm.models import create_model
from detfm.models.grouping import GroupingConfig, group_points
from flops import flop_mapping  # benchmarks/flops.py, beside this script

from detfm.data.synthetic import synthetic_batch
from detfm.tasks import MaskedPointModeling

THREADS = 2
BATCH_SIZES = [1000, 2000, 3000, 4000, 4000, 5000, 6000, 8000]


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak_gflops(repeats: int = 5) -> float:
    """Best fp32 matmul rate over a few square sizes (the highest, so the ratio is conservative)."""
    best = 0.0
    for n in (1024, 2048, 4096):
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)
        fastest = min(_median_time(lambda a=a, b=b: torch.matmul(a, b), 1, warmup=0) for _ in range(repeats))
        best = max(best, 2 * n**3 / fastest / 1e9)
    return best


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tokenizer_scaling(sizes: list[int], quick: bool) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    embed = create_model("pointmae_small").tokenizer.eval()  # PointNet at D = 384
    rows = []
    for n in sizes:
        batch = synthetic_batch(rng, [n])
        repeats = 3 if (quick or n >= 30000) else 7
        row: dict[str, Any] = {"points": n}
        for backend in ("torch", "numba"):
            cfg = GroupingConfig(backend=backend)
            row[f"group_s_{backend}"] = round(_median_time(
                lambda cfg=cfg: group_points(batch.coord, batch.feat, batch.offsets, cfg), repeats), 5)
        patches = group_points(batch.coord, batch.feat, batch.offsets, GroupingConfig())
        with torch.no_grad():
            row["pointnet_s"] = round(_median_time(lambda: embed(patches), repeats), 5)
        row["patches"] = int(patches.mask.sum())
        row["points_per_patch"] = round(float(patches.point_mask.sum() / patches.mask.sum()), 2)
        row["points_in_a_patch"] = round(patches.index[patches.point_mask].unique().numel() / n, 3)
        rows.append(row)
        print(f"tokenizer {n:>6} pts: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                                   for k, v in row.items() if k != "points"), flush=True)
    logn = np.log([r["points"] for r in rows])
    slopes = {b: float(np.polyfit(logn, np.log([r[f"group_s_{b}"] for r in rows]), 1)[0])
              for b in ("torch", "numba")}
    return {"rows": rows, "power_law_exponent": {k: round(v, 3) for k, v in slopes.items()}}


def train_step(name: str, steps: int) -> dict[str, Any]:
    """One model's step measurements (run in a fresh process for a clean peak memory)."""
    torch.set_num_threads(THREADS)
    batch = synthetic_batch(np.random.default_rng(1), BATCH_SIZES)
    task = MaskedPointModeling(create_model(name), seed=0)
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)

    def step() -> None:
        out = task(batch)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    rss_before = _rss_mb()
    step_s = _median_time(step, steps, warmup=2)
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        step()
    flops = counter.get_total_flops()
    group_s = _median_time(lambda: task.backbone.group(batch), steps)
    patches = task.backbone.group(batch)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "model": name,
        "parameters_m": round(sum(p.numel() for p in task.parameters()) / 1e6, 2),
        "batch_events": len(BATCH_SIZES),
        "batch_points": batch.num_points,
        "patches_per_event": round(float(patches.mask.sum(dim=1).float().mean()), 1),
        "patch_slots_used": round(float(patches.mask.float().mean()), 3),
        "step_s": round(step_s, 4),
        "events_per_s": round(len(BATCH_SIZES) / step_s, 2),
        "gflop_per_step": round(flops / 1e9, 1),
        "achieved_gflops": round(flops / step_s / 1e9, 1),
        "grouping_s": round(group_s, 4),
        "grouping_fraction_of_step": round(group_s / step_s, 3),
        "rss_before_training_mb": round(rss_before, 1),
        "peak_rss_mb": round(peak_mb, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (smoke run)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "models.json"))
    ap.add_argument("--step-only", help=argparse.SUPPRESS)  # internal: one model, JSON to stdout
    args = ap.parse_args()
    steps = 2 if args.quick else 4
    if args.step_only:
        print(json.dumps(train_step(args.step_only, steps)))
        return

    torch.set_num_threads(THREADS)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": THREADS,
        "matmul_peak_gflops": round(matmul_peak_gflops(), 1),
    }
    print(f"matmul peak: {results['matmul_peak_gflops']} GFLOP/s", flush=True)
    sizes = [1000, 10000, 100000] if args.quick else [1000, 3000, 10000, 30000, 100000]
    results["tokenizer"] = tokenizer_scaling(sizes, args.quick)
    results["train_step"] = {}
    for name in ("pointmae_tiny", "pointmae_small"):
        proc = subprocess.run([sys.executable, __file__, "--step-only", name] + (["--quick"] if args.quick else []),
                              check=True, capture_output=True, text=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["fraction_of_matmul_peak"] = round(row["achieved_gflops"] / results["matmul_peak_gflops"], 3)
        results["train_step"][name] = row
        print(f"train step {name}: {row}", flush=True)
    results["matmul_peak_gflops_after"] = round(matmul_peak_gflops(), 1)  # drift check (shared host)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

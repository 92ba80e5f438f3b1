"""Point-resolution backbones on CPU: ptv3_micro and uresnet_micro speed, FLOP efficiency,
time breakdown, and ptv3_base inference cost against event size.

Run on demand (not part of the test suite)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_ptv3.py --data EVENTS.h5 [--threads 1] [--quick]

(``detfm simulate --events 200 --seed 1 --out EVENTS.h5`` makes default-mix events.) Writes
benchmarks/results/ptv3.json. Measured in one run on one machine:

* ``matmul_peak_gflops``: best fp32 square-matmul rate at the same thread count;
* per model (micro sizes): training step (forward + backward + AdamW of the backbone with a
  linear 5-class head and cross-entropy) and inference events/s on batches of 4 events,
  FLOPs per step from torch's FLOP counter (matmuls and attention, as executed), achieved
  FLOP/s as a percentage of the peak, and where the step's time goes (profiler: serialization,
  sparse conv, attention, pooling, norms, linear layers, activations, other);
* ``base_scaling``: ``ptv3_base`` inference time and peak memory for single events of 1k to
  100k voxels (each size in a fresh process), with the fitted power-law exponent.

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
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import (
    FlopCounterMode,
)

from flops import flop_mapping  # benchmarks/flops.py, beside this script

from detfm.data.batch import PackedBatch
from detfm.data.collate import collate
from detfm.data.dataset import EventDataset
from detfm.io import atomic_write_text
from detfm.models.ptv3 import PTV3_SIZES, PTv3
from detfm.models.uresnet import URESNET_SIZES, UResNet

BATCH = 4
BASE_SIZES = [1000, 3000, 10000, 30000, 100000]


def _median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak_gflops() -> float:
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n), torch.randn(n, n)
        fastest = min(_median_time(lambda a=a, b=b: a @ b, 1) for _ in range(4))
        best = max(best, 2 * n**3 / fastest / 1e9)
    return best


def build(name: str) -> torch.nn.Module:
    if name in PTV3_SIZES:
        return PTv3(PTV3_SIZES[name][0])
    return UResNet(URESNET_SIZES[name][0])


# Category of a profiler event by name. Scopes named "ptv3.*" / "sparse.*" start their own
# category; other events inherit their parent's, else are matched here (backward nodes too).
_CATEGORIES = [
    ("serialization (codes, sorting, windows)", ("ptv3.serialization", "sparse.windows")),
    ("kernel maps (neighbour search)", ("sparse.kernel_map",)),
    ("sparse conv", ("ptv3.sparse_conv", "_SubMConv")),
    ("attention", ("ptv3.attention", "ScaledDotProduct", "scaled_dot_product")),
    ("pooling", ("ptv3.pooling", "ScatterReduce", "scatter_reduce")),
    ("norms", ("layer_norm", "LayerNorm")),
    ("linear layers", ("aten::linear", "Addmm", "aten::addmm", "aten::mm", "MmBackward")),
    ("activations", ("gelu", "Gelu", "leaky_relu", "LeakyRelu")),
    ("index gathers (unpool, cells, to points)", ("IndexSelect", "index_select", "IndexAdd", "index_add",
                                                  "Index")),
    ("optimizer", ("Optimizer", "AdamW", "_foreach")),
]
_OTHER = "other (adds, drop-path, head, loss)"


def _category(name: str) -> str | None:
    for cat, keys in _CATEGORIES:
        if any(k in name for k in keys):
            return cat
    return None


def breakdown(step: Callable[[], None]) -> dict[str, float]:
    """Share of a step's CPU time per category: every op's self time goes to the innermost
    category scope around it (or its own name's category)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof, record_function("bench.step"):
        step()
    root = next(e for e in prof.events() if e.name == "bench.step")
    totals: dict[str, float] = {}

    def walk(event: Any, inherited: str | None) -> None:
        own = _category(event.name)
        scope = event.name.startswith(("ptv3.", "sparse."))
        cat = own if scope or inherited is None else inherited
        totals[cat or _OTHER] = totals.get(cat or _OTHER, 0.0) + event.self_cpu_time_total
        for child in event.cpu_children:
            walk(child, cat)

    for child in root.cpu_children:
        walk(child, None)
    whole = sum(totals.values())
    return {k: round(100.0 * v / whole, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def model_speed(name: str, batches: list[PackedBatch], peak: float) -> dict[str, Any]:
    """Training and inference speed of one model on ``batches`` (batches of BATCH events)."""
    voxels_per_batch = statistics.mean(b.num_points for b in batches)
    model = build(name)
    head = torch.nn.Linear(model.num_features, 5)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    state = {"i": 0}

    def step() -> None:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        out = model.forward_features(batch, generator=gen)
        loss = F.cross_entropy(head(out.point), batch.semantic.clamp(0, 4))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step()
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        step()
    flops = counter.get_total_flops()
    train_s = _median_time(step, len(batches))
    parts = breakdown(step)
    model.eval()

    def infer() -> None:
        batch = batches[state["i"] % len(batches)]
        state["i"] += 1
        with torch.no_grad():
            model.forward_features(batch)

    infer_s = _median_time(infer, len(batches))
    with FlopCounterMode(display=False, custom_mapping=flop_mapping()) as counter:
        infer()
    infer_flops = counter.get_total_flops()
    result = {
        "model": name,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "train_events_per_s": round(BATCH / train_s, 2),
        "infer_events_per_s": round(BATCH / infer_s, 2),
        "train_voxels_per_s": round(voxels_per_batch / train_s),
        "infer_voxels_per_s": round(voxels_per_batch / infer_s),
        "train_gflop_per_step": round(flops / 1e9, 2),
        "train_gflops": round(flops / train_s / 1e9, 1),
        "train_percent_of_peak": round(100.0 * flops / train_s / 1e9 / peak, 1),
        "infer_gflops": round(infer_flops / infer_s / 1e9, 1),
        "infer_percent_of_peak": round(100.0 * infer_flops / infer_s / 1e9 / peak, 1),
        "train_breakdown_percent": parts,
    }
    print(json.dumps(result), flush=True)
    return result


def _event_of_size(n: int, pool: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``n`` unique voxels: simulated events overlaid (shifted at random) until there are enough."""
    chunks, have = [], 0
    while have < n:
        coord = pool[int(rng.integers(len(pool)))]
        shift = rng.integers(-100, 101, size=3)
        moved = np.clip(coord + shift, 0, 767)
        chunks.append(moved)
        have = len(np.unique(np.concatenate(chunks), axis=0))
    voxels = np.unique(np.concatenate(chunks), axis=0)
    return voxels[rng.choice(len(voxels), n, replace=False)]


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def base_one(n: int, data: str, threads: int) -> dict[str, Any]:
    """ptv3_base inference on one event of ``n`` voxels (run in a fresh process)."""
    torch.set_num_threads(threads)
    ds = EventDataset(data)
    rng = np.random.default_rng(n)
    pool = [ds[i].coord.astype(np.int64) for i in range(min(len(ds), 64))]
    coord = torch.from_numpy(_event_of_size(n, pool, rng)).float()
    batch = PackedBatch(coord=coord, feat=torch.rand(n, 1) * 2 - 1, offsets=torch.tensor([0, n]),
                        energy=torch.ones(n))
    rss0 = _peak_rss_mb()
    with torch.no_grad():
        model = build("ptv3_base").eval()
        rss_model = _peak_rss_mb()
        seconds = _median_time(lambda: model.forward_features(batch), 1 if n >= 30000 else 3)
    peak = _peak_rss_mb()
    return {"voxels": n, "infer_s": round(seconds, 3), "peak_rss_mb": round(peak, 1),
            "model_rss_mb": round(rss_model - rss0, 1), "activation_mb": round(peak - rss_model, 1)}


def base_scaling(data: str, threads: int, sizes: list[int]) -> dict[str, Any]:
    rows = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--data", data, "--threads", str(threads),
                              "--base-one", str(n)], capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
    logn = np.log([r["voxels"] for r in rows])
    return {"rows": rows,
            "time_power_law_exponent": round(float(np.polyfit(logn, np.log([r["infer_s"] for r in rows]), 1)[0]), 3),
            "activation_memory_power_law_exponent": round(float(np.polyfit(
                logn[1:], np.log([max(r["activation_mb"], 1.0) for r in rows[1:]]), 1)[0]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="simulated events (detfm simulate)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer batches, base sizes up to 10k")
    parser.add_argument("--base-one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ptv3.json"))
    args = parser.parse_args()
    if args.base_one:
        print(json.dumps(base_one(args.base_one, args.data, args.threads)))
        return
    torch.set_num_threads(args.threads)
    ds = EventDataset(args.data)
    n_batches = 3 if args.quick else 8
    # events spread evenly over the file, so that the batches' mean size is the file's (the
    # first few events of a file can be far from it: 6 750 voxels for the first 12 of a
    # 200-event default-mix file whose mean is 5 455)
    picks = np.linspace(0, len(ds) - 1, n_batches * BATCH).round().astype(int)
    batches = [collate([ds[int(k)] for k in picks[i * BATCH:(i + 1) * BATCH]]) for i in range(n_batches)]
    voxels = [int(b.counts.float().mean()) for b in batches]
    file_mean = statistics.mean(ds[i].n_points for i in range(len(ds)))
    peak = matmul_peak_gflops()
    print(f"matmul peak {peak:.1f} GFLOP/s at {args.threads} thread(s); {statistics.mean(voxels):.0f} voxels/event",
          flush=True)
    results: dict[str, Any] = {
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
                 "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
                 "torch": torch.__version__},
        "data": {"file": os.path.basename(args.data), "events_per_batch": BATCH, "batches": n_batches,
                 "mean_voxels_per_event": round(statistics.mean(voxels), 1),
                 "file_events": len(ds), "file_mean_voxels_per_event": round(file_mean, 1)},
        "matmul_peak_gflops": round(peak, 1),
        "models": [model_speed(name, batches, peak) for name in ("ptv3_micro", "uresnet_micro")],
    }
    sizes = [s for s in BASE_SIZES if s <= 10000] if args.quick else BASE_SIZES
    results["base_scaling"] = base_scaling(args.data, args.threads, sizes)
    results["host"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

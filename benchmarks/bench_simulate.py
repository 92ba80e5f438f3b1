"""Simulator throughput: events/s per core for the default mix, scaling with --workers, peak memory.

Run on demand (not part of the test suite)::

    .venv/bin/python benchmarks/bench_simulate.py [--events 400]

Writes benchmarks/results/simulate.json. All numbers come from one run on one machine,
so ratios between them are meaningful even on a shared, noisy host.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from detfm.io import EventFile
from detfm.sim.simulate import SimConfig, simulate_event, simulate_to_file


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=400)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "simulate.json"))
    args = ap.parse_args()

    cfg = SimConfig(events=args.events, seed=123)
    simulate_event(cfg, 0)  # compile numba kernels outside the timed region

    # Stage timing on one core, in process.
    t0 = time.perf_counter()
    sizes = [simulate_event(cfg, i).n_points for i in range(args.events)]
    single = args.events / (time.perf_counter() - t0)

    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "events": args.events,
        "mix": cfg.mix,
        "events_per_s_one_core_in_process": round(single, 1),
        "points_per_event": {"min": int(np.min(sizes)), "median": float(np.median(sizes)),
                             "mean": float(np.mean(sizes)), "max": int(np.max(sizes))},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for workers in sorted({1, 2, os.cpu_count() or 1}):
            out = Path(tmp) / f"w{workers}.h5"
            rep = simulate_to_file(cfg, out, workers=workers, progress=False)
            results[f"events_per_s_file_workers_{workers}"] = round(rep.events_per_second, 1)
            results[f"content_sha256_workers_{workers}"] = rep.content_sha256
            assert len(EventFile(out)) == args.events
    results["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    hashes = {v for k, v in results.items() if k.startswith("content_sha256")}
    results["identical_files_across_worker_counts"] = len(hashes) == 1
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

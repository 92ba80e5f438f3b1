"""Simulator throughput: events/s per core for the default mix, scaling with --workers, peak memory.

Run on demand (not part of the test suite)::

    .venv/bin/python benchmarks/bench_simulate.py [--events 400] [--realism]

Writes benchmarks/results/simulate.json. All numbers come from one run on one machine,
so ratios between them are meaningful even on a shared, noisy host. The per-stage split
(transport, detector response) is timed on one core in process.

``--realism`` adds the numbers of docs/results/simulator.md: the class shares of 1 000
default-mix events at the 0.13 MeV loader threshold (as `detfm info` counts them) next to
PILArNet-M's, and the topology of a 100 MeV muon gun (track voxels without a lit face
neighbour; track voxels per voxel of the track's L1 extent).
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

from detfm.io import EventFile, atomic_write_text, layout
from detfm.sim.detector import get_detector
from detfm.sim.response import render
from detfm.sim.simulate import (
    SimConfig,
    simulate_event,
    simulate_to_file,
    simulate_truth,
)

# PILArNet-M points per class (issue 14, from the dataset's published counts).
PILARNET_M_POINTS = {"shower": 1.93e9, "track": 2.04e9, "michel": 3.41e7, "delta": 9.20e7, "low_energy": 1.15e9}


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def class_shares(events: int = 1000, seed: int = 0, threshold: float = 0.13) -> dict[str, object]:
    """Voxel shares per semantic class of the default mix, and each over PILArNet-M's."""
    cfg = SimConfig(events=events, seed=seed)
    counts = np.zeros(len(layout.SEMANTIC_CLASSES), np.int64)
    for i in range(events):
        ev = simulate_event(cfg, i)
        keep = ev.energy >= threshold
        counts += np.bincount(ev.semantic[keep].astype(np.int64), minlength=len(counts))
    shares = counts / counts.sum()
    total = sum(PILARNET_M_POINTS.values())
    ref = {k: v / total for k, v in PILARNET_M_POINTS.items()}
    return {"events": events, "seed": seed, "threshold_mev": threshold,
            "points_per_event": round(float(counts.sum()) / events, 1),
            "shares": {k: round(float(x), 4) for k, x in zip(layout.SEMANTIC_CLASSES, shares, strict=True)},
            "pilarnet_m": {k: round(v, 4) for k, v in ref.items()},
            "ratio_to_pilarnet_m": {k: round(float(x) / ref[k], 3)
                                    for k, x in zip(layout.SEMANTIC_CLASSES, shares, strict=True)}}


def muon_topology(events: int = 200, seed: int = 3) -> dict[str, object]:
    """Track voxels without a lit face neighbour (as written, and at 0.13 MeV) for 100 MeV muons,
    and track voxels per voxel of the muon's L1 extent (from consecutive step midpoints)."""
    cfg = SimConfig(events=events, seed=seed, mix="gun", gun="mu-:100")
    n = layout.BOX_VOXELS
    isolated = {0.0: [0, 0], 0.13: [0, 0]}
    lit = 0
    extent = 0.0
    for i in range(events):
        truth, rng = simulate_truth(cfg, i)
        ev = render(truth, get_detector("nominal"), rng)
        for thr, acc in isolated.items():
            keep = ev.energy >= thr
            c = ev.coords[keep].astype(np.int64)
            key = (c[:, 0] * n + c[:, 1]) * n + c[:, 2]
            ordered = np.sort(key)
            mine = ev.semantic[keep] == layout.TRACK
            has = np.zeros(int(mine.sum()), bool)
            for step in (n * n, n, 1):
                for sign in (1, -1):
                    probe = key[mine] + sign * step
                    at = np.minimum(np.searchsorted(ordered, probe), len(ordered) - 1)
                    has |= ordered[at] == probe
            acc[0] += int((~has).sum())
            acc[1] += int(mine.sum())
        mid = truth.deposits.pos_cm[truth.deposits.frag == 0]
        extent += float(np.abs(np.diff(mid, axis=0)).sum()) / layout.VOXEL_SIZE_CM
        lit += int((ev.semantic == layout.TRACK).sum())
    return {"events": events, "gun": cfg.gun,
            "isolated_track_voxel_fraction_as_written": round(isolated[0.0][0] / isolated[0.0][1], 4),
            "isolated_track_voxel_fraction_at_0.13_mev": round(isolated[0.13][0] / isolated[0.13][1], 4),
            "track_voxels_per_l1_voxel": round(lit / extent, 3)}


def stage_split(cfg: SimConfig, events: int) -> dict[str, float]:
    """Events per CPU second of transport and of the detector response alone, in process."""
    det = get_detector(cfg.detector)
    t_transport = t_render = 0.0
    for i in range(events):
        t0 = time.process_time()
        truth, rng = simulate_truth(cfg, i)
        t1 = time.process_time()
        render(truth, det, rng)
        t_render += time.process_time() - t1
        t_transport += t1 - t0
    return {"transport_events_per_cpu_s": round(events / t_transport, 1),
            "response_events_per_cpu_s": round(events / t_render, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=400)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "simulate.json"))
    ap.add_argument("--realism", action="store_true", help="add class shares and muon-gun topology")
    args = ap.parse_args()

    cfg = SimConfig(events=args.events, seed=123)
    load = os.getloadavg()[0]
    simulate_event(cfg, 0)  # compile numba kernels outside the timed region

    # One core, in process: wall clock, and CPU time of this process (what a core delivers
    # when other jobs share the machine; on an idle machine the two agree).
    t0, c0 = time.perf_counter(), time.process_time()
    sizes = [simulate_event(cfg, i).n_points for i in range(args.events)]
    single = args.events / (time.perf_counter() - t0)
    single_cpu = args.events / (time.process_time() - c0)

    results: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min_at_start": round(load, 2),
        "events": args.events,
        "mix": cfg.mix,
        "events_per_s_one_core_in_process": round(single, 1),
        "events_per_cpu_s_one_core_in_process": round(single_cpu, 1),
        "points_per_event": {"min": int(np.min(sizes)), "median": float(np.median(sizes)),
                             "mean": float(np.mean(sizes)), "max": int(np.max(sizes))},
        "stages_one_core": stage_split(cfg, args.events),
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
    if args.realism:
        results["class_shares"] = class_shares()
        results["muon_gun_topology"] = muon_topology()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

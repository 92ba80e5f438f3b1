"""``detfm predict`` rows of a ``particles`` run: one row per event, per found particle its
class probabilities, points, kinetic energy and start point.

Datasets (one row per input event, in file order; ``K`` particles in the event):

* ``particle_probs``: ``K * 5`` values, reshape to (K, 5): the class probabilities given
  that the query found a particle (softmax over the 5 classes; the same layout as the
  other tasks' ``probs``);
* ``particle_score``: (K,) the probability that the query found a particle at all
  (1 - its *no object* probability);
* ``particle_pred``: (K,) uint8 most likely particle class;
* ``particle_energy``: (K,) kinetic energy in MeV; ``particle_start``: ``K * 3`` values,
  the start point in voxels;
* ``particle_sizes``: (K,) int64 points per particle and ``particle_points``: the point
  indices of particle 0, then particle 1, ... (indices into the event's points with value
  >= the run's energy threshold, in stored order); points in no particle (low-energy
  deposits, unclaimed points) are in none;
* ``particle_query``: (K,) int64 the query that made each particle.

An event with no point above the threshold gets empty rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from detfm.data import EventDataset, collate
from detfm.io import atomic_path

__all__ = ["write_particle_predictions"]


def write_particle_predictions(task: Any, dataset: EventDataset, dst: Path, attrs: dict[str, Any], *,
                               batch_size: int, dtype: str, device: str, progress: bool) -> int:
    """Write the rows of the module docstring for every event of ``dataset`` to ``dst``
    (atomically); return the number of points seen."""
    import h5py

    n = len(dataset)
    total = 0
    vf = h5py.vlen_dtype(np.dtype(dtype))
    with atomic_path(dst) as tmp, h5py.File(tmp, "w") as h5, torch.no_grad(), \
            tqdm(total=n, desc="predicting", unit="event", delay=2.0, leave=False, disable=not progress) as bar:
        probs_ds = h5.create_dataset("particle_probs", (n,), dtype=vf)
        score_ds = h5.create_dataset("particle_score", (n,), dtype=h5py.vlen_dtype(np.float32))
        pred_ds = h5.create_dataset("particle_pred", (n,), dtype=h5py.vlen_dtype(np.uint8))
        energy_ds = h5.create_dataset("particle_energy", (n,), dtype=h5py.vlen_dtype(np.float32))
        start_ds = h5.create_dataset("particle_start", (n,), dtype=h5py.vlen_dtype(np.float32))
        sizes_ds = h5.create_dataset("particle_sizes", (n,), dtype=h5py.vlen_dtype(np.int64))
        points_ds = h5.create_dataset("particle_points", (n,), dtype=h5py.vlen_dtype(np.int64))
        query_ds = h5.create_dataset("particle_query", (n,), dtype=h5py.vlen_dtype(np.int64))
        index_ds = h5.create_dataset("event_index", (n,), dtype=np.int64)
        count_ds = h5.create_dataset("n_points", (n,), dtype=np.int64)
        h5.attrs.update(attrs)
        for a in range(0, n, batch_size):
            samples = [dataset[i] for i in range(a, min(a + batch_size, n))]
            full = [j for j, s in enumerate(samples) if s.n_points > 0]
            pred = None
            if full:
                batch = collate([samples[j] for j in full]).to(device)
                pred = task.predict(batch)
                full_probs = torch.softmax(pred.logits.float(), -1)
                score = (1.0 - full_probs[:, -1]).cpu().numpy()
                probs = torch.softmax(pred.logits[:, :-1].float(), -1).cpu().numpy()
                event, labels = pred.event.cpu().numpy(), pred.label.cpu().numpy()
                energy, start = pred.energy.cpu().numpy(), pred.start.cpu().numpy()
                query, point_particle = pred.query.cpu().numpy(), pred.point_particle.cpu().numpy()
                offsets = batch.offsets.cpu().numpy()
            for k, s in enumerate(samples):
                rows = {"probs": np.zeros(0), "score": np.zeros(0, np.float32), "pred": np.zeros(0, np.uint8), "energy": np.zeros(0, np.float32),
                        "start": np.zeros(0, np.float32), "sizes": np.zeros(0, np.int64),
                        "points": np.zeros(0, np.int64), "query": np.zeros(0, np.int64)}
                if pred is not None and k in full:
                    b = full.index(k)
                    mine = np.flatnonzero(event == b)
                    local = point_particle[offsets[b]:offsets[b + 1]]
                    members = [np.flatnonzero(local == m) for m in mine]
                    rows = {"probs": probs[mine].reshape(-1), "score": score[mine].astype(np.float32), "pred": labels[mine].astype(np.uint8),
                            "energy": energy[mine].astype(np.float32),
                            "start": start[mine].astype(np.float32).reshape(-1),
                            "sizes": np.array([len(x) for x in members], np.int64),
                            "points": np.concatenate(members).astype(np.int64) if members else np.zeros(0, np.int64),
                            "query": query[mine].astype(np.int64)}
                probs_ds[a + k] = rows["probs"].astype(dtype)
                score_ds[a + k] = rows["score"]
                pred_ds[a + k] = rows["pred"]
                energy_ds[a + k] = rows["energy"]
                start_ds[a + k] = rows["start"]
                sizes_ds[a + k] = rows["sizes"]
                points_ds[a + k] = rows["points"]
                query_ds[a + k] = rows["query"]
                index_ds[a + k] = s.index
                count_ds[a + k] = s.n_points
                total += s.n_points
            bar.update(len(samples))
    return total

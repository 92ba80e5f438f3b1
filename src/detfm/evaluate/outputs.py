"""A trained task's raw outputs over a dataset, as numpy arrays for uncertainty studies.

:func:`collect_point_outputs` keeps the logits of every point of every event of a
segmentation task (with the event boundaries, so per-event statistics and exchangeable
per-event subsampling stay possible); :func:`collect_particle_outputs` keeps the logits of
every labeled particle instance of a particle-identification task. Both run the model in
eval mode without gradients, in dataset order, and restore the task's training mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detfm.data import EventDataset, PackedBatch
from detfm.errors import DetfmError
from detfm.evaluate.scoring import eval_batches
from detfm.evaluate.calibration import softmax
from detfm.tasks.pid import ParticleID
from detfm.tasks.segmentation import SemanticSegmentation

__all__ = ["ParticleOutputs", "PointOutputs", "collect_particle_outputs", "collect_point_outputs"]


def _check_1d(name: str, a: np.ndarray, n: int | None = None) -> None:
    if a.ndim != 1 or (n is not None and a.shape[0] != n):
        want = f"({n},)" if n is not None else "1-d"
        raise DetfmError(f"{name} must have shape {want}, got {a.shape}")


@dataclass(frozen=True, eq=False)
class PointOutputs:
    """Per-point logits of a segmentation task over a dataset.

    Attributes:
        logits: (N, C) float32 logits of every point, events concatenated in dataset order.
        labels: (N,) int64 semantic labels, -1 where the dataset has none.
        offsets: (E + 1,) int64 event boundaries: event ``e`` is rows ``offsets[e]:offsets[e+1]``.
        event_index: (E,) int64 each event's dataset ``index`` (its number across the files).
        coords: (N, 3) coordinates of the points (float32, as the model saw them).
    """

    logits: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    event_index: np.ndarray
    coords: np.ndarray

    def __post_init__(self) -> None:
        if self.logits.ndim != 2:
            raise DetfmError(f"logits must have shape (N, C), got {self.logits.shape}")
        n = self.logits.shape[0]
        _check_1d("labels", self.labels, n)
        _check_1d("offsets", self.offsets)
        _check_1d("event_index", self.event_index, self.offsets.shape[0] - 1)
        if self.coords.shape != (n, 3):
            raise DetfmError(f"coords must have shape ({n}, 3), got {self.coords.shape}")
        if (self.offsets.size == 0 or int(self.offsets[0]) != 0 or int(self.offsets[-1]) != n
                or bool((np.diff(self.offsets) < 0).any())):
            raise DetfmError(f"offsets must rise from 0 to the number of points ({n})")

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    @property
    def num_events(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def event_slice(self, e: int) -> slice:
        """The rows of event ``e`` (0..num_events-1)."""
        if not -self.num_events <= e < self.num_events:
            raise IndexError(f"event {e} out of range for {self.num_events} events")
        e %= self.num_events
        return slice(int(self.offsets[e]), int(self.offsets[e + 1]))

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """(N, C) float64 softmax of ``logits / temperature``."""
        return softmax(self.logits, temperature)


@dataclass(frozen=True, eq=False)
class ParticleOutputs:
    """Per-instance logits of a particle-identification task over a dataset (labeled instances only).

    Attributes:
        logits: (M, C) float32 logits of every labeled particle instance.
        labels: (M,) int64 PID of each instance (majority vote of its points).
        event: (M,) int64 the instance's event: its position in the dataset (0..len-1).
        event_index: (E,) int64 the dataset ``index`` of every event of the dataset (so
            ``event_index[event]`` locates an instance's event in the files), or None.
    """

    logits: np.ndarray
    labels: np.ndarray
    event: np.ndarray
    event_index: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.logits.ndim != 2:
            raise DetfmError(f"logits must have shape (M, C), got {self.logits.shape}")
        _check_1d("labels", self.labels, self.logits.shape[0])
        _check_1d("event", self.event, self.logits.shape[0])
        if self.event_index is not None:
            _check_1d("event_index", self.event_index)

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def probs(self, temperature: float = 1.0) -> np.ndarray:
        """(M, C) float64 softmax of ``logits / temperature``."""
        return softmax(self.logits, temperature)


# ----------------------------------------------------------------------------- collection
def _event_index(batch: PackedBatch, first: int) -> np.ndarray:
    if batch.index is not None:
        out: np.ndarray = batch.index.cpu().numpy().astype(np.int64)
        return out
    return np.arange(first, first + len(batch), dtype=np.int64)


def collect_point_outputs(task: SemanticSegmentation, dataset: EventDataset, batch_size: int = 8,
                          progress: bool = False) -> PointOutputs:
    """The logits of every point of every event of ``dataset`` (labels -1 when it has none)."""
    logits, labels, coords, counts, index = [], [], [], [], []
    for a, batch in eval_batches(task, dataset, batch_size, progress):
        logits.append(task.forward_logits(batch).float().cpu().numpy())
        labels.append(batch.semantic.cpu().numpy() if batch.semantic is not None
                      else np.full(batch.num_points, -1, dtype=np.int64))
        coords.append(batch.coord.cpu().numpy())
        counts.append(batch.counts.cpu().numpy())
        index.append(_event_index(batch, a))
    offsets = np.zeros(sum(len(c) for c in counts) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts), out=offsets[1:])
    return PointOutputs(logits=np.concatenate(logits).astype(np.float32, copy=False),
                        labels=np.concatenate(labels).astype(np.int64, copy=False), offsets=offsets,
                        event_index=np.concatenate(index), coords=np.concatenate(coords))


def collect_particle_outputs(task: ParticleID, dataset: EventDataset, batch_size: int = 8,
                             progress: bool = False) -> ParticleOutputs:
    """The logits of every particle instance with a PID label in ``dataset`` (needs labels)."""
    logits, labels, events, index = [], [], [], []
    for a, batch in eval_batches(task, dataset, batch_size, progress):
        out, inst = task.forward_instances(batch)
        scored = (inst.label >= 0).cpu()
        logits.append(out.float().cpu()[scored].numpy())
        labels.append(inst.label.cpu()[scored].numpy())
        events.append(inst.event.cpu()[scored].numpy() + a)
        index.append(_event_index(batch, a))
    return ParticleOutputs(logits=np.concatenate(logits).astype(np.float32, copy=False),
                           labels=np.concatenate(labels).astype(np.int64, copy=False),
                           event=np.concatenate(events).astype(np.int64, copy=False),
                           event_index=np.concatenate(index))

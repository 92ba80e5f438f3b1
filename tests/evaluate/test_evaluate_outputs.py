"""Collecting a task's logits over a dataset: shapes, event boundaries, labels, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from detfm_testing import TINY_SHALLOW

from detfm.data import EventDataset, collate
from detfm.errors import DataFormatError, DetfmError
from detfm.evaluate.outputs import ParticleOutputs, PointOutputs, collect_particle_outputs, collect_point_outputs
from detfm.models import PointMAE, create_model
from detfm.sim.simulate import SimConfig, simulate_to_file
from detfm.tasks.pid import PIDConfig, ParticleID, find_instances
from detfm.tasks.segmentation import SegmentationConfig, SemanticSegmentation


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "ev.h5"
    simulate_to_file(SimConfig(events=6, seed=4), path, progress=False)
    return path


def backbone() -> PointMAE:
    m = create_model("pointmae_micro", seed=0, **TINY_SHALLOW)
    assert isinstance(m, PointMAE)
    return m


@pytest.fixture(scope="module")
def dataset(events: Path) -> EventDataset:
    return EventDataset([events], min_points=32).subset([0, 2, 3, 4, 5])


def test_point_outputs_follow_collate(dataset: EventDataset) -> None:
    task = SemanticSegmentation(backbone(), SegmentationConfig()).train()
    out = collect_point_outputs(task, dataset, batch_size=2)
    assert task.training  # mode restored
    whole = collate([dataset[i] for i in range(len(dataset))])
    assert out.num_events == len(dataset) == 5
    assert out.logits.shape == (whole.num_points, 5) and out.logits.dtype == np.float32
    assert np.array_equal(out.offsets, whole.offsets.numpy()) and out.offsets.dtype == np.int64
    assert np.array_equal(out.labels, whole.semantic.numpy()) and out.labels.dtype == np.int64
    assert whole.index is not None and np.array_equal(out.event_index, whole.index.numpy())
    assert np.array_equal(out.coords, whole.coord.numpy())
    e = out.event_slice(3)
    assert e.stop - e.start == dataset[3].n_points
    probs = out.probs()
    assert probs.dtype == np.float64 and np.allclose(probs.sum(axis=1), 1.0)
    assert np.array_equal(probs.argmax(axis=1), out.probs(temperature=2.5).argmax(axis=1))
    # The same logits as the task gives for one event on its own, in eval mode.
    task.eval()
    with torch.no_grad():
        alone = task.forward_logits(collate([dataset[3]])).numpy()
    assert np.allclose(out.logits[e], alone, atol=1e-5)


def test_point_outputs_are_deterministic_and_unlabeled_data_gets_minus_one(events: Path,
                                                                           dataset: EventDataset) -> None:
    task = SemanticSegmentation(backbone(), SegmentationConfig())
    a = collect_point_outputs(task, dataset, batch_size=3)
    b = collect_point_outputs(task, dataset, batch_size=3)
    assert np.array_equal(a.logits, b.logits)
    unlabeled = collect_point_outputs(task, EventDataset([events], min_points=32, labels=False).subset([0, 2]))
    assert (unlabeled.labels == -1).all() and unlabeled.num_events == 2
    with pytest.raises(DetfmError, match="no events"):
        collect_point_outputs(task, dataset.subset([]))
    with pytest.raises(DetfmError, match="batch_size"):
        collect_point_outputs(task, dataset, batch_size=0)


def test_point_outputs_check_their_arrays() -> None:
    with pytest.raises(DetfmError, match="offsets"):
        PointOutputs(logits=np.zeros((4, 3), np.float32), labels=np.zeros(4, np.int64),
                     offsets=np.array([0, 3]), event_index=np.array([0]), coords=np.zeros((4, 3)))
    with pytest.raises(DetfmError, match="event_index"):
        PointOutputs(logits=np.zeros((4, 3), np.float32), labels=np.zeros(4, np.int64),
                     offsets=np.array([0, 4]), event_index=np.array([0, 1]), coords=np.zeros((4, 3)))
    ok = PointOutputs(logits=np.zeros((4, 3), np.float32), labels=np.zeros(4, np.int64),
                      offsets=np.array([0, 1, 4]), event_index=np.array([7, 9]), coords=np.zeros((4, 3)))
    assert ok.event_slice(-1) == slice(1, 4)
    with pytest.raises(IndexError):
        ok.event_slice(2)


def test_particle_outputs_keep_labeled_instances(events: Path, dataset: EventDataset) -> None:
    task = ParticleID(backbone(), PIDConfig(head="linear")).train()
    out = collect_particle_outputs(task, dataset, batch_size=2)
    assert task.training
    assert isinstance(out, ParticleOutputs)
    whole = collate([dataset[i] for i in range(len(dataset))])
    assert whole.instance is not None and whole.pid is not None
    inst = find_instances(whole.offsets, whole.instance, whole.pid)
    keep = (inst.label >= 0).numpy()
    assert len(out) == int(keep.sum()) > 0 and out.logits.shape == (len(out), 5)
    assert np.array_equal(out.labels, inst.label.numpy()[keep]) and (out.labels >= 0).all()
    assert np.array_equal(out.event, inst.event.numpy()[keep])  # positions in the dataset
    assert out.event_index is not None and np.array_equal(out.event_index, whole.index.numpy())
    assert np.allclose(out.probs().sum(axis=1), 1.0)
    again = collect_particle_outputs(task, dataset, batch_size=2)
    assert np.array_equal(out.logits, again.logits)
    with pytest.raises(DataFormatError, match="instance"):
        collect_particle_outputs(task, EventDataset([events], min_points=32, labels=False))

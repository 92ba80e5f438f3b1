"""Task and objective registries: what the recipes and the command line read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detfm.data import PackedBatch
from detfm.errors import ConfigError
from detfm.tasks import SegmentationConfig
from detfm.tasks.registry import get_objective, get_task, list_objectives, list_tasks


def test_registered_tasks_and_their_headline_metrics() -> None:
    assert list_tasks()[:3] == ["semseg", "pid", "event"]
    semseg = get_task("semseg")
    assert semseg.config_cls is SegmentationConfig and semseg.headline == "macro_f1_4"
    assert semseg.class_names[semseg.excluded_class] == "low_energy"
    assert {get_task(t).unit for t in ("semseg", "pid", "event")} == {"point", "instance", "event"}
    assert list_objectives() == ["mpm", "distill"]
    assert get_objective("distill").settings_field == "distill" and get_objective("mpm").settings_field == "task"
    with pytest.raises(ConfigError, match="did you mean 'pid'"):
        get_task("pdi")
    with pytest.raises(ConfigError, match="unknown pretraining objective"):
        get_objective("byol")


def test_labels_without_a_model() -> None:
    # two events: 3 points (instances 0, 0, 1) and 2 points (instance 0)
    batch = PackedBatch(coord=torch.zeros(5, 3), feat=torch.zeros(5, 1), offsets=torch.tensor([0, 3, 5]),
                        energy=torch.tensor([1.0, 1.0, 5.0, 2.0, 2.0]), semantic=torch.tensor([0, 0, 1, 2, 2]),
                        pid=torch.tensor([0, 0, 2, 1, 1]), instance=torch.tensor([0, 0, 1, 0, 0]))
    assert get_task("semseg").labels(batch).tolist() == [0, 0, 1, 2, 2]
    assert get_task("pid").labels(batch).tolist() == [0, 2, 1]
    assert np.array_equal(get_task("event").labels(batch).numpy(), [2, 1])  # the leading particle per event

"""The scoring loop: confusion matrices from any task's scored items, and the two semseg views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from detfm.data import EventDataset
from detfm.errors import DetfmError
from detfm.evaluate.scoring import eval_batches, score_task, task_confusion
from detfm.tasks.registry import get_task


class Oracle(nn.Module):
    """Scores every point with its true class, except that tracks (class 1) are called class 4."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.calls = 0

    def scored_items(self, batch):  # type: ignore[no-untyped-def]
        assert not self.training and not torch.is_grad_enabled()
        self.calls += 1
        truth = batch.semantic
        called = torch.where(truth == 1, 4, truth)
        logits = nn.functional.one_hot(called, 5).float() + 0.1 * nn.functional.one_hot(truth, 5).float()
        return truth, logits


def test_confusions_and_the_view_without_the_excluded_class(tiny_events) -> None:  # type: ignore[no-untyped-def]
    data = EventDataset([tiny_events], labels=True).subset(range(4))
    task = Oracle().train()
    cm, cm4 = task_confusion(task, data, 5, excluded=4, batch_size=3)
    assert task.training and task.calls == 2  # mode restored; 4 events in batches of 3
    truth = np.concatenate([data[i].semantic for i in range(4)])
    assert cm.sum() == len(truth) and cm[1, 4] == (truth == 1).sum() > 0 and cm[1, 1] == 0
    # without class 4 the argmax over the other four logits finds the track again
    assert cm4.sum() == (truth != 4).sum() and cm4[1, 1] == (truth == 1).sum()
    scores = score_task(task, get_task("semseg"), data, batch_size=4)
    assert scores["macro_f1_4"] == pytest.approx(1.0) and scores["macro_f1_5"] < 1.0
    assert scores["points"] == len(truth) and list(scores["f1_4"]) == ["shower", "track", "michel", "delta"]


def test_bad_batch_sizes_and_empty_datasets(tiny_events) -> None:  # type: ignore[no-untyped-def]
    data = EventDataset([tiny_events], labels=True)
    with pytest.raises(DetfmError, match="batch_size"):
        list(eval_batches(Oracle(), data, batch_size=0))
    with pytest.raises(DetfmError, match="no events"):
        list(eval_batches(Oracle(), data.subset([])))


def test_semseg_scores_per_particle_in_the_view_without_low_energy(tiny_events) -> None:  # type: ignore[no-untyped-def]
    data = EventDataset([tiny_events], labels=True).subset(range(5))
    by_four = score_task(Oracle(), get_task("semseg"), data, batch_size=4)["per_particle"]
    by_two = score_task(Oracle(), get_task("semseg"), data, batch_size=2)["per_particle"]
    assert by_four == by_two  # an event's pieces do not depend on the batch it is scored in
    for c, name in enumerate(get_task("semseg").class_names):
        expected = sum(len(np.unique(data[i].instance[(data[i].semantic == c) & (data[i].instance >= 0)]))
                       for i in range(5))
        assert by_four[name]["pieces"] == expected
    assert by_four["low_energy"]["pieces"] == 0  # low-energy deposits belong to no particle instance
    # tracks are called low-energy by the full argmax, found again in the 4-class view
    assert by_four["track"]["pieces"] > 0 and by_four["track"]["mean_recall"] == 1.0
    assert by_four["track"]["tagged"] == 1.0

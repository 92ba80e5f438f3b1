"""Kept frozen-backbone outputs: equal to running the backbone, skip it on later passes, never stale."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from detfm.data import EventDataset, collate
from detfm.errors import ConfigError
from detfm.models import create_model
from detfm.tasks.feature_cache import FeatureCache
from detfm.tasks.segmentation import SegmentationConfig, SemanticSegmentation


@pytest.fixture(scope="module")
def events(tiny_events: Path) -> EventDataset:
    return EventDataset([tiny_events], min_points=32, labels=True)


class Counting(torch.nn.Module):
    """A backbone that counts the events it is run on."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = create_model("ptv3_micro", seed=0, drop_path=0.0).eval()
        self.events = 0

    def forward_features(self, batch):  # type: ignore[no-untyped-def]
        self.events += len(batch)
        return self.inner.forward_features(batch)


def test_kept_outputs_equal_the_backbone_and_skip_it_on_later_passes(events: EventDataset) -> None:
    backbone = Counting()
    cache = FeatureCache(keep_levels=True)
    first = cache.encode(backbone, collate([events[0], events[1]]))
    assert backbone.events == 2 and len(cache) == 2 and first.levels
    swapped = collate([events[1], events[0]])  # the same events, another batch
    kept = cache.encode(backbone, swapped)
    assert backbone.events == 2, "a batch of kept events ran the backbone"
    assert (cache.stats.hits, cache.stats.misses) == (2, 2)
    with torch.no_grad():
        direct = backbone.inner.forward_features(swapped)
    torch.testing.assert_close(kept.point, direct.point, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kept.local, direct.local)
    torch.testing.assert_close(kept.multilevel(), direct.multilevel(), rtol=1e-5, atol=1e-5)
    assert not kept.extras
    # one new event in the batch: the whole batch runs, and the new event is kept too
    cache.encode(backbone, collate([events[0], events[2]]))
    assert backbone.events == 4 and len(cache) == 3


def test_changed_events_are_computed_again_and_a_full_cache_keeps_nothing(events: EventDataset) -> None:
    backbone = Counting()
    cache = FeatureCache()
    cache.encode(backbone, collate([events[0]]))
    moved = dataclasses.replace(events[0], coord=events[0].coord[::-1].copy())  # same number, points reordered
    out = cache.encode(backbone, collate([moved]))
    assert backbone.events == 2, "an event whose points changed was served from the cache"
    with torch.no_grad():
        torch.testing.assert_close(out.point, backbone.inner.forward_features(collate([moved])).point)
    assert len(cache) == 1 and not cache.encode(backbone, collate([moved])).levels and backbone.events == 2
    empty = FeatureCache(max_bytes=0)
    for _ in range(2):
        empty.encode(backbone, collate([events[0]]))
    assert len(empty) == 0 and empty.stats.misses == 2 and backbone.events == 4
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(max_bytes=-1)


def test_a_task_keeps_features_only_when_frozen_and_only_in_training(events: EventDataset) -> None:
    backbone = create_model("ptv3_micro", seed=0, drop_path=0.0)
    with pytest.raises(ConfigError, match="frozen backbone"):
        SemanticSegmentation(backbone, SegmentationConfig(freeze_backbone=False)).cache_features()
    task = SemanticSegmentation(backbone, SegmentationConfig(freeze_backbone=True))
    cache = task.cache_features()
    batch = collate([events[0], events[1]])
    with torch.no_grad():
        scored = task.eval().point_outputs(batch)
        assert len(cache) == 0, "scoring (eval mode) filled the cache"
        task.train().point_outputs(batch)
        again = task.point_outputs(batch)
    assert len(cache) == 2 and cache.stats.hits == 2
    torch.testing.assert_close(again, scored, rtol=1e-5, atol=1e-5)

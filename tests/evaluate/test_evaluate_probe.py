"""Linear probe: it can succeed (label-carrying features), fail (noise), is deterministic,
scores every test point, leaves the backbone untouched, and rejects bad input clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detfm_testing import TINY_NARROW
from torch import nn

from detfm.data import EventDataset, PackedBatch
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.probe import (
    PointFeatures,
    ProbeResult,
    compare_probes,
    extract_point_features,
    fit_probe,
    linear_probe,
)
from detfm.io import layout
from detfm.models import BackboneOutput, create_model
from detfm.sim.simulate import SimConfig, simulate_to_file

N_CLASSES = len(layout.SEMANTIC_CLASSES)
FOUR = ("shower", "track", "michel", "delta")


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 simulated events; the split below uses 8 of them without a Michel point."""
    path = tmp_path_factory.mktemp("probe") / "sim.h5"
    simulate_to_file(SimConfig(events=16, seed=1), path, progress=False)
    return path


@pytest.fixture(scope="module")
def split(events: Path) -> tuple[EventDataset, EventDataset]:
    """6 train and 2 test events, none with a Michel point (the tests of an absent class need
    that; picked from the file, so they do not depend on what the simulator draws)."""
    ds = EventDataset(events)
    michel = layout.SEMANTIC_CLASSES.index("michel")
    clean = [i for i in range(len(ds)) if not (ds[i].semantic == michel).any()]
    assert len(clean) >= 8, f"only {len(clean)} of {len(ds)} events without Michel points"
    return ds.subset(clean[:6]), ds.subset(clean[6:8])


class FakeBackbone(nn.Module):
    """Per-point features = ``signal`` x one-hot(true class) + Gaussian noise, one feature
    vector per point. ``signal=0`` gives pure noise. The noise is seeded by the batch, so it is
    reproducible."""

    def __init__(self, signal: float, noise: float = 1.0, dim: int = 8, nan: bool = False) -> None:
        super().__init__()
        self.signal, self.noise, self.dim, self.nan = signal, noise, dim, nan

    def forward_features(self, batch: PackedBatch) -> BackboneOutput:
        assert batch.semantic is not None and batch.index is not None
        g = torch.Generator().manual_seed(1000 * int(batch.index[0]) + len(batch))
        p = batch.num_points
        f = self.noise * torch.randn(p, self.dim, generator=g)
        f[:, :N_CLASSES] += self.signal * nn.functional.one_hot(batch.semantic, N_CLASSES)
        if self.nan:
            f[0, 0] = float("nan")
        return BackboneOutput(point=f, local=f[:, :0])


def chance_macro_f1(result: ProbeResult) -> float:
    """Expected macro-F1 if predictions were independent of the truth, with the same class
    frequencies as measured: F1_k = 2 p_k q_k / (p_k + q_k) (p: true, q: predicted share)."""
    cm = result.confusion
    p, q = cm.sum(axis=1) / cm.sum(), cm.sum(axis=0) / cm.sum()
    present = (p + q) > 0
    return float(np.mean(2 * p[present] * q[present] / (p[present] + q[present])))


def total_points(ds: EventDataset) -> int:
    counts = ds.point_counts
    assert counts is not None
    return int(counts.sum())


# ----------------------------------------------------------------------------- can succeed, can fail
def test_label_carrying_features_reach_macro_f1_one(split: tuple[EventDataset, EventDataset]) -> None:
    train, test = split
    result = linear_probe(FakeBackbone(signal=3.0, noise=0.3), train, test, progress=False,
                          max_points_per_event=500)
    # Tolerance: the classes are separated by 10 noise sigmas, so not a single error is expected.
    assert result.macro_f1 > 0.99
    assert result.macro_f1_no_lowe > 0.99
    # Every test point is scored, and the training set is the per-event subsample.
    assert result.n_test_points == total_points(test) and result.n_test_ignored == 0
    counts = train.point_counts
    assert counts is not None
    assert result.n_train_points == int(np.minimum(counts, 500).sum())
    assert (result.n_train_events, result.n_test_events, result.feature_dim) == (6, 2, 8)


def test_noise_features_score_at_chance(split: tuple[EventDataset, EventDataset]) -> None:
    train, test = split
    result = linear_probe(FakeBackbone(signal=0.0), train, test, progress=False,
                          max_points_per_event=500)
    chance = chance_macro_f1(result)
    # ~12k test points: independent predictions stay within 0.05 of the chance level.
    assert result.macro_f1 == pytest.approx(chance, abs=0.05)
    assert result.macro_f1 < 0.35


def test_fit_probe_on_arrays_all_five_classes() -> None:
    rng = np.random.default_rng(0)

    def blobs(n: int, spread: float) -> PointFeatures:
        y = rng.integers(0, N_CLASSES, n)
        centres = 3.0 * np.eye(N_CLASSES, 16)
        x = (centres[y] + spread * rng.normal(size=(n, 16))).astype(np.float32)
        return PointFeatures(x, y, rng.integers(0, 10, n))

    result = fit_probe(blobs(3000, 0.3), blobs(3000, 0.3))
    assert result.macro_f1 > 0.99 and len(result.classes) == N_CLASSES
    assert all(v > 0.99 for v in result.f1.values())

    # Leaving out low-energy: a 4x4 confusion matrix, its points counted as ignored.
    test = blobs(2000, 0.3)
    four = fit_probe(blobs(3000, 0.3), test, classes=FOUR)
    assert four.confusion.shape == (4, 4)
    assert four.n_test_ignored == int((test.labels == layout.LOW_ENERGY).sum())
    assert four.n_test_points + four.n_test_ignored == len(test.labels)
    assert four.macro_f1 == pytest.approx(four.macro_f1_no_lowe)


def test_class_balancing_raises_recall_of_a_rare_class() -> None:
    # 1-D overlapping classes: 95% shower at 0, 5% Michel at 1.5 (unit width). Unweighted
    # cross-entropy mostly predicts shower; balanced weights move the boundary to the middle.
    rng = np.random.default_rng(1)
    y = np.where(rng.random(6000) < 0.05, layout.MICHEL, layout.SHOWER)
    x = (1.5 * (y == layout.MICHEL) + rng.normal(size=6000))[:, None].astype(np.float32)
    half = 3000
    train = PointFeatures(x[:half], y[:half], np.zeros(half, np.int64))
    test = PointFeatures(x[half:], y[half:], np.zeros(half, np.int64))
    plain = fit_probe(train, test, classes=("shower", "michel"), balanced=False)
    balanced = fit_probe(train, test, classes=("shower", "michel"), balanced=True)
    # Boundary at 0.75 (balanced) gives recall P(z > -0.75) ~ 0.77; unweighted 0.06-0.17 over seeds.
    assert balanced.recall["michel"] > 0.65
    assert plain.recall["michel"] < 0.3


# ----------------------------------------------------------------------------- a real backbone
def test_probe_on_random_init_backbone_is_deterministic(split: tuple[EventDataset, EventDataset]) -> None:
    train, test = split
    model = create_model("pointmae_micro", **TINY_NARROW)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kwargs = {"progress": False, "max_points_per_event": 300, "epochs": 30}
    first = linear_probe(model, train, test, **kwargs)
    second = linear_probe(model, train, test, **kwargs)
    assert first.to_dict() == second.to_dict()
    # The backbone is frozen: same weights, no gradients, and its training flag is back.
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())
    # Consistent bookkeeping: every test point in the confusion matrix.
    assert first.n_test_points == total_points(test) == first.confusion.sum()
    assert first.feature_dim == TINY_NARROW["embed_dim"]
    assert 0.0 <= first.macro_f1 <= 1.0


def test_subsample_is_seeded_and_keeps_full_event_context(split: tuple[EventDataset, EventDataset]) -> None:
    train, _ = split
    model = create_model("pointmae_micro", **TINY_NARROW)
    full = extract_point_features(model, train, progress=False)
    a = extract_point_features(model, train, max_points_per_event=100, seed=0, progress=False)
    b = extract_point_features(model, train, max_points_per_event=100, seed=0, progress=False)
    c = extract_point_features(model, train, max_points_per_event=100, seed=1, progress=False)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.features, c.features)
    assert full.features.dtype == np.float32 and full.features.shape == (total_points(train), 48)
    events, counts = np.unique(a.event_id, return_counts=True)
    assert events.tolist() == train.event_ids.tolist() and (counts == 100).all()
    # Subsampled rows are rows of the full-event features: the backbone saw whole events.
    for event in events:
        rows = {r.tobytes() for r in full.features[full.event_id == event]}
        assert all(r.tobytes() in rows for r in a.features[a.event_id == event])
    # Labels follow their points.
    np.testing.assert_array_equal(np.unique(full.labels), np.unique(np.concatenate(
        [train[i].semantic for i in range(len(train))])))


def test_features_do_not_depend_on_batch_size(split: tuple[EventDataset, EventDataset]) -> None:
    _, test = split
    model = create_model("pointmae_micro", **TINY_NARROW)
    one = extract_point_features(model, test, batch_size=1, progress=False)
    two = extract_point_features(model, test, batch_size=2, progress=False)
    np.testing.assert_allclose(one.features, two.features, atol=1e-4)
    np.testing.assert_array_equal(one.labels, two.labels)


# ----------------------------------------------------------------------------- reporting
def test_to_dict_format_and_compare(split: tuple[EventDataset, EventDataset]) -> None:
    train, test = split
    good = linear_probe(FakeBackbone(3.0, 0.3), train, test, progress=False, max_points_per_event=200)
    bad = linear_probe(FakeBackbone(0.0), train, test, progress=False, max_points_per_event=200)

    d = json.loads(json.dumps(good.to_dict(), allow_nan=False))  # strict JSON: no NaN
    assert d["f1"]["michel"] is None  # no Michel in these events: undefined, not 0
    assert d["macro_f1"] == pytest.approx(good.macro_f1)
    assert d["n_test_points"] == good.n_test_points and d["settings"]["max_points_per_event"] == 200
    assert sum(map(sum, d["confusion"])) == good.n_test_points

    text = good.format()
    for name in layout.SEMANTIC_CLASSES:
        assert name in text
    assert f"{good.macro_f1_no_lowe:.3f}" in text and "without low-energy" in text

    table = compare_probes({"pretrained": good, "random": bad})
    lines = table.splitlines()
    assert "pretrained" in lines[0] and "random" in lines[0] and "difference" in lines[0]
    macro = next(line for line in lines if line.startswith("macro-F1 "))
    assert macro.split() == ["macro-F1", f"{good.macro_f1:.3f}", f"{bad.macro_f1:.3f}",
                             f"{good.macro_f1 - bad.macro_f1:+.3f}"]
    assert "difference" not in compare_probes({"a": good, "b": bad, "c": good}).splitlines()[0]


def test_compare_probes_rejects_mismatched_or_empty() -> None:
    rng = np.random.default_rng(2)
    feats = PointFeatures(rng.normal(size=(200, 4)).astype(np.float32), rng.integers(0, 5, 200),
                          np.zeros(200, np.int64))
    five = fit_probe(feats, feats, epochs=5)
    four = fit_probe(feats, feats, epochs=5, classes=FOUR)
    with pytest.raises(DetfmError, match="different classes"):
        compare_probes({"five": five, "four": four})
    with pytest.raises(DetfmError, match="at least one"):
        compare_probes({})


# ----------------------------------------------------------------------------- bad input
def test_unlabeled_dataset_is_rejected(events: Path) -> None:
    unlabeled = EventDataset(events, labels=False)
    with pytest.raises(DetfmError, match="labels=True"):
        extract_point_features(create_model("pointmae_micro", **TINY_NARROW), unlabeled, progress=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"classes": ("shower", "muon")}, "distinct names"),
    ({"classes": ("track", "track")}, "distinct names"),
    ({"classes": "track"}, "list of class names"),
    ({"epochs": 0}, "epochs must be an integer >= 1"),
    ({"lr": float("nan")}, "lr must be"),
    ({"l2": -1.0}, "l2 must be"),
    ({"seed": -1}, "seed must be"),
    ({"max_points_per_event": 0}, "max_points_per_event"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_options_raise_config_error(split: tuple[EventDataset, EventDataset], kwargs: dict,
                                        match: str) -> None:
    train, test = split
    with pytest.raises(ConfigError, match=match):
        linear_probe(FakeBackbone(1.0), train, test, progress=False, **kwargs)


def test_bad_backbones_and_datasets(split: tuple[EventDataset, EventDataset]) -> None:
    train, test = split
    with pytest.raises(DetfmError, match="no forward_features"):
        linear_probe(nn.Linear(2, 2), train, test, progress=False)
    with pytest.raises(DetfmError, match="non-finite"):
        extract_point_features(FakeBackbone(1.0, nan=True), train, progress=False)
    with pytest.raises(DetfmError, match="no events"):
        linear_probe(FakeBackbone(1.0), train.subset([]), test, progress=False)
    with pytest.raises(DetfmError, match="no points of the probed classes"):
        linear_probe(FakeBackbone(1.0), train, test, classes=("michel",), progress=False)


def test_fit_probe_rejects_inconsistent_features() -> None:
    rng = np.random.default_rng(3)
    a = PointFeatures(rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 5, 50), np.zeros(50, np.int64))
    b = PointFeatures(rng.normal(size=(50, 6)).astype(np.float32), rng.integers(0, 5, 50), np.zeros(50, np.int64))
    with pytest.raises(DetfmError, match="same backbone"):
        fit_probe(a, b)
    with pytest.raises(DetfmError, match="labels must be semantic class ids"):
        fit_probe(a._replace(labels=a.labels + 5), a)
    with pytest.raises(DetfmError, match=r"\(P, D\)"):
        fit_probe(a._replace(labels=a.labels[:10]), a)
    with pytest.raises(DetfmError, match="empty"):
        fit_probe(PointFeatures(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64)), a)

"""collate(): packing and features; make_loader(): determinism across worker counts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from data_helpers import Files, random_sample

from detfm.data import EventDataset, PackedBatch, collate, log_energy_feature, make_loader
from detfm.data.transforms import Compose, LogEnergyNormalize, RandomRotation, Subsample
from detfm.errors import ConfigError


def reference_log_energy(e: float, eps: float = 0.01, emax: float = 20.0) -> float:
    """The PoLAr-MAE formula written out by hand (clipping E to [0, emax])."""
    e = min(max(e, 0.0), emax)
    return 2 * (math.log10(e + eps) - math.log10(eps)) / (math.log10(eps + emax) - math.log10(eps)) - 1


def test_log_energy_feature_values() -> None:
    energies = np.array([0.0, 0.13, 1.0, 20.0, 500.0], np.float32)
    got = log_energy_feature(energies)
    assert got.dtype == np.float32
    want = [reference_log_energy(float(e)) for e in energies]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # Endpoints: 0 MeV -> -1, Emax = 20 MeV (and anything clipped above it) -> +1.
    assert got[0] == pytest.approx(-1.0, abs=1e-7)
    assert got[3] == pytest.approx(1.0, abs=1e-6) and got[4] == pytest.approx(1.0, abs=1e-6)
    # 0.13 MeV (the threshold) lands at -0.3056 for eps = 0.01 MeV, by hand:
    # 2 * (log10(0.14) + 2) / (log10(20.01) + 2) - 1 = 2 * 1.146128 / 3.301247 - 1.
    assert got[1] == pytest.approx(-0.30564, abs=1e-4)
    assert np.all(np.diff(log_energy_feature(np.linspace(0, 20, 50))) > 0)
    with pytest.raises(ConfigError, match="eps"):
        log_energy_feature(energies, eps=0.0)


def test_collate_packs_events_with_correct_offsets() -> None:
    rng = np.random.default_rng(0)
    samples = [random_sample(rng, n) for n in (5, 0, 17, 1)]
    batch = collate(samples)
    assert isinstance(batch, PackedBatch) and len(batch) == 4
    assert batch.offsets.tolist() == [0, 5, 5, 22, 23]
    assert batch.offsets.dtype == torch.int64 and batch.num_points == 23
    assert batch.counts.tolist() == [5, 0, 17, 1]
    assert batch.batch_index().tolist() == [0] * 5 + [2] * 17 + [3]
    assert batch.coord.dtype == torch.float32 and batch.feat.shape == (23, 1)
    assert batch.index.tolist() == [7, 7, 7, 7]
    for i, s in enumerate(samples):
        ev = batch.event(i)
        np.testing.assert_array_equal(ev["coord"].numpy(), s.coord)
        np.testing.assert_array_equal(ev["energy"].numpy(), s.energy)
        np.testing.assert_array_equal(ev["semantic"].numpy(), s.semantic)
        np.testing.assert_array_equal(ev["interaction"].numpy(), s.interaction)
        np.testing.assert_allclose(ev["feat"][:, 0].numpy(), log_energy_feature(s.energy))
        assert ev["pid"].dtype == torch.int64


def test_collate_uses_sample_features_and_drops_missing_labels() -> None:
    rng = np.random.default_rng(1)
    t = LogEnergyNormalize(eps=0.13)
    samples = [t(random_sample(rng, n, labels=False), rng) for n in (3, 4)]
    batch = collate(samples)
    assert batch.semantic is None and batch.pid is None
    np.testing.assert_allclose(batch.feat[:, 0].numpy(),
                               [reference_log_energy(float(e), eps=0.13) for e in batch.energy], atol=1e-6)


def test_collate_rejects_inconsistent_samples() -> None:
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="at least one"):
        collate([])
    with pytest.raises(ValueError, match="semantic"):
        collate([random_sample(rng, 3), random_sample(rng, 3, labels=False)])
    with pytest.raises(ValueError, match="feat"):
        collate([LogEnergyNormalize()(random_sample(rng, 3), rng), random_sample(rng, 3)])


def _batches(loader) -> list[PackedBatch]:
    return list(loader)


def _assert_same(a: list[PackedBatch], b: list[PackedBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for name in ("coord", "feat", "offsets", "energy", "semantic", "pid", "instance", "index"):
            assert torch.equal(getattr(x, name), getattr(y, name)), name


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # machines with 1 core
def test_loader_with_two_workers_matches_single_process(two_files: Files) -> None:
    ds = EventDataset(two_files.paths, transform=Compose([RandomRotation(), Subsample(40)]), seed=11)
    ds.set_epoch(2)
    serial = _batches(make_loader(ds, batch_size=4, shuffle=True, seed=5, num_workers=0))
    parallel = _batches(make_loader(ds, batch_size=4, shuffle=True, seed=5, num_workers=2))
    _assert_same(serial, parallel)
    assert [len(b) for b in serial] == [4, 4, 4, 4, 3]
    seen = torch.cat([b.index for b in serial]).tolist()
    assert sorted(seen) == sorted(ds.event_ids.tolist())  # every event exactly once
    assert seen != sorted(seen)  # shuffled
    assert max(int(b.counts.max()) for b in serial) <= 40
    # Another epoch: another order and other augmentations; back to epoch 2: identical.
    ds.set_epoch(3)
    other = _batches(make_loader(ds, batch_size=4, shuffle=True, seed=5))
    assert torch.cat([b.index for b in other]).tolist() != seen
    ds.set_epoch(2)
    _assert_same(serial, _batches(make_loader(ds, batch_size=4, shuffle=True, seed=5)))


def test_loader_order_and_drop_last(two_files: Files) -> None:
    ds = EventDataset(two_files.paths)
    batches = _batches(make_loader(ds, batch_size=5, drop_last=True))
    assert [len(b) for b in batches] == [5, 5, 5]
    assert torch.cat([b.index for b in batches]).tolist() == ds.event_ids[:15].tolist()
    with pytest.raises(ConfigError, match="batch_size"):
        make_loader(ds, batch_size=0)
    with pytest.raises(ConfigError, match="num_workers"):
        make_loader(ds, batch_size=2, num_workers=-1)

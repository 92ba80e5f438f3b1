"""Particle measurements: dE/dx at the start, pieces, contact, and particle ID reading them."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from detfm.data import EventDataset, collate
from detfm_testing import assert_events_scored_alone
from detfm.errors import ConfigError
from detfm.models import create_model
from detfm.sim.simulate import SimConfig, simulate_to_file
from detfm.tasks.event import EventConfig
from detfm.tasks.particle_features import PARTICLE_FEATURE_NAMES, MeasurementStore, particle_features
from detfm.tasks.pid import PIDConfig, ParticleID, find_instances
from detfm.tasks.set_pooling import CONTACT_CLIP_VOXELS

COLUMN = {name: i for i, name in enumerate(PARTICLE_FEATURE_NAMES)}


def measured(values: torch.Tensor, name: str) -> torch.Tensor:
    """Undo the sign(x) log1p(|x|) of the features."""
    v = values[..., COLUMN[name]].double()
    return torch.sign(v) * torch.expm1(v.abs())


def shower(start_mev: float, offset: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 12-voxel trunk along x with ``start_mev`` per voxel, then a cone that widens to 6 voxels
    (0.5 MeV per voxel): the start is the narrow end."""
    pts, energy = [], []
    for x in range(12):
        pts.append((x, 0, 0))
        energy.append(start_mev)
    for x in range(12, 40):
        half = (x - 12) // 5
        for y in range(-half, half + 1):
            for z in range(-half, half + 1):
                pts.append((x, y, z))
                energy.append(0.5)
    coord = torch.tensor(pts, dtype=torch.float32) + offset
    return coord, torch.tensor(energy)


def test_names_match_the_columns_and_empty_input_gives_rows_of_zeros() -> None:
    coord, energy = shower(0.6)
    n = len(coord)
    got = particle_features(coord, energy, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2)
    assert got.shape == (2, len(PARTICLE_FEATURE_NAMES)) and got.dtype == torch.float32
    assert len(set(PARTICLE_FEATURE_NAMES)) == len(PARTICLE_FEATURE_NAMES)
    assert torch.isfinite(got).all() and (got[1] == 0).all()  # particle 1 has no point
    empty = particle_features(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, dtype=torch.long),
                              torch.zeros(0, dtype=torch.long), 3)
    assert empty.shape == (3, len(PARTICLE_FEATURE_NAMES)) and (empty == 0).all()


def test_the_start_is_the_narrow_end_and_its_dedx_doubles_with_the_start_energy() -> None:
    """One MIP (~0.6 MeV per 3 mm voxel) against two (a photon's pair): the dE/dx over the first
    8 voxels of the narrow end is the trunk's energy per voxel, within one voxel of length
    (the line is read from one voxel behind the start: 9 voxels over 8)."""
    rows = []
    for start_mev in (0.6, 1.2):
        coord, energy = shower(start_mev)
        n = len(coord)
        rows.append(particle_features(coord, energy, torch.zeros(n, dtype=torch.long),
                                      torch.zeros(n, dtype=torch.long), 1)[0])
    electron, photon = rows
    for got, per_voxel in ((electron, 0.6), (photon, 1.2)):
        assert float(measured(got, "start_dedx_8")) == pytest.approx(per_voxel * 9 / 8, rel=1e-5)
        assert float(measured(got, "start_density_8")) == pytest.approx(9 / 8, rel=1e-5)
        assert float(measured(got, "start_median_energy_8")) == pytest.approx(per_voxel, rel=1e-5)
        assert float(measured(got, "end_spread_20")) > float(measured(got, "start_spread_20"))
    assert float(measured(photon, "start_dedx_4") / measured(electron, "start_dedx_4")) == pytest.approx(2.0)


def test_pieces_count_the_separate_blobs_and_contact_the_nearest_other_particle() -> None:
    blob = torch.tensor([(x, y, 0) for x in range(4) for y in range(4)], dtype=torch.float32)
    # particle 0: two blobs 10 voxels apart (a photon's two Compton pieces); particle 1 touches the first
    coord = torch.cat([blob, blob + torch.tensor([14.0, 0, 0]), blob + torch.tensor([0, 5.0, 0])])
    energy = torch.cat([torch.full((16,), 1.0), torch.full((16,), 3.0), torch.full((16,), 1.0)])
    particle = torch.tensor([0] * 32 + [1] * 16)
    got = particle_features(coord, energy, torch.zeros(48, dtype=torch.long), particle, 2)
    for join in ("1.8", "3.5"):
        assert float(measured(got[0], f"log_pieces_{join}")) == pytest.approx(math.log(2), rel=1e-5)
        assert float(measured(got[0], f"largest_fraction_{join}")) == pytest.approx(0.75, rel=1e-5)
        assert float(measured(got[0], f"second_fraction_{join}")) == pytest.approx(0.25, rel=1e-5)
        assert float(measured(got[1], f"log_pieces_{join}")) == pytest.approx(0.0, abs=1e-6)
    assert float(measured(got[0], "big_pieces_3.5")) == pytest.approx(math.log1p(2), rel=1e-5)  # 16 and 48 MeV
    assert float(measured(got[0], "contact")) == pytest.approx(2.0, rel=1e-5)
    # the end of particle 0 near particle 1 comes first; the far end lies beyond the clip
    assert float(measured(got[0], "start_contact")) < float(measured(got[0], "end_contact"))
    alone = particle_features(coord[:32], energy[:32], torch.zeros(32, dtype=torch.long), particle[:32], 1)
    assert float(measured(alone[0], "contact")) == pytest.approx(CONTACT_CLIP_VOXELS, rel=1e-5)


def test_a_particle_is_measured_the_same_whatever_else_is_in_the_batch() -> None:
    coord, energy = shower(0.6)
    n = len(coord)
    alone = particle_features(coord, energy, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long), 1)
    other, other_energy = shower(1.2, offset=3.0)  # overlaps the first in space, but in another event
    both = particle_features(torch.cat([other, coord]), torch.cat([other_energy, energy]),
                             torch.cat([torch.zeros(n), torch.ones(n)]).long(),
                             torch.cat([torch.zeros(n), torch.ones(n)]).long(), 2)
    torch.testing.assert_close(both[1], alone[0])
    moved = particle_features(coord + 100.0, energy, torch.zeros(n, dtype=torch.long),
                              torch.zeros(n, dtype=torch.long), 1)
    torch.testing.assert_close(moved, alone, rtol=1e-5, atol=1e-5)


def test_measurements_need_the_mlp_head_and_particles() -> None:
    with pytest.raises(ConfigError, match="MLP head"):
        PIDConfig(head="linear", measurements=True)
    with pytest.raises(ConfigError, match="not whole events"):
        EventConfig(measurements=True)


@pytest.fixture(scope="module")
def events(pid_events: EventDataset) -> EventDataset:
    return pid_events


def test_pid_with_measurements_scores_each_event_alone_and_trains_the_measurement_layer(
        events: EventDataset) -> None:
    backbone = create_model("ptv3_micro", seed=0, drop_path=0.0)
    task = ParticleID(backbone, PIDConfig(pooling="mean_max", freeze_backbone=True, measurements=True)).eval()
    assert task.measure is not None
    assert task.classifier[0].normalized_shape == (3 * task.config.hidden,)
    assert_events_scored_alone(task, events)
    loss = task.train()(collate([events[0], events[1]]))["loss"]
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in task.measure.parameters())


def test_the_store_measures_each_event_once_and_gives_what_the_batch_gives(events: EventDataset) -> None:
    store = MeasurementStore()
    batch = collate([events[0], events[1], events[2]])
    inst = find_instances(batch.offsets, batch.instance, batch.pid)
    direct = particle_features(batch.coord, batch.energy, batch.batch_index(), inst.point_instance, len(inst))
    torch.testing.assert_close(store(batch, inst.point_instance, len(inst)), direct)
    assert store.measured == 3 and len(store) == 3
    # the second and third event again, in another batch: from the store
    again = collate([events[2], events[1]])
    inst2 = find_instances(again.offsets, again.instance, again.pid)
    want = particle_features(again.coord, again.energy, again.batch_index(), inst2.point_instance, len(inst2))
    torch.testing.assert_close(store(again, inst2.point_instance, len(inst2)), want)
    assert store.measured == 3
    # an event whose points moved is measured again
    moved = collate([dataclasses.replace(events[1], coord=events[1].coord[:, ::-1].copy())])
    inst3 = find_instances(moved.offsets, moved.instance, moved.pid)
    want = particle_features(moved.coord, moved.energy, moved.batch_index(), inst3.point_instance, len(inst3))
    torch.testing.assert_close(store(moved, inst3.point_instance, len(inst3)), want)
    assert store.measured == 4


def test_a_head_on_kept_outputs_measures_each_training_event_once(events: EventDataset) -> None:
    backbone = create_model("ptv3_micro", seed=0, drop_path=0.0)
    task = ParticleID(backbone, PIDConfig(pooling="mean_max", freeze_backbone=True, measurements=True))
    task.cache_features()
    task.train()
    batch = collate([events[0], events[1]])
    first = task(batch)["loss"].detach()
    second = task(batch)["loss"].detach()
    assert task.measurement_store is not None
    assert task.measurement_store.measured == 2 and float(first) == pytest.approx(float(second), rel=1e-6)
    with torch.no_grad():
        task.eval()(batch)  # scoring measures afresh, without the store
    assert task.measurement_store.measured == 2
    no_measurements = ParticleID(backbone, PIDConfig(pooling="mean_max", freeze_backbone=True))
    assert no_measurements.measure is None and no_measurements.measurement_store is None

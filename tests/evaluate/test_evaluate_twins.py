"""Twin files: re-simulated detector variations of a simulator-made file, cached and checked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from detfm.errors import DetfmError
from detfm.evaluate.twins import load_twin_files, make_twins, sim_config_of, twin_path
from detfm.io import EventFile, read_events, write_events
from detfm.sim.simulate import SimConfig, simulate_to_file


@pytest.fixture(scope="module")
def nominal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("twins") / "nom.h5"
    simulate_to_file(SimConfig(events=5, seed=11), path, progress=False)
    return path


def test_twins_keep_the_physics_and_regenerate_the_nominal_file_exactly(nominal: Path, tmp_path: Path) -> None:
    twins = make_twins(nominal, ["nominal", "noisy", "escale_up"], tmp_path)
    assert twins["nominal"] == nominal  # the file's own detector is the file itself
    assert twins["noisy"] == twin_path(nominal, "noisy", tmp_path)
    base = read_events(nominal)
    noisy, scaled = read_events(twins["noisy"]), read_events(twins["escale_up"])
    assert len(noisy) == len(scaled) == len(base) == 5
    assert all(len(n.points) > len(b.points) for n, b in zip(noisy, base, strict=True))  # noise voxels added
    assert not np.array_equal(scaled[0].energy, base[0].energy)
    assert sim_config_of(twins["noisy"]).detector == "noisy"  # type: ignore[union-attr]
    # from the twin alone, the nominal events come back bit for bit
    back = make_twins(twins["noisy"], ["nominal"], tmp_path / "back")["nominal"]
    for a, b in zip(read_events(back), base, strict=True):
        assert np.array_equal(a.points, b.points) and np.array_equal(a.clusters, b.clusters)


def test_twins_are_cached_and_regenerated_when_their_attributes_differ(nominal: Path, tmp_path: Path) -> None:
    path = make_twins(nominal, ["escale_down"], tmp_path)["escale_down"]
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    stamp = path.stat().st_mtime_ns
    assert make_twins(nominal, ["escale_down"], tmp_path)["escale_down"].stat().st_mtime_ns == stamp  # reused
    assert make_twins(nominal, ["escale_down"], tmp_path, max_events=3)["escale_down"].stat().st_mtime_ns == stamp
    simulate_to_file(SimConfig(events=5, seed=12, detector="escale_down"), path, progress=False)  # other seed
    make_twins(nominal, ["escale_down"], tmp_path)
    assert EventFile(path).attrs["seed"] == 11


def test_max_events_simulates_only_the_first_events(nominal: Path, tmp_path: Path) -> None:
    path = make_twins(nominal, ["birks"], tmp_path, max_events=2)["birks"]
    assert len(EventFile(path)) == 2


def test_files_without_simulation_attributes_need_user_twins(nominal: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.h5"
    write_events(plain, read_events(nominal))
    with pytest.raises(DetfmError, match="--twins NAME=FILE"):
        make_twins(plain, ["noisy"], tmp_path)
    with pytest.raises(DetfmError, match="Valid detectors: nominal"):
        make_twins(nominal, ["noisey"], tmp_path)


def test_a_file_the_simulator_does_not_reproduce_is_refused(nominal: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.h5"
    cfg = SimConfig(events=5, seed=11)
    write_events(other, read_events(nominal)[::-1], attrs={"generator": "detfm.sim", "seed": 11,
                                                           "sim_config": cfg.__dict__, "detector": "nominal"})
    with pytest.raises(DetfmError, match="does not reproduce"):
        make_twins(other, ["noisy"], tmp_path)


def test_user_twin_files_are_checked(nominal: Path, tmp_path: Path) -> None:
    good = make_twins(nominal, ["noisy"], tmp_path)["noisy"]
    assert load_twin_files({"noisy": good}, nominal) == {"noisy": good}
    short = tmp_path / "short.h5"
    simulate_to_file(SimConfig(events=3, seed=11, detector="noisy"), short, progress=False)
    with pytest.raises(DetfmError, match="3 events but 'nominal'"):
        load_twin_files({"noisy": short}, nominal)
    other_seed = tmp_path / "seed.h5"
    simulate_to_file(SimConfig(events=5, seed=4, detector="noisy"), other_seed, progress=False)
    with pytest.raises(DetfmError, match="seed 4"):
        load_twin_files({"noisy": other_seed}, nominal)
    with pytest.raises(DetfmError, match="no such file"):
        load_twin_files({"noisy": tmp_path / "missing.h5"}, nominal)


def test_twins_carry_every_simulation_setting(tmp_path: Path) -> None:
    source = tmp_path / "anomalous.h5"
    simulate_to_file(SimConfig(events=2, seed=3, anomaly="hsip"), source, progress=False)
    twin = make_twins(source, ["escale_up"], tmp_path)["escale_up"]
    cfg = sim_config_of(twin)
    assert cfg is not None and cfg.anomaly == "hsip" and cfg.detector == "escale_up"
    plain = tmp_path / "plain.h5"
    simulate_to_file(SimConfig(events=2, seed=3, detector="escale_up"), plain, progress=False)
    with pytest.raises(DetfmError, match="anomaly"):
        load_twin_files({"escale_up": plain}, source)

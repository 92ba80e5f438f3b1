"""The whole simulator chain: determinism, detector twins, labels of clean single-particle events."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detfm.io import EventFile, content_hash, layout, validate_file
from detfm.sim.detector import get_detector
from detfm.sim.simulate import SimConfig, iter_events, simulate_event, simulate_to_file


def test_same_seed_same_file_whatever_the_worker_count(tmp_path: Path) -> None:
    cfg = SimConfig(events=6, seed=4)
    a = simulate_to_file(cfg, tmp_path / "a.h5", workers=1, progress=False)
    b = simulate_to_file(cfg, tmp_path / "b.h5", workers=2, progress=False)
    assert a.content_sha256 == b.content_sha256 == content_hash(tmp_path / "a.h5")
    c = simulate_to_file(SimConfig(events=6, seed=5), tmp_path / "c.h5", progress=False)
    assert c.content_sha256 != a.content_sha256
    assert validate_file(tmp_path / "a.h5") == []
    attrs = EventFile(tmp_path / "a.h5").attrs
    assert attrs["seed"] == 4 and attrs["detector"] == "nominal"
    assert attrs["detector_config"]["energy_scale"] == 1.0


def test_detector_variations_are_exact_twins() -> None:
    cfg = SimConfig(events=3, seed=9)
    for i in range(3):
        nominal = simulate_event(cfg, i)
        up = simulate_event(cfg, i, get_detector("escale_up"))
        # Same physics: every nominal voxel clearly above threshold is there, with the same label,
        # and its energy is scaled by exactly the +5 % energy scale. (Voxels within 5 % of the
        # 0.05 MeV threshold may cross it: that is the systematic, not noise.)
        key = lambda ev: {tuple(c): (e, s) for c, e, s in zip(ev.coords.astype(int).tolist(),
                                                              ev.energy, ev.semantic, strict=True)}
        k_nom, k_up = key(nominal), key(up)
        strong = [c for c, (e, _) in k_nom.items() if e > 0.06]
        assert len(strong) > 0.9 * len(k_nom)
        flips = 0
        for c in strong:
            if k_up[c][1] != k_nom[c][1]:
                # only a voxel-count cut can flip a label: a delta ray gaining a threshold voxel
                # stops merging into its track; a Compton electron stops being low-energy
                assert (k_nom[c][1], k_up[c][1]) in ((layout.LOW_ENERGY, layout.SHOWER),
                                                     (layout.LOW_ENERGY, layout.DELTA),
                                                     (layout.TRACK, layout.DELTA))
                flips += 1
            assert k_up[c][0] == pytest.approx(1.05 * k_nom[c][0], rel=1e-5)
        assert flips <= 0.01 * len(strong)
        assert set(k_nom) <= set(k_up)  # raising the scale only adds voxels
        # a recombination change moves energies but not the underlying physics (same truth dE)
        birks = simulate_event(cfg, i, get_detector("birks"))
        assert abs(birks.points[:, layout.DE].sum() - nominal.points[:, layout.DE].sum()) < \
            1e-3 * nominal.points[:, layout.DE].sum() + 1.0
        k_birks = key(birks)
        common = [c for c in strong if c in k_birks]
        ratios = np.array([k_birks[c][0] / k_nom[c][0] for c in common])
        assert len(common) > 0.9 * len(strong)
        assert np.abs(ratios - 1).max() > 1e-3  # the response changed voxel by voxel


def _class_fractions(events: list) -> dict[str, float]:
    sem = np.concatenate([e.semantic for e in events])
    return {name: float((sem == k).mean()) for k, name in enumerate(layout.SEMANTIC_CLASSES)}


def test_stopping_mu_plus_is_track_plus_michel() -> None:
    """PILArNet labels: a stopping mu+ is a track with a Michel electron (plus deltas and low-energy
    blips) and never a shower. Fractions are printed with -s for the closing note."""
    events = list(iter_events(SimConfig(events=12, seed=3, gun="mu+:200")))
    fr = _class_fractions(events)
    print("mu+ 200 MeV class fractions:", {k: round(v, 3) for k, v in fr.items()})
    # Compton electrons from the Michel's photons with more than 10 voxels are labeled shower
    # (PILArNet rule), so a small shower fraction is expected.
    assert fr["shower"] < 0.05
    assert fr["track"] > 0.6 and fr["michel"] > 0.05
    for ev in events:  # every stopping mu+ decays (PHYSICS.md): each event has a Michel cluster
        assert (ev.clusters[:, layout.C_SEMANTIC] == layout.MICHEL).sum() == 1
        muon_rows = ev.clusters[:, layout.C_PID] == layout.PID_MUON
        assert (ev.clusters[muon_rows, layout.C_SEMANTIC] == layout.TRACK).all()


def test_electron_is_shower_plus_low_energy() -> None:
    events = list(iter_events(SimConfig(events=8, seed=3, gun="e-:500")))
    fr = _class_fractions(events)
    print("e- 500 MeV class fractions:", {k: round(v, 3) for k, v in fr.items()})
    assert fr["track"] == 0.0 and fr["michel"] == 0.0 and fr["delta"] == 0.0
    assert fr["shower"] > 0.6
    assert fr["shower"] + fr["low_energy"] == pytest.approx(1.0)


def test_interrupted_simulation_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ev.h5"
    simulate_to_file(SimConfig(events=2, seed=1), out, progress=False)
    before = out.read_bytes()
    import detfm.sim.simulate as sim

    real = sim.simulate_event
    calls = {"n": 0}

    def flaky(cfg, index, detector=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(cfg, index, detector)

    monkeypatch.setattr(sim, "simulate_event", flaky)
    with pytest.raises(KeyboardInterrupt):
        simulate_to_file(SimConfig(events=5, seed=2), out, progress=False)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ev.h5"]

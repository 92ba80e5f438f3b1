"""Detector response: drift, recombination, lifetime, diffusion, voxels, twins, file validity.

Truth events are built by hand (straight tracks of deposits at voxel centres) so every
expectation can be computed exactly; transport is not involved.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detfm.errors import DataFormatError, DetfmError
from detfm.io import Event, layout, read_events, validate_file, write_events
from detfm.sim.detector import CALIBRATION, MIP_DEDX_MEV_CM, NOMINAL, DetectorModel, get_detector
from detfm.sim.response import diffusion_sigma_cm, drift_time_us, render
from detfm.sim.truth import Deposits, Fragments, Role, TruthEvent

VOX = layout.VOXEL_SIZE_CM
SHARP = dataclasses.replace(NOMINAL, name="sharp", diffusion_long_cm2_s=0.0, diffusion_trans_cm2_s=0.0)


def centre(i: float) -> float:
    """Coordinate (cm) of the centre of voxel ``i``."""
    return (i + 0.5) * VOX


def line(start_vox: tuple[int, int, int], axis: int, n: int, dedx: float = MIP_DEDX_MEV_CM,
         step: int = 1) -> dict[str, np.ndarray]:
    """Deposits at ``n`` voxel centres from ``start_vox`` along ``axis`` (one 3 mm step each)."""
    idx = np.tile(np.asarray(start_vox, float), (n, 1))
    idx[:, axis] += np.arange(n) * step
    return {"pos": (idx + 0.5) * VOX, "de": np.full(n, dedx * VOX), "dx": np.full(n, VOX)}


def truth_of(*pieces: dict) -> TruthEvent:
    """A TruthEvent with one fragment per piece (keys pos/de/dx, optional role/pid/group/...)."""
    n_frag = len(pieces)
    get = lambda key, default: np.array([p.get(key, default) for p in pieces])  # noqa: E731
    fragments = Fragments(
        role=get("role", Role.TRACK).astype(np.int8), pid=get("pid", layout.PID_MUON).astype(np.int8),
        pdg=get("pdg", 13).astype(np.int32), group=get("group", 0).astype(np.int32),
        interaction=get("interaction", 0).astype(np.int32), mass_mev=get("mass", 105.66).astype(np.float32),
        momentum_gev=get("momentum", 0.3).astype(np.float32),
        vertex_cm=np.array([p.get("vertex", p["pos"][0]) for p in pieces], np.float32).reshape(n_frag, 3),
        energy_mev=get("energy", 100.0).astype(np.float32))
    cat = lambda key: np.concatenate([p[key] for p in pieces]) if pieces else np.zeros(0)  # noqa: E731
    deposits = Deposits(
        pos_cm=cat("pos").reshape(-1, 3).astype(np.float64), de_mev=cat("de").astype(np.float64),
        dx_cm=cat("dx").astype(np.float64),
        time_ns=np.concatenate([np.full(len(p["de"]), p.get("time", 0.0)) for p in pieces]) if pieces
        else np.zeros(0),
        frag=np.concatenate([np.full(len(p["de"]), k, np.int32) for k, p in enumerate(pieces)]) if pieces
        else np.zeros(0, np.int32))
    return TruthEvent([], fragments, deposits)


def mixed_truth() -> TruthEvent:
    """Tracks in several directions and drift distances, all voxels far above threshold."""
    return truth_of(
        {**line((10, 300, 300), 0, 700), "group": 0, "interaction": 0},
        {**line((600, 100, 50), 2, 400, dedx=5.0), "role": Role.TRACK, "pid": layout.PID_PROTON, "group": 1},
        {**line((300, 50, 700), 1, 300, dedx=3.0), "role": Role.SHOWER, "pid": layout.PID_ELECTRON,
         "group": 2, "interaction": 1},
        {**line((200, 600, 100), 2, 30), "role": Role.MICHEL, "pid": layout.PID_ELECTRON, "group": 3},
    )


def keyed(event: Event) -> dict[tuple[int, int, int], np.ndarray]:
    """Point rows by integer voxel coordinate."""
    c = event.coords.astype(int)
    return {tuple(k): row for k, row in zip(c.tolist(), event.points, strict=True)}


def test_mip_voxels_reconstruct_their_deposited_energy_at_any_drift_distance() -> None:
    ev = render(truth_of(line((0, 384, 384), 0, 768)), SHARP, np.random.default_rng(0))
    assert ev.n_points == 768  # one voxel per step, none lost
    # Calibration is box-model R at a MIP and nominal-lifetime corrected: value = dE for a MIP
    # (the only difference, drift time of the voxel centre vs. the deposit, is < 1e-4 here).
    np.testing.assert_allclose(ev.energy, ev.points[:, layout.DE], rtol=1e-4)
    np.testing.assert_allclose(ev.points[:, layout.DE], MIP_DEDX_MEV_CM * VOX, rtol=1e-6)
    np.testing.assert_allclose(ev.points[:, layout.DX], 3.0, rtol=1e-6)  # mm


def test_total_energy_survives_nominal_diffusion() -> None:
    truth = mixed_truth()
    ev = render(truth, NOMINAL, np.random.default_rng(1))
    mip = truth.deposits.frag == 0
    assert ev.points[:, layout.DE].sum() == pytest.approx(truth.deposits.de_mev.sum(), rel=1e-5)
    # The MIP track's reconstructed energy equals its deposited energy within 0.5 %.
    mip_points = ev.fragment == 0
    assert ev.energy[mip_points].sum() == pytest.approx(truth.deposits.de_mev[mip].sum(), rel=5e-3)


def test_lifetime_attenuation_measured_on_a_track() -> None:
    det = dataclasses.replace(get_detector("short_lifetime"), diffusion_long_cm2_s=0.0,
                              diffusion_trans_cm2_s=0.0)
    ev = render(truth_of(line((0, 100, 100), 0, 768)), det, np.random.default_rng(0))
    t_us = drift_time_us(ev.coords[:, 0].astype(np.float64) * VOX + VOX / 2, det)
    slope, intercept = np.polyfit(t_us, np.log(ev.points[:, layout.ELECTRONS].astype(np.float64)), 1)
    assert -1.0 / slope == pytest.approx(det.electron_lifetime_us, rel=5e-3)
    # At the anode: dE / W x R_box(MIP) electrons; 1 MeV of MIP energy gives ~29 900 electrons.
    per_mev = np.exp(intercept) / (MIP_DEDX_MEV_CM * VOX)
    assert per_mev == pytest.approx(1e6 / 23.6 * 0.7049, rel=5e-3)


def test_short_lifetime_lowers_far_voxels_by_the_uncorrected_attenuation() -> None:
    truth = truth_of(line((0, 100, 100), 0, 768))
    nominal = render(truth, NOMINAL, np.random.default_rng(3))
    short = render(truth, get_detector("short_lifetime"), np.random.default_rng(3))
    assert np.array_equal(nominal.coords, short.coords)  # same diffusion draws: same voxels
    # Charge is attenuated with the short lifetime but corrected with the nominal one.
    t_us = drift_time_us(centre(nominal.coords[:, 0].astype(np.float64)), NOMINAL)
    tau_short = get_detector("short_lifetime").electron_lifetime_us
    expected = np.exp(-t_us / tau_short + t_us / NOMINAL.electron_lifetime_us)
    ratio = short.energy / nominal.energy
    # Tolerance: diffusion mixes deposits up to ~2 mm (1 us of drift) away into a voxel.
    np.testing.assert_allclose(ratio, expected, rtol=1e-3)
    assert ratio.min() < 0.75  # a real systematic at the far side


def test_diffusion_width_matches_sqrt_2dt() -> None:
    det = dataclasses.replace(NOMINAL, diffusion_long_cm2_s=100.0, diffusion_trans_cm2_s=200.0,
                              threshold_mev=0.0)
    n = 20_000
    x0, y0 = centre(667), centre(384)
    pos = np.column_stack([np.full(n, x0), np.full(n, y0), np.linspace(10.0, 210.0, n)])
    truth = truth_of({"pos": pos, "de": np.full(n, 0.02), "dx": np.full(n, 0.01)})
    ev = render(truth, det, np.random.default_rng(5))
    sigma_l, sigma_t = diffusion_sigma_cm(drift_time_us(np.array([x0]), det), det)
    w = ev.points[:, layout.ELECTRONS].astype(np.float64)
    for axis, mean, sigma in ((0, x0, sigma_l[0]), (1, y0, sigma_t[0])):
        coord = (ev.coords[:, axis].astype(np.float64) + 0.5) * VOX
        var = np.average((coord - mean) ** 2, weights=w) - VOX**2 / 12  # Sheppard's binning correction
        assert np.sqrt(var) == pytest.approx(sigma, rel=0.03), axis
    # Nominal values at the full 230.4 cm drift (1440 us): sigma_T ~ 1.9 mm, sigma_L ~ 1.4 mm.
    sl, st = diffusion_sigma_cm(np.array([NOMINAL.max_drift_us()]), NOMINAL)
    assert (sl[0], st[0]) == pytest.approx((0.144, 0.186), abs=1e-3)


def test_escale_up_twin_has_same_voxels_and_labels_and_five_percent_more_energy() -> None:
    truth = mixed_truth()
    nominal = render(truth, NOMINAL, np.random.default_rng(11))
    up = render(truth, get_detector("escale_up"), np.random.default_rng(11))
    assert np.array_equal(nominal.coords, up.coords)
    assert np.array_equal(nominal.clusters, up.clusters)
    assert np.array_equal(nominal.cluster_extra, up.cluster_extra)
    for col in (layout.DE, layout.TIME, layout.ELECTRONS, layout.DX):
        assert np.array_equal(nominal.points[:, col], up.points[:, col])
    np.testing.assert_allclose(up.energy / nominal.energy, 1.05, rtol=1e-6)


def test_birks_twin_changes_only_the_collected_charge() -> None:
    truth = truth_of(line((5, 300, 300), 0, 600))  # MIP track
    nominal = render(truth, NOMINAL, np.random.default_rng(2))
    birks = render(truth, get_detector("birks"), np.random.default_rng(2))
    assert np.array_equal(nominal.coords, birks.coords)
    assert np.array_equal(nominal.points[:, layout.DE], birks.points[:, layout.DE])
    expected = float(get_detector("birks").survival_fraction(MIP_DEDX_MEV_CM) / CALIBRATION.r_mip)
    np.testing.assert_allclose(birks.energy / nominal.energy, expected, rtol=1e-6)
    assert expected == pytest.approx(0.990, abs=0.002)


def test_events_near_threshold_only_gain_voxels_when_energy_scale_goes_up() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    blob = {"pos": rng.uniform(100, 103, (n, 3)), "de": rng.exponential(0.02, n), "dx": np.zeros(n),
            "role": Role.SHOWER, "pid": layout.PID_PHOTON}
    truth = truth_of(blob)
    nominal = keyed(render(truth, NOMINAL, np.random.default_rng(4)))
    up = keyed(render(truth, get_detector("escale_up"), np.random.default_rng(4)))
    assert set(nominal) < set(up)  # strictly more voxels pass the threshold
    ratio = np.array([up[k][layout.VALUE] / nominal[k][layout.VALUE] for k in nominal])
    np.testing.assert_allclose(ratio, 1.05, rtol=1e-6)


def test_same_seed_same_event_other_seed_other_diffusion() -> None:
    truth = mixed_truth()
    a = render(truth, get_detector("data_like"), np.random.default_rng(7))
    b = render(truth, get_detector("data_like"), np.random.default_rng(7))
    c = render(truth, get_detector("data_like"), np.random.default_rng(8))
    for name in ("points", "clusters", "cluster_extra"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.points, c.points)


def test_render_does_not_mutate_the_truth() -> None:
    truth = mixed_truth()
    before = {k: v.copy() for k, v in vars(truth.deposits).items()}
    render(truth, get_detector("data_like"), np.random.default_rng(0))
    for k, v in vars(truth.deposits).items():
        assert np.array_equal(v, before[k]), k


def test_dead_regions_record_nothing_and_leave_the_rest_untouched() -> None:
    det = get_detector("dead_regions")
    truth = truth_of(line((5, 100, 200), 2, 700), line((5, 10, 650), 0, 760), line((650, 20, 650), 1, 700))
    nominal = keyed(render(truth, NOMINAL, np.random.default_rng(9)))
    dead_ev = render(truth, det, np.random.default_rng(9))
    dead = keyed(dead_ev)

    def in_dead(k: tuple[int, int, int]) -> bool:
        return any(all(lo <= c < hi for c, (lo, hi) in zip(k, box, strict=True)) for box in det.dead_regions)

    assert not any(in_dead(k) for k in dead)
    expected = {k for k in nominal if not in_dead(k)}
    assert set(dead) == expected and len(expected) < len(nominal)
    assert all(np.array_equal(dead[k], nominal[k]) for k in dead)


def test_noise_hits_count_matches_the_poisson_rate() -> None:
    det = get_detector("noisy")
    truth = truth_of(line((100, 100, 100), 0, 50))
    counts = []
    for seed in range(40):
        ev = render(truth, det, np.random.default_rng(seed))
        noise = ev.points[:, layout.DE] == 0
        assert np.all(ev.semantic[noise] == layout.LOW_ENERGY)
        assert np.all(ev.energy[noise] >= det.threshold_mev)
        assert np.all(ev.points[noise, layout.TIME] == 0)
        counts.append(int(noise.sum()))
    # Mean of 40 Poisson(300) counts: standard error sqrt(300 / 40) = 2.7; allow 4 of them.
    assert np.mean(counts) == pytest.approx(det.noise_hits_per_event, abs=4 * np.sqrt(300 / 40))
    assert np.std(counts) == pytest.approx(np.sqrt(300), rel=0.35)
    quiet = render(truth, NOMINAL, np.random.default_rng(0))
    assert not (quiet.points[:, layout.DE] == 0).any()


def test_threshold_drops_voxels_below_five_hundredths_of_an_mev() -> None:
    def single(de: float) -> Event:
        pos = np.array([[centre(0), centre(10), centre(10)]])  # at the anode: no attenuation
        return render(truth_of({"pos": pos, "de": np.array([de]), "dx": np.array([de / MIP_DEDX_MEV_CM])}),
                      SHARP, np.random.default_rng(0))

    assert single(0.045).n_points == 0
    assert single(0.055).n_points == 1
    assert single(0.055).energy[0] == pytest.approx(0.055, rel=1e-3)


def test_deposits_outside_the_box_are_dropped() -> None:
    pos = np.array([[-0.1, 50.0, 50.0], [50.0, 230.5, 50.0], [50.0, 50.0, 230.39], [0.0, 0.0, 0.0]])
    ev = render(truth_of({"pos": pos, "de": np.full(4, 1.0), "dx": np.full(4, 0.3)}), SHARP,
                np.random.default_rng(0))
    assert sorted(map(tuple, ev.coords.astype(int).tolist())) == [(0, 0, 0), (166, 166, 767)]


def test_event_layout_rows_order_and_extra_columns() -> None:
    truth = mixed_truth()
    ev = render(truth, NOMINAL, np.random.default_rng(0))
    c, x = ev.clusters, ev.cluster_extra
    assert c.shape == (5, 6) and x.shape == (5, 5)
    # Row 0: the low-energy bucket, present even when empty, with the io.Event.empty convention.
    assert np.array_equal(c[0, 1:], Event.empty().clusters[0, 1:]) and c[0, 0] == 0
    assert c[1:, layout.C_FRAGMENT].tolist() == [0, 1, 2, 3]
    assert c[1:, layout.C_GROUP].tolist() == [0, 1, 2, 3]
    assert c[1:, layout.C_INTERACTION].tolist() == [0, 0, 1, 0]
    assert c[1:, layout.C_SEMANTIC].tolist() == [layout.TRACK, layout.TRACK, layout.SHOWER, layout.MICHEL]
    assert c[1:, layout.C_PID].tolist() == [layout.PID_MUON, layout.PID_PROTON, layout.PID_ELECTRON,
                                            layout.PID_ELECTRON]
    assert c[:, 0].sum() == ev.n_points
    np.testing.assert_allclose(x[1:, 2:], truth.fragments.vertex_cm / VOX, rtol=1e-6)
    np.testing.assert_allclose(x[1:, 0], truth.fragments.mass_mev)
    np.testing.assert_allclose(x[1:, 1], truth.fragments.momentum_gev)
    # Voxels are sorted by (x, y, z) inside each cluster; coordinates are integers.
    assert np.array_equal(ev.coords, np.round(ev.coords))
    key = (ev.coords[:, 0].astype(np.int64) * 768 + ev.coords[:, 1]) * 768 + ev.coords[:, 2]
    for k in range(len(c)):
        part = key[ev.cluster_index == k]
        assert np.all(np.diff(part) > 0)


def test_voxel_time_is_the_earliest_and_dx_the_summed_step() -> None:
    pos = np.full((3, 3), centre(5))
    truth = truth_of({"pos": pos, "de": np.array([0.3, 0.2, 0.1]), "dx": np.array([0.1, 0.1, 0.05]),
                      "time": 0.0})
    truth.deposits.time_ns[:] = [12.0, 3.5, 40.0]
    ev = render(truth, SHARP, np.random.default_rng(0))
    assert ev.n_points == 1
    assert ev.points[0, layout.TIME] == pytest.approx(3.5)
    assert ev.points[0, layout.DX] == pytest.approx(2.5)  # mm
    assert ev.points[0, layout.DE] == pytest.approx(0.6)


def test_no_deposits_gives_the_empty_event() -> None:
    ev = render(truth_of(), NOMINAL, np.random.default_rng(0))
    empty = Event.empty()
    for name in ("points", "clusters", "cluster_extra"):
        assert np.array_equal(getattr(ev, name), getattr(empty, name)), name


def test_rendered_events_pass_file_validation(tmp_path) -> None:  # noqa: ANN001
    truth = mixed_truth()
    events = [render(truth, get_detector(name), np.random.default_rng(k))
              for k, name in enumerate(("nominal", "data_like", "noisy", "dead_regions", "high_diffusion"))]
    path = tmp_path / "twins.h5"
    assert write_events(path, events) == len(events)
    assert validate_file(path) == []
    for a, b in zip(read_events(path), events, strict=True):
        assert np.array_equal(a.points, b.points) and np.array_equal(a.clusters, b.clusters)


def _bad(**changes: object) -> TruthEvent:
    truth = truth_of(line((10, 10, 10), 0, 5))
    for key, value in changes.items():
        setattr(truth.deposits, key, value)
    return truth


@pytest.mark.parametrize("truth, field", [
    (_bad(de_mev=np.array([0.6, np.nan, 0.6, 0.6, 0.6])), "deposits.de_mev"),
    (_bad(de_mev=np.array([0.6, -0.1, 0.6, 0.6, 0.6])), "deposits.de_mev"),
    (_bad(pos_cm=np.zeros((5, 2))), "deposits.pos_cm"),
    (_bad(pos_cm=np.full((5, 3), np.inf)), "deposits.pos_cm"),
    (_bad(frag=np.array([0, 0, 3, 0, 0], np.int32)), "deposits.frag"),
    (_bad(dx_cm=np.zeros(4)), "deposits.dx_cm"),
    (_bad(time_ns=np.full(5, np.nan)), "deposits.time_ns"),
])
def test_malformed_truth_raises_data_format_error_naming_the_field(truth: TruthEvent, field: str) -> None:
    with pytest.raises(DataFormatError, match=field.replace(".", r"\.")):
        render(truth, NOMINAL, np.random.default_rng(0))


def test_bad_role_and_bad_rng_are_rejected() -> None:
    truth = truth_of(line((10, 10, 10), 0, 5))
    truth.fragments.role[:] = 9
    with pytest.raises(DataFormatError, match="fragments.role"):
        render(truth, NOMINAL, np.random.default_rng(0))
    with pytest.raises(DetfmError, match="numpy.random.Generator"):
        render(truth_of(line((10, 10, 10), 0, 5)), NOMINAL, 42)  # type: ignore[arg-type]

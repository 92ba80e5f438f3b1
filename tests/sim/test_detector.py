"""DetectorModel parameters, catalogue and recombination against published numbers."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from detfm.errors import ConfigError, DetfmError
from detfm.sim.detector import (CALIBRATION, DETECTORS, MIP_DEDX_MEV_CM, NOMINAL, DetectorModel,
                                get_detector)

REQUIRED = ("nominal", "escale_up", "escale_down", "short_lifetime", "birks", "noisy",
            "dead_regions", "high_diffusion", "data_like")


def test_catalogue_has_every_required_variation_under_its_own_name() -> None:
    assert set(REQUIRED) <= set(DETECTORS)
    for name, det in DETECTORS.items():
        assert det.name == name
        assert get_detector(name) is det


def test_nominal_uses_the_physics_sheet_values() -> None:
    d = NOMINAL
    assert d.recombination == "box"
    assert (d.box_alpha, d.box_beta) == (0.93, 0.212)      # ArgoNeuT modified box
    assert (d.birks_a, d.birks_k) == (0.800, 0.0486)       # ICARUS Birks
    assert d.w_ion_ev == 23.6
    assert d.efield_kv_cm == 0.5
    assert d.drift_velocity_cm_us == pytest.approx(0.16)
    assert 3_000 <= d.electron_lifetime_us <= 10_000      # "3-10 ms typical"
    assert (d.diffusion_long_cm2_s, d.diffusion_trans_cm2_s) == (7.2, 12.0)
    assert d.threshold_mev == 0.05
    assert d.density_g_cm3 == 1.396
    assert d.energy_scale == 1.0 and d.noise_hits_per_event == 0 and d.dead_regions == ()


def test_variations_change_what_their_names_say() -> None:
    assert get_detector("escale_up").changes_from(NOMINAL) == ["energy_scale"]
    assert get_detector("escale_up").energy_scale == pytest.approx(1.05)
    assert get_detector("escale_down").energy_scale == pytest.approx(0.95)
    short = get_detector("short_lifetime")
    assert short.changes_from(NOMINAL) == ["electron_lifetime_us"]
    assert 1_000 <= short.electron_lifetime_us <= 3_000
    assert get_detector("birks").changes_from(NOMINAL) == ["recombination"]
    assert get_detector("birks").recombination == "birks"
    assert get_detector("noisy").noise_hits_per_event > 0
    assert len(get_detector("dead_regions").dead_regions) > 0
    hd = get_detector("high_diffusion")
    assert hd.diffusion_long_cm2_s > NOMINAL.diffusion_long_cm2_s
    assert hd.diffusion_trans_cm2_s > NOMINAL.diffusion_trans_cm2_s
    data_like = set(get_detector("data_like").changes_from(NOMINAL))
    assert {"energy_scale", "electron_lifetime_us", "recombination", "noise_hits_per_event",
            "dead_regions"} <= data_like


def test_box_model_at_mip_matches_argoneut_value() -> None:
    # ArgoNeuT (JINST 8 (2013) P08005) modified box model at a MIP (2.105 MeV/cm, PDG) and
    # 500 V/cm: about 70 % of the ionisation charge survives recombination. Tolerance 0.01.
    r = float(NOMINAL.survival_fraction(MIP_DEDX_MEV_CM))
    assert r == pytest.approx(0.70, abs=0.01)
    # The formula itself, evaluated by hand: xi = 0.212 * 2.105 / (1.396 * 0.5).
    xi = 0.212 * 2.105 / (1.396 * 0.5)
    assert r == pytest.approx(np.log(0.93 + xi) / xi, rel=1e-12)


def test_birks_at_mip_matches_icarus_value() -> None:
    # ICARUS (NIM A523 (2004) 275) Birks law at a MIP and 500 V/cm: R = 0.800 / (1 + 0.0486 * 2.105 / 0.698)
    # ~ 0.69-0.70. Tolerance 0.01 around 0.69.
    r = float(get_detector("birks").survival_fraction(MIP_DEDX_MEV_CM))
    assert r == pytest.approx(0.69, abs=0.01)
    assert r == pytest.approx(0.8 / (1 + 0.0486 * 2.105 / (1.396 * 0.5)), rel=1e-12)


def test_recombination_is_physical_over_the_dedx_range() -> None:
    dedx = np.geomspace(0.01, 50.0, 200)
    for det in (NOMINAL, get_detector("birks")):
        r = det.survival_fraction(dedx)
        assert np.all((r > 0) & (r <= 1)), det.name
        # More dE/dx, more recombination. (The box formula peaks near 1.55 MeV/cm, below
        # the range it was fitted on; Birks is monotonic everywhere.)
        fitted = dedx >= (1.6 if det.recombination == "box" else 0.0)
        assert np.all(np.diff(r[fitted]) <= 0), det.name
        # Below the 1 MeV/cm floor (LArSoft's guard) R is flat: the box model would go negative.
        assert np.all(r[dedx < 1.0] == det.survival_fraction(1.0))
    # A stronger field collects more charge (at a proton-like 5 MeV/cm, inside the fitted range).
    for det in (NOMINAL, get_detector("birks")):
        strong = dataclasses.replace(det, efield_kv_cm=1.0)
        assert strong.survival_fraction(5.0) > det.survival_fraction(5.0)


def test_calibration_is_the_nominal_one() -> None:
    assert CALIBRATION.r_mip == pytest.approx(float(NOMINAL.survival_fraction(MIP_DEDX_MEV_CM)))
    assert CALIBRATION.lifetime_us == NOMINAL.electron_lifetime_us
    assert CALIBRATION.w_ion_ev == NOMINAL.w_ion_ev


def test_describe_is_one_paragraph_naming_the_changes() -> None:
    for det in DETECTORS.values():
        text = det.describe()
        assert text.startswith(det.name + ":") and "\n" not in text
        assert "R(MIP)=" in text
    assert "Differs from nominal in: energy_scale." in get_detector("escale_up").describe()
    assert "Differs from nominal" not in NOMINAL.describe()
    assert "R(MIP)=0.705" in NOMINAL.describe()


def test_unknown_detector_names_the_input_suggests_and_lists() -> None:
    with pytest.raises(DetfmError) as err:
        get_detector("escale-up")
    msg = str(err.value)
    assert "'escale-up'" in msg and "Did you mean 'escale_up'?" in msg
    assert all(name in msg for name in REQUIRED)
    with pytest.raises(DetfmError, match="Did you mean 'nominal'"):
        get_detector("nomnal")
    with pytest.raises(DetfmError) as err:
        get_detector("qqqqqq")
    assert "Did you mean" not in str(err.value)


@pytest.mark.parametrize("changes, field", [
    ({"electron_lifetime_us": -1.0}, "electron_lifetime_us"),
    ({"energy_scale": 0.0}, "energy_scale"),
    ({"diffusion_trans_cm2_s": float("nan")}, "diffusion_trans_cm2_s"),
    ({"noise_hits_per_event": -3.0}, "noise_hits_per_event"),
    ({"threshold_mev": "0.05"}, "threshold_mev"),
    ({"recombination": "linear"}, "recombination"),
    ({"dead_regions": (((0, 10), (0, 10)),)}, "dead_regions"),
    ({"dead_regions": (((10, 5), (0, 10), (0, 10)),)}, "dead_regions"),
    ({"dead_regions": (((0, 800), (0, 10), (0, 10)),)}, "dead_regions"),
    ({"dead_regions": (((0, 1.5), (0, 10), (0, 10)),)}, "dead_regions"),
    ({"dead_regions": 5}, "dead_regions"),
    ({"box_alpha": 0.5}, "box model"),
])
def test_bad_parameters_raise_config_error_naming_the_field(changes: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        dataclasses.replace(NOMINAL, **changes)


def test_round_trip_through_json_and_unknown_keys() -> None:
    det = get_detector("data_like")
    back = DetectorModel.from_dict(json.loads(json.dumps(det.to_dict())))
    assert back == det and isinstance(back.dead_regions[0][0], tuple)
    assert hash(back) == hash(det)
    with pytest.raises(ConfigError, match="'energyscale' \\(did you mean 'energy_scale'\\?\\)"):
        DetectorModel.from_dict({"energyscale": 1.1})

"""Physics formulas of the transport stage against published numbers and independent codes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import brentq

from detfm.errors import DetfmError
from detfm.sim import _kernels
from detfm.sim import physics as ph
from detfm.sim.particles import ELECTRON_MASS_MEV, MUON_MASS_MEV, PION_MASS_MEV, PROTON_MASS_MEV

LAR = ph.LIQUID_ARGON


def test_bethe_minimum_is_the_pdg_mip_value() -> None:
    # PDG liquid argon table: minimum ionisation 1.508 MeV cm^2/g x 1.396 g/cm^3 = 2.105 MeV/cm; tolerance 1 %.
    t = np.geomspace(50.0, 5000.0, 4000)
    dedx = ph.bethe_dedx(t, MUON_MASS_MEV)
    assert dedx.min() == pytest.approx(ph.LAR_MIP_DEDX_MEV_CM, rel=0.01)
    # ... at beta gamma ~ 3.5 (PDG Fig. 34.2: minimum at beta gamma = 3-3.5 for all heavy particles)
    bg_min = ph.beta_gamma(t[np.argmin(dedx)], MUON_MASS_MEV)
    assert 3.0 <= bg_min <= 4.0


def test_bethe_is_vectorised_and_scalar_in_scalar_out() -> None:
    t = np.array([[10.0, 100.0], [1000.0, 5000.0]])
    out = ph.bethe_dedx(t, PROTON_MASS_MEV)
    assert out.shape == (2, 2)
    assert isinstance(ph.bethe_dedx(100.0, PROTON_MASS_MEV), float)
    assert out[0, 1] == ph.bethe_dedx(100.0, PROTON_MASS_MEV)
    # z^2 scaling
    assert ph.bethe_dedx(100.0, PROTON_MASS_MEV, charge=2) == pytest.approx(4 * out[0, 1])


@pytest.mark.parametrize(("kinetic", "csda_g_cm2"), [(100.0, 42.50), (300.0, 172.5), (1000.0, 616.3)])
def test_muon_csda_range_matches_the_pdg_muon_table(kinetic: float, csda_g_cm2: float) -> None:
    # Groom, Mokhov & Striganov, At. Data Nucl. Data Tables 78 (2001) 183, liquid argon table
    # (PDG muE_liquid_argon): CSDA range at T = 100, 300, 1000 MeV. Tolerance 2 % (their
    # electronic loss includes shell/Barkas corrections and a tiny radiative part).
    assert ph.csda_range_cm(kinetic, MUON_MASS_MEV) * LAR.density_g_cm3 == pytest.approx(csda_g_cm2, rel=0.02)


@pytest.mark.parametrize("kinetic", [20.0, 50.0, 100.0, 300.0])
def test_proton_range_and_stopping_power_agree_with_pycatima(kinetic: float) -> None:
    # pycatima (independent stopping-power code, with shell/Barkas/Lindhard corrections):
    # proton range at 100 MeV ~ 10.9 g/cm^2 = 7.8 cm in LAr (PHYSICS.md). Tolerance 3 %.
    catima = pytest.importorskip("pycatima")
    mass_u = PROTON_MASS_MEV / 931.49410242
    material = catima.get_material(18)
    material.density(LAR.density_g_cm3)
    material.thickness(1.0)
    projectile = catima.Projectile(mass_u, 1)
    projectile.T(kinetic / mass_u)  # MeV per atomic mass unit
    result = catima.calculate(projectile, material)
    assert ph.csda_range_cm(kinetic, PROTON_MASS_MEV) == pytest.approx(result.range / LAR.density_g_cm3, rel=0.03)
    assert ph.bethe_dedx(kinetic, PROTON_MASS_MEV) == pytest.approx(result.dEdxi * LAR.density_g_cm3, rel=0.03)


def test_proton_range_at_100_mev_is_7_8_cm() -> None:
    # PHYSICS.md: 10.9 g/cm^2 -> 7.8 cm; tolerance 3 %.
    assert ph.csda_range_cm(100.0, PROTON_MASS_MEV) == pytest.approx(7.8, rel=0.03)


def test_csda_range_is_monotonic_and_zero_at_rest() -> None:
    t = np.geomspace(0.01, 3000, 200)
    r = ph.csda_range_cm(t, PION_MASS_MEV)
    assert (np.diff(r) > 0).all()
    assert ph.csda_range_cm(0.0, PION_MASS_MEV) == 0.0


def test_electron_collision_loss_gives_the_pdg_critical_energy() -> None:
    # Rossi's critical energy: ionisation loss per X0 equals the electron energy; PDG liquid
    # argon E_c(e-) = 32.84 MeV. Tolerance 3 %.
    x0 = LAR.radiation_length_cm
    ec = brentq(lambda e: ph.electron_collision_dedx(e) * x0 - e, 5.0, 200.0)
    assert ec == pytest.approx(LAR.critical_energy_mev, rel=0.03)


def test_radiative_loss_tends_to_e_over_x0() -> None:
    # PDG eq. 34.29-34.30: dE/dx = E / X0 at high energy (complete screening); 1 %.
    e = 10_000.0
    assert ph.electron_radiative_dedx(e) == pytest.approx((e + ELECTRON_MASS_MEV) / LAR.radiation_length_cm,
                                                          rel=0.01)


def test_restricted_loss_is_below_bethe_and_equals_it_when_cut_exceeds_wmax() -> None:
    t = np.array([50.0, 300.0, 3000.0])
    full = ph.bethe_dedx(t, MUON_MASS_MEV)
    assert (ph.restricted_dedx(t, MUON_MASS_MEV, 1.0) < full).all()
    wmax = ph.max_energy_transfer(t, MUON_MASS_MEV)
    np.testing.assert_allclose(ph.restricted_dedx(t, MUON_MASS_MEV, 2 * wmax.max()), full, rtol=1e-12)


def test_density_effect_is_continuous_and_zero_below_x0() -> None:
    # Sternheimer parametrisation for LAr (PDG): delta0 = 0, so delta = 0 below x0 = 0.2.
    assert ph.density_effect(10**0.1) == 0.0
    for x in (LAR.sternheimer_x0, LAR.sternheimer_x1):
        lo, hi = ph.density_effect(10 ** (x - 1e-9)), ph.density_effect(10 ** (x + 1e-9))
        assert lo == pytest.approx(hi, abs=1e-4)  # the PDG coefficients are rounded: 2.6e-5 step at x0


def test_highland_at_one_radiation_length() -> None:
    # PDG eq. 34.15 at x = X0, beta = 1, z = 1: theta0 = 13.6 MeV / p exactly.
    assert ph.highland_theta0(1000.0, 1.0, LAR.radiation_length_cm) == pytest.approx(0.0136, rel=1e-12)


def test_landau_most_probable_loss_of_a_mip_over_a_voxel() -> None:
    # PDG Fig. 34.7/34.8: the most probable dE/dx over thin layers is ~70-80 % of the mean
    # (for 3 mm of LAr about 1.5-1.7 MeV/cm against 2.1 MeV/cm mean).
    tm = np.sqrt(400.0**2 + MUON_MASS_MEV**2) - MUON_MASS_MEV
    mpv = ph.landau_most_probable_loss(tm, MUON_MASS_MEV, 0.3) / 0.3
    assert 0.65 * ph.bethe_dedx(tm, MUON_MASS_MEV) < mpv < 0.85 * ph.bethe_dedx(tm, MUON_MASS_MEV)


def test_step_loss_sampler_mean_and_most_probable_value() -> None:
    # Mean of the sampled loss = restricted dE/dx x step (by construction, 1 % with 40k draws);
    # its mode = the Landau-Vavilov most probable loss (PDG eq. 34.12) within 8 %.
    rng = np.random.default_rng(0)
    tm = np.sqrt(400.0**2 + MUON_MASS_MEV**2) - MUON_MASS_MEV
    loss = ph.sample_step_loss(rng, tm, MUON_MASS_MEV, 0.3, 40_000)
    assert loss.mean() == pytest.approx(ph.restricted_dedx(tm, MUON_MASS_MEV, _kernels.DELTA_CUT_MEV) * 0.3,
                                        rel=0.01)
    hist, edges = np.histogram(loss, bins=np.arange(0.2, 1.0, 0.01))
    mode = edges[np.argmax(hist)] + 0.005
    assert mode == pytest.approx(ph.landau_most_probable_loss(tm, MUON_MASS_MEV, 0.3), rel=0.08)
    assert loss.max() > 2 * mode     # a Landau-like tail, made of collisions below the delta-ray cut:
    assert np.mean(loss > loss.mean() + _kernels.DELTA_CUT_MEV) < 0.005


def test_michel_pdf_and_cdf() -> None:
    x = np.linspace(0, 1, 100_001)
    assert np.trapezoid(ph.michel_pdf(x), x) == pytest.approx(1.0, abs=1e-6)
    assert ph.michel_cdf(1.0) == 1.0 and ph.michel_cdf(0.0) == 0.0
    assert ph.michel_pdf(1.5) == 0.0
    # end point (m_mu^2 + m_e^2) / (2 m_mu) = 52.83 MeV (PDG)
    assert ph.MICHEL_EMAX_MEV == pytest.approx(52.83, abs=0.005)


def test_michel_sampler_endpoint_and_shape() -> None:
    # 20k energies: none above E_max = 52.83 MeV, the largest within 1 % of it; KS test
    # against the x^2 (3 - 2x) spectrum at the 0.1 % level.
    e = ph.sample_michel_energy(np.random.default_rng(1), 20_000)
    assert e.max() <= ph.MICHEL_EMAX_MEV
    assert e.max() >= 0.99 * ph.MICHEL_EMAX_MEV
    assert stats.kstest(e / ph.MICHEL_EMAX_MEV, ph.michel_cdf).pvalue > 1e-3


def test_photon_cross_sections_against_klein_nishina_and_the_radiation_length() -> None:
    compton, photo, pair = ph.photon_attenuation_per_cm(np.array([1.0, 1e5]))
    electrons_per_cm3 = ph.AVOGADRO * LAR.z_over_a * LAR.density_g_cm3
    # XCOM incoherent at 1 MeV vs free-electron Klein-Nishina: binding matters < 1 % here.
    assert compton[0] == pytest.approx(ph.klein_nishina_cm2(1.0) * electrons_per_cm3, rel=0.01)
    # high-energy pair production: mean free path 9/7 X0 (PDG eq. 34.31); 2 %.
    assert 1 / pair[1] == pytest.approx(9 / 7 * LAR.radiation_length_cm, rel=0.02)
    assert pair[0] == 0.0  # below the 1.022 MeV threshold
    # photo-absorption dominates at 30 keV, Compton at 1 MeV
    c30, p30, _ = ph.photon_attenuation_per_cm(0.03)
    assert p30[0] > 10 * c30[0] and photo[0] < 0.01 * compton[0]
    # a 1 MeV photon travels 12.5 cm on average (XCOM total 0.0574 cm^2/g)
    assert 1 / (compton[0] + photo[0] + pair[0]) == pytest.approx(1 / (0.05738 * LAR.density_g_cm3), rel=0.01)


def test_compton_sampler_follows_klein_nishina() -> None:
    # Histogram of cos(theta) at 1 MeV vs the Klein-Nishina d sigma / d cos(theta); chi2/ndf < 2.
    energy = 1.0
    draws = _kernels.sample_compton_many(_kernels.seed_state(np.random.default_rng(2)), energy, 60_000)
    k = energy / ELECTRON_MASS_MEV
    edges = np.linspace(-1, 1, 41)
    c = np.linspace(-1, 1, 4001)
    ratio = 1 / (1 + k * (1 - c))
    dsigma = ratio**2 * (ratio + 1 / ratio - (1 - c**2))
    cdf = np.concatenate([[0], np.cumsum(0.5 * (dsigma[1:] + dsigma[:-1]) * np.diff(c))])
    expected = np.diff(np.interp(edges, c, cdf / cdf[-1])) * len(draws)
    observed, _ = np.histogram(draws[:, 1], bins=edges)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 / (len(edges) - 2) < 2.0
    # energy conservation of the kinematics: E'/E = 1 / (1 + k (1 - cos))
    np.testing.assert_allclose(draws[:, 0], 1 / (1 + k * (1 - draws[:, 1])), rtol=1e-9)


def test_kernel_formulas_agree_with_the_reference_functions() -> None:
    # The kernels carry scalar copies of physics.py's formulas; they must agree exactly.
    for t in (0.3, 5.0, 80.0, 700.0, 20_000.0):
        for mass in (MUON_MASS_MEV, PION_MASS_MEV, PROTON_MASS_MEV):
            assert _kernels.bethe(t, mass, 1.0, LAR) == pytest.approx(ph.bethe_dedx(t, mass), rel=1e-12)
            assert _kernels.max_transfer(t, mass) == pytest.approx(ph.max_energy_transfer(t, mass), rel=1e-12)
        for positron in (False, True):
            assert _kernels.electron_collision(t, positron, LAR) == pytest.approx(
                ph.electron_collision_dedx(t, positron), rel=1e-12)
        assert _kernels.electron_radiative(t, LAR) == pytest.approx(ph.electron_radiative_dedx(t), rel=1e-12)
        bg = ph.beta_gamma(t, MUON_MASS_MEV)
        assert _kernels.density_effect(bg, LAR) == pytest.approx(ph.density_effect(bg), rel=1e-12, abs=1e-12)
    # residual range below the stopping energy follows the same rule as csda_range_cm
    t0 = ph.heavy_stop_kinetic_mev(PROTON_MASS_MEV)
    assert _kernels.stop_kinetic(_kernels.PROTON) == pytest.approx(t0, rel=1e-12)
    assert _kernels.residual_range(_kernels.PROTON, 0.5 * t0, LAR) == pytest.approx(
        ph.csda_range_cm(0.5 * t0, PROTON_MASS_MEV), rel=1e-9)


def test_kernel_photon_table_interpolation() -> None:
    table = ph.photon_table()
    e = np.geomspace(0.02, 5e4, 57)
    compton, photo, pair = ph.photon_attenuation_per_cm(e)
    for i, energy in enumerate(e):
        mc, mp, mpair = _kernels.photon_mu(energy, table)
        assert mc == pytest.approx(compton[i], rel=0.005)
        assert mp == pytest.approx(photo[i], rel=0.005)
        assert mpair == pytest.approx(pair[i], rel=0.005, abs=1e-6)


def test_kernel_rng_is_a_pure_function_of_the_seed() -> None:
    a = _kernels.sample_michel_many(_kernels.seed_state(np.random.default_rng(3)), 100)
    b = _kernels.sample_michel_many(_kernels.seed_state(np.random.default_rng(3)), 100)
    c = _kernels.sample_michel_many(_kernels.seed_state(np.random.default_rng(4)), 100)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    u = np.array([_kernels.uniform(_kernels.seed_state(np.random.default_rng(s))) for s in range(2000)])
    assert 0 < u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.03


def test_bad_inputs_raise_detfm_errors() -> None:
    with pytest.raises(DetfmError, match="mass"):
        ph.bethe_dedx(100.0, 0.0)
    with pytest.raises(DetfmError, match="kinetic"):
        ph.csda_range_cm(-1.0, PROTON_MASS_MEV)
    with pytest.raises(DetfmError, match="n must be"):
        ph.sample_michel_energy(np.random.default_rng(0), -5)
    with pytest.raises(DetfmError, match="Generator"):
        ph.sample_michel_energy(0, 5)  # type: ignore[arg-type]
    with pytest.raises(DetfmError, match="step_cm"):
        ph.sample_step_loss(np.random.default_rng(0), 100.0, MUON_MASS_MEV, 0.0, 10)

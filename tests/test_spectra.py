"""Spectra v1: normalisation, absorption, Compton attenuation, scattered light, spectral sets."""

import numpy as np
import pytest
import torch
from scipy import integrate

from popsynth.errors import PopsynthError
from popsynth.physics.crosssections import sigma_compton, sigma_photo
from popsynth.spectra.cache import build_spectral_table
from popsynth.spectra.component import Scattered, Transmitted
from popsynth.spectra.table import default_energy_grid, spectra_per_draw
from popsynth.spectra.primary import KEV_ERG, band_energy_flux, primary_spectrum
from popsynth.spectra.sets import SPECTRAL_SETS, Dist, draw_parameters, get_spectral_set

T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731


@pytest.mark.parametrize("gamma,ecut", [(1.9, 200.0), (1.4, 50.0), (2.4, 1000.0)])
def test_primary_normalised_to_unit_l210(gamma, ecut):
    e = torch.logspace(np.log10(2.0), np.log10(10.0), 20001, dtype=torch.float64)
    s = primary_spectrum(e, T(gamma), T(ecut))
    lum = torch.trapezoid(e * s, e).item() * KEV_ERG
    assert lum == pytest.approx(1.0, rel=1e-7)
    ref, _ = integrate.quad(lambda x: x ** (1 - gamma) * np.exp(-x / ecut), 2, 10, epsrel=1e-12)
    assert band_energy_flux(T(gamma), T(ecut)).item() == pytest.approx(ref * KEV_ERG, rel=1e-12)


def test_transmission_is_photoabsorption_times_compton():
    e = default_energy_grid()
    prim = primary_spectrum(e, T([1.9]), T([200.0]))
    for lognh in (21.0, 23.0, 24.5):
        s = Transmitted().spectrum(e, prim, {}, T([lognh]))[0, 0]
        expect = prim[0] * torch.exp(-10 ** lognh * (sigma_photo(e) + sigma_compton(e)))
        torch.testing.assert_close(s, expect, rtol=1e-12, atol=0)
    # N_H = 1e24 at 100 keV: photoabsorption negligible; Compton depth 1.21 sigma_KN N_H, with the analytic
    # Klein-Nishina total cross section (Rybicki & Lightman eq. 7.5) at x = E / m_e c^2
    x = 100.0 / 510.99895
    kn = 0.75 * 6.6524587e-25 * ((1 + x) / x ** 3 * (2 * x * (1 + x) / (1 + 2 * x) - np.log(1 + 2 * x))
                                 + np.log(1 + 2 * x) / (2 * x) - (1 + 3 * x) / (1 + 2 * x) ** 2)
    s = Transmitted().spectrum(T([100.0]), primary_spectrum(T([100.0]), T([1.9]), T([200.0])), {}, T([24.0]))
    ratio = (s[0, 0, 0] / primary_spectrum(T([100.0]), T([1.9]), T([200.0]))[0, 0]).item()
    assert ratio == pytest.approx(np.exp(-1e24 * 1.21 * kn), rel=0.005)  # photoabsorption < 0.5 % here
    # Photoabsorption optical depth at 1 keV for N_H = 1e22 with solar abundances is ~2.4 (MM83: 2.4e-22 cm^2)
    assert (1e22 * sigma_photo(T([1.0]))).item() == pytest.approx(2.4, rel=0.1)


def test_scattered_is_one_percent_unabsorbed():
    e = default_energy_grid()
    prim = primary_spectrum(e, T([1.8, 2.0]), T([100.0, 300.0]))
    s = Scattered().spectrum(e, prim, {"fscatt": T([0.01, 0.01])}, T([20.0, 25.0]))
    torch.testing.assert_close(s[:, 1], 0.01 * prim, rtol=1e-14, atol=0)


def test_spectral_table_limits():
    tab = build_spectral_table(5, np.linspace(20, 26, 61), n_draws=16, cache=False)
    e = tab.energy
    i = int(torch.searchsorted(e, T(5.0)))
    # unabsorbed cell at 5 keV: ~(1 + f_scatt) x mean primary; CT cell at 25.95: only the 1 % scattered light
    prim = primary_spectrum(e, tab.params["gamma"][1], tab.params["ecut"][1]).mean(0)
    assert (tab.mean[-1, i] / prim[i]).item() == pytest.approx(0.01, rel=1e-6)
    assert torch.allclose(tab.mean, sum(tab.components.values()))
    assert (tab.mean > 0).all()
    # monotone: more absorption never adds photons below the Compton regime
    assert torch.all(tab.mean[1:, i] <= tab.mean[:-1, i] * (1 + 1e-12))


def test_spectral_table_cache_roundtrip():
    edges = np.linspace(20, 26, 61)
    a = build_spectral_table(2, edges, n_draws=8)
    b = build_spectral_table(2, edges, n_draws=8)  # from cache
    assert a.meta["key"] == b.meta["key"]
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    c = build_spectral_table(2, edges, n_draws=9)
    assert c.meta["key"] != a.meta["key"]


@pytest.mark.parametrize("number", sorted(SPECTRAL_SETS))
def test_every_spectral_set_is_finite_and_physical(number):
    s = spectra_per_draw(number, [20.5, 23.0, 24.5], n_draws=32)
    assert s.shape[:2] == (32, 3)
    assert torch.isfinite(s).all() and (s >= 0).all()
    p = draw_parameters(get_spectral_set(number), 2000, seed=3)
    assert float(p["gamma"].min()) >= 1.0 and float(p["gamma"].max()) <= 3.0
    assert float(p["ecut"].min()) >= 20.0 and float(p["refl"].min()) >= 0.0
    assert torch.all(p["fscatt"] == 0.01)


def test_spectral_set_distributions_match_a19_table4():
    p5 = draw_parameters(get_spectral_set(5), 4000, seed=1)
    assert p5["gamma"].mean().item() == pytest.approx(1.96, abs=0.005)
    assert p5["gamma"].std().item() == pytest.approx(0.10, abs=0.005)
    assert p5["ecut"].mean().item() == pytest.approx(200.0, abs=1.0)
    assert p5["refl"][0].mean().item() == pytest.approx(0.83, abs=0.01)  # unobscured
    assert p5["refl"][1].mean().item() == pytest.approx(0.37, abs=0.01)  # obscured
    p1 = draw_parameters(get_spectral_set(1), 4000, seed=1)
    assert p1["gamma"][0].mean().item() == pytest.approx(1.80, abs=0.01)
    assert p1["gamma"][1].mean().item() == pytest.approx(1.72, abs=0.01)
    med = p1["ecut"][0].median().item()
    assert med == pytest.approx(76.0, rel=0.03)
    assert (p1["ecut"][0] < 100).double().mean().item() == pytest.approx(0.75, abs=0.02)
    p3 = draw_parameters(get_spectral_set(3), 4000, seed=1)
    torch.testing.assert_close(p3["gamma"][0], p3["gamma"][1])


def test_truncated_normal_mean():
    # N(128, 46) truncated at 20 keV: analytic mean mu + sigma phi(a)/(1 - Phi(a)), a = -2.348
    from scipy.stats import norm
    d = Dist("normal", 128.0, 46.0, 20.0, 1000.0)
    a, b = (20 - 128) / 46, (1000 - 128) / 46
    expect = 128 + 46 * (norm.pdf(a) - norm.pdf(b)) / (norm.cdf(b) - norm.cdf(a))
    assert d.mean() == pytest.approx(expect, rel=1e-4)


def test_unknown_spectral_set():
    """The library names its parameters (`spec_set`, `n_draws`); train.py shows them as flags."""
    from popsynth.cli import flag_text

    with pytest.raises(PopsynthError, match="choose `spec_set` 1, 2, 3, 4 or 5") as ei:
        get_spectral_set(6)
    assert "choose --spec-set 1, 2, 3, 4 or 5 (A19 Table 4)" in flag_text(str(ei.value))
    with pytest.raises(PopsynthError, match=r"need at least one spectral draw, got 0; pass `n_draws` >= 1"):
        draw_parameters(get_spectral_set(5), 0)

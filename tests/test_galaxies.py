"""Galaxy (X-ray binary) CXB models: values against independent quadrature, closed forms and A19."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from popsynth.cli import build_parser
from popsynth.constants import MPC_CM
from popsynth.cosmology import CosmologyParams
from popsynth.errors import PopsynthError
from popsynth.galaxies import (
    GALAXY_MODELS,
    cxb_from_emissivity,
    galaxy_cxb_a19,
    galaxy_cxb_sfr,
    md14_sfr_density,
    md14_stellar_mass_density,
    xrb_emissivity_2_10keV,
)

KEV_ERG = 1.602176634e-9
YR_S = 365.25 * 86400
T_H_YR = MPC_CM / 1e5 / 70.0 / YR_S      # 1/H0 in yr for H0 = 70
PREF = 299792.458 / 70.0 / (4 * math.pi) / MPC_CM ** 2 / KEV_ERG  # (c/4 pi H0) [Mpc], erg Mpc^-2 -> keV cm^-2


def t(x):
    return torch.tensor(x, dtype=torch.float64)


# ---- independent scalar reference (closed-form H(z), scipy.integrate.quad) ----
def ez(z, om=0.3):
    return math.sqrt(om * (1 + z) ** 3 + 1 - om)


def psi(z):  # MD14 eq. 15, Salpeter
    return 0.015 * (1 + z) ** 2.7 / (1 + ((1 + z) / 2.9) ** 5.6)


def rho_star(z, z_form=20.0):  # MD14 section 5, R = 0.27
    return 0.73 * T_H_YR * quad(lambda x: psi(x) / ((1 + x) * ez(x)), z, z_form, epsabs=0, epsrel=1e-11, limit=200)[0]


def eps_x(z):  # L16 eq. 3, 2-10 keV, Kroupa (x 0.67)
    return 0.67 * (10 ** 29.37 * (1 + z) ** 2.03 * rho_star(z) + 10 ** 39.28 * (1 + z) ** 1.31 * psi(z))


def test_sfr_model_at_1kev_within_factor_2_of_a19():
    # A19 section 6 (Aird et al. 2015 galaxy XLF): ~1.7 at 1 keV. The MD14 x L16 model gives 2.517 (1.54x);
    # the ingredients are uncertain by tens of per cent (L16 gamma = 2.03 +/- 0.60), so a factor 2 is the
    # honest tolerance. The exact value is pinned (rel 1e-3) as a regression check.
    v = galaxy_cxb_sfr(t([1.0])).item()
    assert 1.7 / 2 < v < 1.7 * 2
    assert v == pytest.approx(2.517, rel=1e-3)
    # 10 and 30 keV, documented in the docstring
    v10, v30 = galaxy_cxb_sfr(t([10.0, 30.0])).tolist()
    assert v10 == pytest.approx(1.505, rel=1e-3)
    assert v30 == pytest.approx(0.425, rel=2e-3)


def test_sfr_model_matches_independent_quadrature():
    # fixed cutoff E_c = 25 keV: the full z integral redone with scipy quad (nested for rho_*) and closed-form E(z)
    gam, ec = 1.9, 25.0
    norm = quad(lambda e: e ** (1 - gam) * math.exp(-e / ec), 2, 10, epsrel=1e-12)[0]
    for energy in (1.0, 10.0):
        def f(z):
            er = (1 + z) * energy
            return eps_x(z) * er ** (2 - gam) * math.exp(-er / ec) / norm / ((1 + z) ** 2 * ez(z))
        ref = PREF * quad(f, 0, 6, epsrel=1e-9, limit=200)[0]
        got = galaxy_cxb_sfr(t([energy]), ecut_range=(ec, ec)).item()
        assert got == pytest.approx(ref, rel=1e-6)


def test_spectrum_shape_is_the_power_law():
    e = t(np.logspace(np.log10(0.3), 2, 25))
    # no cutoff: exactly E^(2 - Gamma) times a constant
    v = galaxy_cxb_sfr(e, ecut_range=None)
    r = v / e ** 0.1
    np.testing.assert_allclose(r.numpy(), r[0].item(), rtol=1e-12)
    v = galaxy_cxb_sfr(e, gamma=1.7, ecut_range=None)
    np.testing.assert_allclose((v / e ** 0.3).numpy(), (v[0] / e[0] ** 0.3).item(), rtol=1e-12)
    # with the 20-30 keV cutoff (redshifted: rest energies up to 7E): within 20 % of E^0.1 scaled at 1 keV
    # over 0.3-3 keV (measured: +6 % at 0.3 keV, -16 % at 3 keV), and at most 1 below 10 keV
    e = t(np.logspace(np.log10(0.3), 1, 30))
    ratio = galaxy_cxb_sfr(e) / e ** 0.1 / galaxy_cxb_sfr(t([1.0]))
    low = e <= 3.0
    assert torch.all((ratio[low] - 1).abs() < 0.2)
    assert torch.all(ratio[e >= 1.0] <= 1.0 + 1e-12)


def test_redshift_integral_converges():
    e = t([0.5, 1.0, 5.0, 20.0, 100.0])
    a = galaxy_cxb_sfr(e)
    b = galaxy_cxb_sfr(e, n_z=128, n_rho=128)
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4)
    assert (b / a - 1).abs().max().item() < 1e-10  # measured ~2e-14


def test_integral_constant_emissivity_closed_form_and_quad():
    eps0 = 1e38  # erg s^-1 Mpc^-3 per unit ln E, flat in E and constant in z
    const = lambda er, z: torch.full_like(er, eps0)  # noqa: E731
    e = t([[1.0, 3.0], [10.0, 50.0]])
    # Einstein-de Sitter: int_0^zm dz (1+z)^-2 (1+z)^-3/2 = (1 - (1+zm)^-5/2) / (5/2)
    zm = 6.0
    got = cxb_from_emissivity(e, const, z_max=zm, cosmology=CosmologyParams(Om0=1.0))
    ref = PREF * eps0 * (1 - (1 + zm) ** -2.5) / 2.5
    assert got.shape == e.shape
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)
    # flat LambdaCDM Om0 = 0.3 against scipy quad
    got = cxb_from_emissivity(e, const, z_max=zm)
    ref = PREF * eps0 * quad(lambda z: 1 / ((1 + z) ** 2 * ez(z)), 0, zm, epsrel=1e-13)[0]
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12)


def test_local_emissivity_and_densities():
    # MD14 eq. 15 local value: psi(0) = 0.015 / (1 + (1/2.9)^5.6) = 0.01496 Msun/yr/Mpc^3
    assert md14_sfr_density([0.0]).item() == pytest.approx(0.015, rel=3e-3)
    assert md14_sfr_density(t([2.0])).item() == pytest.approx(psi(2.0), rel=1e-14)
    # rho_*(z) (MD14 section 5, R = 0.27) against scipy quad; rho_*(0) = 5.76e8 Msun/Mpc^3 (Salpeter)
    for z in (0.0, 1.0, 3.0):
        assert md14_stellar_mass_density([z]).item() == pytest.approx(rho_star(z), rel=1e-8)
    assert md14_stellar_mass_density([0.0]).item() == pytest.approx(5.76e8, rel=1e-3)
    # local 2-10 keV emissivity: HMXB part = beta0 * 0.67 * psi(0) (L16 x MD14), total within 1e-8 of the reference
    eps0 = xrb_emissivity_2_10keV([0.0]).item()
    hmxb = 10 ** 39.28 * 0.67 * 0.015 / (1 + (1 / 2.9) ** 5.6)
    lmxb = 10 ** 29.37 * 0.67 * rho_star(0.0)
    assert hmxb == pytest.approx(1.910e37, rel=1e-3)
    assert eps0 == pytest.approx(hmxb + lmxb, rel=1e-8)
    assert eps0 == pytest.approx(1.096e38, rel=1e-3)
    # and at z = 2 (SFR peak): against the scalar reference
    assert xrb_emissivity_2_10keV(t([2.0])).item() == pytest.approx(eps_x(2.0), rel=1e-8)


def test_a19_model_unchanged():
    # A19 section 6: 1.7 at 1 keV for every Gamma, times <exp(-1 keV/E_c)> over E_c ~ U(20, 30) keV = 0.960275
    cut = quad(lambda ec: math.exp(-1.0 / ec), 20, 30, epsrel=1e-13)[0] / 10
    v = galaxy_cxb_a19(t([1.0])).item()
    assert v == pytest.approx(1.7 * cut, rel=1e-10)
    assert v == pytest.approx(1.6325, rel=1e-4)


def test_registry_shapes_and_dtype():
    assert {"a19", "sfr", "none"} <= set(GALAXY_MODELS)
    e = t([[0.5, 1.0, 2.0], [10.0, 30.0, 100.0]])
    for name, fn in GALAXY_MODELS.items():
        out = fn(e)
        assert out.shape == e.shape and out.dtype == torch.float64, name
        assert torch.all(torch.isfinite(out)), name
    assert torch.all(GALAXY_MODELS["none"](e) == 0)
    # array-like input works too
    assert GALAXY_MODELS["sfr"]([1.0]).item() == pytest.approx(GALAXY_MODELS["sfr"](t([1.0])).item(), rel=1e-14)
    assert "sfr" in build_parser().format_help()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sfr_model_on_cuda():
    e = t([1.0, 10.0])
    out = galaxy_cxb_sfr(e.cuda())
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu().numpy(), galaxy_cxb_sfr(e).numpy(), rtol=1e-12)


@pytest.mark.parametrize("name", ["a19", "sfr", "none"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_energies_raise(name, bad):
    with pytest.raises(PopsynthError, match="energies must be finite and > 0"):
        GALAXY_MODELS[name](t([1.0, bad]))


def test_bad_parameters_raise():
    with pytest.raises(PopsynthError, match="redshifts"):
        md14_sfr_density([-0.5])
    with pytest.raises(PopsynthError, match="redshifts"):
        md14_stellar_mass_density([float("nan")])
    with pytest.raises(PopsynthError, match="z_max"):
        galaxy_cxb_sfr(t([1.0]), z_max=0.0)
    with pytest.raises(PopsynthError, match="n_z"):
        galaxy_cxb_sfr(t([1.0]), n_z=1)
    with pytest.raises(PopsynthError, match="ecut_range"):
        galaxy_cxb_sfr(t([1.0]), ecut_range=(30.0, 20.0))
    with pytest.raises(PopsynthError, match="gamma"):
        galaxy_cxb_sfr(t([1.0]), gamma=float("nan"))

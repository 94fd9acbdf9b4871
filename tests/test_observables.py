"""Survey model and number-count / CT-fraction observables (popsynth.survey, popsynth.observables).

References used below:
- Euclidean counts: a non-evolving population in flat static space has N(>S) ~ S^-1.5
  (each luminosity is seen out to r ~ S^-1/2, volume ~ S^-3/2).
- Independent quadrature: N(>S) integrated with scipy (Simpson on 20001 log-spaced z points),
  astropy distances and the analytic band flux of a power law, against the model.
- Power-law band conversion: F(a, b) ~ (b^(2-G) - a^(2-G)) / (2-G), ln(b/a) for G = 2;
  data/counts/README.md quotes F(2-7)/F(2-8) = 0.8637 (G = 1.4) and F(2-7)/F(2-10) = 0.7350 (G = 1.7).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from astropy.cosmology import FlatLambdaCDM
from scipy import integrate

from popsynth.constants import MPC_CM
from popsynth.cosmology import distance_tables
from popsynth.data.counts import CTFraction, load_counts, load_ct_fractions
from popsynth.errors import PopsynthError
from popsynth.grid import Grid, trapezoid_weights
from popsynth.observables import (
    band_flux_factor,
    build_counts_model,
    build_ct_model,
    build_survey_model,
    counts_chi2,
    ct_fraction_chi2,
    z_range_weights,
)
from popsynth.spectra.cache import build_spectral_table
from popsynth.spectra.table import SpectralTable
from popsynth.spectra.primary import primary_spectrum
from popsynth.survey import Survey, band_flux_ratio, convert_flux, counts_flux_bins, get_survey, list_surveys
from popsynth.xlf import apply_block_weights, build_phi0

F64 = torch.float64
GAMMA = 1.8
ECUT_NONE = 1e9  # keV: exp(-E/E_cut) > 1 - 3e-6 below 2000 keV, i.e. a pure power law


def _power_law_table(grid, gammas=(GAMMA,)):
    """SpectralTable of unabsorbed power laws (one draw per photon index), normalised to L(2-10) = 1."""
    e = torch.logspace(-1, np.log10(2000.0), 1201, dtype=F64)
    s = primary_spectrum(e, torch.tensor(gammas, dtype=F64), torch.full((len(gammas),), ECUT_NONE, dtype=F64))
    pd = s[:, None, :].expand(-1, grid.lognh.size, -1).clone()
    mean = pd.mean(0)
    return SpectralTable(e, torch.as_tensor(grid.lognh_edges), torch.as_tensor(grid.lognh), mean, {"primary": mean},
                         pd, {}, {})


def _phi(z, logl):
    """Evolving double power law, Mpc^-3 dex^-1 (the test population of test_cxb.py)."""
    x = 10.0 ** (logl - 44.0)
    return 1e-5 / (x ** 1.2 + x ** 2.7) * (1 + z) ** 2.5 / (1 + ((1 + z) / 3.0) ** 5)


_XG, _WG = np.polynomial.legendre.leggauss(8)


def _cell_avg(grid, z):
    """Cell averages of _phi over each log L cell at redshifts z [n]: [n, nL]."""
    ll = grid.logl[:, None] + 0.5 * grid.dlogl[:, None] * _XG[None]
    return (_phi(np.asarray(z)[:, None, None], ll) * _WG / 2).sum(-1)


def _cube(grid):
    """All sources in the first (unabsorbed) log N_H cell, per dex of N_H: [nz, nL, nN]."""
    out = np.zeros(grid.shape)
    out[:, :, 0] = _cell_avg(grid, grid.z) / grid.dlognh[0]
    return torch.as_tensor(out)


def _scipy_counts(grid, fluxes, band=(2.0, 10.0), n=20001):
    """Independent N(>S) in deg^-2: Simpson in z, astropy distances, analytic power-law band flux.

    phi is constant in log L inside each cell (the cell average), as in the model, so the log L
    integral above the threshold t is the exact overlap of [t, 47] with each cell.
    """
    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Tcmb0=0)
    z = np.geomspace(grid.z[0], grid.z[-1], n)
    k = 2.0 - GAMMA
    ratio = (band[1] ** k - band[0] ** k) / (10.0 ** k - 2.0 ** k)  # F(band) / L(2-10), rest frame
    d_l = cosmo.luminosity_distance(z).to_value("Mpc") * MPC_CM
    kfac = (1 + z) ** k * ratio / (4 * np.pi * d_l ** 2)
    dv = cosmo.differential_comoving_volume(z).to_value("Mpc3/sr") * (np.pi / 180) ** 2
    avg = _cell_avg(grid, z)
    out = []
    for s in fluxes:
        t = np.log10(s) - np.log10(kfac)
        over = np.clip(grid.logl_edges[None, 1:] - np.maximum(grid.logl_edges[None, :-1], t[:, None]), 0, None)
        out.append(integrate.simpson((avg * over).sum(-1) * dv, x=z))
    return np.array(out)


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def real():
    """Default grid, the A19 starting cube and spectral set 1 with 8 draws (transmitted + scattered)."""
    g = Grid()
    phi0 = build_phi0(g)
    tab = build_spectral_table(1, g.lognh_edges, n_draws=8, seed=0)
    return g, phi0, tab


@pytest.fixture(scope="module")
def bat_model(real):
    g, phi0, tab = real
    s = get_survey("bat105_agn_cumulative_14_195keV")
    return build_survey_model(s, g, phi0, tab, fluxes=np.geomspace(1e-11, 2e-10, 6),
                              flux_bins=(np.array([1e-11, 3e-11]), np.array([3e-11, 1e-10])))


def _weights(n=4, seed=0):
    return 0.3 + 4.7 * torch.rand(n, 15, dtype=F64, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- flux conversion
def test_convert_flux_analytic():
    """Power-law band ratios: README values, gamma = 2 logarithm, round trip, types."""
    # data/counts/README.md: F(2-7)/F(2-8) = 0.8637 (G = 1.4); F(2-7)/F(2-10) = 0.7350 (G = 1.7)
    assert band_flux_ratio((2, 8), (2, 7), 1.4) == pytest.approx((7 ** 0.6 - 2 ** 0.6) / (8 ** 0.6 - 2 ** 0.6), rel=1e-14)
    assert band_flux_ratio((2, 8), (2, 7), 1.4) == pytest.approx(0.8637, abs=5e-5)
    assert convert_flux(1e-14, (2, 10), (2, 7), 1.7) == pytest.approx(0.7350e-14, rel=1e-4)
    # gamma = 2: E N(E) ~ 1/E, F ~ ln(b/a); continuous through 2
    assert band_flux_ratio((14, 195), (2, 10), 2.0) == pytest.approx(math.log(5) / math.log(195 / 14), rel=1e-14)
    assert band_flux_ratio((14, 195), (2, 10), 2.0 + 1e-9) == pytest.approx(math.log(5) / math.log(195 / 14), rel=1e-8)
    # independent quadrature for a generic index
    num, _ = integrate.quad(lambda e: e ** (1 - 1.6), 0.5, 2.0)
    den, _ = integrate.quad(lambda e: e ** (1 - 1.6), 2.0, 10.0)
    assert band_flux_ratio((2, 10), (0.5, 2), 1.6) == pytest.approx(num / den, rel=1e-10)
    # round trip, arrays and tensors
    s = np.array([1e-15, 3e-13, 0.0])
    back = convert_flux(convert_flux(s, (2, 10), (8, 24), 1.4), (8, 24), (2, 10), 1.4)
    np.testing.assert_allclose(back, s, rtol=1e-14)
    t = torch.tensor([2e-14], dtype=F64, requires_grad=True)
    out = convert_flux(t, (2, 8), (2, 7), 1.4)
    out.sum().backward()
    assert t.grad.item() == pytest.approx(band_flux_ratio((2, 8), (2, 7), 1.4), rel=1e-14)


def test_convert_flux_bad_input():
    with pytest.raises(PopsynthError, match="finite and >= 0"):
        convert_flux(-1e-14, (2, 10), (2, 7), 1.7)
    with pytest.raises(PopsynthError, match="0 < lo < hi"):
        convert_flux(1e-14, (10, 2), (2, 7), 1.7)
    with pytest.raises(PopsynthError, match="photon index"):
        convert_flux(1e-14, (2, 10), (2, 7), float("nan"))


# ----------------------------------------------------------------------------- surveys
def test_survey_validation_and_completeness():
    with pytest.raises(PopsynthError, match="exactly one"):
        Survey("x", (2, 10))
    with pytest.raises(PopsynthError, match="exactly one"):
        Survey("x", (2, 10), flux_limit=1e-14, area_flux=[1e-15, 1e-14], area_deg2=[1, 2])
    with pytest.raises(PopsynthError, match="flux_limit must be finite and > 0"):
        Survey("x", (2, 10), flux_limit=-1e-14)
    with pytest.raises(PopsynthError, match="strictly increasing"):
        Survey("x", (2, 10), area_flux=[1e-14, 1e-15], area_deg2=[1, 2])
    with pytest.raises(PopsynthError, match="z_lo < z_hi"):
        Survey("x", (2, 10), flux_limit=1e-14, z_range=(1.0, 0.5))
    s = Survey("curve", (2, 10), area_flux=[1e-15, 1e-14, 1e-13], area_deg2=[0.1, 1.0, 2.0])
    # log-log interpolation: area(10^-14.5) = 10^((log 0.1 + log 1)/2); 0 below the first point; flat above
    np.testing.assert_allclose(s.completeness([1e-16, 1e-15, 10 ** -14.5, 1e-12]),
                               [0.0, 0.05, 10 ** -0.5 / 2, 1.0], rtol=1e-12)
    assert Survey("lim", (2, 10), flux_limit=1e-14).completeness([0.9e-14, 1.1e-14]).tolist() == [0.0, 1.0]


def test_registry_from_data_files():
    names = list_surveys()
    for n in ("bat105_agn_cumulative_14_195keV", "cappelluti09_xmmcosmos_cumulative_2_10keV",
              "luo17_cdfs7ms_cumulative_2_7keV", "ct_swift_bat_70_month", "ct_nustar_uds"):
        assert n in names
    bat = get_survey("bat105_agn_cumulative_14_195keV")
    assert bat.band_keV == (14.0, 195.0) and bat.flux_limit == 1e-11 and bat.area == pytest.approx(34089.46, rel=1e-6)
    xmm = get_survey("cappelluti09_xmmcosmos_cumulative_2_10keV")
    assert xmm.has_area_curve and xmm.max_area == pytest.approx(2.13) and xmm.conversion_gamma == 1.7
    # A19 sec. 4: XMM-COSMOS converts with Gamma = 1.7
    assert xmm.in_band((2, 7)).area_flux[0] == pytest.approx(xmm.area_flux[0] * 0.7350, rel=1e-4)
    ser = get_survey("ct_nustar_serendipitous_40_month")
    assert ser.band_keV == (8.0, 24.0) and ser.z_range == (0.0, 0.07) and ser.flux_limit == 2e-14
    lo, hi = counts_flux_bins(load_counts("bat105_agn_differential_14_195keV"))
    assert lo[0] == pytest.approx(1e-11) and np.all(hi > lo)
    with pytest.raises(PopsynthError, match="unknown survey"):
        get_survey("not-a-survey")


def test_z_range_weights_exact_for_linear_functions():
    z = Grid().z
    np.testing.assert_allclose(z_range_weights(z), trapezoid_weights(z), rtol=0, atol=1e-15)
    w = z_range_weights(z, (0.031, 0.513))  # ends inside segments
    exact = (0.513 ** 2 - 0.031 ** 2) + (0.513 - 0.031)  # integral of 2z + 1
    assert (w * (2 * z + 1)).sum() == pytest.approx(exact, rel=1e-13)
    assert z_range_weights(z, (0.0, 0.07)).sum() == pytest.approx(0.07 - z[0], rel=1e-13)  # clipped at z[0]
    with pytest.raises(PopsynthError, match="does not overlap"):
        z_range_weights(z, (6.0, 7.0))


# ----------------------------------------------------------------------------- band flux
def test_band_flux_factor_power_law():
    """K(z) = (1+z)^(2-G) F(band)/L(2-10) / (4 pi d_L^2) for a power law, to 1e-6."""
    g = Grid()
    tab = _power_law_table(g, gammas=(1.6, 2.0))
    k = band_flux_factor(tab, g, (0.5, 2.0))  # [2, nz, nN]
    d_l = distance_tables(g.z)["d_l_cm"].numpy()
    for i, gam in enumerate((1.6, 2.0)):
        expect = (1 + g.z) ** (2 - gam) * band_flux_ratio((2, 10), (0.5, 2), gam) / (4 * np.pi * d_l ** 2)
        np.testing.assert_allclose(k[i, :, 0].numpy(), expect, rtol=1e-6)
        np.testing.assert_allclose(k[i, :, -1].numpy(), expect, rtol=1e-6)


def test_band_outside_table_raises(real):
    g, phi0, tab = real
    with pytest.raises(PopsynthError, match="beyond the spectral table"):
        band_flux_factor(tab, g, (0.05, 2.0))
    with pytest.raises(PopsynthError, match="beyond the spectral table"):
        build_survey_model(Survey("hi", (300, 400), flux_limit=1e-12), g, phi0, tab)  # 400 x 6 > 2000 keV
    # a redshift range that keeps the band inside the table is fine
    m = build_survey_model(Survey("hi", (300, 400), flux_limit=1e-12, z_range=(0.0, 1.0)), g, phi0, tab)
    assert torch.isfinite(m.sample_response).all()


# ----------------------------------------------------------------------------- counts
def test_euclidean_slope():
    """Non-evolving, unabsorbed population at z < 0.05 (log L 42.5-43.5): N(>S) ~ S^-1.5 within 2 %.

    Fluxes 1e-10 - 2e-9 (2-10 keV) put the faintest sources at z ~ 0.002-0.012, far inside the
    grid (1e-4 - 0.05), so no z edge matters; the L edges are inside every z integral. The
    remaining deviation is cosmological (d_L and V_c differ from Euclidean at O(z)). Point-wise
    dN/dS carries the step noise of the z quadrature (the population has sharp L edges): 5 %.
    """
    g = Grid(z=np.geomspace(1e-4, 0.05, 300))
    phi = torch.zeros(g.shape, dtype=F64)
    phi[:, torch.as_tensor((g.logl > 42.5) & (g.logl < 43.5)), 0] = 1e-4
    tab = _power_law_table(g, gammas=(1.7, 1.9, 2.1))
    s = np.geomspace(1e-10, 2e-9, 9)
    m = build_survey_model(Survey("euclid", (2.0, 10.0), flux_limit=1e-10), g, phi, tab, fluxes=s)
    n = m.cumulative_cube(phi[None])[0].numpy()
    slope = np.diff(np.log(n)) / np.diff(np.log(s))
    np.testing.assert_allclose(slope, -1.5, rtol=0.02)
    local = -m.differential_cube(phi[None])[0].numpy() * s / n
    np.testing.assert_allclose(local, -1.5, rtol=0.05)


def test_counts_match_independent_quadrature():
    """N(>S) against scipy (Simpson in z, astropy) on a 400-node z grid: 5e-4 relative.

    On the default (A19) z nodes the trapezoid in z is coarser; the discretisation error stays
    below 2 % at these fluxes (largest at bright fluxes, whose sources sit at z ~ 0.05-0.3).
    """
    s = [1e-16, 1e-14, 1e-12]
    ref = _scipy_counts(Grid(), s)
    g = Grid(z=np.geomspace(0.002, 5.0, 400))
    phi = _cube(g)
    m = build_survey_model(Survey("t", (2.0, 10.0), flux_limit=1e-16), g, phi, _power_law_table(g), fluxes=s)
    np.testing.assert_allclose(m.cumulative_cube(phi[None])[0].numpy(), ref, rtol=5e-4)
    gd = Grid()
    phid = _cube(gd)
    md = build_survey_model(Survey("t", (2.0, 10.0), flux_limit=1e-16), gd, phid, _power_law_table(gd), fluxes=s)
    np.testing.assert_allclose(md.cumulative_cube(phid[None])[0].numpy(), ref, rtol=0.02)


def test_differential_is_derivative_of_cumulative(real, bat_model):
    """Analytic dN/dS against central differences of N(>S) (2e-4), binned dN/dS against bin edges (1e-12)."""
    g, phi0, tab = real
    m = bat_model
    w = _weights(2)
    s = m.fluxes.numpy()
    h = 1e-5
    at = lambda f: build_survey_model(m.survey, g, phi0, tab, fluxes=f).cumulative(w)  # noqa: E731
    fd = (at(s * (1 - h)) - at(s * (1 + h))) / torch.as_tensor(2 * h * s)
    torch.testing.assert_close(m.differential(w), fd, rtol=2e-4, atol=0)
    n = at(np.array([1e-11, 3e-11, 1e-10]))
    binned = torch.stack([(n[:, 0] - n[:, 1]) / 2e-11, (n[:, 1] - n[:, 2]) / 7e-11], -1)
    torch.testing.assert_close(m.binned_differential(w), binned, rtol=1e-12, atol=0)


def test_linear_in_weights_batched_and_cube_path(real, bat_model):
    g, phi0, _ = real
    m = bat_model
    w1, w2 = _weights(3, 1), _weights(3, 2)
    for f in (m.cumulative, m.differential, m.binned_differential, m.dndz, m.sample_density):
        torch.testing.assert_close(f(2.0 * w1 + 0.5 * w2), 2.0 * f(w1) + 0.5 * f(w2), rtol=1e-12, atol=0)
        looped = torch.cat([f(w1[i:i + 1]) for i in range(3)])
        torch.testing.assert_close(f(w1), looped, rtol=1e-13, atol=0)
    phi = apply_block_weights(phi0, w1, g)
    torch.testing.assert_close(m.cumulative_cube(phi), m.cumulative(w1), rtol=1e-11, atol=0)
    torch.testing.assert_close(m.differential_cube(phi), m.differential(w1), rtol=1e-10, atol=0)
    torch.testing.assert_close(m.dndz_cube(phi), m.dndz(w1), rtol=1e-11, atol=1e-30)
    torch.testing.assert_close(m.ct_fraction_cube(phi), m.ct_fraction(w1), rtol=1e-11, atol=0)


def test_gradients_finite_and_exact(bat_model):
    m = bat_model
    w = _weights(2).requires_grad_(True)
    m.cumulative(w).sum().backward()
    torch.testing.assert_close(w.grad, m.cum_response.sum(-1).expand(2, -1))
    w.grad = None
    ct = load_ct_fractions()[0]
    loss = (m.ct_fraction(w) - ct.fraction) ** 2 + torch.log(m.dndz_normalised(w)[:, 10])
    loss.sum().backward()
    assert torch.isfinite(w.grad).all() and (w.grad != 0).any()
    wc = _weights(2).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: m.ct_fraction(x), (wc,))


def test_dndz_sums_to_counts_above_the_limit(real):
    """sum_z w_z dN/dz (selection path) = N(>S_lim) (cumulative path), with and without a z range."""
    g, phi0, tab = real
    w = _weights(3)
    for zr in (None, (0.1, 1.23)):
        m = build_survey_model(Survey("cdfs", (2.0, 7.0), flux_limit=3e-16, z_range=zr), g, phi0, tab)
        torch.testing.assert_close((m.dndz(w) * m.z_weights).sum(-1), m.cumulative(w)[:, 0], rtol=1e-11, atol=0)
        torch.testing.assert_close(m.dndz_normalised(w) @ m.z_weights, torch.ones(3, dtype=F64), rtol=1e-12, atol=0)
        if zr is not None:
            zf = m.z.numpy()  # the model's z nodes: the grid's, refined at low z
            assert (m.dndz(w)[:, zf < 0.05] == 0).all() and (m.dndz(w)[:, zf > 1.3] == 0).all()


def test_area_curve_sample_equals_integral_over_dnds(real):
    """Area-curve sample density = integral of completeness(S) dN/dS dS (Simpson, 161 log points): 5e-4."""
    g, phi0, tab = real
    curve = Survey("curve", (2.0, 10.0), area_flux=[2e-15, 5e-15, 1.5e-14, 4e-14], area_deg2=[0.02, 0.6, 1.8, 2.1])
    w = _weights(2)
    m = build_survey_model(curve, g, phi0, tab)
    s = np.geomspace(2e-15, 4e-14, 161)
    dense = build_survey_model(Survey("lim", (2.0, 10.0), flux_limit=1e-15), g, phi0, tab, fluxes=s)
    dnds = dense.differential(w).numpy()
    above = dense.cumulative(w)[:, -1].numpy()  # completeness is 1 from the last point up
    ref = integrate.simpson(dnds * curve.completeness(s) * s, x=np.log(s)) + above
    np.testing.assert_allclose(m.sample_density(w).numpy(), ref, rtol=5e-4)


# ----------------------------------------------------------------------------- CT fractions
def _intrinsic_ct_from_cube(g, phi, z_range, log_thr):
    """CT fraction straight from a cube [nz, nL, nN]: share of each N_H cell above log_thr."""
    wz = z_range_weights(g.z, z_range) * distance_tables(g.z)["dvc_dz_dsr_mpc3"].numpy()
    per_n = np.einsum("zln,z,l->n", phi.numpy(), wz, g.dlogl) * g.dlognh
    share = np.clip((g.lognh_edges[1:] - log_thr) / g.dlognh, 0, 1)
    return (per_n * share).sum() / per_n.sum()


@pytest.mark.parametrize("nh, zr", [(1e24, None), (1.5e24, (0.0, 0.07))])
def test_ct_fraction_tends_to_intrinsic(real, nh, zr):
    """S_lim -> 0 (1e-25 in 14-195 keV): observed CT fraction = intrinsic one from the cube (1e-10)."""
    g, phi0, tab = real
    w = _weights(2)
    # on the grid's own z nodes (z_max_rel_step=None), the quadrature of the reference
    m = build_survey_model(Survey("deep", (14.0, 195.0), flux_limit=1e-25, z_range=zr), g, phi0, tab, nh_threshold=nh,
                           z_max_rel_step=None)
    ref = [_intrinsic_ct_from_cube(g, apply_block_weights(phi0, w[i:i + 1], g)[0], zr, math.log10(nh)) for i in range(2)]
    torch.testing.assert_close(m.ct_fraction(w), torch.tensor(ref, dtype=F64), rtol=1e-10, atol=0)
    torch.testing.assert_close(m.intrinsic_ct_fraction(w), torch.tensor(ref, dtype=F64), rtol=1e-12, atol=0)


def test_ct_fraction_suppressed_at_bat_limit(real):
    """An obscured-heavy population seen at 1e-11 (14-195 keV): fewer CT AGN than intrinsically."""
    g, phi0, tab = real
    w = torch.ones(1, 15, dtype=F64)
    w[:, 10:] = 3.0  # three times the A19 starting CT density
    m = build_survey_model(Survey("bat", (14.0, 195.0), flux_limit=1e-11), g, phi0, tab)
    obs, intr = m.ct_fraction(w).item(), m.intrinsic_ct_fraction(w).item()
    assert intr > 0.5
    assert obs < 0.8 * intr
    deeper = build_survey_model(Survey("bat", (14.0, 195.0), flux_limit=1e-14), g, phi0, tab).ct_fraction(w).item()
    assert obs < deeper < intr


def test_counts_and_ct_models_from_data(real):
    """build_counts_model / build_ct_model predict the data's own points; chi^2 as computed by hand."""
    g, phi0, tab = real
    w = _weights(2)
    bat = load_counts("bat105_agn_differential_14_195keV")
    m = build_counts_model(bat, g, phi0, tab)
    assert m.target == "binned" and m.predict(w).shape == (2, bat.value.size)
    pred = m.predict(w).detach().numpy()
    r = pred - bat.value
    hand = ((r / np.where(r > 0, bat.err_hi, bat.err_lo)) ** 2).sum(-1)
    np.testing.assert_allclose(m.chi2(w).numpy(), hand, rtol=1e-12)
    cts = load_ct_fractions()
    models = [build_ct_model(ct, g, phi0, tab) for ct in cts[2:]]
    preds = torch.stack([mm.predict(w) for mm in models], -1)  # [B, 2]
    assert ((preds > 0) & (preds < 1)).all()
    total = ct_fraction_chi2(preds, cts[2:])
    torch.testing.assert_close(total, models[0].chi2(w) + models[1].chi2(w), rtol=1e-13, atol=0)


def test_chi2_hand_values():
    ct = CTFraction("s", "r", (8.0, 24.0), 1e-14, None, 1e24, 0.3, 0.1, 0.2, "")
    got = ct_fraction_chi2(torch.tensor([0.5, 0.1], dtype=F64), ct)
    torch.testing.assert_close(got, torch.tensor([1.0, 4.0], dtype=F64))  # (0.2/0.2)^2, (0.2/0.1)^2
    data = load_counts("bat105_agn_cumulative_14_195keV")
    pred = torch.as_tensor(data.value + data.err_hi)[None]
    assert counts_chi2(pred, data).item() == pytest.approx(data.value.size, rel=1e-12)
    with pytest.raises(PopsynthError, match="points"):
        counts_chi2(pred[:, :3], data)


def test_bad_inputs(real, bat_model):
    g, phi0, tab = real
    s = Survey("t", (2.0, 10.0), flux_limit=1e-14)
    with pytest.raises(PopsynthError, match="finite and > 0"):
        build_survey_model(s, g, phi0, tab, fluxes=[1e-14, -1e-15])
    with pytest.raises(PopsynthError, match="lo < hi"):
        build_survey_model(s, g, phi0, tab, flux_bins=([2e-14], [1e-14]))
    with pytest.raises(PopsynthError, match="nh_threshold"):
        build_survey_model(s, g, phi0, tab, nh_threshold=-1)
    with pytest.raises(PopsynthError, match="grid's shape"):
        build_survey_model(s, g, phi0[:10], tab)
    with pytest.raises(PopsynthError, match="15 entries"):
        bat_model.cumulative(torch.ones(2, 14, dtype=F64))
    with pytest.raises(PopsynthError, match="cube must be"):
        bat_model.cumulative_cube(torch.ones(2, 3, 4, dtype=F64))
    empty = build_survey_model(Survey("empty", (2.0, 10.0), flux_limit=1e-3), g, phi0, tab)
    with pytest.raises(PopsynthError, match="no source of the grid passes"):
        empty.ct_fraction(torch.ones(1, 15, dtype=F64))
    assert bat_model.to("cpu").cumulative(torch.ones(1, 15, dtype=F64)).shape == (1, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_gpu_matches_cpu(real):
    g, phi0, tab = real
    w = _weights(3)
    s = Survey("c", (2.0, 10.0), area_flux=[2e-15, 5e-15, 1.5e-14], area_deg2=[0.02, 0.6, 2.0])
    cpu = build_survey_model(s, g, phi0, tab, fluxes=[1e-15, 1e-14])
    gpu = build_survey_model(s, g, phi0.cuda(), tab.to("cuda"), fluxes=[1e-15, 1e-14])
    torch.testing.assert_close(gpu.cumulative(w.cuda()).cpu(), cpu.cumulative(w), rtol=1e-10, atol=0)
    torch.testing.assert_close(gpu.ct_fraction(w.cuda()).cpu(), cpu.ct_fraction(w), rtol=1e-10, atol=0)
    torch.testing.assert_close(cpu.to("cuda").dndz(w.cuda()).cpu(), cpu.dndz(w), rtol=1e-12, atol=0)

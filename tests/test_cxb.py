"""CXB integral: independent scipy quadrature, batching, block path vs cube path."""

import numpy as np
import pytest
import torch
from astropy.cosmology import FlatLambdaCDM
from scipy import integrate

from popsynth.constants import MPC_CM
from popsynth.cxb import CXBModel, block_response, cxb_from_cube, cxb_kernel
from popsynth.errors import PopsynthError
from popsynth.galaxies import galaxy_cxb_a19
from popsynth.grid import Grid
from popsynth.spectra.cache import build_spectral_table
from popsynth.spectra.table import SpectralTable
from popsynth.spectra.primary import primary_spectrum
from popsynth.xlf import apply_block_weights, build_phi0

GAMMA, ECUT = 1.8, 300.0


def _phi(z, logl):
    """A simple evolving double power-law population (Mpc^-3 dex^-1), all in one log N_H cell."""
    x = 10.0 ** (logl - 44.0)
    return 1e-5 / (x ** 1.2 + x ** 2.7) * (1 + z) ** 2.5 / (1 + ((1 + z) / 3.0) ** 5)


def _power_law_table(grid):
    e = torch.logspace(-1, np.log10(2000), 3001, dtype=torch.float64)
    s = primary_spectrum(e, torch.tensor(GAMMA, dtype=torch.float64), torch.tensor(ECUT, dtype=torch.float64))
    mean = s[None].expand(grid.lognh.size, -1).clone()
    edges = torch.as_tensor(grid.lognh_edges)
    return SpectralTable(e, edges, torch.as_tensor(grid.lognh), mean, {"primary": mean}, mean[None], {}, {})


def _cube(grid):
    """L-weighted cell averages of _phi in the first log N_H cell (per dex of N_H)."""
    x, w = np.polynomial.legendre.leggauss(8)
    out = np.zeros(grid.shape)
    for xi, wi in zip(x, w):
        ll = grid.logl + 0.5 * grid.dlogl * xi
        out[:, :, 0] += wi / 2 * _phi(grid.z[:, None], ll[None, :]) * 10 ** (ll - grid.logl)[None, :]
    out[:, :, 0] /= grid.dlognh[0]
    return torch.as_tensor(out)


def _scipy_cxb(e_obs):
    """Independent I(E): dblquad over z and log L with astropy distances, E^2 units."""
    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Tcmb0=0)

    def spec(e):
        return float(primary_spectrum(torch.tensor([e], dtype=torch.float64), torch.tensor(GAMMA, dtype=torch.float64),
                                      torch.tensor(ECUT, dtype=torch.float64))[0])

    def integrand(logl, z):
        dv = cosmo.differential_comoving_volume(z).to_value("Mpc3/sr")
        dl = cosmo.luminosity_distance(z).to_value("Mpc") * MPC_CM
        return _phi(z, logl) * 10 ** logl * spec(e_obs * (1 + z)) * (1 + z) ** 2 / (4 * np.pi * dl ** 2) * dv

    val, _ = integrate.dblquad(integrand, 0.002, 5.0, 41.0, 47.0, epsrel=1e-7)
    return e_obs ** 2 * val


@pytest.fixture(scope="module")
def fine_case():
    grid = Grid(z=np.linspace(0.002, 5.0, 400), logl_edges=np.linspace(41, 47, 241))
    return grid, _power_law_table(grid), _cube(grid)


@pytest.mark.parametrize("e_obs", [1.0, 30.0])
def test_cxb_matches_scipy_quadrature(fine_case, e_obs):
    grid, tab, cube = fine_case
    k = cxb_kernel(tab, grid, [e_obs])
    got = cxb_from_cube(cube[None], k, grid)[0, 0].item()
    assert got == pytest.approx(_scipy_cxb(e_obs), rel=1e-3)


def test_default_grid_discretisation_error_is_small(fine_case):
    # the A19 z nodes with trapezoid weights, against the fine grid: below 0.5 %
    grid_f, tab_f, cube_f = fine_case
    g = Grid()
    e = [0.5, 2.0, 10.0, 30.0, 100.0]
    i_def = cxb_from_cube(_cube(g)[None], cxb_kernel(_power_law_table(g), g, e), g)[0]
    i_fine = cxb_from_cube(cube_f[None], cxb_kernel(tab_f, grid_f, e), grid_f)[0]
    assert torch.allclose(i_def, i_fine, rtol=5e-3)


@pytest.fixture(scope="module")
def set5():
    g = Grid()
    phi1 = build_phi0(g, l_moment=1)
    tab = build_spectral_table(5, g.lognh_edges, n_draws=8, cache=False)
    e = torch.logspace(np.log10(0.5), np.log10(200), 40, dtype=torch.float64)
    k = cxb_kernel(tab, g, e)
    return g, phi1, k, e


def test_batch_equals_loop_and_block_path_equals_cube_path(set5):
    g, phi1, k, e = set5
    a = block_response(phi1, k, g)
    w = 0.3 + 4.7 * torch.rand(5, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    batched = CXBModel(a, e)(w)
    looped = torch.stack([CXBModel(a, e)(w[i:i + 1])[0] for i in range(5)])
    torch.testing.assert_close(batched, looped, rtol=1e-13, atol=0)
    cube = cxb_from_cube(apply_block_weights(phi1, w, g), k, g)
    torch.testing.assert_close(batched, cube, rtol=1e-11, atol=0)


def test_class_split_and_galaxies(set5):
    g, phi1, k, e = set5
    gal = galaxy_cxb_a19(e)
    m = CXBModel(block_response(phi1, k, g), e, gal)
    w = torch.ones(2, 15, dtype=torch.float64)
    torch.testing.assert_close(m.by_class(w).sum(1) + gal, m(w))
    # galaxies (A19 section 6): at 1 keV the power law is 1.7 for every Gamma, times <exp(-1/E_c)> over U(20, 30)
    cut, _ = integrate.quad(lambda ec: np.exp(-1.0 / ec) / 10.0, 20, 30)
    assert galaxy_cxb_a19(torch.tensor([1.0], dtype=torch.float64)).item() == pytest.approx(1.7 * cut, rel=1e-6)
    assert galaxy_cxb_a19(torch.tensor([100.0], dtype=torch.float64)).item() < 0.05 * 1.7 * cut  # cut off by 100 keV


def test_gradients_through_the_cxb(set5):
    g, phi1, k, e = set5
    a = block_response(phi1, k, g)[:, ::8].clone()
    w = torch.rand(2, 15, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda ww: CXBModel(a, e[::8])(ww), (w,))


def test_energy_outside_table_raises(set5):
    g, phi1, k, e = set5
    tab = build_spectral_table(5, g.lognh_edges, n_draws=2, cache=False)
    with pytest.raises(PopsynthError, match="beyond the table"):
        cxb_kernel(tab, g, [0.05])
    with pytest.raises(PopsynthError, match="beyond the table"):
        cxb_kernel(tab, g, [500.0])

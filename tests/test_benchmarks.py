"""popsynth's integrals equal the vectorised numpy reference (tests/reference.py) that
benchmarks/run.py times them against: the phi cube, the CXB kernel, the CXB of a batch of starts
through the block response and through the full cube, and N(>S) of a survey. Small inputs, fast."""

import numpy as np
import pytest
import torch

from popsynth.cosmology import distance_tables
from popsynth.cxb import block_response, cxb_from_cube, cxb_kernel
from popsynth.fit import initial_weights
from popsynth.grid import Grid
from popsynth.observables import build_survey_model
from popsynth.spectra.model import SpectralTable
from popsynth.survey import Survey
from popsynth.xlf import apply_block_weights, build_phi0

import reference as ref  # tests/ is on sys.path under pytest (rootdir conftest)

F64 = torch.float64
RTOL = 1e-10


def _table(grid, n_draws=3, seed=0):
    """Absorbed power laws with a per-draw photon index: a SpectralTable with per_draw [D, nN, nE]."""
    e = torch.logspace(-1, np.log10(2000.0), 801, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    gam = 1.7 + 0.3 * torch.rand(n_draws, dtype=F64, generator=g)
    nh = torch.as_tensor(10.0 ** grid.lognh, dtype=F64)
    absorb = torch.exp(-nh[:, None] * 2e-22 * e[None] ** -2.5)  # [nN, nE]
    pd = 1e-44 * e[None, None] ** -gam[:, None, None] * absorb[None] + 1e-52
    mean = pd.mean(0)
    return SpectralTable(e, torch.as_tensor(grid.lognh_edges), torch.as_tensor(grid.lognh), mean, {"primary": mean},
                         pd, {}, {})


@pytest.fixture(scope="module")
def setup():
    grid = Grid()
    return grid, _table(grid)


def _close(a, b, rtol=RTOL):
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    scale = np.abs(b).max()
    assert np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1e-300) + 1e-14 * scale), float(
        np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.mark.parametrize("l_moment", [0, 1])
def test_phi_cube(l_moment):
    grid = Grid()
    _close(build_phi0(grid, l_moment=l_moment), ref.phi_cube(grid.z, grid.logl_edges, grid.lognh, l_moment))


def test_cxb_kernel_block_and_cube_paths(setup):
    grid, tab = setup
    e = np.geomspace(0.5, 200.0, 9)
    d = distance_tables(grid.z)
    k_ref = ref.cxb_kernel(grid.z, grid.z_weights, d["dvc_dz_dsr_mpc3"].numpy(), d["d_l_cm"].numpy(), grid.dlognh,
                           tab.energy.numpy(), tab.mean.numpy(), e)
    k = cxb_kernel(tab, grid, e)
    _close(k, k_ref)
    phi1 = build_phi0(grid, l_moment=1)
    bi = grid.block_index.numpy()
    a_ref = ref.block_response(phi1.numpy(), k_ref, bi, grid.logl, grid.dlogl)
    a = block_response(phi1, k, grid)
    _close(a, a_ref)
    w = initial_weights(3, 15, seed=4)
    extra = np.full(e.size, 0.1)
    blocks_ref = ref.cxb_blocks(w.numpy(), a_ref, extra)
    cube_ref = ref.cxb_cube(w.numpy(), phi1.numpy(), k_ref, bi, grid.logl, grid.dlogl, extra)
    _close(w @ a + torch.as_tensor(extra), blocks_ref)
    _close(cxb_from_cube(apply_block_weights(phi1, w, grid), k, grid) + torch.as_tensor(extra), cube_ref)
    _close(cube_ref, blocks_ref, 1e-12)


def test_cumulative_counts(setup):
    grid, tab = setup
    phi0 = build_phi0(grid)
    sv = Survey(name="toy", band_keV=(2.0, 10.0), flux_limit=1e-15, z_range=(0.0, 3.0))
    fluxes = np.geomspace(1e-15, 1e-12, 5)
    m = build_survey_model(sv, grid, phi0, tab, fluxes=fluxes)
    w = initial_weights(2, 15, seed=1)
    phi = apply_block_weights(phi0, w, grid)
    got = m.cumulative_cube(phi)
    phi_z = m.on_model_z(phi).numpy()
    want = ref.cumulative_counts(phi_z, m.log_k.numpy(), fluxes, m.vol.numpy(), m.dlognh.numpy(), m.dlogl.numpy(),
                                 m.logl_edges.numpy())
    _close(got, want)
    _close(m.cumulative(w), want)  # the block responses give the same numbers

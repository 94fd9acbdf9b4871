"""XLF: U14 LDDE by hand, absorption functions (normalisation, clipping, CT share), phi0 cube, blocks."""

import math

import numpy as np
import pytest
import torch

from popsynth.grid import N_BLOCKS, Grid, block_names
from popsynth.xlf import (A19AbsorptionParams, absorption_a19, absorption_u14, apply_block_weights, build_phi0,
                          ldde_ueda14, psi_a19, psi_u14)

# Ueda et al. 2014 Table 4 (H0 = 70): the formula of U14 eqs. 14-18 evaluated by hand below.
A, LSTAR, G1, G2 = 2.91e-6, 43.97, 0.96, 2.71


def _phi_local(logl):
    x = 10 ** (logl - LSTAR)
    return A / (x ** G1 + x ** G2)


@pytest.mark.parametrize("z,logl,expected_e", [
    # z <= zc1: e = (1+z)^p1, p1 = 4.78 + 0.84 (logL - 44); logL=44: zc1 = 1.86 * 10^(0.29*(44-44.61)) = 1.3846
    (1.0, 44.0, 2.0 ** 4.78),
    # logL = 45 > La1 = 44.61 and > La2 = 44: zc1 = 1.86, zc2 = 3.0, p1 = 5.62; 1.86 < z = 2.5 <= 3
    (2.5, 45.0, 2.86 ** 5.62 * (3.5 / 2.86) ** -1.5),
    # z = 4 > zc2: third segment
    (4.0, 45.0, 2.86 ** 5.62 * (4.0 / 2.86) ** -1.5 * (5.0 / 4.0) ** -6.2),
    # logL = 43: zc1 = 1.86 * 10^(0.29*(43-44.61)) = 0.6347 < z = 1 <= zc2 = 3 * 10^(-0.1*(43-44)) = 3.777,
    # p1 = 4.78 + 0.84*(43-44) = 3.94
    (1.0, 43.0, (1 + 1.86 * 10 ** (0.29 * (43 - 44.61))) ** 3.94 * (2.0 / (1 + 1.86 * 10 ** (0.29 * (43 - 44.61)))) ** -1.5),
])
def test_ldde_by_hand(z, logl, expected_e):
    got = ldde_ueda14(torch.tensor(z, dtype=torch.float64), torch.tensor(logl, dtype=torch.float64)).item()
    assert got == pytest.approx(_phi_local(logl) * expected_e, rel=1e-4)


def test_ldde_local_normalisation():
    # at z = 0, L = L*: Phi = A / 2
    assert ldde_ueda14(0.0, LSTAR).item() == pytest.approx(A / 2, rel=1e-12)


def _dex_integral(f_abs, z, logl, lo, hi):
    """Exact integral of a per-dex piecewise-constant function: sum of bin values times widths."""
    edges = np.arange(lo, hi + 1e-9, 1.0)
    centres = torch.as_tensor(0.5 * (edges[1:] + edges[:-1]))
    return sum(f_abs(z, logl, c).item() for c in centres)


@pytest.mark.parametrize("f_abs", [absorption_a19, absorption_u14])
def test_absorption_normalised_20_24_for_random_l_z(f_abs):
    rng = np.random.default_rng(1)
    for z, logl in zip(rng.uniform(0, 5, 200), rng.uniform(41, 47, 200)):
        assert _dex_integral(f_abs, float(z), float(logl), 20, 24) == pytest.approx(1.0, abs=1e-12)
        # every bin non-negative
        vals = f_abs(float(z), float(logl), torch.arange(20.5, 26, 1.0, dtype=torch.float64))
        assert (vals >= -1e-15).all()


def test_absorption_normalised_on_grid_cells():
    g = Grid()
    nh = torch.as_tensor(g.lognh)
    dn = torch.as_tensor(g.dlognh)
    for z, logl in [(0.05, 42.3), (1.2, 43.9), (3.5, 45.5), (0.0, 43.58)]:
        f = absorption_a19(z, logl, nh)
        assert float((f * dn)[nh < 24].sum()) == pytest.approx(1.0, abs=1e-12)


def test_psi_clipping():
    z = torch.linspace(0, 6, 61, dtype=torch.float64)[:, None]
    logl = torch.linspace(40, 48, 81, dtype=torch.float64)[None, :]
    for psi in (psi_a19(z, logl), psi_u14(z, logl)):
        assert float(psi.min()) >= 0.2 - 1e-15 and float(psi.max()) <= 0.84 + 1e-15
    # the clip binds: U14 at high L reaches 0.2, A19 low-L at z >= 1 reaches 0.84 (0.68 * 2^0.48 = 0.950 > 0.84)
    assert psi_u14(0.0, 47.0).item() == pytest.approx(0.2)
    assert psi_a19(1.5, 42.0).item() == pytest.approx(0.84)
    # z capped at 2 (A19 eq. A2)
    assert psi_a19(4.0, 44.0).item() == pytest.approx(psi_a19(2.0, 44.0).item())
    assert psi_a19(0.5, 44.0).item() == pytest.approx(0.50 * 1.5 ** 0.48)


def test_ct_share_matches_a19_eqs_a3_a4():
    p = A19AbsorptionParams()
    for logl, fct, eps, a in ((42.0, 0.69, 1.3205, 0.74), (44.5, 0.52, 1.4885, 0.77)):
        z = 0.3
        psi = psi_a19(z, logl).item()
        assert absorption_a19(z, logl, 24.5).item() == pytest.approx(fct * psi, rel=1e-12)
        assert absorption_a19(z, logl, 25.5).item() == pytest.approx(fct * psi, rel=1e-12)  # flat over 24-26
        assert _dex_integral(absorption_a19, z, logl, 24, 26) == pytest.approx(2 * fct * psi, rel=1e-12)
        assert absorption_a19(z, logl, 22.5).item() == pytest.approx(psi / (1 + eps), rel=1e-12)
        assert absorption_a19(z, logl, 23.5).item() == pytest.approx(eps * psi / (1 + eps), rel=1e-12)
        assert absorption_a19(z, logl, 20.5).item() == pytest.approx(a * (1 - psi), rel=1e-12)
    assert p.log_l_split == 43.58


def test_a19_ct_share_brackets_r15():
    # Ricci et al. 2015: intrinsic CT fraction 27 +/- 4 % of BAT AGN, normalised over log N_H 20-25,
    # median z ~ 0.055. Per-dex reading of A19 eqs. A3-A4: the two luminosity bins give 33 % and 21 %.
    z = 0.055
    shares = []
    for logl in (43.0, 44.0):
        ct = absorption_a19(z, logl, 24.5).item()
        shares.append(ct / (1 + ct))
    assert shares[0] == pytest.approx(0.327, abs=0.005) and shares[1] == pytest.approx(0.211, abs=0.005)
    assert min(shares) < 0.27 < max(shares)


def test_u14_ct_equals_absorbed_compton_thin():
    # U14: f_CTK = 1 means N(24-26) = N(22-24) = psi
    for z, logl in [(0.1, 42.0), (2.0, 45.0)]:
        ct = _dex_integral(absorption_u14, z, logl, 24, 26)
        thin = _dex_integral(absorption_u14, z, logl, 22, 24)
        assert ct == pytest.approx(thin, rel=1e-12)


def test_blocks_partition_the_plane():
    g = Grid()
    masks = g.block_masks()
    assert masks.shape == (N_BLOCKS,) + g.shape[1:]
    assert torch.all(masks.sum(0) == 1)
    assert torch.all(masks.sum((1, 2)) > 0)
    names = block_names()
    assert len(names) == 15 and names[0] == "unabsorbed:L41-42" and names[14] == "compton_thick:L45-47"
    # block 7 = Compton-thin, log L 43-44: check its extent
    sel = masks[7] > 0
    ll, nn = np.meshgrid(g.logl, g.lognh, indexing="ij")
    assert ll[sel.numpy()].min() > 43 and ll[sel.numpy()].max() < 44
    assert nn[sel.numpy()].min() > 22 and nn[sel.numpy()].max() < 24


def test_phi0_cell_average_and_weights():
    g = Grid()
    phi0 = build_phi0(g)
    assert phi0.shape == g.shape and phi0.dtype == torch.float64
    assert torch.isfinite(phi0).all() and (phi0 > 0).all()
    # away from the log L = 43.58 split, the cell average equals the centre value to second order
    iz, il, inn = 40, 10, 25  # z=1.0, log L = 41.525
    centre = (ldde_ueda14(g.z[iz], g.logl[il]) * absorption_a19(g.z[iz], g.logl[il], g.lognh[inn])).item()
    assert phi0[iz, il, inn].item() == pytest.approx(centre, rel=2e-3)
    w = torch.rand(3, 15, dtype=torch.float64) + 0.5
    phi = apply_block_weights(phi0, w, g)
    k = g.block_index[il, inn]
    assert phi[2, iz, il, inn].item() == pytest.approx(phi0[iz, il, inn].item() * w[2, k].item(), rel=1e-14)


def test_block_weighted_cubes_same_numbers_on_every_allocation_path():
    """apply_block_weights writes large CPU cubes into numpy-allocated memory (huge pages) and keeps
    autograd when an input requires it: the same bits as the plain broadcast product either way."""
    from popsynth._tensor import LARGE_BUFFER_BYTES, empty_cpu

    g = Grid()
    phi0 = build_phi0(g)
    w = torch.rand(3, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.5
    plain = phi0[None] * w[:, g.block_index][:, None]
    assert plain.numel() * 8 > LARGE_BUFFER_BYTES  # the numpy-backed path
    assert torch.equal(apply_block_weights(phi0, w, g), plain)
    wg = w.clone().requires_grad_(True)
    out = apply_block_weights(phi0, wg, g)
    assert out.requires_grad and torch.equal(out.detach(), plain)
    (gw,) = torch.autograd.grad(out.sum(), wg)
    expect = torch.stack([phi0.sum(0)[g.block_index == k].sum() for k in range(15)])
    assert torch.allclose(gw, expect.expand(3, 15), rtol=1e-12, atol=0)
    small = empty_cpu((4, 5))
    assert small.shape == (4, 5) and small.dtype == torch.float64
    big = empty_cpu((2, 1 << 19))
    assert big.shape == (2, 1 << 19) and big.is_contiguous() and big.dtype == torch.float64


def test_l_moment_cube_integrates_luminosity_exactly():
    # single power-law cell check: the L-weighted cell average times L_c dlogL is the exact integral
    g = Grid(z=np.array([0.5, 1.0, 1.5]))
    phi0 = build_phi0(g)
    phi1 = build_phi0(g, l_moment=1)
    ratio = (phi1 / phi0)[1, 60, 10].item()  # <phi L/L_c> / <phi> inside one 0.05-dex cell
    assert 0.99 < ratio < 1.01
    assert not math.isclose(ratio, 1.0, rel_tol=1e-8)

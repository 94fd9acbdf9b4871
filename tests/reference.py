"""A vectorised numpy reference for popsynth's integrals (tests and ``benchmarks/run.py``).

The same algorithms as popsynth, written the way a careful numpy user would: whole-array
operations, no Python loops over grid cells, starts or spectral draws. It is the fair yardstick
for speed (``benchmarks/run.py`` times both side by side) and an independent check of the
formulas (``tests/test_benchmarks.py``: popsynth == reference to 1e-10). Nothing here imports
torch. Inputs are plain numpy arrays (see each function); the grid arrays come from
:class:`popsynth.grid.Grid` attributes, the spectra from a spectral table's arrays.

- :func:`phi_cube`: the starting XLF cube, U14 LDDE x A19 absorption function, averaged over each
  log L cell with 4-point Gauss-Legendre (optionally the L moment), as ``build_phi0``;
- :func:`cxb_kernel`: K[z, n, e] of ``popsynth.cxb.cxb_kernel`` (log-log interpolated spectra);
- :func:`block_response`, :func:`cxb_blocks`, :func:`cxb_cube`: the CXB of B starts through the
  [15, nE] block response, or through the full re-weighted cube [B, nz, nL, nN];
- :func:`cumulative_counts`: N(>S) of cubes phi [B, nz, nL, nN] for a survey (band flux factors
  per draw, z weights), as ``SurveyModel.cumulative_cube``;
- :func:`cxb_integrand`: the CXB integrand at any redshift (continuous z), for the adaptive
  quadrature that ``benchmarks/bench_cxb_fit.py`` measures popsynth's z-trapezoid against.
"""

from __future__ import annotations

import math

import numpy as np

# U14 Table 4 (Ueda et al. 2014), as popsynth.xlf.UEDA14
U14 = dict(A=2.91e-6, logLstar=43.97, gamma1=0.96, gamma2=2.71, p1_star=4.78, beta1=0.84, logLp=44.0, p2=-1.5,
           p3=-6.2, zc1_star=1.86, logLa1=44.61, alpha1=0.29, zc2_star=3.0, logLa2=44.0, alpha2=-0.1)
# A19 eqs. A2-A4, (low L, high L) split at log L = 43.58, as popsynth.xlf.A19AbsorptionParams
A19 = dict(psi0=(0.68, 0.50), a1=0.48, psi_min=0.2, psi_max=0.84, epsilon=(1.3205, 1.4885),
           frac_20_21=(0.74, 0.77), f_ct=(0.69, 0.52), log_l_split=43.58, z_cap=2.0)


def ldde_u14(z, log_l, p=U14):
    """U14 LDDE, Mpc^-3 dex^-1, on broadcast arrays."""
    x = log_l - p["logLstar"]
    local = p["A"] / (10.0 ** (p["gamma1"] * x) + 10.0 ** (p["gamma2"] * x))
    p1 = p["p1_star"] + p["beta1"] * (log_l - p["logLp"])
    zc1 = np.where(log_l <= p["logLa1"], p["zc1_star"] * 10.0 ** (p["alpha1"] * (log_l - p["logLa1"])), p["zc1_star"])
    zc2 = np.where(log_l <= p["logLa2"], p["zc2_star"] * 10.0 ** (p["alpha2"] * (log_l - p["logLa2"])), p["zc2_star"])
    lz, l1, l2 = np.log1p(z), np.log1p(zc1), np.log1p(zc2)
    le = np.where(z <= zc1, p1 * lz, np.where(z <= zc2, p1 * l1 + p["p2"] * (lz - l1),
                                              p1 * l1 + p["p2"] * (l2 - l1) + p["p3"] * (lz - l2)))
    return local * np.exp(le)


def absorption_bins_a19(z, log_l, p=A19):
    """A19 absorption function per dex in the five 1-dex bins 20-21, 21-22, 22-23, 23-24, 24-26:
    array [..., 5] on broadcast z, log_l."""
    hi = log_l >= p["log_l_split"]
    pick = lambda pair: np.where(hi, pair[1], pair[0])  # noqa: E731
    psi = np.clip(pick(p["psi0"]) * (1.0 + np.minimum(z, p["z_cap"])) ** p["a1"], p["psi_min"], p["psi_max"])
    a, eps, fct = pick(p["frac_20_21"]), pick(p["epsilon"]), pick(p["f_ct"])
    return np.stack([a * (1 - psi), (1 - a) * (1 - psi), psi / (1 + eps), eps / (1 + eps) * psi, fct * psi], -1)


def phi_cube(z, logl_edges, lognh, l_moment: int = 0, n_sub: int = 4):
    """phi0[z, l, n] (Mpc^-3 dex^-2): cell averages over log L (Gauss-Legendre, ``n_sub`` points),
    times L / L_c with ``l_moment`` = 1; the absorption function is taken per 1-dex N_H bin."""
    x, wq = np.polynomial.legendre.leggauss(n_sub)
    lo, hi = logl_edges[:-1], logl_edges[1:]
    sub = 0.5 * (hi - lo)[:, None] * x + 0.5 * (hi + lo)[:, None]  # [nL, n_sub]
    zz, ll = z[:, None, None], sub[None]
    vals = (ldde_u14(zz, ll) * (wq / 2.0))[..., None] * absorption_bins_a19(zz, ll)  # [nz, nL, n_sub, 5]
    if l_moment:
        vals = vals * (10.0 ** (l_moment * (sub - 0.5 * (hi + lo)[:, None])))[None, :, :, None]
    per_bin = vals.sum(2)  # [nz, nL, 5]
    nh_bin = np.clip(np.floor(lognh - 20.0), 0, 4).astype(int)
    return per_bin[:, :, nh_bin]


def interp_loglog(x, xp, fp):
    """fp [..., n] at x [m] (log-log, clamped at the ends, zeros stay zero): [..., m]."""
    lx, lxp = np.log(x), np.log(xp)
    i = np.clip(np.searchsorted(lxp, lx), 1, lxp.size - 1)
    t = np.clip((lx - lxp[i - 1]) / (lxp[i] - lxp[i - 1]), 0.0, 1.0)
    lf = np.log(np.maximum(fp, 1e-300))
    out = np.exp(lf[..., i - 1] + (lf[..., i] - lf[..., i - 1]) * t)
    return np.where(out < 1e-290, 0.0, out)


def cxb_kernel(z, z_weights, dvc_dz_dsr, d_l_cm, dlognh, energy, mean_spectra, e_obs):
    """K[z, n, e] (keV^2 cm^-2 s^-1 keV^-1 sr^-1 per (Mpc^-3 dex^-2 erg/s dex)).

    z, z_weights, dvc_dz_dsr (Mpc^3 sr^-1), d_l_cm [nz]; dlognh [nN]; energy [nE_tab] keV and
    mean_spectra [nN, nE_tab] (photons s^-1 keV^-1 per erg/s); e_obs [nE] keV."""
    geom = z_weights * dvc_dz_dsr * (1 + z) ** 2 / (4 * math.pi * d_l_cm ** 2)
    erest = (e_obs[None, :] * (1 + z[:, None])).reshape(-1)
    s = interp_loglog(erest, energy, mean_spectra).reshape(len(dlognh), len(z), len(e_obs))
    return geom[:, None, None] * (e_obs ** 2)[None, None, :] * s.transpose(1, 0, 2) * dlognh[None, :, None]


def _runs(labels, n):
    """The cells of each label 0..n-1 of a sorted label array [m] as n slices (each label one run)."""
    return [slice(int(np.searchsorted(labels, i, "left")), int(np.searchsorted(labels, i, "right"))) for i in range(n)]


def block_response(phi1, kernel, block_index, logl, dlogl, n_lum: int = 5, n_classes: int = 3):
    """A[k, e]: CXB of block k at unit weight; phi1 [nz, nL, nN] (L moment), kernel [nz, nN, nE],
    block_index [nL, nN] ints (k = n_lum * class + L range). The blocks are rectangles of cells, so
    the sum runs over each L range, then over the N_H cells of each class (the one-hot contraction
    of the 15 masks, sum_{z,l,n} m[z,l,n] mask_k[l,n] K[z,n,e], does 6 times the arithmetic)."""
    m = phi1 * (10.0 ** logl * dlogl)[:, None]  # [nz, nL, nN]
    lum = _runs(block_index[:, 0] % n_lum, n_lum)
    nh = _runs(block_index[0, :] // n_lum, n_classes)
    s = np.stack([m[:, sl].sum(axis=1) for sl in lum])  # [n_lum, nz, nN]
    ne = kernel.shape[-1]
    return np.concatenate([s[:, :, sn].reshape(n_lum, -1) @ kernel[:, sn].reshape(-1, ne) for sn in nh])


def cxb_blocks(w, response, extra):
    """I[b, e] = w [B, 15] @ A [15, nE] + extra [nE]."""
    return w @ response + extra


def cxb_cube(w, phi1, kernel, block_index, logl, dlogl, extra):
    """The general path: builds the re-weighted cube phi[b] = phi1 * w[b, block] [B, nz, nL, nN],
    sums L dlogL phi over log L and contracts with the kernel: I [B, nE]."""
    cube = phi1[None] * w[:, block_index][:, None]  # [B, nz, nL, nN]
    m = np.einsum("bzln,l->bzn", cube, 10.0 ** logl * dlogl, optimize=True)
    return np.tensordot(m, kernel, axes=([1, 2], [0, 1])) + extra


def cumulative_counts(phi, log_k, fluxes, vol, dlognh, dlogl, logl_edges):
    """N(>S) in deg^-2 of cubes phi [B, nz, nL, nN] (on the survey's z nodes).

    log_k [D, nz, nN]: log10 band flux factor per draw; fluxes [nS] erg cm^-2 s^-1; vol [nz]
    (w_z dV/dz/dOmega, Mpc^3 deg^-2); dlognh [nN], dlogl [nL], logl_edges [nL+1]. The XLF is
    constant in log L inside a cell, so the part of a cell above t = log S - log K is
    clamp((logL_hi - t) / dlogL, 0, 1): the linear interpolant of the reverse cumulative sum."""
    b, nz, nl, nn = phi.shape
    c = np.flip(np.cumsum(np.flip(phi * dlogl[:, None], 2), 2), 2).transpose(0, 1, 3, 2)  # [B, nz, nN, nL]
    c = np.concatenate([c, np.zeros(c.shape[:-1] + (1,))], -1).reshape(b, nz * nn, nl + 1)
    t = (np.log10(fluxes)[None, None, :] - log_k[..., None]).reshape(log_k.shape[0], nz * nn, -1)  # [D, M, nS]
    i = np.clip(np.searchsorted(logl_edges, t, side="right"), 1, nl)
    s = np.clip((t - logl_edges[i - 1]) / (logl_edges[i] - logl_edges[i - 1]), 0.0, 1.0)
    rows = np.arange(nz * nn)[None, :, None]
    c0, c1 = c[:, rows, i - 1], c[:, rows, i]  # [B, D, M, nS]
    val = c0 + s * (c1 - c0)
    wzn = (vol[:, None] * dlognh[None, :]).reshape(-1)
    return np.einsum("bdms,m->bs", val, wzn, optimize=True) / log_k.shape[0]


def cxb_integrand(z, w, block_index, logl_edges, logl, dlogl, lognh, dlognh, energy, mean_spectra, e_obs,
                  geometry):
    """dI/dz of the AGN CXB at one redshift ``z`` (float) for block weights w [15]: [nE] in
    keV^2 cm^-2 s^-1 keV^-1 sr^-1 per unit z.

    E^2 G(z) sum_n dlogN_H,n S_n(E (1 + z)) sum_l phi1(z)[l, n] w[block[l, n]] L_l dlogL_l, with
    phi1 the L-moment cell averages of :func:`phi_cube` at z and G(z) = ``geometry`` =
    dV_c/dz/dOmega (1+z)^2 / (4 pi d_L^2) in Mpc^3 sr^-1 cm^-2. On popsynth's z nodes, with their
    trapezoid weights, its sum is the block-path CXB ``w @ A`` (tests/test_benchmarks.py)."""
    phi1 = phi_cube(np.array([z]), logl_edges, lognh, 1)[0]  # [nL, nN]
    m = (phi1 * w[block_index] * (10.0 ** logl * dlogl)[:, None]).sum(0) * dlognh  # [nN]
    s = interp_loglog(e_obs * (1.0 + z), energy, mean_spectra)  # [nN, nE]
    return geometry * e_obs ** 2 * (m @ s)

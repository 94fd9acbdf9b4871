"""The X-ray luminosity function: Ueda et al. 2014 LDDE, absorption functions, the phi0 cube.

phi(z, L, N_H) = dN / (dV_c dlog L dlog N_H) in Mpc^-3 dex^-2, with L the intrinsic
rest-frame 2-10 keV luminosity (erg/s) and N_H in cm^-2 (A19 section 5, Appendix A).

- :func:`ldde_ueda14` -- U14 LDDE for Compton-thin AGN, Mpc^-3 dex^-1 (U14 eqs. 14-18).
- :func:`absorption_u14` -- U14 absorption function f(L, z; N_H) per dex of log N_H.
- :func:`absorption_a19` -- the U14+R15 absorption function of A19 eqs. A2-A4.
- :func:`build_phi0` -- the starting cube phi0[z, log L, log N_H] on a :class:`~popsynth.grid.Grid`.
- :func:`apply_block_weights` -- phi[start, z, L, N_H] = phi0 * w[start, block].

Per-dex normalisation. Both absorption functions are per unit log N_H and are normalised
so that the integral over 20 <= log N_H < 24 is exactly 1 for every (L, z). The Compton-thick
entry is the value per dex in each of 24-25 and 25-26 (flat over 24-26): U14 writes it as
f = (f_CTK/2) psi, so with f_CTK = 1 the CT total equals psi, "the same number of CT AGN as
absorbed Compton-thin AGN" (A19 App. A). A19 eqs. A3/A4 write 0.69 psi and 0.52 psi in the
same place; read per dex, R15's 20-25 normalised CT share at z ~ 0.055 is 0.69 psi / (1 + 0.69 psi)
= 33 % (low L) and 21 % (high L), bracketing R15's published intrinsic 27 +/- 4 %, whereas the
"total over 24-26" reading gives 19 % and 12 %, both below it. So per dex it is.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from ._tensor import DTYPE, as_tensor, empty_cpu
from .errors import PopsynthError
from .grid import N_BLOCKS, Grid


class LDDEParams(NamedTuple):
    """Parameters of the U14 LDDE (Ueda et al. 2014, ApJ 786, 104, Table 4, H0 = 70).

    A in h70^3 Mpc^-3; luminosities as log10 erg/s (rest-frame 2-10 keV).
    """

    A: float = 2.91e-6
    logLstar: float = 43.97
    gamma1: float = 0.96
    gamma2: float = 2.71
    p1_star: float = 4.78
    beta1: float = 0.84
    logLp: float = 44.0
    p2: float = -1.5
    p3: float = -6.2
    zc1_star: float = 1.86
    logLa1: float = 44.61
    alpha1: float = 0.29
    zc2_star: float = 3.0
    logLa2: float = 44.0
    alpha2: float = -0.1


#: U14 Table 4 values. Provenance: ../shared/data/models/xlf_parameters.json, three independent
#: transcriptions that agree (except one copy's log La2 = 45.67, rejected: U14 fixes La2 = 10^44).
UEDA14 = LDDEParams()


def ldde_ueda14(z, log_l, p: LDDEParams = UEDA14) -> torch.Tensor:
    """U14 LDDE XLF of Compton-thin AGN, dPhi/dlog L in Mpc^-3 dex^-1.

    Phi(L, z) = A / [(L/L*)^g1 + (L/L*)^g2] * e(z, L), with the three-segment density
    evolution e(z, L) of U14 eqs. 15-18 (breaks zc1(L), zc2(L); slopes p1(L), p2, p3).

    Args:
      z: redshift, tensor broadcastable with ``log_l``.
      log_l: log10 of the intrinsic rest-frame 2-10 keV luminosity in erg/s.
    Returns: float64 tensor of the broadcast shape.
    """
    z = as_tensor(z)
    log_l = as_tensor(log_l, device=z.device)
    x = log_l - p.logLstar
    phi_local = p.A / (10.0 ** (p.gamma1 * x) + 10.0 ** (p.gamma2 * x))
    p1 = p.p1_star + p.beta1 * (log_l - p.logLp)
    zc1 = torch.where(log_l <= p.logLa1, p.zc1_star * 10.0 ** (p.alpha1 * (log_l - p.logLa1)),
                      torch.full_like(log_l, p.zc1_star))
    zc2 = torch.where(log_l <= p.logLa2, p.zc2_star * 10.0 ** (p.alpha2 * (log_l - p.logLa2)),
                      torch.full_like(log_l, p.zc2_star))
    lz = torch.log1p(z)
    l1 = torch.log1p(zc1)
    l2 = torch.log1p(zc2)
    # log e(z, L), segment by segment (continuous at the breaks)
    le1 = p1 * lz
    le2 = p1 * l1 + p.p2 * (lz - l1)
    le3 = p1 * l1 + p.p2 * (l2 - l1) + p.p3 * (lz - l2)
    le = torch.where(z <= zc1, le1, torch.where(z <= zc2, le2, le3))
    return phi_local * torch.exp(le)


class AbsorptionParams(NamedTuple):
    """Parameters of the U14 absorption function (U14 section 3; A19 App. A eq. A1)."""

    psi4375_0: float = 0.43
    a1: float = 0.48
    beta: float = 0.24
    psi_min: float = 0.2
    psi_max: float = 0.84
    epsilon: float = 1.7
    f_ctk: float = 1.0
    z_cap: float = 2.0


class A19AbsorptionParams(NamedTuple):
    """Parameters of the U14+R15 absorption function, A19 eqs. A2-A4 (R15 60-degree torus case).

    Tuples are (low L, high L) with the split at log L(2-10) = 43.58 (R15's L(14-195) = 10^43.7
    converted with Gamma = 1.76, E_cut = 60 keV, A19 App. A).
    """

    psi0: tuple = (0.68, 0.50)
    a1: float = 0.48
    psi_min: float = 0.2
    psi_max: float = 0.84
    epsilon: tuple = (1.3205, 1.4885)
    frac_20_21: tuple = (0.74, 0.77)  # share of the unabsorbed (1 - psi) in 20-21; rest in 21-22
    f_ct: tuple = (0.69, 0.52)  # CT value per dex, in units of psi
    log_l_split: float = 43.58
    z_cap: float = 2.0


def _dex_bin(log_nh: torch.Tensor) -> torch.Tensor:
    """Index of the 1-dex bin: 0 for [20,21), 1 [21,22), 2 [22,23), 3 [23,24), 4 for [24,26]."""
    return torch.clamp(torch.floor(log_nh - 20.0), 0, 4).to(torch.long)


def psi_u14(z, log_l, p: AbsorptionParams = AbsorptionParams()) -> torch.Tensor:
    """U14 absorbed (22-24) fraction among log N_H < 24 AGN, clipped to [psi_min, psi_max]."""
    z = as_tensor(z)
    log_l = as_tensor(log_l, device=z.device)
    zc = torch.clamp(z, max=p.z_cap)
    psi = p.psi4375_0 * (1.0 + zc) ** p.a1 - p.beta * (log_l - 43.75)
    return torch.clamp(psi, p.psi_min, p.psi_max)


def psi_a19(z, log_l, p: A19AbsorptionParams = A19AbsorptionParams()) -> torch.Tensor:
    """A19 eq. A2: psi = 0.68 (1+z)^0.48 (log L < 43.58) or 0.50 (1+z)^0.48, z capped at 2, clipped."""
    z = as_tensor(z)
    log_l = as_tensor(log_l, device=z.device)
    zc = torch.clamp(z, max=p.z_cap)
    hi = log_l >= p.log_l_split
    psi0 = torch.where(hi, as_tensor(p.psi0[1], z.device), as_tensor(p.psi0[0], z.device))
    return torch.clamp(psi0 * (1.0 + zc) ** p.a1, p.psi_min, p.psi_max)


def _bins_u14(z, log_l, p: AbsorptionParams = AbsorptionParams()) -> tuple:
    """The U14 absorption function's value per dex in each 1-dex bin (20-21, 21-22, 22-23, 23-24,
    24-26), five tensors broadcast over z, log_l."""
    psi = psi_u14(z, log_l, p)
    eps = p.epsilon
    low_branch = psi < (1 + eps) / (3 + eps)
    f20 = torch.where(low_branch, 1 - (2 + eps) / (1 + eps) * psi, 2.0 / 3 - (3 + 2 * eps) / (3 + 3 * eps) * psi)
    f21 = torch.where(low_branch, psi / (1 + eps), 1.0 / 3 - eps / (3 + 3 * eps) * psi)
    f22 = psi / (1 + eps)
    f23 = eps / (1 + eps) * psi
    fct = p.f_ctk / 2 * psi
    return f20, f21, f22, f23, fct


def absorption_u14(z, log_l, log_nh, p: AbsorptionParams = AbsorptionParams()) -> torch.Tensor:
    """U14 absorption function f(L, z; N_H) per dex of log N_H (dimensionless).

    Piecewise constant in 1-dex bins 20-21, 21-22, 22-23, 23-24, and 24-26 (CT, value per
    dex = f_CTK/2 psi). Integrates to 1 over 20 <= log N_H < 24. Inputs broadcast; the result
    has the broadcast shape. log N_H outside [20, 26] is clamped to the end bins.
    """
    z = as_tensor(z)
    log_l = as_tensor(log_l, device=z.device)
    log_nh = as_tensor(log_nh, device=z.device)
    return _select_bins(log_nh, _bins_u14(z, log_l, p))


def _bins_a19(z, log_l, p: A19AbsorptionParams = A19AbsorptionParams()) -> tuple:
    """The A19 absorption function's value per dex in each 1-dex bin (20-21, 21-22, 22-23, 23-24,
    24-26), five tensors broadcast over z, log_l."""
    psi = psi_a19(z, log_l, p)
    hi = log_l >= p.log_l_split
    pick = lambda pair: torch.where(hi, as_tensor(pair[1], z.device), as_tensor(pair[0], z.device))  # noqa: E731
    a, eps, fct = pick(p.frac_20_21), pick(p.epsilon), pick(p.f_ct)
    f20 = a * (1 - psi)
    f21 = (1 - a) * (1 - psi)
    f22 = psi / (1 + eps)
    f23 = eps / (1 + eps) * psi
    return f20, f21, f22, f23, fct * psi


def absorption_a19(z, log_l, log_nh, p: A19AbsorptionParams = A19AbsorptionParams()) -> torch.Tensor:
    """A19 (U14+R15) absorption function f(L, z; N_H) per dex of log N_H, eqs. A2-A4.

    20-21: a (1 - psi); 21-22: (1 - a)(1 - psi); 22-23: psi/(1+eps); 23-24: eps psi/(1+eps);
    24-26: f_CT psi per dex, with (a, eps, f_CT) = (0.74, 1.3205, 0.69) for log L < 43.58 and
    (0.77, 1.4885, 0.52) above. Integrates to 1 over 20 <= log N_H < 24. Broadcasting as
    :func:`absorption_u14`.
    """
    z = as_tensor(z)
    log_l = as_tensor(log_l, device=z.device)
    log_nh = as_tensor(log_nh, device=z.device)
    return _select_bins(log_nh, _bins_a19(z, log_l, p))


def _select_bins(log_nh: torch.Tensor, values: tuple) -> torch.Tensor:
    """values[bin(log_nh)] element by element, broadcast (a chain of ``where``: no stacked copy of
    the expanded values)."""
    idx = _dex_bin(log_nh)
    out = values[-1]
    for k in range(len(values) - 2, -1, -1):
        out = torch.where(idx == k, values[k], out)
    shape = np.broadcast_shapes(log_nh.shape, *(v.shape for v in values))  # torch's imports sympy
    return out.expand(shape) if tuple(out.shape) != tuple(shape) else out


ABSORPTION_MODELS = {"a19": absorption_a19, "u14": absorption_u14}
#: per-bin values (the five 1-dex N_H bins) of each absorption function, for :func:`build_phi0`
_ABSORPTION_BINS = {"a19": _bins_a19, "u14": _bins_u14}


def build_phi0(grid: Grid, absorption: str = "a19", ldde: LDDEParams = UEDA14,
               n_sub: int = 4, l_moment: int = 0, device=None, total=None) -> torch.Tensor:
    """The starting XLF cube phi0[z, log L, log N_H] in Mpc^-3 dex^-2 (float64 [nz, nL, nN]).

    phi0 = Phi_U14(z, L) * f(L, z; N_H). Values along log L are cell averages, computed with
    ``n_sub``-point Gauss-Legendre quadrature inside each cell (the absorption function jumps
    at log L = 43.58, which falls inside a cell; the quadrature averages across it). Along
    log N_H the absorption function is constant in each cell (cells nest in 1-dex bins).
    ``absorption``: "a19" (U14+R15, A19 App. A; the A19 starting point) or "u14".
    ``l_moment`` = 1 returns the cell average of phi * (L / L_c) instead (L_c the cell-centre
    luminosity), so that sum(phi1 * L_c * dlogL) is the exact luminosity integral of the cell:
    the form the CXB uses.
    ``total``: another XLF of all Compton-thin AGN, a function (z, log L) -> Mpc^-3 dex^-1 on
    broadcast tensors, in place of the U14 LDDE (e.g. :func:`popsynth.xlf_a15.lade_a15`).
    """
    if absorption not in ABSORPTION_MODELS:
        raise PopsynthError(f"unknown absorption function '{absorption}'", f"use one of {sorted(ABSORPTION_MODELS)}")
    bins_fn = _ABSORPTION_BINS[absorption]
    x, wq = np.polynomial.legendre.leggauss(n_sub)
    lo, hi = grid.logl_edges[:-1], grid.logl_edges[1:]
    sub = 0.5 * (hi - lo)[:, None] * x[None, :] + 0.5 * (hi + lo)[:, None]  # [nL, n_sub]
    wsub = torch.as_tensor(wq / 2.0, dtype=DTYPE, device=device)  # averages: sum = 1
    z = as_tensor(grid.z, device)[:, None, None, None]
    ll = as_tensor(sub, device)[None, :, None, :]
    # the absorption functions are constant in each 1-dex N_H bin: evaluate the cube once per bin
    # present on the grid (the bins' values stacked, [nz, nL, n_bins, n_sub]) and copy it to the
    # bin's cells (the same numbers as cell by cell)
    bins = _dex_bin(torch.as_tensor(grid.lognh, dtype=DTYPE))
    present, cell_bin = torch.unique(bins, return_inverse=True)
    phi = ldde_ueda14(z, ll, ldde) if total is None else total(z, ll)  # [nz, nL, 1, n_sub]
    values = bins_fn(z, ll)
    lm = 10.0 ** (l_moment * (ll - as_tensor(grid.logl, device)[None, :, None, None])) if l_moment else None
    shape = np.broadcast_shapes(phi.shape, *(v.shape for v in values))  # (0.3 s of imports)
    cb = cell_bin.tolist()
    out = torch.empty(shape[:2] + (len(cb),), dtype=DTYPE, device=phi.device)
    tmp = torch.empty(shape, dtype=DTYPE, device=phi.device)
    start = 0
    for i in range(1, len(cb) + 1):  # runs of N_H cells in one bin: the bin's cell average, copied
        if i == len(cb) or cb[i] != cb[start]:
            v = torch.mul(phi, values[int(present[cb[start]])], out=tmp)
            if lm is not None:
                v.mul_(lm)
            out[:, :, start:i] = v.mul_(wsub).sum(-1)
            start = i
    return out


def apply_block_weights(phi0: torch.Tensor, weights: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Re-weighted cube phi[start, z, L, N_H] = phi0[z, L, N_H] * w[start, block(L, N_H)].

    Args: phi0 [nz, nL, nN] (Mpc^-3 dex^-2); weights [B, 15] (dimensionless, > 0).
    Returns [B, nz, nL, nN]. Memory is B * nz * nL * nN * 8 bytes: for many starts use the
    block-contracted predictions of :mod:`popsynth.cxb`, which never build this cube.
    """
    if weights.shape[-1] != N_BLOCKS:
        raise PopsynthError(f"weights must have {N_BLOCKS} entries per start, got {weights.shape[-1]}",
                            "pass a [n_starts, 15] tensor")
    field = weights[:, grid.block_index.to(weights.device)]  # [B, nL, nN]
    if torch.is_grad_enabled() and (phi0.requires_grad or weights.requires_grad):
        return phi0[None] * field[:, None]
    out = empty_cpu((field.shape[0],) + tuple(phi0.shape), torch.result_type(phi0, weights), phi0.device)  # huge pages
    return torch.mul(phi0[None], field[:, None], out=out)


def integrate_number_density(phi: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Integral of phi over log L and log N_H: n(z) in Mpc^-3; phi [..., nz, nL, nN] -> [..., nz]."""
    dl = as_tensor(grid.dlogl, phi.device)
    dn = as_tensor(grid.dlognh, phi.device)
    return torch.einsum("...zln,l,n->...z", phi, dl, dn)

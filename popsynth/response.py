"""One response layer: every observable's kernel, for batches of cubes and for the 15 block cubes.

Every observable (CXB, N(>S), dN/dS, dN/dz, sample and CT counts, intrinsic block counts) is
linear in the XLF cube phi[z, log L, log N_H]. Each is written here once, as a kernel over a
batch of cubes. The block responses are the same kernels applied to the block cubes
phi0 * mask_k (k = 0..14, masks from :data:`popsynth.blocks.BLOCKS`), passed *factorised*:
one cube and a selector ``select`` [K, nL, nN] (the masks), so the [15, nz, nL, nN] stack is
never built. The selector enters the sum over the cells as one more factor of the same
contraction; without a selector the kernel reduces each full cube of the batch. The CXB block
response sums each block's rectangle of cells directly (:func:`block_cxb_response`).

Observable models (:class:`popsynth.cxb.CXBModel`, :class:`popsynth.observables.SurveyModel`)
hold the block responses R [15, ...]; predictions for block weights w [B, 15] are w @ R.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._tensor import DTYPE, as_tensor, bracket
from .blocks import BLOCKS
from .cosmology import CosmologyParams, distance_tables
from .errors import PopsynthError

__all__ = ["luminosity_weighted_cube", "cxb_response", "block_cxb_response", "reverse_cumulative", "interp_edges",
           "counts_response", "block_counts_response", "dndz_response", "selected_counts", "xlf_response", "intrinsic_block_dndz", "intrinsic_block_counts",
           "intrinsic_ct_fraction"]

_LN10 = math.log(10.0)


# ---------------------------------------------------------------------------- CXB
def luminosity_weighted_cube(phi1: torch.Tensor, grid) -> torch.Tensor:
    """phi * L * dlogL per cell: [..., nz, nL, nN] -> same shape, Mpc^-3 dex^-1 erg s^-1."""
    return phi1 * grid.buffer("lum_weight", phi1.device)[:, None]


def cxb_response(phi: torch.Tensor, kernel: torch.Tensor, grid, select: torch.Tensor | None = None) -> torch.Tensor:
    """CXB I[b, e] = sum_{z,l,n} phi[b, z, l, n] L_l dlogL_l K[z, n, e] (keV^2 cm^-2 s^-1 keV^-1 sr^-1).

    Args:
      phi: cubes [B, nz, nL, nN] (Mpc^-3 dex^-2; the L-weighted cell average, l_moment=1, is exact
        in L); with ``select``, one cube [nz, nL, nN].
      kernel: K [nz, nN, nE] of :func:`popsynth.cxb.cxb_kernel`.
      select: optional cell selectors [K, nL, nN]: the result is then the CXB of the K cubes
        phi * select[k] ([K, nE]); the block masks give the block response.
    Returns float64 [B, nE] (or [K, nE]).
    """
    if select is None:
        # sum over log L as one contraction with L dlogL (no weighted copy of the cubes)
        m = torch.matmul(grid.buffer("lum_weight", phi.device), phi)  # [B, nz, nN]
    else:
        m = torch.einsum("zln,kln->kzn", luminosity_weighted_cube(phi, grid), select)  # [K, nz, nN]
    return torch.einsum("bzn,zne->be", m, kernel)


def block_cxb_response(phi1: torch.Tensor, kernel: torch.Tensor, grid) -> torch.Tensor:
    """Block response A[k, e]: the CXB of block k's cube phi1 * mask_k at unit weight, float64 [15, nE].

    phi1 [nz, nL, nN] (L-weighted starting cube), kernel [nz, nN, nE]. Then I[b, e] = w[b] @ A.

    The blocks are rectangles of cells (:meth:`popsynth.grid.Grid.block_slices`), so the sum runs
    over each log L range (S[j, z, n] = sum_l phi L dlogL) and then over the N_H cells of each class
    only: a sixth of the arithmetic of the masked contraction ``cxb_response(..., select=masks)``,
    which it equals to rounding (at most 1.3e-14 relative, median 1.3e-15, in the default run;
    tests/test_response.py)."""
    lum, nh = grid.block_slices()
    x = luminosity_weighted_cube(phi1, grid)  # [nz, nL, nN]
    s = torch.stack([x[:, sl].sum(1) for sl in lum])  # [n_lum, nz, nN]
    ne = kernel.shape[-1]
    # block k = n_lum * c + j: class c's rows are consecutive
    return torch.cat([s[:, :, sn].reshape(len(lum), -1) @ kernel[:, sn].reshape(-1, ne) for sn in nh])


# ---------------------------------------------------------------------------- N(>S), dN/dS
def reverse_cumulative(phi: torch.Tensor, dl: torch.Tensor) -> torch.Tensor:
    """C[..., z, n, j] = sum_{l >= j} phi[..., z, l, n] dl[l] at the L edges j = 0..nL: [..., nz, nN, nL+1]."""
    p = (phi * dl[:, None]).transpose(-1, -2)  # [..., nz, nN, nL]
    c = torch.flip(torch.cumsum(torch.flip(p, (-1,)), -1), (-1,))
    return torch.cat([c, torch.zeros_like(c[..., :1])], -1)


def interp_edges(c: torch.Tensor, edges: torch.Tensor, t: torch.Tensor):
    """Linear interpolant of c (values at ``edges``) at t, and its slope (0 outside the edges).

    c [B, M, nL+1]; edges [nL+1]; t [M, S]. Returns (value, slope), each [B, M, S].
    """
    i0, idx, s, width = bracket(edges, t)
    shape = (c.shape[0],) + tuple(t.shape)
    c0 = torch.gather(c, -1, i0.expand(shape))
    c1 = torch.gather(c, -1, idx.expand(shape))
    inside = (t > edges[0]) & (t < edges[-1])
    return c0 + s * (c1 - c0), torch.where(inside, (c1 - c0) / width, torch.zeros_like(c0))


def _contract(x: torch.Tensor, wzn: torch.Tensor) -> torch.Tensor:
    """sum_m x[b, m, s] wzn[m, c] -> [B, C, nS] (one cube: the 2-D contraction of the block path)."""
    if x.shape[0] == 1:
        return torch.einsum("ms,mc->cs", x[0], wzn)[None]
    return torch.einsum("bms,mc->bcs", x, wzn)


def counts_response(phi: torch.Tensor, log_k: torch.Tensor, fluxes: torch.Tensor, vol: torch.Tensor,
                    dl: torch.Tensor, dn: torch.Tensor, edges: torch.Tensor, nh_select: torch.Tensor | None = None,
                    l_bounds=None, differential: bool = True):
    """N(>S) and dN/dS of cubes at ``fluxes``, split by N_H selector and log L range (the module docstring
    of :mod:`popsynth.observables` gives the formulas).

    Args:
      phi: cubes [B, nz, nL, nN] (Mpc^-3 dex^-2) on the z nodes of ``vol`` and ``log_k``.
      log_k: log10 band flux factor [D, nz, nN] (cm^-2); fluxes [nS] (erg cm^-2 s^-1);
      vol [nz]: w_z dV/dz/dOmega (Mpc^3 deg^-2); dl [nL], dn [nN]: cell widths (dex); edges [nL+1].
      nh_select: optional [nN, C] weights of the N_H cells in C selections (default: one, all cells).
      l_bounds: optional log L range edges (log10 erg/s, J+1 values); range j takes the part of
        every cell inside [l_bounds[j], l_bounds[j+1]] (C(clamp(t, a, b)) - C(b), slope for a < t < b).
        Default: the whole axis.
      differential: False skips dN/dS (returned as None) where only N(>S) is wanted; N(>S) is the same.
    Returns (N(>S) in deg^-2, dN/dS in deg^-2 (erg cm^-2 s^-1)^-1), each float64 [B, C, J, nS].
    The block responses are phi0 [1, ...] with the N_H class one-hot and the block log L ranges.
    """
    dev = phi.device
    b, nz, _, nn = phi.shape
    c = reverse_cumulative(phi, dl).reshape(b, nz * nn, -1)
    if nh_select is None:
        nh_select = torch.ones(nn, 1, dtype=DTYPE, device=dev)
    wzn = (vol[:, None, None] * (dn[:, None] * nh_select)[None]).reshape(nz * nn, -1)  # [nz*nN, C]
    whole = l_bounds is None
    if whole and nh_select.shape[1] == 1:
        return _whole_counts(c, log_k, fluxes, wzn[:, 0], edges, differential)
    bounds = [float(edges[0]), float(edges[-1])] if whole else list(l_bounds)
    bounds[0], bounds[-1] = float(edges[0]), float(edges[-1])
    logs = torch.log10(fluxes)
    n_l = len(bounds) - 1
    cum = torch.zeros(b, wzn.shape[1], n_l, fluxes.numel(), dtype=DTYPE, device=dev)
    dif = torch.zeros_like(cum)
    if not whole:
        at = lambda x: interp_edges(c, edges, torch.full((nz * nn, 1), x, dtype=DTYPE, device=dev))[0]  # noqa: E731
        c_edge = [at(x) for x in bounds]  # C at the range boundaries, each [B, nz*nN, 1]
    for d in range(log_k.shape[0]):
        t = logs[None, :] - log_k[d].reshape(-1, 1)  # [nz*nN, nS]
        val, slope = interp_edges(c, edges, t)
        if whole:  # C(clamp(t, L_min, L_max)) - C(L_max) is the interpolant itself (C(L_max) = 0)
            cum[:, :, 0] += _contract(val, wzn)
            dif[:, :, 0] -= _contract(slope, wzn)
            continue
        for j in range(n_l):
            a, bj = bounds[j], bounds[j + 1]
            # C(clamp(t, a, b)) - C(b): the part of the cells of [a, b] above t
            part = torch.where(t <= a, c_edge[j], torch.where(t >= bj, c_edge[j + 1], val)) - c_edge[j + 1]
            inside = ((t > a) & (t < bj)).to(DTYPE)
            cum[:, :, j] += _contract(part, wzn)
            dif[:, :, j] -= _contract(slope * inside, wzn)
    dk = log_k.shape[0]
    return cum / dk, dif / (dk * fluxes * _LN10)


_CHUNK_ELEMENTS = 2 ** 19
"""Doubles per [B, draws, M, nS] intermediate of :func:`_whole_counts` (4 MiB). Intermediates this
small are served again from the process heap; at 128 MiB every chunk was a fresh mmap whose pages
all fault on first touch, which made N(>S) of a cube 2x slower (measured, CDF-S 2-8 keV, 64 draws).
The chunking sets the order of the sum over draws, so N(>S) of cubes moved by ~1e-15 relative when
it changed from 2**24; the block responses (the default run) do not use this path."""


def _whole_counts(c: torch.Tensor, log_k: torch.Tensor, fluxes: torch.Tensor, wzn: torch.Tensor, edges: torch.Tensor,
                  differential: bool = True):
    """:func:`counts_response` over the whole log L axis and all N_H cells, vectorised over chunks of draws.

    The same interpolant as :func:`interp_edges` (value c0 + s (c1 - c0), slope (c1 - c0) / width inside
    the edges); c [B, M, nL+1], log_k [D, nz, nN], wzn [M]. Returns each [B, 1, 1, nS] (dN/dS None
    unless ``differential``)."""
    b, m, _ = c.shape
    dk, ns = log_k.shape[0], fluxes.numel()
    logs = torch.log10(fluxes)
    cum = torch.zeros(b, ns, dtype=DTYPE, device=c.device)
    dif = torch.zeros_like(cum)
    c_step = c[..., 1:] - c[..., :-1]  # [B, M, nL]: c1 - c0 of every interval, gathered once per query
    step = max(1, _CHUNK_ELEMENTS // max(1, b * m * ns))
    for d0 in range(0, dk, step):
        t = (logs - log_k[d0:d0 + step].reshape(-1, m, 1)).contiguous()  # [Dc, M, nS]
        i0, _, s, width = bracket(edges, t)
        shape = (b,) + tuple(t.shape)
        i0 = i0.expand(shape)
        c0 = torch.gather(c[:, None].expand(b, t.shape[0], m, c.shape[-1]), -1, i0)  # [B, Dc, M, nS]
        step_c = torch.gather(c_step[:, None].expand(b, t.shape[0], m, c_step.shape[-1]), -1, i0)  # c1 - c0
        cum += torch.einsum("bdms,m->bs", (s * step_c).add_(c0), wzn)  # c0 + s (c1 - c0), one buffer
        if differential:
            inside = ((t > edges[0]) & (t < edges[-1])).to(DTYPE) / width
            dif -= torch.einsum("bdms,dms,m->bs", step_c, inside, wzn)
    return (cum / dk)[:, None, None], (dif / (dk * fluxes * _LN10))[:, None, None] if differential else None


def block_counts_response(phi0: torch.Tensor, log_k, fluxes, vol, dl, dn, edges, lognh):
    """Block responses of N(>S) and dN/dS: :func:`counts_response` of phi0 [nz, nL, nN] with the block
    N_H classes (cell centres ``lognh`` [nN]) and log L ranges; each float64 [15, nS]."""
    cls = BLOCKS.classes_of_cells(lognh)
    nn = phi0.shape[-1]
    onehot = torch.zeros(nn, BLOCKS.n_classes, dtype=DTYPE, device=phi0.device)
    onehot[torch.arange(nn), torch.as_tensor(cls)] = 1.0
    cum, dif = counts_response(phi0[None], log_k, fluxes, vol, dl, dn, edges, onehot, BLOCKS.logl_edges)
    return cum[0].reshape(BLOCKS.n, -1), dif[0].reshape(BLOCKS.n, -1)


# ---------------------------------------------------------------------------- selected samples
def dndz_response(phi: torch.Tensor, selection: torch.Tensor, dl: torch.Tensor, dn: torch.Tensor,
                  dvol: torch.Tensor, z_used: torch.Tensor, select: torch.Tensor | None = None,
                  share: torch.Tensor | None = None) -> torch.Tensor:
    """dN/dz of the selected sample (deg^-2 per unit z) at the z nodes: sum_{l,n} phi sel dlogL dlogN_H dV/dz.

    phi [B, nz, nL, nN] (Mpc^-3 dex^-2), or one cube [nz, nL, nN] with ``select`` [K, nL, nN];
    selection [nz, nL, nN] (selected share of each cell); dl [nL], dn [nN]; dvol [nz] (Mpc^3 deg^-2
    per unit z); z_used [nz] (1 inside the survey's z range, else 0); share [nN]: optional share of
    each N_H cell counted (e.g. above the CT threshold; None: all). Returns [B, nz] (or [K, nz]).
    """
    if share is not None:
        dn = dn * share
    if select is None:
        return torch.einsum("bzln,zln,l,n,z->bz", phi, selection, dl, dn, dvol * z_used)
    cell = dl[:, None] * dn[None, :]  # [nL, nN]
    return torch.einsum("zln,zln,ln,kln->kz", phi, selection, cell, select) * (dvol * z_used)


def selected_counts(phi: torch.Tensor, selection: torch.Tensor | None, dl: torch.Tensor, dn: torch.Tensor,
                    vol: torch.Tensor, share: torch.Tensor | None = None,
                    select: torch.Tensor | None = None) -> torch.Tensor:
    """Sources per deg^2 of a sample: sum_z vol_z sum_{l,n} phi sel [share] dlogL dlogN_H.

    phi [B, nz, nL, nN] (Mpc^-3 dex^-2), or one cube [nz, nL, nN] with ``select`` [K, nL, nN];
    selection [nz, nL, nN]: selected share of each cell (None: no flux selection, the intrinsic
    count); dl [nL], dn [nN]: cell widths (dex); vol [nz]: w_z dV/dz/dOmega (Mpc^3 deg^-2);
    share [nN]: each N_H cell's share above the CT threshold (None: all N_H).
    Returns float64 [B] (or [K]).
    """
    if select is None:
        sel = torch.ones_like(phi[0]) if selection is None else selection
        per_n = torch.einsum("bzln,zln,l,z->bn", phi, sel, dl, vol) * dn
        return per_n.sum(-1) if share is None else (per_n * share).sum(-1)
    cell = dl[:, None] * dn[None, :]  # [nL, nN]
    ops, terms = [phi], ["zln"]
    if selection is not None:
        ops, terms = ops + [selection], terms + ["zln"]
    ops, terms = ops + [cell], terms + ["ln"]
    if share is not None:
        ops, terms = ops + [share], terms + ["n"]
    return torch.einsum(",".join(terms + ["kln", "z"]) + "->k", *ops, select, vol)


# ---------------------------------------------------------------------------- intrinsic counts, CT fraction
def xlf_response(phi0: torch.Tensor, dn: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """dPhi/dlog L of the selected cubes phi0 * select[k], summed over log N_H: R[k, z, l] = sum_n phi0 dn select.

    phi0 [nz, nL, nN] (Mpc^-3 dex^-2); dn [nN] (dex; zero for cells to leave out); select [K, nL, nN].
    Returns float64 [K, nz, nL] in Mpc^-3 dex^-1."""
    return torch.einsum("zln,n,kln->kzl", phi0, dn, select)


def intrinsic_block_dndz(phi0: torch.Tensor, grid, cosmology: CosmologyParams = CosmologyParams()) -> torch.Tensor:
    """dN/dz per block at each z node, all sky and all log L of the grid: float64 [nz, 15] (AGN per unit z).

    4 pi dV_c/(dz dOmega) sum_{l,n in block} phi0 dlogL dlogN_H; phi0 [nz, nL, nN] in Mpc^-3 dex^-2.
    The trapezoid over the nodes <= z_max of this is :func:`intrinsic_block_counts`."""
    dev = phi0.device
    d = grid.distances(cosmology, dev)
    f = torch.einsum("zln,l,n,kln->zk", phi0, grid.buffer("dlogl", dev), grid.buffer("dlognh", dev),
                     grid.block_masks(dev))
    return f * (d["dvc_dz_dsr_mpc3"] * 4 * math.pi)[:, None]


def intrinsic_block_counts(phi0: torch.Tensor, grid, zmax: float,
                           cosmology: CosmologyParams = CosmologyParams()) -> torch.Tensor:
    """Number of AGN per block, all sky, from the first z node to ``zmax``: float64 [15].

    N_k = 4 pi int dz dV_c/(dz dOmega) int_k phi0 dlogL dlogN_H, trapezoid in z over the nodes
    <= zmax (zmax must be a node); phi0 [nz, nL, nN] in Mpc^-3 dex^-2. Used for intrinsic CT
    fractions (:func:`intrinsic_ct_fraction`): N_CT / N_all is linear in the weights.
    Raises PopsynthError when ``zmax`` is not a grid node.
    """
    from .grid import trapezoid_weights

    zsel = grid.z <= zmax + 1e-9
    if not zsel.any() or not np.isclose(grid.z[zsel][-1], zmax):
        raise PopsynthError(f"`zmax` = {zmax} is not a grid node", "use a z grid that contains it")
    zz = grid.z[zsel]
    d = distance_tables(zz, cosmology, device=phi0.device)
    wz = as_tensor(trapezoid_weights(zz), phi0.device) * d["dvc_dz_dsr_mpc3"] * 4 * math.pi
    masks = grid.block_masks(phi0.device)
    dl, dn = as_tensor(grid.dlogl, phi0.device), as_tensor(grid.dlognh, phi0.device)
    per_cell = torch.einsum("zln,z,l,n->ln", phi0[zsel], wz, dl, dn)
    return torch.einsum("ln,kln->k", per_cell, masks)


def intrinsic_ct_fraction(w: torch.Tensor, counts: torch.Tensor, logl_min: float | None = None) -> torch.Tensor:
    """N(log N_H >= 24) / N(all) per row of w [B, 15], with ``counts`` [15] AGN per block at unit weight
    (:func:`intrinsic_block_counts`); with ``logl_min`` (log10 erg/s), only the blocks whose luminosity
    range starts at or above it (42, 43, ...). Returns [B], dimensionless."""
    n = w * counts
    keep = torch.ones(BLOCKS.n, dtype=torch.bool, device=w.device)
    if logl_min is not None:
        lo = torch.tensor(BLOCKS.logl_edges[:-1], dtype=w.dtype, device=w.device)
        keep = (lo >= logl_min - 1e-9)[BLOCKS.lum_range().to(w.device)]
    ct = BLOCKS.is_ct().to(w.device) & keep
    return n[:, ct].sum(-1) / n[:, keep].sum(-1)

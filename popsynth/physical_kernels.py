"""Precomputed linear kernels of every observable, and the shared likelihood over them.

For fixed spectra every observable the likelihood uses is linear in the XLF cube, and with the
A19 absorption function the cube is constant in each dex of log N_H, so each data point i is a
contraction of a kernel with the reduced cube phi_red[z, l, k] (k: the 6 dex bins 20-26,
:mod:`popsynth.physical`):

* CXB intensity at energy e (:mod:`popsynth.cxb`): I_e = sum_{z,k} m[z, k] Kc[z, k, e] with
  m[z, k] = sum_l phi1_red[z, l, k] L_l dlogL_l (phi1 the L-weighted cell average) and
  Kc[z, k, e] = sum_{n in k} K_cxb[z, n, e] (keV^2 cm^-2 s^-1 keV^-1 sr^-1 per Mpc^-3 dex^-1 erg/s).
* Cumulative counts N(>S) (:mod:`popsynth.observables`): on the survey model's z nodes z_f (the
  grid refined at low z), draw d and N_H cell n, N(>S) averages over draws the linear interpolant
  C(t) of the reverse cumulative sum of phi dlogL over the log L edges at t = log S - log K[d, z_f, n].
  With i0 = the edge below t, s its fractional position, C(t) = (1 - s) c[i0] + s c[i0+1] and
  c[j] = sum_{l >= j} phi_l dlogL_l, so dN/dphi[z_f, l, n] = vol[z_f] dlogN_H[n] dlogL_l / D
  sum_d sum_{j <= l} G_j with G the interpolation weights scattered onto the edges. The kernel on
  the grid's z nodes is sum_f K[z_f] P[f, z] (P = ``SurveyModel.z_interp``, linear interpolation).
* Binned differential counts (BAT): (N(>S_lo) - N(>S_hi)) / (S_hi - S_lo), times bin width and area
  for the Poisson term (expected numbers), as :func:`popsynth.likelihood.counts_term`.
* Observed CT fraction: numerator and denominator sum_{f,l,n} P phi sel dlogL vol dlogN_H [share_n],
  as ``SurveyModel.ct_fraction_cube``.
* Binned XLF points (optional): dPhi/dlog L of Compton-thin AGN (log N_H 20-24) at the point's log L
  (linear in log L between cell centres), averaged over the redshift bin with weights dV/dz.

Kernels are float64 [n_points, nz, nL, 6] (0.69 MB per point on the default grid). Each one is
verified against the engine (``tests/test_physical.py``): kernel . phi equals
``SurveyModel.cumulative_cube`` / ``ct_fraction_cube`` for random cubes and equals the block
responses of the block likelihood for phi = phi0 * w, to 1e-10.

The likelihood is :class:`popsynth.likelihood.Likelihood` itself: every term of the block
likelihood only ever forms ``w @ response`` (or ``w @ num``, ``w @ den``), so the physical model
uses copies of the same term objects whose input is the feature vector x [B, F] of all kernel
contractions and whose response is a selection matrix [F, n]. The CXB split normal with the
marginalised per-instrument normalisation, the Poisson deviance, the count covariances and the CT
fractions are therefore the same code for both models.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ._tensor import DTYPE, as_tensor
from .cosmology import CosmologyParams, distance_tables
from .cxb import cxb_kernel
from .errors import PopsynthError
from .grid import Grid
from .likelihood import (CovarianceTerm, CTFractionTerm, CXBTerm, Likelihood, PoissonTerm, Term, _SplitNormalPoints,
                         _table_columns, build_likelihood)
from .observables import SurveyModel, z_range_weights
from .physical import N_DEX, XLFBuilder
from .physical_sparse import NodeContraction


# ---------------------------------------------------------------------------- kernels
def _dex_onehot(dex_of_cell: torch.Tensor) -> torch.Tensor:
    """[nN, 6] one-hot of each N_H cell's dex bin."""
    return torch.nn.functional.one_hot(dex_of_cell, N_DEX).to(DTYPE)


def cumulative_kernel(m: SurveyModel, fluxes, dex_of_cell: torch.Tensor) -> torch.Tensor:
    """Kernel of N(>S) (deg^-2) at ``fluxes`` [nS] (erg cm^-2 s^-1, the survey's band).

    Returns float64 [nS, nz_grid, nL, 6] with N(>S_s) = sum K[s] * phi_red, phi_red in Mpc^-3 dex^-2
    on the grid's z nodes (see the module docstring for the derivation).
    """
    dev = m.device
    logs = torch.log10(as_tensor(np.asarray(fluxes, dtype=np.float64), dev)).reshape(-1)
    d_draws, nzf, nn = m.log_k.shape
    edges = m.logl_edges
    nl = edges.numel() - 1
    ns = logs.numel()
    dex = dex_of_cell.to(dev)
    wzn = (m.vol[:, None] * m.dlognh[None, :])  # [nzf, nN]
    g = torch.zeros(ns * nzf * N_DEX * (nl + 1), dtype=DTYPE, device=dev)
    base = ((torch.arange(ns, device=dev)[None, None, :] * nzf + torch.arange(nzf, device=dev)[:, None, None]) * N_DEX
            + dex[None, :, None]) * (nl + 1)  # [nzf, nN, nS]
    w = wzn[:, :, None].expand(nzf, nn, ns)
    for d in range(d_draws):
        t = logs[None, None, :] - m.log_k[d][:, :, None]  # [nzf, nN, nS]
        idx = torch.searchsorted(edges, t.contiguous(), right=True).clamp(1, nl)
        i0 = idx - 1
        s = ((t - edges[i0]) / (edges[idx] - edges[i0])).clamp(0.0, 1.0)
        g.index_add_(0, (base + i0).reshape(-1), (w * (1.0 - s)).reshape(-1))
        g.index_add_(0, (base + idx).reshape(-1), (w * s).reshape(-1))
    g = g.reshape(ns, nzf, N_DEX, nl + 1)
    k = torch.cumsum(g, -1)[..., :nl] * m.dlogl / d_draws  # [nS, nzf, 6, nL]
    return torch.einsum("sfkl,fz->szlk", k, m.z_interp)


def ct_kernels(m: SurveyModel, dex_of_cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Numerator and denominator kernels of a survey's observed CT fraction, each [nz_grid, nL, 6]
    (selected sources per deg^2 above the N_H threshold, and all selected sources, per unit phi)."""
    oh = _dex_onehot(dex_of_cell.to(m.device))
    base = m.selection * m.dlogl[None, :, None] * m.vol[:, None, None] * m.dlognh[None, None, :]  # [nzf, nL, nN]
    num = torch.einsum("fln,n,nk,fz->zlk", base, m.nh_share, oh, m.z_interp)
    den = torch.einsum("fln,nk,fz->zlk", base, oh, m.z_interp)
    return num, den


def cxb_dex_kernel(table, grid: Grid, energy, dex_of_cell: torch.Tensor, device=None) -> torch.Tensor:
    """CXB kernel summed over the N_H cells of each dex bin: [nz, 6, nE] (see :func:`popsynth.cxb.cxb_kernel`)."""
    k = cxb_kernel(table, grid, energy, device=device)  # [nz, nN, nE]
    return torch.einsum("zne,nk->zke", k, _dex_onehot(dex_of_cell.to(k.device)))


def intrinsic_count_kernels(grid: Grid, zmax: float, device=None,
                            cosmology: CosmologyParams = CosmologyParams()) -> torch.Tensor:
    """All-sky number of AGN per unit phi_red from the first z node to ``zmax`` (a node), as
    :func:`popsynth.run.block_counts`: [nz, nL, 6] (trapezoid over the nodes <= zmax)."""
    from .grid import trapezoid_weights

    zsel = grid.z <= zmax + 1e-9
    if not np.isclose(grid.z[zsel][-1], zmax):
        raise PopsynthError(f"z = {zmax} is not a grid node", "use a z grid that contains it")
    wz = np.zeros(grid.z.size)
    wz[zsel] = trapezoid_weights(grid.z[zsel])
    dvol = distance_tables(grid.z, cosmology, device=device)["dvc_dz_dsr_mpc3"]
    wzt = as_tensor(wz, device) * dvol * 4 * math.pi
    xb = XLFBuilder(grid, device=device)
    dnk = torch.einsum("n,nk->k", as_tensor(grid.dlognh, device), _dex_onehot(xb.dex_of_cell))
    return torch.einsum("z,l,k->zlk", wzt, as_tensor(grid.dlogl, device), dnk)


def binned_xlf_kernel(xlf: dict, grid: Grid, device=None, cosmology: CosmologyParams = CosmologyParams()):
    """Kernels of binned XLF points (a :func:`popsynth.compare.load_binned_xlf` dict) [n, nz, nL, 6].

    Point i: dPhi/dlog L of log N_H 20-24 AGN (Mpc^-3 dex^-1) at log L_i, linear between cell
    centres, averaged over [z_lo, z_hi] with weights dV/dz (the interpolant in z of the grid).
    Returns (kernel, keep) with keep a bool array [n] of the points inside the grid's log L and z range.
    """
    logl = grid.logl
    keep = (xlf["log_l"] >= logl[0]) & (xlf["log_l"] <= logl[-1]) & (xlf["z_hi"] > grid.z[0]) & (xlf["z_lo"] < grid.z[-1])
    dvol = distance_tables(grid.z, cosmology)["dvc_dz_dsr_mpc3"].cpu().numpy()
    rows = []
    for i in np.nonzero(keep)[0]:
        wz = z_range_weights(grid.z, (xlf["z_lo"][i], xlf["z_hi"][i])) * dvol
        wz = wz / wz.sum()
        j = int(np.clip(np.searchsorted(logl, xlf["log_l"][i]) - 1, 0, logl.size - 2))
        s = (xlf["log_l"][i] - logl[j]) / (logl[j + 1] - logl[j])
        wl = np.zeros(logl.size)
        wl[j], wl[j + 1] = 1 - s, s
        wk = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0])  # per-dex values times 1 dex, bins 20-24
        rows.append(np.einsum("z,l,k->zlk", wz, wl, wk))
    k = torch.as_tensor(np.stack(rows) if rows else np.zeros((0, grid.z.size, logl.size, N_DEX)), dtype=DTYPE,
                        device=device)
    return k, keep


# ---------------------------------------------------------------------------- likelihood term
class LogNormalXLFTerm(Term):
    """Binned XLF points with log-normal errors: r = (ln m - ln d) / sigma_ln, with
    sigma_ln = ln(1 + err_hi / d) where the model is above the datum, -ln(1 - err_lo / d) below
    (the published asymmetric 1-sigma bounds become symmetric-in-log distances). ``response`` [F, n]."""

    kind = "binned_xlf"

    def __init__(self, name, response, value, err_lo, err_hi, label: str = ""):
        self.name, self.label = name, label or name
        self.response = response
        self.value = value
        lo = torch.clamp(err_lo / value, max=0.999)
        self.s_lo = -torch.log1p(-lo)
        self.s_hi = torch.log1p(err_hi / value)
        self.n_points = int(value.numel())
        self.description = f"{self.label}: {self.n_points} binned XLF points, log-normal errors"

    def predict(self, w):
        return w @ self.response

    def _res(self, pred):
        r = torch.log(pred.clamp_min(1e-300)) - torch.log(self.value)
        return r / torch.where(r > 0, self.s_hi, self.s_lo)

    def residuals(self, w):
        return self._res(self.predict(w))

    def chi2_of(self, pred):
        return (self._res(pred) ** 2).sum(-1)


# ---------------------------------------------------------------------------- the kernel set
@dataclass
class PhysicalKernels:
    """Kernels of one spectral set and the likelihood over their feature vector.

    Attributes:
      builder: the :class:`popsynth.physical.XLFBuilder` of the grid.
      lw: L_l dlogL_l [nL] (erg/s dex); k_cxb: [nz, 6, n_cxb] (CXB at the data energies);
      k_phi: [F_phi, nz * nL * 6] kernels of the other features (counts, CT numerators and
        denominators, binned XLF points), applied to phi_red;
      k_fine: [nz, 6, nE_fine] CXB on the output energy grid; fine_energy [nE_fine] keV;
        galaxies_fine [nE_fine];
      k_counts: {zmax: [nz * nL * 6]} all-sky AGN numbers to zmax (0.1, 1.0) per unit phi_red;
      likelihood: :class:`popsynth.likelihood.Likelihood` of x [B, F] = :meth:`features`;
      feature_names: [F].
    """

    builder: XLFBuilder
    lw: torch.Tensor
    k_cxb: torch.Tensor
    k_phi: torch.Tensor
    k_fine: torch.Tensor
    fine_energy: torch.Tensor
    galaxies_fine: torch.Tensor
    k_counts: dict
    likelihood: Likelihood
    feature_names: list = field(default_factory=list)
    seconds: float = 0.0
    _sparse: object | None = field(default=None, repr=False)

    @property
    def n_features(self) -> int:
        return self.k_cxb.shape[-1] + self.k_phi.shape[0]

    def features(self, phi_red: torch.Tensor, phi1_red: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """Feature vector x [B, F] of reduced cubes phi_red, phi1_red [B, nz, nL, 6] (Mpc^-3 dex^-2).

        ``sparse=True`` contracts with the sparse form of ``k_phi``
        (:class:`popsynth.physical_sparse.NodeContraction`: the cumulative kernels differenced along
        log L, 0.4M nonzeros instead of 2.1M; built on first use), several times faster than the dense
        product. Both paths give the same numbers to rounding (3e-14) and carry every derivative.
        """
        m = torch.einsum("bzlk,l->bzk", phi1_red, self.lw)
        xc = torch.einsum("bzk,zke->be", m, self.k_cxb)
        if sparse:
            if self._sparse is None:
                grid = self.builder.grid
                self._sparse = NodeContraction(self.k_phi, grid.z.size, as_tensor(grid.dlogl, self.k_phi.device))
            xp = self._sparse(phi_red)
        else:
            xp = phi_red.reshape(phi_red.shape[0], -1) @ self.k_phi.T
        return torch.cat([xc, xp], -1)

    def cxb_fine(self, phi1_red: torch.Tensor) -> torch.Tensor:
        """AGN CXB per N_H class on the output energies: [B, 3, nE_fine] (keV^2 cm^-2 s^-1 keV^-1 sr^-1)."""
        m = torch.einsum("bzlk,l->bzk", phi1_red, self.lw)
        per_dex = torch.einsum("bzk,zke->bke", m, self.k_fine)
        return per_dex.reshape(per_dex.shape[0], 3, 2, -1).sum(2)

    def ct_fraction(self, phi_red: torch.Tensor, zmax: float) -> torch.Tensor:
        """Intrinsic CT fraction (log N_H >= 24) of all AGN of the grid to ``zmax``: [B]."""
        k = self.k_counts[zmax].reshape(-1, N_DEX)
        per = torch.einsum("bik,ik->bk", phi_red.reshape(phi_red.shape[0], -1, N_DEX), k)
        return per[:, 4:].sum(-1) / per.sum(-1)


def _selection(f_total: int, cols) -> torch.Tensor:
    e = torch.zeros(f_total, len(cols), dtype=DTYPE)
    e[torch.as_tensor(cols), torch.arange(len(cols))] = 1.0
    return e


def build_kernels(prob, table, cfg, model=None, device=None) -> PhysicalKernels:
    """Kernels and likelihood for a :class:`popsynth.run.Problem` built with ``cfg`` (a RunConfig)
    and its spectral ``table`` (:func:`popsynth.spectra.cache.build_spectral_table`, same settings).

    ``model`` (a :class:`popsynth.physical.PhysicalModel`) sets sys_floor, cxb_norm_sigma and the
    binned XLF terms (default: the RunConfig's values and none). The likelihood's terms are copies of
    :func:`popsynth.likelihood.build_likelihood`'s, fed by the feature vector.
    """
    import time

    from .compare import load_binned_xlf
    from .observables import counts_flux_bins

    t0 = time.time()
    dev = torch.device("cpu") if device is None else torch.device(device)
    grid = prob.grid
    xb = XLFBuilder(grid, device=dev)
    sys_floor = cfg.sys_floor if model is None else model.sys_floor
    norm_sigma = cfg.cxb_norm_sigma if model is None else model.cxb_norm_sigma
    block_lik = build_likelihood(prob.model, prob.data, prob.constraints, sys_floor=sys_floor, device=dev,
                                 norm_sigma=norm_sigma)
    data = prob.data
    k_cxb = cxb_dex_kernel(table, grid, data.energy, xb.dex_of_cell, device=dev)
    n_cxb = k_cxb.shape[-1]
    kernels, names, plan = [], [f"cxb:{data.names[int(i)]}:{float(e):.4g}keV" for i, e in zip(data.dataset, data.energy)], []
    nfeat = n_cxb

    def add(k: torch.Tensor, label: str) -> list[int]:
        nonlocal nfeat
        k = k.reshape(-1, grid.z.size * grid.logl.size * N_DEX)
        kernels.append(k)
        cols = list(range(nfeat, nfeat + k.shape[0]))
        names.extend(f"{label}[{i}]" for i in range(k.shape[0]))
        nfeat += k.shape[0]
        return cols

    cons = prob.constraints
    for t in block_lik.terms:
        if isinstance(t, CXBTerm):
            i = data.names.index(t.name)
            plan.append((t, "cxb", torch.nonzero(data.dataset == i)[:, 0].tolist(), None))
            continue
        m = cons.models[t.name].to(dev)
        if isinstance(t, CTFractionTerm):
            num, den = ct_kernels(m, xb.dex_of_cell)
            plan.append((t, "ct", add(num, t.name + ":num"), add(den, t.name + ":den")))
        elif isinstance(t, PoissonTerm):
            lo, hi = counts_flux_bins(m.data)
            kb = (cumulative_kernel(m, lo, xb.dex_of_cell) - cumulative_kernel(m, hi, xb.dex_of_cell)) \
                / as_tensor(hi - lo, dev)[:, None, None, None]
            c = _table_columns(m.data.path, ("flux_lo", "flux_hi"))
            scale = as_tensor((c["flux_hi"] - c["flux_lo"]) * float(m.data.area_deg2), dev)
            plan.append((t, "resp", add(kb * scale[:, None, None, None], t.name), None))
        elif isinstance(t, (CovarianceTerm, _SplitNormalPoints)) and m.target == "cumulative":
            plan.append((t, "resp", add(cumulative_kernel(m, m.fluxes.cpu().numpy(), xb.dex_of_cell), t.name), None))
        elif isinstance(t, _SplitNormalPoints) and m.target == "binned":
            lo, hi = m.bin_lo.cpu().numpy(), m.bin_hi.cpu().numpy()
            kb = (cumulative_kernel(m, lo, xb.dex_of_cell) - cumulative_kernel(m, hi, xb.dex_of_cell)) \
                / as_tensor(hi - lo, dev)[:, None, None, None]
            plan.append((t, "resp", add(kb, t.name), None))
        else:
            raise PopsynthError(f"the physical model has no kernel for the term '{t.name}' ({type(t).__name__}, "
                                f"target {m.target})", "use cumulative or binned counts tables")
    extra_terms = []
    for name in (() if model is None else model.binned_xlf):
        d = load_binned_xlf(name)
        sel = np.ones(d["phi"].size, bool) if name != "ueda14" else d["selection"] == "hard"
        k, keep = binned_xlf_kernel({c: (v[sel] if isinstance(v, np.ndarray) else v) for c, v in d.items()}, grid, dev)
        keep_idx = np.nonzero(sel)[0][keep]
        cols = add(k, f"xlf:{name}")
        extra_terms.append((cols, name, d, keep_idx))
    k_phi = torch.cat(kernels, 0) if kernels else torch.zeros(0, grid.z.size * grid.logl.size * N_DEX, dtype=DTYPE)
    terms = []
    for t, kind, a, b in plan:
        nt = copy.copy(t)
        if kind == "cxb":
            nt.response = _selection(nfeat, a).to(dev)
        elif kind == "ct":
            nt.num = _selection(nfeat, a)[:, 0].to(dev)
            nt.den = _selection(nfeat, b)[:, 0].to(dev)
        else:
            nt.response = _selection(nfeat, a).to(dev)
        terms.append(nt)
    for cols, name, d, keep_idx in extra_terms:
        t = lambda c: as_tensor(d[c][keep_idx], dev)  # noqa: E731
        terms.append(LogNormalXLFTerm(f"xlf:{name}", _selection(nfeat, cols).to(dev), t("phi"), t("err_lo"), t("err_hi"),
                                      f"{d['label']} ({'hard-band sample' if name == 'ueda14' else 'all points'} "
                                      "inside the grid)"))
    fine = prob.fine
    k_fine = cxb_dex_kernel(table, grid, fine.energy, xb.dex_of_cell, device=dev)
    lw = as_tensor(10.0 ** grid.logl * grid.dlogl, dev)
    k_counts = {z: intrinsic_count_kernels(grid, z, device=dev).reshape(-1) for z in (0.1, 1.0)}
    return PhysicalKernels(xb, lw, k_cxb, k_phi.to(dev), k_fine, fine.energy.to(dev), fine.extra.to(dev), k_counts,
                           Likelihood(terms), names, time.time() - t0)


def block_likelihood(prob, cfg, model=None, device=None) -> Likelihood:
    """The block model's likelihood of the same problem (for comparisons and the special-case test)."""
    sys_floor = cfg.sys_floor if model is None else model.sys_floor
    norm_sigma = cfg.cxb_norm_sigma if model is None else model.cxb_norm_sigma
    return build_likelihood(prob.model, prob.data, prob.constraints, sys_floor=sys_floor, device=device,
                            norm_sigma=norm_sigma)

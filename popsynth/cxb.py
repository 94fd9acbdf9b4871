"""The cosmic X-ray background as tensor contractions over the (z, log L, log N_H) grid.

A19 eq. B4 with every Jacobian written out. A source at redshift z with intrinsic 2-10 keV
luminosity L and rest-frame photon spectrum L * S(E_rest) (photons s^-1 keV^-1, S per erg/s)
gives an observed photon flux density

    F(E_obs) = L S(E_obs (1+z)) (1+z)^2 / (4 pi d_L^2)      [photons cm^-2 s^-1 keV^-1]

(one (1+z) from the band compression dE_rest/dE_obs, one from (1+z)^-1 time dilation
over d_M^2 = d_L^2/(1+z)^2). The background intensity in E^2 dN/dE units is then

    I(E) = E^2 int dz dV_c/(dz dOmega) int dlog L int dlog N_H phi(z, L, N_H) F(E)

in keV^2 cm^-2 s^-1 keV^-1 sr^-1, with phi in Mpc^-3 dex^-2 and dV_c/(dz dOmega) in
Mpc^3 sr^-1. On the grid:

    K[z, n, e]  = w_z * dV_c/dz/dOmega(z) * (1+z)^2 / (4 pi d_L(z)^2) * E_e^2 * S_n(E_e (1+z)) * dlogNH_n
    I[b, e]     = sum_{z, l, n} phi[b, z, l, n] * L_l * dlogL_l * K[z, n, e]

With block weights, phi = phi0 * w[b, block(l, n)] and the contraction over z, l, n is done
once: A[k, e] = sum phi0 L dlogL K over block k, and I[b, e] = sum_k w[b, k] A[k, e].
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._tensor import as_tensor, empty_cpu, interp_loglog, interp_loglog_query_major
from .blocks import BLOCKS
from .cosmology import CosmologyParams
from .errors import PopsynthError
from .grid import Grid
from .response import block_cxb_response, cxb_response, luminosity_weighted_cube  # noqa: F401 (re-exported)
from .spectra.table import SpectralTable

def cxb_kernel(table: SpectralTable, grid: Grid, e_obs, cosmology: CosmologyParams = CosmologyParams(),
               device=None) -> torch.Tensor:
    """Response kernel K[z, n, e] (see module docstring).

    Args:
      table: mean spectra per log N_H cell; its cells must be the grid's log N_H cells.
      grid: the XLF grid (z nodes and trapezoid weights, log N_H cell widths).
      e_obs: observed energies [nE] in keV.
    Returns float64 [nz, nN, nE]; K times (phi in Mpc^-3 dex^-2) times (L dlogL in erg/s dex)
    summed gives keV^2 cm^-2 s^-1 keV^-1 sr^-1.
    """
    e = as_tensor(e_obs, device).reshape(-1)
    if not torch.isfinite(e).all() or (e <= 0).any():
        raise PopsynthError("observed energies must be finite and > 0 keV", "check the energy list")
    if table.lognh.numel() != grid.lognh.size or not np.allclose(table.lognh.cpu().numpy(), grid.lognh):
        raise PopsynthError("the spectral table's log N_H cells differ from the grid's",
                            "build the table with the grid's lognh_edges")
    erest_max = float(e.max()) * (1 + grid.z[-1])
    erest_min = float(e.min()) * (1 + grid.z[0])
    if erest_max > float(table.energy[-1]) * (1 + 1e-9) or erest_min < float(table.energy[0]) * (1 - 1e-9):
        raise PopsynthError(
            f"observed energies {float(e.min()):g}-{float(e.max()):g} keV need rest-frame spectra over "
            f"{erest_min:g}-{erest_max:g} keV, beyond the table's {float(table.energy[0]):g}-{float(table.energy[-1]):g} keV",
            "restrict the energies or build the spectral table on a wider energy grid")
    d = grid.distances(cosmology, e.device)
    z = d["z"]
    wz = as_tensor(grid.z_weights, e.device)
    geom = wz * d["dvc_dz_dsr_mpc3"] * (1 + z) ** 2 / (4 * math.pi * d["d_l_cm"] ** 2)  # [nz] Mpc^3 sr^-1 cm^-2
    erest = e[None, :] * (1 + z[:, None])  # [nz, nE]
    energy, mean = table.energy.to(e.device), table.mean.to(e.device)
    dlognh = as_tensor(grid.dlognh, e.device)
    front = geom[:, None, None] * (e ** 2)[None, None, :]  # [nz, 1, nE]
    if torch.is_grad_enabled() and (mean.requires_grad or energy.requires_grad or front.requires_grad):
        s = interp_loglog(erest, energy, mean)  # [nN, nz, nE]
        return front * s.permute(1, 0, 2) * dlognh[None, :, None]
    # the same operations in order; the spectra in the interpolation's query-major layout
    # [nz * nE, nN] go straight into the product (no transposed copy)
    nz, ne, nn = erest.shape[0], erest.shape[1], mean.shape[0]
    s = interp_loglog_query_major(erest, energy, mean).view(nz, ne, nn).permute(0, 2, 1)  # [nz, nN, nE] strided
    out = empty_cpu((nz, nn, ne), s.dtype, s.device)  # no page faults (4 MB)
    return torch.mul(front, s, out=out).mul_(dlognh[None, :, None])


def cxb_from_cube(phi: torch.Tensor, kernel: torch.Tensor, grid: Grid) -> torch.Tensor:
    """CXB for full cubes: phi [B, nz, nL, nN] (Mpc^-3 dex^-2) -> I [B, nE] (keV^2 cm^-2 s^-1 keV^-1 sr^-1).

    The general path (any weighting of the cube), :func:`popsynth.response.cxb_response`. ``phi``
    should be the L-weighted cell average (see :func:`popsynth.xlf.build_phi0` with ``l_moment=1``)
    for exactness in L; a plain cell average is accurate to second order in the cell width.
    """
    return cxb_response(phi, kernel, grid)


def block_response(phi1: torch.Tensor, kernel: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Response of the CXB to each block weight: A[k, e] = I(e) of block k at unit weight.

    The CXB kernel applied to the 15 block cubes (:func:`popsynth.response.block_cxb_response`).
    Args: phi1 [nz, nL, nN] L-weighted starting cube; kernel [nz, nN, nE].
    Returns float64 [15, nE]. Then I[b, e] = w[b, :] @ A.
    """
    return block_cxb_response(phi1, kernel, grid)


def class_of_block() -> torch.Tensor:
    """N_H class (0, 1, 2) of each block: long [15] (alias of :meth:`popsynth.blocks.Blocks.nh_class`)."""
    return BLOCKS.nh_class()


class CXBModel:
    """CXB predictions for a batch of block weights at fixed energies.

    Holds the block response A [15, nE] (keV^2 cm^-2 s^-1 keV^-1 sr^-1 per unit weight) and an
    additive non-AGN term ``extra`` [nE] (the galaxy contribution). Call with w [B, 15] to get
    I [B, nE]; :meth:`by_class` splits the AGN part into the three N_H classes [B, 3, nE].
    """

    def __init__(self, response: torch.Tensor, energy: torch.Tensor, extra: torch.Tensor | None = None):
        self.response = response
        self.energy = energy
        self.extra = torch.zeros_like(energy) if extra is None else extra

    def __call__(self, weights: torch.Tensor) -> torch.Tensor:
        return weights @ self.response + self.extra

    def agn(self, weights: torch.Tensor) -> torch.Tensor:
        return weights @ self.response

    def by_class(self, weights: torch.Tensor) -> torch.Tensor:
        cls = BLOCKS.nh_class().to(weights.device)
        out = [weights[:, cls == c] @ self.response[cls == c] for c in range(BLOCKS.n_classes)]
        return torch.stack(out, dim=1)

    def to(self, device) -> "CXBModel":
        return CXBModel(self.response.to(device), self.energy.to(device), self.extra.to(device))

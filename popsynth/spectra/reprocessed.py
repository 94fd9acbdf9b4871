"""Reprocessed components of the A19 spectrum, built on the photon Monte Carlo's Green's functions.

A19 section 5.2 models every AGN as ``f_scatt * cutoffpl + wabs * pexmon + bntorus * highecut``.
This module provides the two reprocessed pieces as :class:`~popsynth.spectra.component.Component`
objects, computed from the Green's-function tables of :mod:`popsynth.mc` (shipped in
``data/greens/``):

* :class:`Reflection` (the pexmon equivalent): reflection of the cutoff power law off a
  semi-infinite neutral slab seen at 30 deg (A19), with its Fe K alpha, Fe K beta, Ni K alpha
  and Ni K beta lines and their Compton shoulders, scaled by the reflection factor R of each
  draw and absorbed by the line-of-sight column (A19's ``wabs``: photoelectric absorption only,
  by default; ``absorber="full"`` adds Klein-Nishina attenuation, which A19 could not do, see
  their section 2).
* :class:`TorusReprocessed` (the scattered and fluorescent part of BNTorus): the Compton
  scattered continuum and fluorescence lines of the Brightman & Nandra (2011) geometry (uniform
  sphere of radial column N_H with a biconical opening of half-angle theta_tor) for the A19
  inclination rules (:func:`a19_torus_inclination`). The transmitted beam of the torus is the
  analytic :class:`~popsynth.spectra.component.Transmitted` component (as in BNTorus, the
  line-of-sight column of every source is the N_H of its XLF cell).
  The high-energy cutoff is applied as A19 does (``cutoff="highecut"``): the torus reprocesses
  a pure power law (BNTorus tables have no cutoff) and the result is multiplied by
  exp(-E/E_cut); ``cutoff="incident"`` reprocesses the cutoff power law itself (the physically
  consistent choice).

Each component is a linear map of the primary photon spectrum: the primary, sampled on the
spectral energy grid, is integrated into the Monte Carlo's input bins (:func:`binning_matrix`),
multiplied by the interpolated Green's matrix, and returned to the grid as a photon density
(:func:`unbinning_matrix` for the continuum, :func:`line_matrix` for the lines). For the slab
the whole chain is one [nE, nE] matrix.

Limits (also in the README):
* The Monte Carlo covers 1-1000 keV (rest frame). Reprocessed components are zero below 1 keV
  and above 1000 keV. Below 1 keV the slab reflects < 2 % of the primary (photoabsorption
  dominates); see ``tests/test_reprocessed.py`` for the measured value at 1-1.5 keV.
* Fluorescence lines are stored by the Monte Carlo as delta functions. On the spectral grid
  each line is a Gaussian in ln E of width ``line_sigma`` (default 0.03, i.e. 190 eV at
  6.4 keV), photon number conserved. This width keeps the CXB's redshift quadrature (node
  spacing up to 0.044 in ln(1+z)) exact for the lines to < 1e-4; it is a numerical width,
  not a physical one (pass a smaller value for plots of single spectra).
* The continuum between the centres of neighbouring output bins (0.02 dex, 0.04 keV near
  6-7.1 keV) is interpolated linearly in ln E; the Fe and Ni K edges (7.112, 8.333 keV) are bin
  edges and stay sharp. Photons per bin are kept to 0.3 % (2.5 % in the bins next to the edges).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .._tensor import DTYPE, as_tensor
from ..errors import PopsynthError
from ..mc.grids import FE_K_EDGE_KEV, NI_K_EDGE_KEV
from ..mc.interpolate import interpolation_corners, response_matrix
from ..mc.shipped import ShippedTable
from ..mc.table import GreensTable
from ..physics.crosssections import sigma_compton, sigma_photo
from .component import Component
from .primary import band_energy_flux, cutoff_powerlaw

DEFAULT_LINE_SIGMA = 0.03  # Gaussian width of the fluorescence lines in ln E (numerical)
A19_REFLECTION_INCLINATION = 30.0  # deg, A19 section 5.2


# ------------------------------------------------------------------------------------------
# Operators between the spectral energy grid and the Monte Carlo bins
# ------------------------------------------------------------------------------------------
def trapezoid_energy_weights(energy: np.ndarray) -> np.ndarray:
    """Trapezoid weights [nE] (keV) on the energy grid: sum(w * f) = integral f dE."""
    e = np.asarray(energy, dtype=np.float64)
    w = np.zeros_like(e)
    d = np.diff(e)
    w[:-1] += d / 2
    w[1:] += d / 2
    return w


def binning_matrix(energy, edges) -> torch.Tensor:
    """Integrals over bins of a spectrum sampled on a grid: [n_bins, nE] float64.

    ``energy`` [nE] (keV, increasing): grid points of a photon density f (photons keV^-1);
    ``edges`` [n_bins + 1] (keV): bin edges inside the grid. Row b gives the exact integral over
    bin b of the piecewise-linear (in E) interpolant of f, so (matrix @ f)[b] = photons in bin b.
    """
    x = np.asarray(energy, dtype=np.float64)
    ed = np.asarray(edges, dtype=np.float64)
    if ed[0] < x[0] * (1 - 1e-12) or ed[-1] > x[-1] * (1 + 1e-12):
        raise PopsynthError(
            f"bins {ed[0]:g}-{ed[-1]:g} keV reach beyond the energy grid {x[0]:g}-{x[-1]:g} keV",
            "use a spectral energy grid that covers the Monte Carlo input range")
    m = np.zeros((ed.size - 1, x.size))
    for b in range(ed.size - 1):
        lo, hi = ed[b], ed[b + 1]
        k0 = max(int(np.searchsorted(x, lo, side="right")) - 1, 0)
        k1 = min(int(np.searchsorted(x, hi, side="left")), x.size - 1)
        for k in range(k0, k1):
            left, right = max(lo, x[k]), min(hi, x[k + 1])
            if right <= left:
                continue
            h = x[k + 1] - x[k]
            tl, tr = (left - x[k]) / h, (right - x[k]) / h
            half = 0.5 * (right - left)
            m[b, k] += half * ((1 - tl) + (1 - tr))
            m[b, k + 1] += half * (tl + tr)
    return torch.as_tensor(m, dtype=DTYPE)


def unbinning_matrix(energy, edges, breaks=(FE_K_EDGE_KEV, NI_K_EDGE_KEV)) -> torch.Tensor:
    """Photon density on a grid from photons per bin: [nE, n_bins] float64.

    The density of bin b (photons / width) sits at the bin's geometric centre; between the
    centres of neighbouring bins it is interpolated linearly in ln E, except across an edge in
    ``breaks`` (keV; the Fe and Ni K edges), where each side holds its own value up to the edge.
    Grid points outside the bins get 0.
    """
    x = np.asarray(energy, dtype=np.float64)
    ed = np.asarray(edges, dtype=np.float64)
    width = np.diff(ed)
    lc = 0.5 * (np.log(ed[1:]) + np.log(ed[:-1]))
    seg = np.zeros(width.size, dtype=int)
    for e in breaks:
        seg += (ed[:-1] >= e * (1 - 1e-9)).astype(int)
    m = np.zeros((x.size, width.size))
    inside = (x >= ed[0]) & (x <= ed[-1])
    for k in np.nonzero(inside)[0]:
        b = min(int(np.searchsorted(ed, x[k], side="right")) - 1, width.size - 1)
        lx = math.log(x[k])
        nb = b + 1 if lx >= lc[b] else b - 1  # the neighbour on the same side as the point
        if 0 <= nb < width.size and seg[nb] == seg[b]:
            t = (lx - lc[b]) / (lc[nb] - lc[b])
            m[k, b] += (1 - t) / width[b]
            m[k, nb] += t / width[nb]
        else:
            m[k, b] += 1.0 / width[b]
    return torch.as_tensor(m, dtype=DTYPE)


def line_matrix(energy, line_energies, sigma_ln: float = DEFAULT_LINE_SIGMA) -> torch.Tensor:
    """Photon density on a grid of lines holding one photon each: [nE, L] float64.

    Each line is a Gaussian in ln E of standard deviation ``sigma_ln``, normalised so that the
    trapezoid integral over the grid is exactly 1 photon.
    """
    if not sigma_ln > 0:
        raise PopsynthError(f"line width {sigma_ln} must be > 0", "pass a Gaussian width in ln E, e.g. 0.03")
    x = np.asarray(energy, dtype=np.float64)
    le = np.log(np.asarray(line_energies, dtype=np.float64))
    g = np.exp(-0.5 * ((np.log(x)[:, None] - le[None, :]) / sigma_ln) ** 2) / x[:, None]
    norm = (trapezoid_energy_weights(x)[:, None] * g).sum(0)
    return torch.as_tensor(g / norm, dtype=DTYPE)


def a19_torus_inclination(log_nh: torch.Tensor, theta_tor_deg: torch.Tensor) -> torch.Tensor:
    """A19 section 5.2 inclination (deg) of the torus for columns ``log_nh`` and opening angles.

    25 deg for log N_H < 21 (through the opening); theta_tor + 15 deg for 21 <= log N_H < 24;
    87 deg for log N_H >= 24. Broadcasts ``log_nh`` against ``theta_tor_deg``.
    """
    nh, th = torch.broadcast_tensors(as_tensor(log_nh), as_tensor(theta_tor_deg))
    return torch.where(nh < 21.0, torch.full_like(th, 25.0), torch.where(nh < 24.0, th + 15.0, torch.full_like(th, 87.0)))


class _GreensOps:
    """Operators of one Green's table on one energy grid (cached per energy grid)."""

    def __init__(self, table: GreensTable, energy: torch.Tensor, line_sigma: float):
        e = energy.detach().cpu().numpy()
        self.B = binning_matrix(e, table.e_in_edges)  # [n_in, nE]
        self.U = unbinning_matrix(e, table.e_out_edges)  # [nE, n_out]
        self.L = line_matrix(e, table.line_energies_keV, line_sigma)  # [nE, L]
        self.energy = energy.detach().cpu().clone()

    def matches(self, energy: torch.Tensor) -> bool:
        return self.energy.shape == energy.shape and torch.equal(self.energy, energy.detach().cpu())


def _greens_source(table: "GreensTable | ShippedTable | None", kind: str, component: str):
    """The Green's table a component is given (None: the shipped one, named, not read), of ``kind``."""
    src = ShippedTable(kind) if table is None else table
    if src.kind != kind:
        raise PopsynthError(f"the {component} component needs a {kind} table, got '{src.kind}'",
                            f"pass the {kind} Green's table (popsynth.mc.shipped.load_greens('{kind}'))")
    return src


def _load(src: "GreensTable | ShippedTable") -> GreensTable:
    return src.load() if isinstance(src, ShippedTable) else src


def _greens_name(src: "GreensTable | ShippedTable") -> str:
    """How :meth:`describe` names a component's Green's table without reading it: a table's
    version key, or ``shipped:<file name>`` (cache keys name either by its sha256 instead)."""
    return f"shipped:{src.path.name}" if isinstance(src, ShippedTable) else src.version_key


def _absorption_sigma(energy: torch.Tensor, absorber: str, abund: str) -> torch.Tensor:
    sig = sigma_photo(energy.cpu(), abund=abund)
    if absorber == "full":
        sig = sig + sigma_compton(energy.cpu())
    return sig.to(energy.device)


# ------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------
class Reflection(Component):
    """Disk reflection (pexmon equivalent): R * absorption(N_H) * [slab reflection at 30 deg + lines].

    Args:
      inclination_deg: slab inclination (A19: 30 deg).
      absorber: "wabs" (A19: photoelectric absorption only, abundances ``abund``) or "full"
        (photoelectric + Klein-Nishina attenuation by 1.21 electrons per H).
      line_sigma: numerical Gaussian width of the fluorescence lines in ln E.
      lines: include the fluorescence lines (True: pexmon; False: the continuum only, as pexrav).
      table: a slab :class:`~popsynth.mc.table.GreensTable`, or a
        :class:`~popsynth.mc.shipped.ShippedTable` naming a shipped one (default: the shipped
        slab, read by :meth:`load_tables` or on first use).
    Uses ``params["refl"]`` (R, [D]). Output photons s^-1 keV^-1 per erg/s, [D, M, nE].
    """

    name = "reflection"

    def __init__(self, inclination_deg: float = A19_REFLECTION_INCLINATION, absorber: str = "wabs",
                 line_sigma: float = DEFAULT_LINE_SIGMA, abund: str = "angr", lines: bool = True,
                 table: GreensTable | ShippedTable | None = None):
        if absorber not in ("wabs", "full"):
            raise PopsynthError(f"unknown reflection absorber '{absorber}'", "use 'wabs' (A19) or 'full'")
        if not 0.0 <= inclination_deg < 90.0:
            raise PopsynthError(f"reflection inclination {inclination_deg} deg outside [0, 90)",
                                "pass the angle from the disk normal in degrees (A19: 30)")
        self.inclination_deg = float(inclination_deg)
        self.absorber = absorber
        self.line_sigma = float(line_sigma)
        self.abund = abund
        self.lines = bool(lines)
        self.greens = _greens_source(table, "slab", "reflection")  # the table, or the shipped one's name
        self._ops = None
        self._matrix = None
        self._sig = None

    def load_tables(self) -> None:
        self.greens = _load(self.greens)

    @property
    def table(self) -> GreensTable:
        """The slab Green's table (a shipped one named at construction is read now)."""
        self.load_tables()
        return self.greens

    def matrix(self, energy: torch.Tensor) -> torch.Tensor:
        """The reflection operator for R = 1 [nE, nE]: reflected density = matrix @ primary density."""
        if self._ops is None or not self._ops.matches(energy):
            self._ops = _GreensOps(self.table, energy, self.line_sigma)
            M, ML = response_matrix(self.table, self.inclination_deg)
            self._matrix = self._ops.U @ M @ self._ops.B
            if self.lines:
                self._matrix = self._matrix + self._ops.L @ ML @ self._ops.B
            self._sig = _absorption_sigma(energy.cpu(), self.absorber, self.abund)
        return self._matrix

    def spectrum(self, energy, primary, params, log_nh):
        mat = self.matrix(energy).to(energy.device)
        refl = primary @ mat.T  # [D, nE]
        sig = self._sig.to(energy.device)
        att = torch.exp(-(10.0 ** log_nh)[:, None] * sig[None, :])  # [M, nE]
        return params["refl"][:, None, None] * refl[:, None, :] * att[None]

    def describe(self):
        return {**super().describe(), "inclination_deg": self.inclination_deg, "absorber": self.absorber,
                "line_sigma": self.line_sigma, "abund": self.abund, "lines": self.lines,
                "greens": _greens_name(self.greens)}


class TorusReprocessed(Component):
    """Torus scattered continuum and fluorescence lines (BNTorus geometry, A19 inclinations).

    Args:
      cutoff: "highecut" (A19: reprocess a pure power law of the draw's Gamma and the primary's
        normalisation, then multiply by exp(-E/E_cut)) or "incident" (reprocess the cutoff
        primary itself).
      inclination: function (log_nh [M, 1], theta_tor [1, D]) -> inclination in deg
        (default :func:`a19_torus_inclination`).
      line_sigma: numerical Gaussian width of the fluorescence lines in ln E.
      lines: include the fluorescence lines (False: scattered continuum only).
      out_of_grid: "raise" or "clamp" for columns / opening angles beyond the table nodes.
      table: a torus :class:`~popsynth.mc.table.GreensTable`, or a
        :class:`~popsynth.mc.shipped.ShippedTable` naming a shipped one (default: the shipped
        torus, read by :meth:`load_tables` or on first use).
    Uses ``params["theta_tor"]`` (deg), ``params["gamma"]`` and ``params["ecut"]`` ([D]).
    Output photons s^-1 keV^-1 per erg/s of the primary's L(2-10), [D, M, nE].
    """

    name = "torus"

    def __init__(self, cutoff: str = "highecut", inclination: Callable | None = None,
                 line_sigma: float = DEFAULT_LINE_SIGMA, out_of_grid: str = "raise", lines: bool = True,
                 table: GreensTable | ShippedTable | None = None):
        if cutoff not in ("highecut", "incident"):
            raise PopsynthError(f"unknown torus cutoff treatment '{cutoff}'", "use 'highecut' (A19) or 'incident'")
        self.cutoff = cutoff
        self.inclination = inclination or a19_torus_inclination
        self.line_sigma = float(line_sigma)
        self.out_of_grid = out_of_grid
        self.lines = bool(lines)
        self.greens = _greens_source(table, "torus", "torus")  # the table, or the shipped one's name
        self._ops = None

    def load_tables(self) -> None:
        self.greens = _load(self.greens)

    @property
    def table(self) -> GreensTable:
        """The torus Green's table (a shipped one named at construction is read now)."""
        self.load_tables()
        return self.greens

    def _input(self, energy, primary, params):
        if self.cutoff == "incident":
            return primary
        norm = band_energy_flux(params["gamma"], params["ecut"])  # the primary's K = 1 / norm
        return cutoff_powerlaw(energy, params["gamma"], torch.full_like(params["gamma"], math.inf)) / norm[:, None]

    def spectrum(self, energy, primary, params, log_nh):
        table = self.table
        if self._ops is None or not self._ops.matches(energy):
            self._ops = _GreensOps(table, energy, self.line_sigma)
        dev = energy.device
        B, U, Lm = (t.to(dev) for t in (self._ops.B, self._ops.U, self._ops.L))
        theta = params["theta_tor"]
        D, M = theta.numel(), log_nh.numel()
        n_in = self._input(energy, primary, params) @ B.T  # [D, n_in] photons per input bin
        inc = self.inclination(log_nh[:, None], theta[None, :]).T  # [D, M]
        nh = log_nh[None, :].expand(D, M)
        th = theta[:, None].expand(D, M)
        a, b, j, w, _ = interpolation_corners(table, inc.reshape(-1), nh.reshape(-1), th.reshape(-1),
                                              out_of_grid=self.out_of_grid, device=dev)
        # Apply the Green's functions only at the nodes that are used, then interpolate.
        a_u, a_i = torch.unique(a, return_inverse=True)
        b_u, b_i = torch.unique(b, return_inverse=True)
        t = table.tensors(dev)
        G = t["G"][a_u][:, b_u].to(DTYPE)  # [na, nb, n_inc, n_out, n_in]
        GL = t["G_line"][a_u][:, b_u].to(DTYPE)  # [na, nb, n_inc, L, n_in]
        na, nb, ninc = G.shape[:3]
        Y = torch.einsum("abjoi,di->dabjo", G, n_in).reshape(D, na * nb * ninc, -1)
        YL = torch.einsum("abjoi,di->dabjo", GL, n_in).reshape(D, na * nb * ninc, -1)
        flat = ((a_i * nb + b_i) * ninc + j).reshape(D, M, -1)  # [D, M, 8]
        d_idx = torch.arange(D, device=dev)[:, None, None]
        wt = w.reshape(D, M, -1, 1)
        cont = (Y[d_idx, flat] * wt).sum(2)  # [D, M, n_out]
        lines = (YL[d_idx, flat] * wt).sum(2)  # [D, M, L]
        out = cont @ U.T + (lines @ Lm.T if self.lines else 0.0)  # [D, M, nE]
        if self.cutoff == "highecut":
            out = out * torch.exp(-energy[None, :] / params["ecut"][:, None])[:, None, :]
        return out

    def describe(self):
        inc = self.inclination
        return {**super().describe(), "cutoff": self.cutoff, "line_sigma": self.line_sigma, "lines": self.lines,
                "inclination": getattr(inc, "__name__", repr(inc)), "greens": _greens_name(self.greens)}

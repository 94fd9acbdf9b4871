"""Spectral tables: the mean AGN spectrum per log N_H cell, built from a model's components.

:func:`compute_spectral_table` builds a :class:`SpectralTable` (no IO);
:func:`popsynth.spectra.cache.build_spectral_table` wraps it with the on-disk cache.
:func:`spectra_per_draw` gives the spectra at given columns without cell averaging.

Units: spectra are photons s^-1 keV^-1 per (erg/s of intrinsic 2-10 keV luminosity of the
primary), on a rest-frame energy grid in keV.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .._tensor import DTYPE, as_tensor
from ..errors import PopsynthError
from .component import Component
from .primary import primary_spectrum
from .registry import default_components
from .sets import SpectralSet, draw_parameters, get_spectral_set

TABLE_FORMAT = 4  # bumped when SpectralTable's fields, their computation or the cache file change
# (2: per_draw; 3: K-edge unbinning; 4: weights-only cache file, input tables keyed by content)
OBSCURED_LOGNH = 22.0  # A19: "obscured means log N_H >= 22"


def default_energy_grid(device=None) -> torch.Tensor:
    """Rest-frame energy grid, keV: 1201 log-spaced points over 0.1-2000 keV (0.0036 dex steps).

    Wide enough that E_obs (1 + z) stays inside for E_obs in 0.1-300 keV and z <= 5.
    """
    return torch.logspace(np.log10(0.1), np.log10(2000.0), 1201, dtype=DTYPE, device=device)



@dataclass
class SpectralTable:
    """Mean spectra per log N_H cell.

    Attributes:
      energy: rest-frame keV [nE];
      lognh_edges [nN+1], lognh [nN]: cell edges and centres (log10 cm^-2);
      mean: [nN, nE], photons s^-1 keV^-1 per erg/s of intrinsic L(2-10), averaged over the
        draws and over log N_H inside each cell;
      components: {name: [nN, nE]} the same per component (they sum to ``mean``);
      per_draw: [D, nN, nE] the total spectrum of each parameter draw, averaged over log N_H
        inside each cell (``mean`` is its average over draws). Cells with log N_H < 22 use the
        unobscured draws (row 0 of ``params``), the others the obscured draws (row 1). Number
        counts use it so that the spread of spectral parameters spreads the band fluxes;
      params: {name: [2, D]} the draws (row 0 unobscured, row 1 obscured);
      meta: description (spectral set, draws, seed, components, key, version).
    """

    energy: torch.Tensor
    lognh_edges: torch.Tensor
    lognh: torch.Tensor
    mean: torch.Tensor
    components: dict[str, torch.Tensor]
    per_draw: torch.Tensor
    params: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def to(self, device) -> "SpectralTable":
        mv = lambda t: t.to(device)  # noqa: E731
        return SpectralTable(mv(self.energy), mv(self.lognh_edges), mv(self.lognh), mv(self.mean),
                             {k: mv(v) for k, v in self.components.items()}, mv(self.per_draw),
                             {k: mv(v) for k, v in self.params.items()}, dict(self.meta))

    @property
    def n_draws(self) -> int:
        return int(self.per_draw.shape[0])


def spectra_per_draw(spec: SpectralSet | int, log_nh, energy=None, n_draws: int = 64, seed: int = 0,
                     components: list[Component] | None = None, device=None) -> torch.Tensor:
    """The spectral table S[draw, log N_H, E_rest] at given columns (no cell averaging).

    Each spectrum is normalised to intrinsic L(2-10 keV) = 1 erg/s of its primary. Draws of
    the obscured class (log N_H >= 22) use the obscured distributions.
    Args: log_nh [M] (log10 cm^-2); energy [nE] keV (default :func:`default_energy_grid`).
    Returns float64 [n_draws, M, nE] in photons s^-1 keV^-1 per erg/s.
    """
    spec = spec if isinstance(spec, SpectralSet) else get_spectral_set(spec)
    energy = default_energy_grid(device) if energy is None else as_tensor(energy, device)
    log_nh = as_tensor(log_nh, device).reshape(-1)
    comps = components if components is not None else default_components()
    params = {k: v.to(energy.device) for k, v in draw_parameters(spec, n_draws, seed).items()}
    out = torch.zeros(n_draws, log_nh.numel(), energy.numel(), dtype=DTYPE, device=energy.device)
    for cls in (0, 1):
        sel = (log_nh >= OBSCURED_LOGNH) if cls else (log_nh < OBSCURED_LOGNH)
        if not bool(sel.any()):
            continue
        p = {k: v[cls] for k, v in params.items()}
        prim = primary_spectrum(energy, p["gamma"], p["ecut"])
        out[:, sel] = sum(c.spectrum(energy, prim, p, log_nh[sel]) for c in comps)
    return out


def compute_spectral_table(spec: SpectralSet | int, lognh_edges, energy=None, n_draws: int = 64, seed: int = 0,
                           n_sub: int = 4, components: list[Component] | None = None,
                           meta: dict | None = None) -> SpectralTable:
    """Mean spectra per log N_H cell for a spectral set (no cache: see
    :func:`popsynth.spectra.cache.build_spectral_table`).

    For every cell the spectrum is averaged over ``n_draws`` stratified parameter draws and
    over ``n_sub`` Gauss-Legendre nodes in log N_H inside the cell (transmission changes by
    orders of magnitude across a 0.1-dex cell at low energies, so cell centres alone would bias
    the cell integral). lognh_edges [nN+1] (log10 cm^-2); energy [nE] keV (default
    :func:`default_energy_grid`). ``components``: with their input tables
    (:func:`popsynth.spectra.registry.load_tables`; one that still names a shipped Green's table
    reads it at its first spectrum). ``meta``: the table's description (stored as given).
    Returns a float64 :class:`SpectralTable` on the CPU.
    """
    spec = spec if isinstance(spec, SpectralSet) else get_spectral_set(spec)
    energy = default_energy_grid("cpu") if energy is None else as_tensor(energy, "cpu")
    edges = as_tensor(lognh_edges, "cpu")
    comps = components if components is not None else default_components()
    x, w = np.polynomial.legendre.leggauss(n_sub)
    lo, hi = edges[:-1].numpy(), edges[1:].numpy()
    sub = 0.5 * (hi - lo)[:, None] * x[None, :] + 0.5 * (hi + lo)[:, None]  # [nN, n_sub]
    wsub = torch.as_tensor(w / 2.0, dtype=DTYPE)
    params = draw_parameters(spec, n_draws, seed)
    n_cells = edges.numel() - 1
    comp_tab = {c.name: torch.zeros(n_cells, energy.numel(), dtype=DTYPE) for c in comps}
    per_draw = torch.zeros(n_draws, n_cells, energy.numel(), dtype=DTYPE)
    for cls in (0, 1):
        cells = np.nonzero((lo >= OBSCURED_LOGNH) if cls else (lo < OBSCURED_LOGNH))[0]
        if cells.size == 0:
            continue
        p = {k: v[cls] for k, v in params.items()}
        prim = primary_spectrum(energy, p["gamma"], p["ecut"])  # [D, nE]
        for start in range(0, cells.size, 8):  # chunks keep memory at D * 8 * n_sub * nE doubles
            cc = cells[start:start + 8]
            lnh = torch.as_tensor(sub[cc].reshape(-1), dtype=DTYPE)
            for c in comps:
                s = c.spectrum(energy, prim, p, lnh)  # [D, len(cc)*n_sub, nE]
                s = (s.reshape(n_draws, cc.size, n_sub, -1) * wsub[None, None, :, None]).sum(2)
                per_draw[:, cc] += s
                comp_tab[c.name][cc] = s.mean(0)
    mean = per_draw.mean(0)
    if not torch.isfinite(mean).all() or (mean < 0).any():
        raise PopsynthError("the spectral table has non-finite or negative values",
                            "check the spectral-set parameters and the energy grid")
    return SpectralTable(energy, edges, 0.5 * (edges[1:] + edges[:-1]), mean, comp_tab, per_draw,
                         {k: v.clone() for k, v in params.items()}, dict(meta or {}))

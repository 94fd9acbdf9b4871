"""AGN X-ray spectra as sums of components, tabulated per log N_H cell.

A component maps the primary continuum of each draw to an emitted spectrum at a set of
line-of-sight columns. All components are linear in the primary, so any primary can be
reprocessed by the same code (and, for Monte Carlo components, by a matrix product).

Components of this module:
  - :class:`Transmitted`: the primary seen through the line-of-sight column: photoelectric
    absorption with real cross sections (xraydb elemental cross sections, Anders & Grevesse
    1989 abundances) times Compton (Klein-Nishina) attenuation, exp(-N_H [sigma_ph + 1.21 sigma_KN]).
    This is the transmitted beam of the torus; the photons scattered out of it are returned
    by the torus reprocessing.
  - :class:`Scattered`: f_scatt times the primary, unabsorbed (A19: f_scatt = 0.01).
The reprocessed components (disk reflection with fluorescence lines, the pexmon equivalent,
and the torus's scattered light and lines, the BNTorus equivalent) are in
:mod:`popsynth.spectra.reprocessed`; :func:`make_components` assembles the named models.

Units: spectra are photons s^-1 keV^-1 per (erg/s of intrinsic 2-10 keV luminosity of the
primary), on a rest-frame energy grid in keV.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import __version__
from .._tensor import DTYPE, as_tensor
from ..errors import PopsynthError
from ..physics.crosssections import sigma_compton, sigma_photo
from .primary import primary_spectrum
from .sets import PARAM_NAMES, SpectralSet, draw_parameters, get_spectral_set

TABLE_FORMAT = 3  # bumped when SpectralTable's fields or their computation change (2: per_draw; 3: K-edge unbinning)
OBSCURED_LOGNH = 22.0  # A19: "obscured means log N_H >= 22"


def default_energy_grid(device=None) -> torch.Tensor:
    """Rest-frame energy grid, keV: 1201 log-spaced points over 0.1-2000 keV (0.0036 dex steps).

    Wide enough that E_obs (1 + z) stays inside for E_obs in 0.1-300 keV and z <= 5.
    """
    return torch.logspace(np.log10(0.1), np.log10(2000.0), 1201, dtype=DTYPE, device=device)


class Component:
    """One additive spectral component.

    Subclasses implement :meth:`spectrum`. ``name`` labels the component in tables.
    """

    name = "component"

    def spectrum(self, energy: torch.Tensor, primary: torch.Tensor, params: dict[str, torch.Tensor],
                 log_nh: torch.Tensor) -> torch.Tensor:
        """Emitted spectrum [D, M, nE] for primaries [D, nE], params {name: [D]} and columns log_nh [M]."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "class": type(self).__name__}


class Transmitted(Component):
    """Line-of-sight transmission: primary * exp(-N_H sigma_ph(E)) * exp(-N_H 1.21 sigma_KN(E))."""

    name = "transmitted"

    def __init__(self, abund: str = "angr", compton: bool = True):
        self.abund = abund
        self.compton = compton
        self._cache = None

    def _sigma(self, energy: torch.Tensor) -> torch.Tensor:
        if self._cache is None or self._cache[0].shape != energy.shape or not torch.equal(self._cache[0], energy):
            sig = sigma_photo(energy, abund=self.abund).to(energy.device)
            if self.compton:
                sig = sig + sigma_compton(energy).to(energy.device)
            self._cache = (energy.clone(), sig)
        return self._cache[1]

    def spectrum(self, energy, primary, params, log_nh):
        sig = self._sigma(energy)  # [nE], cm^2 per H
        nh = 10.0 ** log_nh  # [M]
        trans = torch.exp(-nh[:, None] * sig[None, :])  # [M, nE]
        return primary[:, None, :] * trans[None]

    def describe(self):
        return {**super().describe(), "abund": self.abund, "compton": self.compton}


class Scattered(Component):
    """Scattered light: f_scatt * primary, not absorbed (A19 section 5.2)."""

    name = "scattered"

    def spectrum(self, energy, primary, params, log_nh):
        out = params["fscatt"][:, None] * primary  # [D, nE]
        return out[:, None, :].expand(-1, log_nh.numel(), -1)


SPECTRAL_MODELS = ("a19", "a19-incident-cutoff", "a19-full-absorber", "transmitted")


def make_components(model: str = "a19", torus_table=None) -> list[Component]:
    """The components of a named spectral model.

    ``torus_table``: path of an XSPEC torus atable (or an
    :class:`~popsynth.spectra.xspec_table.ExternalTorus`) that replaces the built-in torus
    (transmitted beam and reprocessing) in the a19 models; see
    :class:`~popsynth.spectra.reprocessed.ExternalTorusComponent`.

    - "a19" (default): A19 section 5.2, f_scatt * cutoffpl + wabs * pexmon + bntorus * highecut:
      :class:`Scattered`, :class:`Transmitted` (the torus's line-of-sight beam), the slab
      :class:`~popsynth.spectra.reprocessed.Reflection` at 30 deg with wabs absorption, and the
      :class:`~popsynth.spectra.reprocessed.TorusReprocessed` scattered light and lines with
      A19's inclinations and highecut;
    - "a19-incident-cutoff": as a19, the torus reprocessing the cutoff power law itself;
    - "a19-full-absorber": as a19, the reflection also Compton-attenuated by the line-of-sight
      column (A19's wabs lets the reflection of Compton-thick sources pass above 10 keV);
    - "transmitted": transmitted + scattered only (no reflection, no torus reprocessing).
    """
    from .reprocessed import ExternalTorusComponent, Reflection, TorusReprocessed

    if torus_table is not None:
        if model == "transmitted":
            raise PopsynthError("an external torus table needs a model with a torus",
                                "use --spectral-model a19 (or drop --torus-table)")
        refl = Reflection(absorber="full" if model == "a19-full-absorber" else "wabs")
        return [Scattered(), refl, ExternalTorusComponent(torus_table)]
    if model == "a19":
        return [Scattered(), Transmitted(), Reflection(), TorusReprocessed()]
    if model == "a19-incident-cutoff":
        return [Scattered(), Transmitted(), Reflection(), TorusReprocessed(cutoff="incident")]
    if model == "a19-full-absorber":
        return [Scattered(), Transmitted(), Reflection(absorber="full"), TorusReprocessed()]
    if model == "transmitted":
        return [Scattered(), Transmitted()]
    raise PopsynthError(f"unknown spectral model '{model}'", f"use one of {', '.join(SPECTRAL_MODELS)}")


def default_components() -> list[Component]:
    """Components of the default (A19) spectrum: see :func:`make_components`."""
    return make_components("a19")


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


def _table_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build_spectral_table(spec: SpectralSet | int, lognh_edges, energy=None, n_draws: int = 64, seed: int = 0,
                         n_sub: int = 4, components: list[Component] | None = None, device=None,
                         cache: bool = True) -> SpectralTable:
    """Mean spectra per log N_H cell for a spectral set, cached on disk.

    For every cell the spectrum is averaged over ``n_draws`` stratified parameter draws and
    over ``n_sub`` Gauss-Legendre nodes in log N_H inside the cell (transmission changes by
    orders of magnitude across a 0.1-dex cell at low energies, so cell centres alone would bias
    the cell integral). Cached under ``popsynth.paths.cache_dir()/spectra/<key>.pt``, the key
    hashing everything the table depends on (set definition, grids, draws, seed, components,
    package version).
    Returns a :class:`SpectralTable` on ``device``.
    """
    spec = spec if isinstance(spec, SpectralSet) else get_spectral_set(spec)
    energy = default_energy_grid("cpu") if energy is None else as_tensor(energy, "cpu")
    edges = as_tensor(lognh_edges, "cpu")
    comps = components if components is not None else default_components()
    payload = {"spec": spec.describe(), "energy": [float(energy[0]), float(energy[-1]), energy.numel()],
               "energy_hash": hashlib.sha256(energy.numpy().tobytes()).hexdigest(),
               "lognh_edges": edges.tolist(), "n_draws": n_draws, "seed": seed, "n_sub": n_sub,
               "components": [c.describe() for c in comps], "version": __version__,
               "table_format": TABLE_FORMAT}
    key = _table_key(payload)
    path = None
    if cache:
        from ..paths import cache_dir

        path = cache_dir() / "spectra" / f"set{spec.number}-{key}.pt"
        if path.exists():
            try:
                d = torch.load(path, map_location="cpu", weights_only=False)
                if d.get("meta", {}).get("key") == key:
                    return SpectralTable(**d).to(device)
            except Exception:  # a damaged cache file is rebuilt, never trusted
                pass
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
    meta = {**payload, "key": key, "spec_set": spec.number}
    table = SpectralTable(energy, edges, 0.5 * (edges[1:] + edges[:-1]), mean, comp_tab, per_draw,
                          {k: v.clone() for k, v in params.items()}, meta)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"energy": table.energy, "lognh_edges": table.lognh_edges, "lognh": table.lognh,
                    "mean": table.mean, "components": table.components, "per_draw": table.per_draw,
                    "params": table.params,
                    "meta": table.meta}, tmp)
        os.replace(tmp, path)
    return table.to(device)

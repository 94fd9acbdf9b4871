"""The spectral component base class and the analytic components.

A component maps the primary continuum of each draw to an emitted spectrum at a set of
line-of-sight columns. All components are linear in the primary, so any primary can be
reprocessed by the same code (and, for Monte Carlo components, by a matrix product).

  - :class:`Component`: the base class (``spectrum``, ``describe``, ``load_tables``);
  - :class:`Transmitted`: the primary seen through the line-of-sight column: photoelectric
    absorption with real cross sections (xraydb elemental cross sections, Anders & Grevesse
    1989 abundances) times Compton (Klein-Nishina) attenuation, exp(-N_H [sigma_ph + 1.21 sigma_KN]).
    This is the transmitted beam of the torus; the photons scattered out of it are returned
    by the torus reprocessing;
  - :class:`Scattered`: f_scatt times the primary, unabsorbed (A19: f_scatt = 0.01).

The reprocessed components are in :mod:`popsynth.spectra.reprocessed`, the external XSPEC torus
in :mod:`popsynth.spectra.external_torus`; :mod:`popsynth.spectra.registry` assembles the named
models. Units: spectra are photons s^-1 keV^-1 per (erg/s of intrinsic 2-10 keV luminosity of
the primary), on a rest-frame energy grid in keV.
"""

from __future__ import annotations

import torch

from ..physics.crosssections import sigma_compton, sigma_photo


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

    def load_tables(self) -> None:
        """Read the input tables this component was given by name (a
        :class:`~popsynth.mc.shipped.ShippedTable`, say) and hold them from now on; nothing to do
        for analytic components. The spectral-table builder calls it when a table must be
        computed (:func:`popsynth.spectra.registry.load_tables`), not for a cache key or hit."""


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

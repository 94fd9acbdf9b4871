"""The primary continuum: a cutoff power law normalised to intrinsic L(2-10 keV) = 1 erg/s.

N(E) = K E^-Gamma exp(-E / E_cut), photons s^-1 keV^-1, with K chosen so that
integral_2^10 E N(E) dE = 1 erg/s. Energies in keV; 1 keV = 1.602176634e-9 erg.
"""

from __future__ import annotations

import numpy as np
import torch

from .._tensor import DTYPE, as_tensor
from ..constants import KEV_ERG  # erg per keV (exact, SI 2019); importers use it from here too

__all__ = ["KEV_ERG", "band_energy_flux", "cutoff_powerlaw", "primary_spectrum"]
_GL_X, _GL_W = np.polynomial.legendre.leggauss(64)


def cutoff_powerlaw(energy_keV, gamma, ecut_keV) -> torch.Tensor:
    """Unnormalised photon spectrum E^-Gamma exp(-E/E_cut) (photons keV^-1, K = 1).

    Args: energy_keV [nE]; gamma and ecut_keV tensors of a common shape [...].
    Returns [..., nE].
    """
    e = as_tensor(energy_keV)
    g = as_tensor(gamma, e.device)[..., None]
    ec = as_tensor(ecut_keV, e.device)[..., None]
    return torch.exp(-g * torch.log(e) - e / ec)


def band_energy_flux(gamma, ecut_keV, e_lo: float = 2.0, e_hi: float = 10.0) -> torch.Tensor:
    """integral_{e_lo}^{e_hi} E * E^-Gamma exp(-E/E_cut) dE in erg (for K = 1), shape of ``gamma``.

    64-point Gauss-Legendre quadrature in ln E: exact to ~1e-15 for these smooth integrands.
    """
    g = as_tensor(gamma)
    ec = as_tensor(ecut_keV, g.device)
    a, b = np.log(e_lo), np.log(e_hi)
    lne = torch.as_tensor(0.5 * (b - a) * _GL_X + 0.5 * (b + a), dtype=DTYPE, device=g.device)
    w = torch.as_tensor(0.5 * (b - a) * _GL_W, dtype=DTYPE, device=g.device)
    e = torch.exp(lne)
    # E * N(E) * dE = E^2 N(E) dlnE
    integrand = torch.exp((2.0 - g[..., None]) * lne - e / ec[..., None])
    return (integrand * w).sum(-1) * KEV_ERG


def primary_spectrum(energy_keV, gamma, ecut_keV) -> torch.Tensor:
    """Cutoff power law normalised to intrinsic L(2-10 keV) = 1 erg/s.

    Returns photons s^-1 keV^-1 per (erg/s of intrinsic 2-10 keV luminosity), shape [..., nE]
    for ``gamma``/``ecut_keV`` of shape [...].
    """
    norm = band_energy_flux(gamma, ecut_keV)
    return cutoff_powerlaw(energy_keV, gamma, ecut_keV) / norm[..., None]

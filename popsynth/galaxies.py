"""Non-AGN (galaxy, X-ray binary) contribution to the CXB.

A19 section 6: the Aird et al. 2015 galaxy XLF with a Gamma = 1.9 +/- 0.2 power law gives
"a constant (with respect to energy) contribution of ~1.7 keV^2 cm^-2 s^-1 keV^-1 sr^-1 to the
CXB at E < 100 keV"; A19 then apply an exponential cutoff drawn uniformly in 20-30 keV. The
A15 galaxy XLF parameters are not at hand, so :func:`galaxy_cxb_a19` carries that result
directly: the mean over Gamma ~ N(1.9, 0.2) and E_c ~ U(20, 30) keV of

    I_gal(E) = norm * (E / 1 keV)^(2 - Gamma) * exp(-E / E_c)

with norm = 1.7 keV^2 cm^-2 s^-1 keV^-1 sr^-1 (so the power law alone is 1.7 at 1 keV and within
+/-25 % of it over 0.3-10 keV). The averages are done with fixed quadrature (no sampling noise).
"""

from __future__ import annotations

import numpy as np
import torch

from ._tensor import DTYPE, as_tensor

A19_GALAXY_NORM = 1.7  # keV^2 cm^-2 s^-1 keV^-1 sr^-1 at 1 keV (A19 section 6)


def galaxy_cxb_a19(energy_keV, norm: float = A19_GALAXY_NORM, gamma_mean: float = 1.9, gamma_sigma: float = 0.2,
                   ecut_range=(20.0, 30.0)) -> torch.Tensor:
    """A19 galaxy CXB in E^2 dN/dE units (keV^2 cm^-2 s^-1 keV^-1 sr^-1), shape of ``energy_keV``.

    Averages over Gamma (Gauss-Hermite, 24 nodes) and E_c (Gauss-Legendre, 16 nodes).
    """
    e = as_tensor(energy_keV)
    xh, wh = np.polynomial.hermite_e.hermegauss(24)
    wh = wh / wh.sum()
    xl, wl = np.polynomial.legendre.leggauss(16)
    ec = 0.5 * (ecut_range[1] - ecut_range[0]) * xl + 0.5 * (ecut_range[1] + ecut_range[0])
    wl = wl / wl.sum()
    g = torch.as_tensor(gamma_mean + gamma_sigma * xh, dtype=DTYPE, device=e.device)
    ect = torch.as_tensor(ec, dtype=DTYPE, device=e.device)
    le = torch.log(e)[..., None, None]
    vals = torch.exp((2.0 - g[:, None]) * le - e[..., None, None] / ect[None, :])
    w = torch.as_tensor(wh[:, None] * wl[None, :], dtype=DTYPE, device=e.device)
    return norm * (vals * w).sum((-1, -2))


GALAXY_MODELS = {"a19": galaxy_cxb_a19, "none": lambda e: torch.zeros_like(as_tensor(e))}

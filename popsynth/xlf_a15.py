"""Aird et al. 2015 (A15) starting XLF: the hard-band LADE fit and its phi0 cube.

A15 = Aird, Coil, Georgakakis, Nandra, Barro & Perez-Gonzalez 2015, MNRAS 451, 1892
(arXiv:1503.01120), "The evolution of the X-ray luminosity functions of unabsorbed and
absorbed AGNs out to z ~ 5". A19 (Ananna et al. 2019, ApJ 871, 240) compares its CXB fit with
the A15 XLF in Table 5 ("Aird et al. 2015" column); this module supplies that starting point.

What is implemented (see ``docs/xlf_a15.md`` for provenance and what was / was not verified):

- :func:`lade_a15` -- the A15 "luminosity and density evolution" (LADE) double power law,
  dPhi/dlog L in Mpc^-3 dex^-1 (h = 0.7), of the hard (2-7 keV detected) sample:

      Phi(L, z) = K(z) / [(L/L*)^g1 + (L/L*)^g2]
      log10 K(z) = log10 K0 + d (1 + z)
      L*(z) = L0 / [((1+zc)/(1+z))^p1 + ((1+zc)/(1+z))^p2]

- :func:`build_phi0_a15` -- phi0[z, log L, log N_H] = Phi_A15(z, L) f(L, z; N_H) on a
  :class:`~popsynth.grid.Grid`, with the same contract as :func:`popsynth.xlf.build_phi0`.

Absorption choice. A15 do not publish an N_H function per source: their absorbed/unabsorbed split
(20-22 vs 22-24) comes from a joint fit of separate unabsorbed and absorbed XLFs (their flexible
double power laws) to the soft- and hard-band samples, and the full N_H distribution follows only
statistically from that fit (A19 sec. 3.3). Those absorbed/unabsorbed FDPL parameters are not
available to us in a verified form (the one transcription in ``xlf_parameters.json``,
``aird2015_fdpl_soft``, is single-source, low confidence, band unverified), so A15's own N_H
function cannot be reconstructed reliably. We therefore use the A15 total hard-band LADE as the XLF
of Compton-thin AGN (log N_H < 24, as the U14 LDDE in :mod:`popsynth.xlf`) and distribute it over
N_H with the U14 or A19 (U14+R15) absorption function of :mod:`popsynth.xlf`. The N_H split and the
Compton-thick share are therefore NOT A15's: only the total Compton-thin XLF is.

Luminosity band. A15's XLFs are written in rest-frame 2-10 keV luminosity (2-7 keV is the observed
detection band). :func:`log_l_2_7_to_2_10` gives the Gamma = 1.9 power-law conversion

    L(2-10) / L(2-7) = (10^(2-G) - 2^(2-G)) / (7^(2-G) - 2^(2-G)) = 1.3084  (+0.1167 dex) for G = 1.9,

for the case where a 2-7 keV rest-frame luminosity is in hand; set ``A15Params.lum_band = "2-7"``
to read the LADE as a 2-7 keV XLF (the log L axis is then shifted by -0.1167 dex before evaluation;
a pure shift leaves the per-dex density unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ._tensor import as_tensor
from .errors import PopsynthError
from .grid import Grid
from .xlf import build_phi0

#: Photon index A15 use for their K-corrections / luminosities (A19 sec. 3.3 and Table 1: Gamma = 1.9).
GAMMA_A15 = 1.9


def band_ratio_power_law(e_lo_a: float, e_hi_a: float, e_lo_b: float, e_hi_b: float,
                         gamma: float = GAMMA_A15) -> float:
    """Energy-flux ratio L(a) / L(b) of a power law N(E) ~ E^-gamma between bands a and b (keV).

    L(E1, E2) ~ int E^(1-gamma) dE = (E2^(2-gamma) - E1^(2-gamma)) / (2-gamma)  (gamma != 2),
    ln(E2/E1) for gamma = 2. Dimensionless.
    """
    if abs(gamma - 2.0) < 1e-12:
        return math.log(e_hi_a / e_lo_a) / math.log(e_hi_b / e_lo_b)
    s = 2.0 - gamma
    return (e_hi_a ** s - e_lo_a ** s) / (e_hi_b ** s - e_lo_b ** s)


def log_l_2_7_to_2_10(log_l_2_7, gamma: float = GAMMA_A15):
    """log10 L(2-10 keV) from log10 L(2-7 keV) (erg/s) for a power law of photon index ``gamma``.

    Gamma = 1.9: + log10(1.3084) = +0.1167 dex.
    """
    return log_l_2_7 + math.log10(band_ratio_power_law(2.0, 10.0, 2.0, 7.0, gamma))


@dataclass(frozen=True)
class A15Param:
    """One number with its provenance."""

    value: float
    source: str
    verified: str


_SRC = ("Comparat et al. 2019 (MNRAS 487, 2005) eqs. 2-3 transcription of A15 LADE (hard), "
        "as coded in JohanComparat/hod_mod agn/ham.py::_aird15_lade_np and st_mod AGN_setup.py; "
        "shared/data/models/xlf_parameters.json['aird2015_lade']['hard_2-7keV_sample']")
_UNVER = ("not checked against the A15 table (only the A15 abstract was readable here); "
          "consistent across the Comparat copies (json confidence: medium-high)")


@dataclass(frozen=True)
class A15Params:
    """A15 LADE parameters, hard (2-7 keV detected) sample; h = 0.7, L in rest 2-10 keV (erg/s).

    K0 in Mpc^-3 dex^-1 (log10), L0 in erg/s (log10), z_c, p1, p2, gamma1, gamma2, d unitless.
    ``provenance`` holds the citation and verification status of every number.
    """

    logK0: float = -4.03
    d: float = -0.19
    logL0: float = 44.84
    zc: float = 2.0
    p1: float = 3.87
    p2: float = -2.12
    gamma1: float = 0.48
    gamma2: float = 2.27
    lum_band: str = "2-10"  # band of the LADE's L; "2-7" shifts the axis by log_l_2_7_to_2_10
    provenance: dict = field(default_factory=lambda: {
        k: A15Param(v, _SRC, _UNVER) for k, v in
        dict(logK0=-4.03, d=-0.19, logL0=44.84, zc=2.0, p1=3.87, p2=-2.12, gamma1=0.48, gamma2=2.27).items()
    }, compare=False, hash=False, repr=False)


#: A15 LADE, hard sample (see :class:`A15Params` for provenance).
AIRD15_LADE_HARD = A15Params()

#: A15 LADE, soft sample (same transcription; for comparison only -- a soft-selected XLF misses
#: absorbed AGN and is not a total XLF).
AIRD15_LADE_SOFT = A15Params(logK0=-4.28, d=-0.22, logL0=44.93, zc=2.31, p1=3.39, p2=-3.58,
                             gamma1=0.44, gamma2=2.18)


def lstar_a15(z, p: A15Params = AIRD15_LADE_HARD) -> torch.Tensor:
    """A15 LADE break luminosity log10 L*(z) (erg/s): L0 / [((1+zc)/(1+z))^p1 + ((1+zc)/(1+z))^p2]."""
    z = as_tensor(z)
    r = torch.log10((1.0 + p.zc) / (1.0 + z))
    return p.logL0 - torch.log10(10.0 ** (p.p1 * r) + 10.0 ** (p.p2 * r))


def log_k_a15(z, p: A15Params = AIRD15_LADE_HARD) -> torch.Tensor:
    """A15 LADE normalisation log10 K(z) = log10 K0 + d (1 + z), K in Mpc^-3 dex^-1."""
    z = as_tensor(z)
    return p.logK0 + p.d * (1.0 + z)


def lade_a15(z, log_l, p: A15Params = AIRD15_LADE_HARD) -> torch.Tensor:
    """A15 LADE XLF dPhi/dlog L in Mpc^-3 dex^-1 (h = 0.7), float64.

    Args:
      z: redshift, tensor broadcastable with ``log_l``.
      log_l: log10 of the intrinsic rest-frame 2-10 keV luminosity (erg/s). With
        ``p.lum_band == "2-7"`` the LADE is read as a 2-7 keV XLF and evaluated at
        log L(2-7) = log_l - 0.1167 (Gamma = 1.9).
    Returns: float64 tensor of the broadcast shape.
    """
    z = as_tensor(z)
    log_l = as_tensor(log_l, device=z.device)
    if p.lum_band == "2-7":
        log_l = log_l - (log_l_2_7_to_2_10(0.0))
    elif p.lum_band != "2-10":
        raise PopsynthError(f"unknown A15 luminosity band '{p.lum_band}'", "use '2-10' or '2-7'")
    x = log_l - lstar_a15(z, p)
    return 10.0 ** log_k_a15(z, p) / (10.0 ** (p.gamma1 * x) + 10.0 ** (p.gamma2 * x))


def build_phi0_a15(grid: Grid, absorption: str = "a19", device=None, l_moment: int = 0,
                   params: A15Params = AIRD15_LADE_HARD, n_sub: int = 4) -> torch.Tensor:
    """A15 starting cube phi0[z, log L, log N_H] in Mpc^-3 dex^-2 (float64 [nz, nL, nN]).

    phi0 = Phi_A15_LADE(z, L) * f(L, z; N_H), with f the U14 ("u14") or A19 U14+R15 ("a19")
    absorption function of :mod:`popsynth.xlf` (per dex, integrating to 1 over 20-24, plus the
    Compton-thick 24-26 entries). Same contract as :func:`popsynth.xlf.build_phi0`: values along
    log L are cell averages (``n_sub``-point Gauss-Legendre in each cell), along log N_H the
    absorption function is constant per cell; ``l_moment`` = 1 returns the cell average of
    phi * (L / L_c) (L_c the cell-centre luminosity), the form the CXB uses.
    """
    return build_phi0(grid, absorption, n_sub=n_sub, l_moment=l_moment, device=device,
                      total=lambda z, log_l: lade_a15(z, log_l, params))

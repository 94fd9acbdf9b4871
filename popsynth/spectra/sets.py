"""Spectral sets 1-5 of A19 Table 4 as parameter distributions, and their sampling.

Each set gives, for unobscured (log N_H < 22) and obscured (log N_H >= 22) AGN, the
distribution of the photon index Gamma, the reflection factor R, the cutoff energy E_cut
(keV), the scattered fraction f_scatt and the torus half-opening angle theta_tor (uniform in
55-61 deg for every set, A19 section 5.2).

Readings of A19 that the table leaves open (documented choices):
- Set 1 E_cut: A19 draws from 161 individual Swift/BAT values (Ricci et al. 2017; median
  76 keV, most below 100 keV) that are not published as a list. Stand-in: a log-normal with
  median 76 keV and sigma_ln = 0.41, so 75 % of the mass lies below 100 keV; truncated to
  20-500 keV. Swap it with ``SpectralSet(..., ecut=...)``.
- Set 3: "Gamma and R for unobscured sources from Swift-BAT" (Table 4 note) and "a higher
  photon index (1.8) and reflection coefficient ... for absorbed objects, equal to those of
  unabsorbed objects" (Fig. 8 caption): obscured AGN use the unobscured distributions
  N(1.80, 0.24) and N(0.83, 0.14).
- Set 5: Gamma = N(1.96, 0.10) for all; R as set 2 (Table 4 note 5: "Spectrum 2 parameter
  distribution, with Gamma = 1.96 +/- 0.1").
- Normal distributions are truncated to physical ranges: Gamma in [1.0, 3.0], R in [0, 3],
  E_cut in [20, 1000] keV (N(128, 46) reaches 0 at -2.8 sigma).

Sampling is stratified (Latin hypercube on the unit cube, seeded), mapped through each
distribution's inverse CDF; obscured and unobscured draws share the same uniform variates,
so spectra change smoothly at the class boundary and the table is reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._tensor import DTYPE
from ..errors import PopsynthError


class Dist(NamedTuple):
    """A 1-D distribution: kind "normal" (mu, sigma), "lognormal" (median, sigma_ln), "uniform"
    (low a, high b) or "fixed" (value); normal and lognormal are truncated to [lo, hi]."""

    kind: str
    a: float
    b: float = 0.0
    lo: float = -math.inf
    hi: float = math.inf

    def icdf(self, u: torch.Tensor) -> torch.Tensor:
        """Inverse CDF of the truncated distribution at u in (0, 1)."""
        if self.kind == "fixed":
            return torch.full_like(u, self.a)
        if self.kind == "uniform":
            return self.a + (self.b - self.a) * u
        n = torch.distributions.Normal(torch.zeros((), dtype=DTYPE), torch.ones((), dtype=DTYPE))
        if self.kind == "normal":
            to_x = lambda s: self.a + self.b * s  # noqa: E731
            to_s = lambda x: (x - self.a) / self.b  # noqa: E731
        elif self.kind == "lognormal":
            to_x = lambda s: self.a * torch.exp(self.b * s)  # noqa: E731
            to_s = lambda x: math.log(x / self.a) / self.b if x > 0 else -math.inf  # noqa: E731
        else:
            raise PopsynthError(f"unknown distribution kind '{self.kind}'", "use normal, lognormal, uniform or fixed")
        s_lo, s_hi = to_s(self.lo), to_s(self.hi)
        c_lo = n.cdf(torch.tensor(s_lo, dtype=DTYPE)) if math.isfinite(s_lo) else torch.tensor(0.0, dtype=DTYPE)
        c_hi = n.cdf(torch.tensor(s_hi, dtype=DTYPE)) if math.isfinite(s_hi) else torch.tensor(1.0, dtype=DTYPE)
        c = c_lo + (c_hi - c_lo) * u.cpu()
        return to_x(n.icdf(c.clamp(1e-12, 1 - 1e-12))).to(u.device)

    def mean(self, n: int = 20001) -> float:
        """Mean of the truncated distribution (midpoint quadrature in u)."""
        u = (torch.arange(n, dtype=DTYPE) + 0.5) / n
        return float(self.icdf(u).mean())


GAMMA_RANGE = (1.0, 3.0)
R_RANGE = (0.0, 3.0)
ECUT_RANGE = (20.0, 1000.0)


def _g(mu, s):
    return Dist("normal", mu, s, *GAMMA_RANGE)


def _r(mu, s):
    return Dist("normal", mu, s, *R_RANGE)


def _e(mu, s):
    return Dist("normal", mu, s, *ECUT_RANGE)


ECUT_SET1_STANDIN = Dist("lognormal", 76.0, 0.41, 20.0, 500.0)
THETA_TOR_A19 = Dist("uniform", 55.0, 61.0)  # deg; A19 sec. 5.2 after Ricci et al. 2017 sec. 5.3.1
PARAM_NAMES = ("gamma", "refl", "ecut", "fscatt", "theta_tor")


@dataclass(frozen=True)
class SpectralSet:
    """Parameter distributions of one spectral set: per class (unobscured, obscured) a Dist per parameter."""

    number: int
    description: str
    gamma: tuple[Dist, Dist]
    refl: tuple[Dist, Dist]
    ecut: tuple[Dist, Dist]
    fscatt: tuple[Dist, Dist] = (Dist("fixed", 0.01), Dist("fixed", 0.01))
    theta_tor: tuple[Dist, Dist] = (THETA_TOR_A19, THETA_TOR_A19)

    def dists(self, obscured: bool) -> dict[str, Dist]:
        i = int(obscured)
        return {name: getattr(self, name)[i] for name in PARAM_NAMES}

    def describe(self) -> dict:
        """Plain-dict form (for cache keys, checkpoints and file headers)."""
        out = {"number": self.number, "description": self.description}
        for name in PARAM_NAMES:
            out[name] = [list(d) for d in getattr(self, name)]
        return out


_G_UNOBS, _G_OBS = _g(1.80, 0.24), _g(1.72, 0.31)
_R_UNOBS, _R_OBS = _r(0.83, 0.14), _r(0.37, 0.11)
_E200 = _e(200.0, 29.0)

SPECTRAL_SETS: dict[int, SpectralSet] = {
    1: SpectralSet(1, "Swift/BAT 70-month observed distributions (Ricci et al. 2017); E_cut log-normal stand-in, median 76 keV",
                   (_G_UNOBS, _G_OBS), (_R_UNOBS, _R_OBS), (ECUT_SET1_STANDIN, ECUT_SET1_STANDIN)),
    2: SpectralSet(2, "as set 1 with E_cut ~ N(200, 29) keV (Kaplan-Meier median of BAT)",
                   (_G_UNOBS, _G_OBS), (_R_UNOBS, _R_OBS), (_E200, _E200)),
    3: SpectralSet(3, "unobscured BAT Gamma and R for all AGN, E_cut ~ N(200, 29) keV",
                   (_G_UNOBS, _G_UNOBS), (_R_UNOBS, _R_UNOBS), (_E200, _E200)),
    4: SpectralSet(4, "as set 1 with E_cut ~ N(128, 46) keV (Malizia et al. 2014)",
                   (_G_UNOBS, _G_OBS), (_R_UNOBS, _R_OBS), (_e(128.0, 46.0), _e(128.0, 46.0))),
    5: SpectralSet(5, "Gamma ~ N(1.96, 0.10) for all (median BAT Gamma), R as set 2, E_cut ~ N(200, 29) keV",
                   (_g(1.96, 0.10), _g(1.96, 0.10)), (_R_UNOBS, _R_OBS), (_E200, _E200)),
}


def get_spectral_set(number) -> SpectralSet:
    """The spectral set with this number (1-5); PopsynthError otherwise."""
    try:
        n = int(number)
    except (TypeError, ValueError):
        n = None
    if n not in SPECTRAL_SETS:
        raise PopsynthError(f"unknown spectral set '{number}'", "choose `spec_set` 1, 2, 3, 4 or 5 (A19 Table 4)")
    return SPECTRAL_SETS[n]


def latin_hypercube(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """Stratified uniforms [n, d] in (0, 1): one draw in each of n strata per column, columns shuffled."""
    u = (torch.arange(n, dtype=DTYPE)[:, None] + torch.rand(n, d, dtype=DTYPE, generator=generator)) / n
    for j in range(d):
        u[:, j] = u[torch.randperm(n, generator=generator), j]
    return u


def draw_parameters(spec: SpectralSet, n_draws: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Spectral parameters for ``n_draws`` draws of both classes.

    Returns {name: float64 tensor [2, n_draws]} for name in gamma, refl, ecut (keV), fscatt,
    theta_tor (deg);
    row 0 unobscured (log N_H < 22), row 1 obscured.
    """
    if n_draws < 1:
        raise PopsynthError(f"need at least one spectral draw, got {n_draws}", "pass `n_draws` >= 1")
    gen = torch.Generator().manual_seed(int(seed))
    u = latin_hypercube(n_draws, len(PARAM_NAMES), gen)
    out = {}
    for j, name in enumerate(PARAM_NAMES):
        rows = [spec.dists(obscured)[name].icdf(u[:, j]) for obscured in (False, True)]
        out[name] = torch.stack(rows)
    return out

"""The physical population model: the XLF cube as a differentiable function of its parameters.

Instead of 15 block weights on a fixed cube (A19), the cube phi[z, log L, log N_H] is built from
the parameters of its ingredients, with autograd through everything:

    phi(z, L, N_H) = Phi_LDDE(z, L; U14 LDDE parameters) * f(L, z; N_H; A19 absorption parameters)
                     [* w_block(L, N_H), optional multiplicative block corrections]

- LDDE (Ueda et al. 2014, U14 eqs. 14-18): log A, log L*, gamma1, gamma2, p1*, beta1, p2, p3,
  zc1*, zc2*, log La1, log La2, alpha1, alpha2 (pivot log Lp = 44 fixed, as U14).
- Absorption function (A19 App. A eqs. A2-A4, U14 form updated with Ricci et al. 2015, R15):
  psi0 at low / high L (the pivot value of the 22-24 fraction on either side of log L = 43.58,
  i.e. its L dependence), a1 (its z dependence, (1+z)^a1, z capped at 2), epsilon (23-24 / 22-23
  ratio) at low / high L, the 20-21 share of the unabsorbed at low / high L, and the Compton-thick
  value per dex f_CT at low / high L. psi is clipped to [0.2, 0.84] (U14) and the split
  log L = 43.58 is fixed.
- Spectral-population hyperparameters (``group == "spectral"``): gamma (mean photon index), refl (mean
  R, one R with the obscured value tied) and ecut (E_cut location); default the spectral set's values
  and fixed; when free the kernels are interpolated over nodes (:mod:`popsynth.physical_spectra`).
- Block weights: 15 multiplicative corrections w_k (A19 section 5.1 blocks) as log10 w_k, off by
  default; with every physical parameter fixed at its default and the weights free the model is
  the block model of :mod:`popsynth.likelihood` exactly (tested).

Because the absorption function is constant in each dex of log N_H, the cube is held reduced:
phi_red[..., z, l, k] with k the 6 dex bins 20-21, ..., 25-26 (the grid's 0.1-dex cells nest in
them); :func:`expand_cube` gives the full [..., nz, nL, nN] cube. Along log L the values are cell
averages by ``n_sub``-point Gauss-Legendre quadrature, exactly as :func:`popsynth.xlf.build_phi0`
(the absorption function jumps at log L = 43.58 inside a cell), and the L-weighted cell averages
phi1 (``l_moment=1`` there) come from the same quadrature nodes.

Parameters, priors and bounds are in :data:`PARAMETERS` (with sources); :class:`PhysicalModel`
says which are free (loadable from TOML, ``examples/physical_model.toml``). Free parameters are
sampled in unbounded coordinates u with theta = lo + (hi - lo) sigmoid(u) (block weights:
w = softplus(u), as the block posterior).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ._tensor import DTYPE, as_tensor
from .errors import PopsynthError
from .grid import LOGL_BLOCK_EDGES, N_BLOCKS, Grid, block_names
from .xlf import UEDA14, A19AbsorptionParams

N_DEX = 6
"""Number of 1-dex log N_H bins of the reduced cube (20-21, ..., 25-26)."""

LOG_LP = UEDA14.logLp  # U14 pivot of p1(L), fixed
_A19 = A19AbsorptionParams()


class ParamSpec(NamedTuple):
    """One parameter: default value, Gaussian prior (mean = default unless overridden, sigma),
    bounds (lo, hi), unit and the source of the prior."""

    name: str
    default: float
    sigma: float
    lo: float
    hi: float
    unit: str
    source: str
    group: str
    prior_mean: float | None = None  # None: the prior is centred on ``default``


_U14 = "U14 Table 4 (1-sigma)"
_U14_FIXED = "fixed in U14; weak prior chosen here (not published)"
_A19A = "A19 App. A eqs. A2-A4 (1-sigma, from R15)"
_SG = ("A19 Table 4: mean Gamma 1.80 (sets 1-4, Ricci et al. 2017 BAT unobscured) and 1.96 (set 5, BAT median); "
       "prior centred between them, width chosen here")
_SR = ("A19 Table 4 (Ricci et al. 2017 BAT): R = 0.83 (unobscured), 0.37 (obscured, tied by this ratio); "
       "prior width chosen here (0.14 in Table 4 is the source-to-source scatter)")
_SE = ("A19 Table 4: E_cut 200 +/- 29 keV (Ricci et al. 2017 BAT Kaplan-Meier, sets 2, 3, 5) and 128 +/- 46 keV "
       "(Malizia et al. 2014, set 4); prior covers both")

#: Every physical parameter of the model, in a fixed order. Priors: Gaussian (mean = default,
#: sd = sigma) truncated to [lo, hi]. U14 errors are from ../shared/data/models/xlf_parameters.json
#: (log A: 7e-8 / 2.91e-6 / ln 10 = 0.0104 dex).
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec("log_A", math.log10(UEDA14.A), 7e-8 / UEDA14.A / math.log(10.0), -7.0, -4.0, "log10 Mpc^-3", _U14, "ldde"),
    ParamSpec("logLstar", UEDA14.logLstar, 0.06, 42.5, 45.5, "log10 erg/s", _U14, "ldde"),
    ParamSpec("gamma1", UEDA14.gamma1, 0.04, 0.0, 2.0, "", _U14, "ldde"),
    ParamSpec("gamma2", UEDA14.gamma2, 0.09, 1.5, 4.0, "", _U14, "ldde"),
    ParamSpec("p1_star", UEDA14.p1_star, 0.16, 2.0, 8.0, "", _U14, "ldde"),
    ParamSpec("beta1", UEDA14.beta1, 0.18, -1.0, 3.0, "", _U14, "ldde"),
    ParamSpec("p2", UEDA14.p2, 0.5, -4.0, 1.0, "", _U14_FIXED, "ldde"),
    ParamSpec("p3", UEDA14.p3, 1.0, -10.0, -2.0, "", _U14_FIXED, "ldde"),
    ParamSpec("zc1_star", UEDA14.zc1_star, 0.07, 1.0, 2.8, "", _U14, "ldde"),
    ParamSpec("zc2_star", UEDA14.zc2_star, 0.5, 2.0, 4.5, "", _U14_FIXED, "ldde"),
    ParamSpec("logLa1", UEDA14.logLa1, 0.07, 43.5, 45.5, "log10 erg/s", _U14, "ldde"),
    ParamSpec("logLa2", UEDA14.logLa2, 0.5, 42.5, 45.5, "log10 erg/s", _U14_FIXED, "ldde"),
    ParamSpec("alpha1", UEDA14.alpha1, 0.02, 0.0, 0.6, "", _U14, "ldde"),
    ParamSpec("alpha2", UEDA14.alpha2, 0.1, -0.5, 0.3, "", _U14_FIXED, "ldde"),
    ParamSpec("psi0_lo", _A19.psi0[0], 0.04, 0.3, 0.84, "", _A19A, "absorption"),
    ParamSpec("psi0_hi", _A19.psi0[1], 0.04, 0.2, 0.84, "", _A19A, "absorption"),
    ParamSpec("a1", _A19.a1, 0.05, 0.0, 1.2, "", _A19A, "absorption"),
    ParamSpec("epsilon_lo", _A19.epsilon[0], 0.17469, 0.3, 4.0, "", _A19A, "absorption"),
    ParamSpec("epsilon_hi", _A19.epsilon[1], 0.24079, 0.3, 4.0, "", _A19A, "absorption"),
    ParamSpec("frac2021_lo", _A19.frac_20_21[0], 0.06, 0.3, 1.0, "", _A19A, "absorption"),
    ParamSpec("frac2021_hi", _A19.frac_20_21[1], 0.05, 0.3, 1.0, "", _A19A, "absorption"),
    ParamSpec("f_ct_lo", _A19.f_ct[0], 0.15, 0.0, 2.5, "per dex, units of psi", _A19A, "absorption"),
    ParamSpec("f_ct_hi", _A19.f_ct[1], 0.08, 0.0, 2.5, "per dex, units of psi", _A19A, "absorption"),
    # spectral-population hyperparameters (popsynth.physical_spectra): default = spectral set 5's value
    # (another set's value when run with it); the bounds are the outer nodes of the emulator
    ParamSpec("gamma", 1.96, 0.12, 1.71, 2.21, "mean photon index (unobscured; obscured shifted with it)", _SG,
              "spectral", 1.88),
    ParamSpec("refl", 0.83, 0.30, 0.33, 1.33, "mean reflection R (unobscured; obscured scaled with it)", _SR,
              "spectral"),
    ParamSpec("ecut", 200.0, 60.0, 100.0, 400.0, "keV, E_cut location (both classes)", _SE, "spectral", 165.0),
)
PARAM_INDEX = {p.name: i for i, p in enumerate(PARAMETERS)}
PHYSICAL_NAMES = tuple(p.name for p in PARAMETERS)
SPECTRAL_PARAM_NAMES = tuple(p.name for p in PARAMETERS if p.group == "spectral")
BLOCK_PARAM_NAMES = tuple(f"log10_w[{n}]" for n in block_names())

#: The default free set: every parameter with a published 1-sigma error (U14 Table 4, A19 App. A).
DEFAULT_FREE = ("log_A", "logLstar", "gamma1", "gamma2", "p1_star", "beta1", "zc1_star", "logLa1", "alpha1",
                "psi0_lo", "psi0_hi", "a1", "epsilon_lo", "epsilon_hi", "f_ct_lo", "f_ct_hi")

_KNOWN_KEYS = {"free", "block_weights", "block_weight_prior_dex", "binned_xlf", "priors", "bounds", "values",
               "cxb_norm_sigma", "sys_floor", "counts", "use_ct", "spectral_nodes"}


def _finite(x, what: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(float(x)):
        raise PopsynthError(f"{what} must be a finite number, got {x!r}", "fix the model configuration")
    return float(x)


@dataclass
class PhysicalModel:
    """Which parameters are free, their priors and bounds; the likelihood's data options.

    Attributes:
      free: names of free physical parameters (from :data:`PHYSICAL_NAMES`); the others are fixed
        at ``values`` or their defaults.
      block_weights: also fit the 15 block weights as log10 w_k (prior N(0, block_weight_prior_dex)).
      block_weight_prior_dex: width of that prior in dex (> 0).
      binned_xlf: names of binned XLFs to add as log-normal likelihood terms ("ueda14", "miyaji15").
      priors: {name: (mean, sigma)} overriding :data:`PARAMETERS`' Gaussian priors.
      bounds: {name: (lo, hi)} overriding the bounds.
      values: {name: value} fixed values (or starting values of free parameters).
      cxb_norm_sigma, sys_floor: as the block posterior (:class:`popsynth.likelihood.CXBTerm`).
      counts, use_ct: constraint tables (None: the run's defaults, :data:`popsynth.constraints.DEFAULT_COUNTS`).
    """

    free: tuple = DEFAULT_FREE
    block_weights: bool = False
    block_weight_prior_dex: float = 1.0
    binned_xlf: tuple = ()
    priors: dict = field(default_factory=dict)
    bounds: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    cxb_norm_sigma: float = 0.1
    sys_floor: float = 0.0
    counts: tuple | None = None
    use_ct: bool = True
    spectral_nodes: int = 3

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every name and number; raises a one-line PopsynthError naming the bad entry."""
        if isinstance(self.free, str) or not all(isinstance(n, str) for n in self.free):
            raise PopsynthError(f"free must be a list of parameter names, got {self.free!r}",
                                f"choose from {', '.join(PHYSICAL_NAMES)}")
        self.free = tuple(self.free)
        for where in (self.free, self.priors, self.bounds, self.values):
            bad = [n for n in where if n not in PARAM_INDEX]
            if bad:
                raise PopsynthError(f"unknown parameter(s) {', '.join(map(str, bad))}",
                                    f"choose from {', '.join(PHYSICAL_NAMES)}")
        if len(set(self.free)) != len(self.free):
            raise PopsynthError("a free parameter is listed twice", "list each name once")
        if not isinstance(self.block_weights, bool):
            raise PopsynthError(f"block_weights must be true or false, got {self.block_weights!r}", "fix the configuration")
        if not self.free and not self.block_weights:
            raise PopsynthError("no free parameter", "free at least one parameter or set block_weights = true")
        if _finite(self.block_weight_prior_dex, "block_weight_prior_dex") <= 0:
            raise PopsynthError(f"block_weight_prior_dex must be > 0, got {self.block_weight_prior_dex}", "e.g. 1.0")
        s = _finite(self.cxb_norm_sigma, "cxb_norm_sigma")
        if not 0 <= s < 1:
            raise PopsynthError(f"cxb_norm_sigma must be a fraction in [0, 1), got {s}", "e.g. 0.1")
        if isinstance(self.spectral_nodes, bool) or not isinstance(self.spectral_nodes, int) or \
                self.spectral_nodes < 3 or self.spectral_nodes % 2 == 0:
            raise PopsynthError(f"`spectral_nodes` must be an odd integer >= 3, got {self.spectral_nodes!r}", "e.g. 3")
        s = _finite(self.sys_floor, "sys_floor")
        if not 0 <= s < 1:
            raise PopsynthError(f"sys_floor must be a fraction in [0, 1), got {s}", "e.g. 0")
        from .compare import BINNED_XLFS

        if isinstance(self.binned_xlf, str):
            self.binned_xlf = (self.binned_xlf,)
        bad = [n for n in self.binned_xlf if n not in BINNED_XLFS]
        if bad:
            raise PopsynthError(f"unknown binned XLF(s) {bad}", f"choose from {', '.join(BINNED_XLFS)}")
        self.binned_xlf = tuple(self.binned_xlf)
        if self.counts is not None:
            self.counts = tuple(self.counts)
        for n, pair in self.priors.items():
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise PopsynthError(f"prior of {n} must be [mean, sigma], got {pair!r}", "e.g. [43.97, 0.06]")
            _finite(pair[0], f"prior mean of {n}")
            if _finite(pair[1], f"prior sigma of {n}") <= 0:
                raise PopsynthError(f"prior sigma of {n} must be > 0, got {pair[1]}", "pass a positive width")
        for n, pair in self.bounds.items():
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise PopsynthError(f"bounds of {n} must be [lo, hi], got {pair!r}", "e.g. [43.0, 45.0]")
            if not _finite(pair[0], f"lower bound of {n}") < _finite(pair[1], f"upper bound of {n}"):
                raise PopsynthError(f"bounds of {n} must have lo < hi, got {pair!r}", "swap or widen them")
        for n, v in self.values.items():
            _finite(v, f"value of {n}")
        for n in PHYSICAL_NAMES:
            lo, hi = self.bound(n)
            v = self.value(n)
            if not lo < v < hi:
                raise PopsynthError(f"value {v:g} of {n} is outside its bounds ({lo:g}, {hi:g})",
                                    "move the value or widen the bounds")

    # ------------------------------------------------------------------ per-parameter settings
    def value(self, name: str) -> float:
        """Fixed value (or start) of a physical parameter."""
        return float(self.values.get(name, PARAMETERS[PARAM_INDEX[name]].default))

    def prior(self, name: str) -> tuple[float, float]:
        """(mean, sigma) of the Gaussian prior of a physical parameter."""
        spec = PARAMETERS[PARAM_INDEX[name]]
        m, s = self.priors.get(name, (spec.default if spec.prior_mean is None else spec.prior_mean, spec.sigma))
        return float(m), float(s)

    def bound(self, name: str) -> tuple[float, float]:
        spec = PARAMETERS[PARAM_INDEX[name]]
        lo, hi = self.bounds.get(name, (spec.lo, spec.hi))
        return float(lo), float(hi)

    @property
    def free_spectral(self) -> tuple:
        """The free spectral hyperparameters (in the order of ``free``)."""
        return tuple(n for n in self.free if n in SPECTRAL_PARAM_NAMES)

    @property
    def free_names(self) -> tuple:
        """Names of all free parameters in sampling order: physical ones, then the block weights."""
        return tuple(self.free) + (BLOCK_PARAM_NAMES if self.block_weights else ())

    def describe(self) -> dict:
        out = {"free": list(self.free), "block_weights": self.block_weights,
               "block_weight_prior_dex": self.block_weight_prior_dex, "binned_xlf": list(self.binned_xlf),
               "cxb_norm_sigma": self.cxb_norm_sigma, "sys_floor": self.sys_floor,
               "counts": None if self.counts is None else list(self.counts), "use_ct": self.use_ct,
               "spectral_nodes": self.spectral_nodes}
        out["parameters"] = {n: {"value": self.value(n), "prior_mean": self.prior(n)[0], "prior_sigma": self.prior(n)[1],
                                 "bounds": list(self.bound(n)), "free": n in self.free,
                                 "source": PARAMETERS[PARAM_INDEX[n]].source} for n in PHYSICAL_NAMES}
        return out

    @classmethod
    def from_toml(cls, path) -> "PhysicalModel":
        """Load a configuration from a TOML file (see ``examples/physical_model.toml``).

        Keys: free (list), block_weights (bool), block_weight_prior_dex, binned_xlf (list),
        cxb_norm_sigma, sys_floor, counts (list), use_ct, and the tables [priors] (name = [mean, sigma]),
        [bounds] (name = [lo, hi]), [values] (name = value). Unknown keys are refused.
        """
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        p = Path(path)
        if not p.is_file():
            raise PopsynthError(f"model configuration {p} not found", "pass the path of a TOML file")
        try:
            d = tomllib.loads(p.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PopsynthError(f"model configuration {p} is not valid TOML ({str(exc).splitlines()[0]})",
                                "fix the file (see examples/physical_model.toml)") from None
        d = d.get("model", d)
        unknown = sorted(set(d) - _KNOWN_KEYS)
        if unknown:
            raise PopsynthError(f"model configuration {p}: unknown key(s) {', '.join(unknown)}",
                                f"use only {', '.join(sorted(_KNOWN_KEYS))}")
        for k in ("priors", "bounds", "values"):
            if k in d and not isinstance(d[k], dict):
                raise PopsynthError(f"model configuration {p}: [{k}] must be a table", "see examples/physical_model.toml")
        kw = dict(d)
        for k in ("free", "binned_xlf", "counts"):
            if k in kw:
                if not isinstance(kw[k], list):
                    raise PopsynthError(f"model configuration {p}: {k} must be a list", "e.g. free = [\"logLstar\"]")
                kw[k] = tuple(kw[k])
        try:
            return cls(**kw)
        except PopsynthError as err:
            raise PopsynthError(f"model configuration {p}: {err.what}", err.fix) from None


# ---------------------------------------------------------------------------- the parameter vector
class ParameterMap:
    """Maps the free vector u [B, P] (unbounded) to the full parameter set and back.

    theta_i = lo_i + (hi_i - lo_i) sigmoid(u_i) for the free physical parameters. Block weights:
    w = softplus(u) = ln(1 + e^u), theta = log10 w (the block posterior's coordinates,
    :mod:`popsynth.posterior`: w ~ u where the data constrain a weight and the likelihood is close
    to Gaussian in w, w ~ e^u where only the log-normal prior acts). ``full(u)`` returns {name: [B]}
    of every physical parameter plus ``log10_w`` [B, 15] (absent when the block weights are fixed).
    """

    def __init__(self, model: PhysicalModel, device=None):
        self.model = model
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.free = tuple(model.free)
        self.n_phys = len(self.free)
        self.n_free = self.n_phys + (N_BLOCKS if model.block_weights else 0)
        t = lambda v: torch.as_tensor(v, dtype=DTYPE, device=self.device)  # noqa: E731
        self.lo = t([model.bound(n)[0] for n in self.free])
        self.hi = t([model.bound(n)[1] for n in self.free])
        self.mean = t([model.prior(n)[0] for n in self.free])
        self.sigma = t([model.prior(n)[1] for n in self.free])
        self.fixed = {n: model.value(n) for n in PHYSICAL_NAMES if n not in self.free}

    @property
    def names(self) -> tuple:
        return self.model.free_names

    def theta(self, u: torch.Tensor) -> torch.Tensor:
        """Free parameters in their own units [B, P] (physical ones bounded, then log10 w)."""
        phys = self.lo + (self.hi - self.lo) * torch.sigmoid(u[..., :self.n_phys])
        lw = torch.log10(torch.nn.functional.softplus(u[..., self.n_phys:]))
        return torch.cat([phys, lw], -1)

    def u_of(self, theta: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`theta`; theta [B, P] strictly inside the bounds."""
        x = (theta[..., :self.n_phys] - self.lo) / (self.hi - self.lo)
        if bool(((x <= 0) | (x >= 1)).any()):
            raise PopsynthError("a parameter value lies on or outside its bounds", "start inside the bounds")
        w = 10.0 ** theta[..., self.n_phys:]
        v = torch.where(w > 20.0, w, w + torch.log(-torch.expm1(-w.clamp_max(20.0))))  # torch's softplus is u above 20
        return torch.cat([torch.log(x) - torch.log1p(-x), v], -1)

    def dtheta_du(self, u: torch.Tensor) -> torch.Tensor:
        """d theta_i / d u_i [B, P] (the map is elementwise)."""
        s = torch.sigmoid(u[..., :self.n_phys])
        v = u[..., self.n_phys:]
        dw = torch.where(v > 20.0, 1.0, torch.sigmoid(v)) / (torch.nn.functional.softplus(v) * math.log(10.0))
        return torch.cat([(self.hi - self.lo) * s * (1 - s), dw], -1)

    def log_jacobian(self, u: torch.Tensor) -> torch.Tensor:
        """ln |d theta / d u| [B]."""
        up = u[..., :self.n_phys]
        v = u[..., self.n_phys:]
        phys = (torch.log(self.hi - self.lo) + torch.nn.functional.logsigmoid(up)
                + torch.nn.functional.logsigmoid(-up)).sum(-1)
        dlog = torch.where(v > 20.0, 0.0, torch.nn.functional.logsigmoid(v))  # torch's softplus: slope 1 above 20
        blocks = (dlog - torch.log(torch.nn.functional.softplus(v))).sum(-1) \
            - v.shape[-1] * math.log(math.log(10.0))
        return phys + blocks

    def prior_residuals(self, theta: torch.Tensor) -> torch.Tensor:
        """(theta - mean) / sigma [B, P]: squares sum to -2 ln prior + const (Gaussian, inside the bounds)."""
        r = [(theta[..., :self.n_phys] - self.mean) / self.sigma]
        if self.model.block_weights:
            r.append(theta[..., self.n_phys:] / self.model.block_weight_prior_dex)
        return torch.cat(r, -1)

    def default_theta(self, batch: int = 1) -> torch.Tensor:
        """The configured values (defaults) of the free parameters [batch, P] (block weights 1)."""
        v = [self.model.value(n) for n in self.free] + [0.0] * (self.n_free - self.n_phys)
        return torch.as_tensor(v, dtype=DTYPE, device=self.device).expand(batch, -1).clone()

    def full(self, theta: torch.Tensor) -> dict:
        """{physical name: [B]} for every parameter, and "log10_w": [B, 15] when the block weights
        are free (absent when they are fixed at 1: the cube is then not multiplied by them)."""
        b = theta.shape[0]
        out = {n: torch.full((b,), v, dtype=DTYPE, device=theta.device) for n, v in self.fixed.items()}
        for i, n in enumerate(self.free):
            out[n] = theta[:, i]
        if self.model.block_weights:
            out["log10_w"] = theta[:, self.n_phys:]
        return out


# ---------------------------------------------------------------------------- the differentiable XLF
def ldde(z: torch.Tensor, log_l: torch.Tensor, p: dict) -> torch.Tensor:
    """U14 LDDE dPhi/dlog L in Mpc^-3 dex^-1 with tensor parameters (autograd through all of them).

    Args:
      z: redshift, broadcastable with ``log_l``; log_l: log10 intrinsic 2-10 keV L (erg/s).
      p: {name: tensor} of the 14 LDDE parameters (see :data:`PARAMETERS`), each broadcastable
        with z and log_l (e.g. [B, 1, 1, 1] against z [nz, 1, 1] and log_l [nL, nq]).
    Returns the broadcast shape. Same formula as :func:`popsynth.xlf.ldde_ueda14` (tested equal).
    """
    x = log_l - p["logLstar"]
    phi_local = 10.0 ** p["log_A"] / (10.0 ** (p["gamma1"] * x) + 10.0 ** (p["gamma2"] * x))
    p1 = p["p1_star"] + p["beta1"] * (log_l - LOG_LP)
    zc1 = p["zc1_star"] * 10.0 ** (p["alpha1"] * torch.clamp(log_l - p["logLa1"], max=0.0))
    zc2 = p["zc2_star"] * 10.0 ** (p["alpha2"] * torch.clamp(log_l - p["logLa2"], max=0.0))
    lz = torch.log1p(z)
    l1 = torch.log1p(zc1)
    l2 = torch.log1p(zc2)
    le1 = p1 * lz
    le2 = p1 * l1 + p["p2"] * (lz - l1)
    le3 = p1 * l1 + p["p2"] * (l2 - l1) + p["p3"] * (lz - l2)
    le = torch.where(z <= zc1, le1, torch.where(z <= zc2, le2, le3))
    return phi_local * torch.exp(le)


def absorption_bins(z: torch.Tensor, log_l: torch.Tensor, p: dict) -> torch.Tensor:
    """A19 absorption function per dex in the 6 dex bins of log N_H (20-21, ..., 25-26).

    f = a (1 - psi), (1 - a)(1 - psi), psi / (1 + eps), eps psi / (1 + eps), f_CT psi, f_CT psi with
    psi = clip(psi0 (1 + min(z, 2))^a1, 0.2, 0.84) and (psi0, a, eps, f_CT) the low-L (log L < 43.58)
    or high-L values. Args as :func:`ldde` with absorption parameters in ``p``. Returns the
    broadcast shape + [6] (dimensionless, per dex); bins 0-3 sum to 1.
    """
    hi = log_l >= _A19.log_l_split
    pick = lambda a, b: torch.where(hi, p[b], p[a])  # noqa: E731
    zc = torch.clamp(z, max=_A19.z_cap)
    psi = torch.clamp(pick("psi0_lo", "psi0_hi") * (1.0 + zc) ** p["a1"], _A19.psi_min, _A19.psi_max)
    a = pick("frac2021_lo", "frac2021_hi")
    eps = pick("epsilon_lo", "epsilon_hi")
    fct = pick("f_ct_lo", "f_ct_hi") * psi
    return torch.stack([a * (1 - psi), (1 - a) * (1 - psi), psi / (1 + eps), eps / (1 + eps) * psi, fct, fct], -1)


class XLFBuilder:
    """Builds the reduced cubes phi_red, phi1_red [B, nz, nL, 6] on a grid from parameters.

    ``n_sub``-point Gauss-Legendre nodes inside each log L cell (as :func:`popsynth.xlf.build_phi0`).
    phi_red: cell averages of phi (Mpc^-3 dex^-2); phi1_red: cell averages of phi * L / L_c (the
    CXB form, ``l_moment=1``). Block weights multiply both by w[block(l, k)].
    """

    def __init__(self, grid: Grid, n_sub: int = 4, device=None):
        self.grid = grid
        dev = torch.device("cpu") if device is None else torch.device(device)
        self.device = dev
        x, wq = np.polynomial.legendre.leggauss(n_sub)
        lo, hi = grid.logl_edges[:-1], grid.logl_edges[1:]
        sub = 0.5 * (hi - lo)[:, None] * x[None, :] + 0.5 * (hi + lo)[:, None]  # [nL, nq]
        self.z = as_tensor(grid.z, dev)[None, :, None, None]  # [1, nz, 1, 1]
        self.ll = as_tensor(sub, dev)[None, None]  # [1, 1, nL, nq]
        self.wq = as_tensor(wq / 2.0, dev)
        wq1 = self.wq * 10.0 ** (self.ll[0, 0] - as_tensor(grid.logl, dev)[:, None])  # [nL, nq]
        # The A19 absorption function depends on L only through the side of log L = 43.58, so the
        # quadrature splits into the two sides: side[l, q, s] = 1 if node (l, q) lies on side s.
        hi = (self.ll[0, 0] >= _A19.log_l_split).to(DTYPE)
        side = torch.stack([1.0 - hi, hi], -1)  # [nL, nq, 2]
        self.side_w = side * self.wq[None, :, None]
        self.side_w1 = side * wq1[..., None]
        self.side_logl = as_tensor([_A19.log_l_split - 1.0, _A19.log_l_split + 1.0], dev)  # one L on each side
        edges = np.linspace(20.0, 26.0, N_DEX + 1)
        dex = np.clip(np.searchsorted(edges, grid.lognh, side="right") - 1, 0, N_DEX - 1)
        if not np.all((grid.lognh_edges[:-1] >= edges[dex] - 1e-9) & (grid.lognh_edges[1:] <= edges[dex + 1] + 1e-9)):
            raise PopsynthError("the grid's log N_H cells do not nest in 1-dex bins 20-26", "use cell edges on the dex")
        self.dex_of_cell = torch.as_tensor(dex, dtype=torch.long, device=dev)  # [nN]
        # block of every (log L cell, dex bin): N_H class 0 (20-22), 1 (22-24), 2 (24-26)
        j = np.clip(np.searchsorted(np.asarray(LOGL_BLOCK_EDGES), grid.logl, side="right") - 1, 0,
                    len(LOGL_BLOCK_EDGES) - 2)
        cls = np.arange(N_DEX) // 2
        from .grid import block_index_of

        self.block_red = torch.as_tensor(block_index_of(cls[None, :], j[:, None]), dtype=torch.long, device=dev)  # [nL, 6]

    def __call__(self, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """params: {name: [B]} of every physical parameter and, when the block weights are free,
        "log10_w" [B, 15] (see :meth:`ParameterMap.full`). Returns (phi_red, phi1_red), each float64
        [B, nz, nL, 6]."""
        p = {k: v[:, None, None, None] for k, v in params.items() if k != "log10_w"}
        phi = ldde(self.z, self.ll, p)  # [B, nz, nL, nq]
        a = torch.einsum("bzlq,lqs->bzls", phi, self.side_w)
        a1 = torch.einsum("bzlq,lqs->bzls", phi, self.side_w1)
        p3 = {k: v[..., 0] for k, v in p.items()}  # [B, 1, 1]
        f = absorption_bins(self.z[..., 0], self.side_logl[None, None, :], p3)  # [B, nz, 2, 6]
        phi_red = torch.einsum("bzls,bzsk->bzlk", a, f)
        phi1_red = torch.einsum("bzls,bzsk->bzlk", a1, f)
        lw = params.get("log10_w")
        if lw is not None:
            w = (10.0 ** lw)[:, self.block_red]  # [B, nL, 6]
            phi_red = phi_red * w[:, None]
            phi1_red = phi1_red * w[:, None]
        return phi_red, phi1_red

    def expand(self, phi_red: torch.Tensor) -> torch.Tensor:
        """Full cube [..., nz, nL, nN] from the reduced one [..., nz, nL, 6] (Mpc^-3 dex^-2)."""
        return phi_red[..., self.dex_of_cell]

    def reduce_weights(self, w: torch.Tensor) -> torch.Tensor:
        """Block weights [B, 15] -> per (log L cell, dex bin) [B, nL, 6]."""
        return w[:, self.block_red]


def expand_cube(phi_red: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Full cube [..., nz, nL, nN] from a reduced cube [..., nz, nL, 6] on ``grid``."""
    return XLFBuilder(grid, device=phi_red.device).expand(phi_red)


def default_model() -> PhysicalModel:
    """The default configuration (:data:`DEFAULT_FREE` free, no block weights)."""
    return PhysicalModel()


def with_block_weights_only(model: PhysicalModel | None = None) -> PhysicalModel:
    """The A19 special case: every physical parameter fixed, the 15 block weights free."""
    return replace(model or PhysicalModel(), free=(), block_weights=True)

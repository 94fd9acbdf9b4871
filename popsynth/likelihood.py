"""One likelihood for the block weights: CXB spectra, number counts and observed CT fractions.

Every term is a function of the block weights w [B, 15] (B starts, samples or chains at once)
and returns its contribution to -2 ln L (up to a constant that does not depend on w), so that
terms add and the sum is the log-likelihood of the whole data set. Each term also gives
residuals r [B, n] with sum r^2 = its -2 ln L, so the same object drives the batched
Levenberg-Marquardt optimiser (posterior mode) and the sampler (:mod:`popsynth.posterior`).

Terms, per data set (what each one constrains is in ``docs/inference.md``):

* ``CXBTerm`` -- CXB intensity points of one instrument (Chandra COSMOS, RXTE, Swift/BAT):
  split-normal (asymmetric Gaussian) with the published error on the side of the model (upper
  error where the model is above the datum), and an optional fractional systematic floor f_i per
  instrument added in quadrature: sigma^2 = sigma_stat^2 + (f_i I_obs)^2. The points of one
  instrument are treated as independent (as published). The normalisation of a split normal does
  not depend on the model, so -2 ln L = chi^2 + const.
* ``PoissonTerm`` -- differential counts with known source numbers (Swift/BAT 105-month): the
  number of AGN in each flux bin is Poisson with mean mu_i = <dN/dS>_i (S_hi - S_lo) Omega;
  -2 ln L = the Poisson deviance 2 sum [mu - n + n ln(n / mu)] (Cash 1979 up to a constant).
  Bins are independent.
* ``CovarianceTerm`` -- cumulative counts N(>S) (Lehmer et al. 2012 CDF-S fits, XMM-COSMOS,
  Luo et al. 2017): cumulative points share sources, so they enter with their full covariance,
  C_ij = N_k^2 / n_eff,k (k the brighter of i, j: the Poisson variance of the sources above both
  fluxes) + the systematic term of the file's adopted error model, f^2 N_i N_j when it is common
  to all points (the Lehmer and Luo curves are evaluations of one smooth function; cosmic
  variance) or f^2 N_i^2 delta_ij when it is per point (digitisation of XMM-COSMOS). The diagonal
  equals the tabulated errors (checked on construction). -2 ln L = (m - d)^T C^-1 (m - d).
* ``CTFractionTerm`` -- an observed Compton-thick fraction: split normal with the published
  errors (they include the N_H uncertainties of the individual sources, so they are wider than
  binomial errors on n_CT / n_total).

The prior (``LogWeightPrior``) is a Gaussian on log10 w_k around 0 (the U14+R15 start) with width
``sigma_dex`` (default 1 dex), optionally with a smoothness term that ties adjacent luminosity
blocks of the same N_H class: (log10 w_k - log10 w_k+1)^2 / sigma_smooth^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._tensor import as_tensor
from .errors import PopsynthError

#: Error model of each cumulative counts table (see data/counts/README.md, column 'errors' of the
#: file header): fraction f_sys of the adopted systematic and whether it is common to all points.
CUMULATIVE_ERROR_MODELS = {
    "lehmer12_cdfs4ms_agn_cumulative_0p5_2keV": (0.10, True),
    "lehmer12_cdfs4ms_agn_cumulative_2_8keV": (0.10, True),
    "luo17_cdfs7ms_cumulative_2_7keV": (0.10, True),
    "cappelluti09_xmmcosmos_cumulative_2_10keV": (0.05, False),
}


def _side_sigma(pred: torch.Tensor, value: torch.Tensor, err_lo: torch.Tensor, err_hi: torch.Tensor) -> torch.Tensor:
    return torch.where(pred > value, err_hi, err_lo)


class Term:
    """One data set's contribution to -2 ln L. Subclasses set ``name``, ``kind``, ``n_points``."""

    name: str = ""
    kind: str = ""
    n_points: int = 0
    description: str = ""

    def residuals(self, w: torch.Tensor) -> torch.Tensor:  # [B, n]
        raise NotImplementedError

    def neg2_loglike(self, w: torch.Tensor) -> torch.Tensor:  # [B]
        return (self.residuals(w) ** 2).sum(-1)

    def predict(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_observed(self, w: torch.Tensor) -> torch.Tensor:
        """The model quantity compared with the data [B, n] (``predict`` unless a term adds nuisance factors)."""
        return self.predict(w)

    def chi2_of(self, pred: torch.Tensor) -> torch.Tensor:
        """Goodness of fit [B] of a given model prediction ``pred`` [B, n] of the data points (the
        quantity of :meth:`predict_observed`), e.g. the posterior median of each point."""
        raise NotImplementedError

    def chi2(self, w: torch.Tensor) -> torch.Tensor:
        """Goodness of fit of the data points [B] at weights w: -2 ln L without prior or
        normalisation terms (chi^2, or the Poisson deviance)."""
        return self.chi2_of(self.predict_observed(w))

    def to(self, device) -> "Term":
        for k, v in list(vars(self).items()):
            if isinstance(v, torch.Tensor):
                setattr(self, k, v.to(device))
        return self


class CXBTerm(Term):
    """CXB points of one instrument. response [15, n] (keV^2 cm^-2 s^-1 keV^-1 sr^-1 per unit weight),
    extra [n] (the galaxy term, same unit), obs, err_lo, err_hi [n]; sys_floor: fraction f of I_obs;
    norm_sigma: 1-sigma fractional uncertainty of the instrument's absolute normalisation (0: none).

    With ``norm_sigma`` = s > 0 the data are modelled as c m + noise with an unknown calibration
    factor c ~ N(1, s^2) common to all points of the instrument, and c is marginalised
    analytically. For Gaussian errors sigma_i (the split-normal side of c m_i) this is exact:

        -2 ln L = min_c [sum_i ((c m_i - d_i) / sigma_i)^2 + ((c - 1) / s)^2] + ln(1 + s^2 sum_i m_i^2 / sigma_i^2)

    (the marginal is a Gaussian with covariance diag(sigma^2) + s^2 m m^T; its quadratic form is
    the minimum over c, and its log-determinant the last term, up to a constant). The minimising
    c* = (sum m d / sigma^2 + 1/s^2) / (sum m^2 / sigma^2 + 1/s^2) is also the conditional
    posterior mean of c given w, whose conditional variance is 1 / (sum m^2 / sigma^2 + 1/s^2).
    """

    kind = "cxb"

    def __init__(self, name, response, extra, obs, err_lo, err_hi, sys_floor: float = 0.0, label: str = "",
                 norm_sigma: float = 0.0):
        if not (math.isfinite(sys_floor) and 0.0 <= sys_floor < 1.0):
            raise PopsynthError(f"systematic floor of '{name}' must be a fraction in [0, 1), got {sys_floor}",
                                "pass e.g. 0.03 for 3 %")
        if not (math.isfinite(norm_sigma) and 0.0 <= norm_sigma < 1.0):
            raise PopsynthError(f"normalisation uncertainty of '{name}' must be a fraction in [0, 1), got {norm_sigma}",
                                "pass e.g. 0.1 for 10 %, or 0 to fix the normalisation")
        self.name, self.label = name, label or name
        self.response, self.extra = response, extra
        self.obs, self.err_lo, self.err_hi = obs, err_lo, err_hi
        self.sys_floor = float(sys_floor)
        self.norm_sigma = float(norm_sigma)
        self.n_points = int(obs.numel())
        self.description = (f"{self.label}: {self.n_points} CXB points, split-normal errors"
                            + (f" + {100 * sys_floor:g} % systematic floor" if sys_floor else "")
                            + (f", absolute normalisation free with a {100 * norm_sigma:g} % Gaussian prior "
                               "(marginalised)" if norm_sigma else ""))

    def predict(self, w):
        return w @ self.response + self.extra

    def _sigma(self, pred):
        s = _side_sigma(pred, self.obs, self.err_lo, self.err_hi)
        if self.sys_floor:
            s = torch.sqrt(s ** 2 + (self.sys_floor * self.obs) ** 2)
        return s

    def normalisation(self, w) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditional posterior of the calibration factor given w: mean c* [B] and sd [B]
        (ones and zeros without a free normalisation). The error side is that of c* m (two passes)."""
        m = self.predict(w)
        if not self.norm_sigma:
            return torch.ones_like(m[:, 0]), torch.zeros_like(m[:, 0])
        inv_s2 = 1.0 / self.norm_sigma ** 2
        s = self._sigma(m)
        for _ in range(2):
            a = (m * m / s ** 2).sum(-1) + inv_s2
            c = ((m * self.obs / s ** 2).sum(-1) + inv_s2) / a
            s = self._sigma(c[:, None] * m)
        a = (m * m / s ** 2).sum(-1) + inv_s2
        c = ((m * self.obs / s ** 2).sum(-1) + inv_s2) / a
        return c, a.rsqrt()

    def predict_observed(self, w):
        """The model as compared with the data: c* m [B, n] (m without a free normalisation)."""
        return self.normalisation(w)[0][:, None] * self.predict(w)

    def chi2_of(self, pred):
        return (((pred - self.obs) / self._sigma(pred)) ** 2).sum(-1)

    def residuals(self, w):
        if not self.norm_sigma:
            pred = self.predict(w)
            return (pred - self.obs) / self._sigma(pred)
        m = self.predict(w)
        c, _ = self.normalisation(w)
        p = c[:, None] * m
        s = self._sigma(p)
        x = (self.norm_sigma ** 2) * (m * m / s ** 2).sum(-1, keepdim=True)
        return torch.cat([(p - self.obs) / s, (c[:, None] - 1.0) / self.norm_sigma, torch.sqrt(torch.log1p(x))], -1)


class PoissonTerm(Term):
    """Binned source numbers: response [15, n] expected sources per bin per unit weight, n_obs [n]."""

    kind = "poisson"

    def __init__(self, name, response, n_obs, label: str = ""):
        self.name, self.label = name, label or name
        self.response, self.n_obs = response, n_obs
        self.n_points = int(n_obs.numel())
        self.description = f"{self.label}: {self.n_points} flux bins, Poisson (deviance) on the source numbers"

    def predict(self, w):
        return w @ self.response

    def deviance(self, mu: torch.Tensor) -> torch.Tensor:
        n = self.n_obs
        mu = mu.clamp_min(1e-300)
        log_term = torch.where(n > 0, n * torch.log(n.clamp_min(1e-300) / mu), torch.zeros_like(mu))
        return 2.0 * (mu - n + log_term)

    def neg2_loglike(self, w):
        return self.deviance(self.predict(w)).sum(-1)

    def chi2_of(self, pred):
        return self.deviance(pred).sum(-1)

    def residuals(self, w):
        mu = self.predict(w)
        d = self.deviance(mu).clamp_min(0.0)
        return torch.sign(mu - self.n_obs) * torch.sqrt(d + 1e-300)


class CovarianceTerm(Term):
    """Correlated Gaussian points: response [15, n], value [n], covariance [n, n] (same unit squared)."""

    kind = "gaussian_cov"

    def __init__(self, name, response, value, covariance, label: str = "", note: str = ""):
        self.name, self.label = name, label or name
        self.response, self.value = response, value
        try:
            self.chol = torch.linalg.cholesky(covariance)
        except RuntimeError:
            raise PopsynthError(f"covariance of '{name}' is not positive definite",
                                "check the counts table's n_eff and errors") from None
        self.n_points = int(value.numel())
        self.description = f"{self.label}: {self.n_points} cumulative points, full covariance ({note})"

    def predict(self, w):
        return w @ self.response

    def residuals(self, w):
        return self._whitened(self.predict(w))

    def _whitened(self, pred):
        d = (pred - self.value).T  # [n, B]
        return torch.linalg.solve_triangular(self.chol, d, upper=False).T

    def chi2_of(self, pred):
        return (self._whitened(pred) ** 2).sum(-1)


class CTFractionTerm(Term):
    """Observed CT fraction: numerator / denominator responses [15] (sources per deg^2 per unit weight)."""

    kind = "ct_fraction"

    def __init__(self, name, num, den, value: float, err_lo: float, err_hi: float, label: str = ""):
        self.name, self.label = name, label or name
        self.num, self.den = num, den
        self.value, self.err_lo, self.err_hi = float(value), float(err_lo), float(err_hi)
        self.n_points = 1
        self.description = f"{self.label}: observed CT fraction {100 * value:.1f} % (+{100 * err_hi:.1f}/-{100 * err_lo:.1f}), split normal"

    def predict(self, w):
        return (w @ self.num) / (w @ self.den)

    def predict_observed(self, w):
        return self.predict(w)[:, None]

    def _residuals_of(self, p):
        return (p - self.value) / torch.where(p > self.value, torch.full_like(p, self.err_hi), torch.full_like(p, self.err_lo))

    def residuals(self, w):
        return self._residuals_of(self.predict_observed(w))

    def chi2_of(self, pred):
        return (self._residuals_of(pred.reshape(pred.shape[0], 1)) ** 2).sum(-1)


@dataclass
class LogWeightPrior:
    """Gaussian prior on log10 w around 0 (sigma_dex, <= 0: flat), plus an optional smoothness
    term between adjacent luminosity blocks of one N_H class (sigma_smooth_dex, <= 0: off).

    ``pairs`` lists the (k, k') block pairs of the smoothness term."""

    sigma_dex: float = 1.0
    sigma_smooth_dex: float = 0.0
    pairs: tuple = ()

    def residuals(self, w: torch.Tensor) -> torch.Tensor:
        lw = torch.log10(w)
        parts = []
        if self.sigma_dex > 0:
            parts.append(lw / self.sigma_dex)
        if self.sigma_smooth_dex > 0 and self.pairs:
            a = torch.tensor([p[0] for p in self.pairs], device=w.device)
            b = torch.tensor([p[1] for p in self.pairs], device=w.device)
            parts.append((lw[:, a] - lw[:, b]) / self.sigma_smooth_dex)
        return torch.cat(parts, -1) if parts else w[:, :0]

    def neg2_logprior(self, w: torch.Tensor) -> torch.Tensor:
        return (self.residuals(w) ** 2).sum(-1)

    def describe(self) -> str:
        s = (f"Gaussian on log10 w_k around 0 with sigma {self.sigma_dex:g} dex" if self.sigma_dex > 0
             else "flat in log w (improper)")
        if self.sigma_smooth_dex > 0:
            s += f"; adjacent luminosity blocks tied with sigma {self.sigma_smooth_dex:g} dex"
        return s


class Likelihood:
    """Sum of independent terms. ``neg2_loglike(w)`` [B]; ``residuals(w)`` [B, n_total] (squares sum
    to it); ``by_term(w)`` {name: [B]}. Groups: 'cxb' (CXB terms) and 'constraints' (the rest)."""

    def __init__(self, terms: list[Term]):
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise PopsynthError(f"duplicate likelihood terms {names}", "give each data set once")
        self.terms = list(terms)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def term(self, name: str) -> Term:
        for t in self.terms:
            if t.name == name:
                return t
        raise PopsynthError(f"no likelihood term '{name}'", f"choose from {self.names}")

    def group(self, name: str) -> list[Term]:
        return [t for t in self.terms if (t.kind == "cxb") == (name == "cxb")]

    def n_points(self, group: str | None = None) -> int:
        terms = self.terms if group is None else self.group(group)
        return sum(t.n_points for t in terms)

    def residuals(self, w: torch.Tensor) -> torch.Tensor:
        return torch.cat([t.residuals(w) for t in self.terms], dim=-1)

    def neg2_loglike(self, w: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
        for t in self.terms:
            out = out + t.neg2_loglike(w)
        return out

    def by_term(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return {t.name: t.neg2_loglike(w) for t in self.terms}

    def chi2_by_term(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """{name: chi^2 [B]} of each data set's points at w (no prior or normalisation terms)."""
        return {t.name: t.chi2(w) for t in self.terms}

    def chi2_of_median_prediction(self, w: torch.Tensor) -> dict[str, float]:
        """{name: chi^2} of the posterior-median model: the median over the samples w [N, 15] of
        each data point's prediction (:meth:`Term.predict_observed`), compared with the data."""
        out = {}
        for t in self.terms:
            med = torch.quantile(t.predict_observed(w), 0.5, dim=0)[None]
            out[t.name] = float(t.chi2_of(med)[0])
        return out

    def normalisations(self, w: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{CXB instrument with a free normalisation: (conditional mean [B], conditional sd [B])}."""
        return {t.name: t.normalisation(w) for t in self.terms if t.kind == "cxb" and t.norm_sigma}

    def to(self, device) -> "Likelihood":
        for t in self.terms:
            t.to(device)
        return self

    def describe(self) -> list[str]:
        return [t.description for t in self.terms]


# ----------------------------------------------------------------------------- builders
def cxb_terms(model, data, sys_floor: float | dict = 0.0, norm_sigma: float | dict = 0.0) -> list[CXBTerm]:
    """One :class:`CXBTerm` per instrument from a :class:`popsynth.cxb.CXBModel` at the data energies
    and a :class:`popsynth.fit.FitData`. sys_floor, norm_sigma: one fraction for all instruments, or
    {dataset name: fraction}."""
    out = []
    for i, (name, label) in enumerate(zip(data.names, data.labels)):
        sel = data.dataset == i
        f = sys_floor.get(name, 0.0) if isinstance(sys_floor, dict) else sys_floor
        s = norm_sigma.get(name, 0.0) if isinstance(norm_sigma, dict) else norm_sigma
        out.append(CXBTerm(name, model.response[:, sel], model.extra[sel], data.obs[sel], data.err_lo[sel],
                           data.err_hi[sel], f, label, norm_sigma=s))
    return out


_REGEN_COUNTS = "regenerate the tables with 'python data/counts/make_counts_tables.py'"


def _record_columns(data, cols) -> dict:
    """Columns ``cols`` of a loaded counts record (:class:`popsynth.data.counts.CountsData`), float64 [n]:
    ``flux_lo``/``flux_hi`` are its bin edges (erg cm^-2 s^-1), any other name one of ``data.columns``
    (as stored, e.g. ``n_sources``, ``n_eff``). Nothing is read from disk. Raises PopsynthError naming the
    file when the record lacks one."""
    edges = {"flux_lo": data.flux_lo, "flux_hi": data.flux_hi}
    extra = data.columns or {}
    out = {c: edges[c] if c in edges else extra.get(c) for c in cols}
    missing = [c for c, v in out.items() if v is None]
    if missing:
        raise PopsynthError(f"{data.path} lacks column(s) {missing} needed for its likelihood", _REGEN_COUNTS)
    return out


def _table_columns(path: str, cols) -> dict:
    """Columns ``cols`` of the counts ECSV file ``path`` as stored, float64 [n] (read with
    :func:`popsynth.io.ecsv.read_ecsv`). The likelihood uses the loaded record instead
    (:func:`_record_columns`); kept for importers that hold only a path."""
    from .io.ecsv import read_ecsv

    t = read_ecsv(path, label="counts file", fix=_REGEN_COUNTS)
    missing = [c for c in cols if c not in t]
    if missing:
        raise PopsynthError(f"{path} lacks column(s) {missing} needed for its likelihood", _REGEN_COUNTS)
    return {c: t.column(c) for c in cols}


def cumulative_covariance(value: np.ndarray, n_eff: np.ndarray, f_sys: float, common: bool) -> np.ndarray:
    """Covariance [n, n] of cumulative counts N(>S_i) (fluxes increasing with i).

    Poisson part: the sources above the brighter flux are shared, C_ij = N_k^2 / n_eff,k with
    k = max(i, j) (N_k^2 / n_eff,k = N_k / area where n_eff = N x area). Systematic part:
    f^2 N_i N_j (common to all points) or f^2 N_i^2 on the diagonal (per point)."""
    v = np.asarray(value, float)
    var = v ** 2 / np.asarray(n_eff, float)
    k = np.maximum.outer(np.arange(v.size), np.arange(v.size))
    cov = var[k]
    cov = cov + (f_sys ** 2) * (np.outer(v, v) if common else np.diag(v ** 2))
    return cov


def counts_term(model, device=None) -> Term:
    """The likelihood term of a counts :class:`popsynth.observables.SurveyModel` built by
    ``build_counts_model``: Poisson for binned tables with source numbers, full covariance for
    cumulative tables with n_eff, split-normal otherwise (stated in the description). Source numbers,
    bin edges and n_eff come from the loaded record ``model.data`` (no file is read)."""
    data = model.data
    dev = device or model.device
    if model.target == "binned":
        cols = _record_columns(data, ("n_sources", "flux_lo", "flux_hi"))
        if data.area_deg2 is None:
            raise PopsynthError(f"{data.path} has no area_deg2", "the Poisson term needs the survey area")
        width = as_tensor(cols["flux_hi"] - cols["flux_lo"], dev)
        resp = model.bin_response.to(dev) * width * float(data.area_deg2)
        return PoissonTerm(data.name, resp, as_tensor(cols["n_sources"], dev), data.label)
    if model.target == "cumulative" and data.name in CUMULATIVE_ERROR_MODELS:
        f, common = CUMULATIVE_ERROR_MODELS[data.name]
        n_eff = _record_columns(data, ("n_eff",))["n_eff"]
        cov = cumulative_covariance(data.value, n_eff, f, common)
        tab = 0.5 * (data.err_lo + data.err_hi)
        if not np.allclose(np.sqrt(np.diag(cov)), tab, rtol=1e-6):
            raise PopsynthError(f"the covariance model of {data.name} does not reproduce the file's errors",
                                "update CUMULATIVE_ERROR_MODELS in popsynth/likelihood.py to the file's 'errors' header")
        note = (f"Poisson of shared sources + {100 * f:g} % "
                + ("common systematic" if common else "independent per-point systematic"))
        return CovarianceTerm(data.name, model.cum_response.to(dev), as_tensor(data.value, dev),
                              as_tensor(cov, dev), data.label, note)
    # fall back: independent split-normal points (correlations unknown), stated in the description
    term = _SplitNormalPoints(data.name, model, dev)
    return term


class _SplitNormalPoints(Term):
    kind = "split_normal"

    def __init__(self, name, model, dev):
        d = model.data
        self.name, self.label = name, d.label
        self.response = {"cumulative": model.cum_response, "differential": model.diff_response,
                         "binned": model.bin_response}[model.target].to(dev)
        self.value, self.err_lo, self.err_hi = (as_tensor(x, dev) for x in (d.value, d.err_lo, d.err_hi))
        self.n_points = int(self.value.numel())
        self.description = (f"{self.label}: {self.n_points} points treated as independent split normals "
                            "(no source numbers or covariance available)")

    def predict(self, w):
        return w @ self.response

    def residuals(self, w):
        p = self.predict(w)
        return (p - self.value) / _side_sigma(p, self.value, self.err_lo, self.err_hi)

    def chi2_of(self, pred):
        return (((pred - self.value) / _side_sigma(pred, self.value, self.err_lo, self.err_hi)) ** 2).sum(-1)


def ct_term(name: str, model, device=None) -> CTFractionTerm:
    """Term of an observed CT fraction from a SurveyModel built by ``build_ct_model``."""
    ct, dev = model.data, device or model.device
    return CTFractionTerm(name, model.ct_response.to(dev), model.sample_response.to(dev), ct.fraction, ct.err_lo,
                          ct.err_hi, ct.survey)


def build_likelihood(model, data, constraints=None, sys_floor: float | dict = 0.0, device=None,
                     norm_sigma: float | dict = 0.0) -> Likelihood:
    """CXB terms (one per instrument, see :class:`CXBTerm` for ``sys_floor`` and ``norm_sigma``) + one
    term per counts table and CT fraction of ``constraints`` (a
    :class:`popsynth.constraints.Constraints`, or None for the CXB alone)."""
    terms: list[Term] = list(cxb_terms(model, data, sys_floor, norm_sigma))
    if constraints is not None:
        for name, m in constraints.models.items():
            terms.append(ct_term(name, m, device) if constraints.is_ct(name) else counts_term(m, device))
    return Likelihood(terms)


def smoothness_pairs() -> tuple:
    """Adjacent luminosity-block pairs (k, k') within each N_H class, from the block layout (:data:`popsynth.blocks.BLOCKS`)."""
    from .blocks import BLOCKS

    return tuple((BLOCKS.index_of(c, j), BLOCKS.index_of(c, j + 1))
                 for c in range(BLOCKS.n_classes) for j in range(BLOCKS.n_lum - 1))

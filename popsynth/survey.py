"""X-ray surveys as selection functions: band, flux limit or area curve, redshift range.

A :class:`Survey` says which sources a survey sees: those whose observed-frame energy flux
S in ``band_keV`` (erg cm^-2 s^-1) passes either a single flux limit or, with an area curve,
whose detection probability is the sky area sensitive to S divided by the largest area
(area interpolated log-log between the tabulated points, 0 below the lowest flux, the last
value above the highest). An optional redshift range restricts the sample. The survey's
``conversion_gamma`` is the photon index it used to convert fluxes between bands (A19
section 4: Gamma = 1.6 for 2XMMi; 1.7 for XMM-CDFS, XMM-COSMOS and Stripe 82X; 1.4 for
E-CDFS, Chandra-COSMOS and ChaMP); :func:`convert_flux` does such a conversion exactly.

The registry (:func:`list_surveys`, :func:`get_survey`) holds the surveys behind the shipped
constraint files ``data/counts/*.ecsv`` (one per number-count file, named by the file stem)
and ``data/counts/ct_fractions.ecsv`` (one per row, named ``"ct_" + slug of the survey``),
built from the files' own metadata: band, flux limit, area (or, for XMM-COSMOS, the area
curve column ``area_at_flux``), redshift range and conversion photon index.

The predictions that use a survey are in :mod:`popsynth.observables`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import PopsynthError

__all__ = [
    "A19_CONVERSION_GAMMA",
    "FULL_SKY_DEG2",
    "Survey",
    "convert_flux",
    "band_flux_ratio",
    "survey_for_counts",
    "survey_for_ct",
    "counts_flux_bins",
    "list_surveys",
    "get_survey",
]

#: Photon indices A19 (section 4) uses to convert each survey's hard-band fluxes to 2-7 keV.
A19_CONVERSION_GAMMA = {
    "2XMMi": 1.6,
    "XMM-CDFS": 1.7,
    "XMM-COSMOS": 1.7,
    "Stripe 82X": 1.7,
    "E-CDFS": 1.4,
    "Chandra-COSMOS": 1.4,
    "ChaMP": 1.4,
}

#: Area of the whole sky in deg^2: 4 pi (180/pi)^2.
FULL_SKY_DEG2 = 4.0 * math.pi * (180.0 / math.pi) ** 2


def _check_band(band, what: str = "band") -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in band)
    except (TypeError, ValueError):
        raise PopsynthError(f"{what} must be a pair (lo, hi) in keV, got {band!r}",
                            "pass e.g. (2.0, 10.0)") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise PopsynthError(f"{what} must satisfy 0 < lo < hi (finite, keV), got ({lo:g}, {hi:g})",
                            "pass the band edges in increasing order, in keV")
    return lo, hi


def _check_gamma(gamma) -> float:
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise PopsynthError(f"photon index must be a number, got {gamma!r}", "pass e.g. gamma=1.7") from None
    if not math.isfinite(g):
        raise PopsynthError(f"photon index must be finite, got {g}", "pass e.g. gamma=1.7")
    return g


def _powerlaw_band_integral(lo: float, hi: float, gamma: float) -> float:
    """integral_lo^hi E * E^-gamma dE (keV^(2-gamma)), exact; continuous through gamma = 2.

    Written as lo^k ln(hi/lo) expm1(k x)/(k x) with k = 2 - gamma, x = ln(hi/lo), which is the
    closed form (hi^k - lo^k)/k for k != 0 and ln(hi/lo) for k = 0, without cancellation near 2.
    """
    k = 2.0 - gamma
    x = math.log(hi / lo)
    kx = k * x
    factor = math.expm1(kx) / kx if abs(kx) > 1e-12 else 1.0 + 0.5 * kx
    return lo ** k * x * factor


def band_flux_ratio(band_from, band_to, gamma: float) -> float:
    """F(band_to) / F(band_from) for a power law of photon index ``gamma`` (dimensionless).

    Energy fluxes of N(E) ~ E^-gamma: F(a, b) = integral_a^b E N(E) dE, so the ratio is
    (b'^(2-g) - a'^(2-g)) / (b^(2-g) - a^(2-g)), or ln(b'/a') / ln(b/a) for g = 2 (exact).
    Bands are (lo, hi) in keV.
    """
    f = _check_band(band_from, "band_from")
    t = _check_band(band_to, "band_to")
    g = _check_gamma(gamma)
    return _powerlaw_band_integral(*t, g) / _powerlaw_band_integral(*f, g)


def convert_flux(S, band_from, band_to, gamma: float):
    """Convert energy fluxes S (erg cm^-2 s^-1) from ``band_from`` to ``band_to`` (keV).

    Assumes a power-law photon spectrum N(E) ~ E^-gamma (the conversion surveys publish, A19
    section 4); exact for every gamma, including gamma = 2. ``S`` may be a float, an
    array-like (returned as a float64 numpy array of the same shape) or a torch tensor
    (returned as a tensor, differentiable in S). Fluxes must be finite and >= 0.
    """
    ratio = band_flux_ratio(band_from, band_to, gamma)
    if isinstance(S, torch.Tensor):
        if not bool(torch.isfinite(S).all()) or bool((S < 0).any()):
            raise PopsynthError("fluxes must be finite and >= 0 erg cm^-2 s^-1", "check the flux values")
        return S * ratio
    scalar = np.ndim(S) == 0
    try:
        arr = np.asarray(S, dtype=np.float64)
    except (TypeError, ValueError):
        raise PopsynthError(f"fluxes must be numbers, got {S!r}", "pass floats in erg cm^-2 s^-1") from None
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise PopsynthError("fluxes must be finite and >= 0 erg cm^-2 s^-1", "check the flux values")
    out = arr * ratio
    return float(out) if scalar else out


@dataclass(frozen=True, eq=False)
class Survey:
    """One X-ray survey's selection.

    Fields:
      name: registry name / label of the survey;
      band_keV: (lo, hi), the observed-frame band of its fluxes, keV;
      flux_limit: single flux limit S_lim (erg cm^-2 s^-1): sources with S > S_lim are in the
        sample. Give either this or an area curve;
      area_flux, area_deg2: the area curve, fluxes [n] (erg cm^-2 s^-1, strictly increasing) and
        the sky area [n] (deg^2, > 0) sensitive to each flux; interpolated log-log, 0 below
        the lowest flux, the last value above the highest;
      area: nominal area of a single-limit survey in deg^2 (information only; optional);
      z_range: (z_lo, z_hi) redshift range of the sample, or None for the whole grid;
      conversion_gamma: photon index the survey uses to convert fluxes between bands, or None;
      reference, label: provenance text.
    """

    name: str
    band_keV: tuple[float, float]
    flux_limit: float | None = None
    area_flux: np.ndarray | None = None
    area_deg2: np.ndarray | None = None
    area: float | None = None
    z_range: tuple[float, float] | None = None
    conversion_gamma: float | None = None
    reference: str = ""
    label: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise PopsynthError(f"survey name must be a non-empty string, got {self.name!r}", "name the survey")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("band_keV", _check_band(self.band_keV, f"survey '{self.name}' band_keV"))
        has_limit = self.flux_limit is not None
        has_curve = self.area_flux is not None or self.area_deg2 is not None
        if has_limit == has_curve:
            raise PopsynthError(f"survey '{self.name}' needs exactly one of flux_limit or an area curve",
                                "pass flux_limit=S (erg cm^-2 s^-1) or area_flux= and area_deg2= arrays")
        if has_limit:
            try:
                s = float(self.flux_limit)
            except (TypeError, ValueError):
                raise PopsynthError(f"survey '{self.name}' flux_limit must be a number, got {self.flux_limit!r}",
                                    "pass the limit in erg cm^-2 s^-1") from None
            if not (math.isfinite(s) and s > 0):
                raise PopsynthError(f"survey '{self.name}' flux_limit must be finite and > 0, got {s}",
                                    "pass the limit in erg cm^-2 s^-1")
            set_("flux_limit", s)
        else:
            if self.area_flux is None or self.area_deg2 is None:
                raise PopsynthError(f"survey '{self.name}' area curve needs both area_flux and area_deg2",
                                    "pass both arrays")
            try:
                f = np.array(self.area_flux, dtype=np.float64)
                a = np.array(self.area_deg2, dtype=np.float64)
            except (TypeError, ValueError):
                raise PopsynthError(f"survey '{self.name}' area curve must be numeric arrays",
                                    "pass fluxes (erg cm^-2 s^-1) and areas (deg^2) as numbers") from None
            if f.ndim != 1 or a.shape != f.shape or f.size < 2:
                raise PopsynthError(f"survey '{self.name}' area curve must be two 1-D arrays of equal length >= 2",
                                    "pass matching flux and area arrays")
            if not (np.all(np.isfinite(f)) and np.all(f > 0) and np.all(np.diff(f) > 0)):
                raise PopsynthError(f"survey '{self.name}' area-curve fluxes must be finite, > 0 and strictly increasing",
                                    "sort the curve by flux and drop repeated or non-positive fluxes")
            if not (np.all(np.isfinite(a)) and np.all(a > 0)):
                raise PopsynthError(f"survey '{self.name}' area-curve areas must be finite and > 0 deg^2",
                                    "drop zero-area points (the area is taken as 0 below the lowest flux)")
            f.setflags(write=False)
            a.setflags(write=False)
            set_("area_flux", f)
            set_("area_deg2", a)
        if self.area is not None:
            ar = float(self.area)
            if not (math.isfinite(ar) and ar > 0):
                raise PopsynthError(f"survey '{self.name}' area must be finite and > 0 deg^2, got {self.area!r}",
                                    "pass the area in deg^2 or None")
            set_("area", ar)
        if self.z_range is not None:
            try:
                zl, zh = (float(x) for x in self.z_range)
            except (TypeError, ValueError):
                raise PopsynthError(f"survey '{self.name}' z_range must be a pair (z_lo, z_hi), got {self.z_range!r}",
                                    "pass e.g. z_range=(0.0, 0.07), or None") from None
            if not (math.isfinite(zl) and math.isfinite(zh) and 0 <= zl < zh):
                raise PopsynthError(f"survey '{self.name}' z_range must satisfy 0 <= z_lo < z_hi, got ({zl}, {zh})",
                                    "pass an increasing redshift pair")
            set_("z_range", (zl, zh))
        if self.conversion_gamma is not None:
            set_("conversion_gamma", _check_gamma(self.conversion_gamma))

    # ------------------------------------------------------------------ selection
    @property
    def has_area_curve(self) -> bool:
        """True when the selection is an area curve rather than a single flux limit."""
        return self.area_flux is not None

    @property
    def min_flux(self) -> float:
        """Faintest flux with non-zero selection (erg cm^-2 s^-1)."""
        return float(self.area_flux[0]) if self.has_area_curve else float(self.flux_limit)

    @property
    def max_area(self) -> float | None:
        """Largest sky area of the area curve (deg^2); the nominal ``area`` for a single limit."""
        return float(np.max(self.area_deg2)) if self.has_area_curve else self.area

    def completeness(self, flux) -> np.ndarray:
        """Selection probability (0-1) at observed fluxes ``flux`` (erg cm^-2 s^-1), any shape.

        Single limit: 1 for S > S_lim, else 0. Area curve: area(S) / max area, log-log
        interpolation between points, 0 below the lowest flux, last value above the highest.
        """
        s = np.asarray(flux, dtype=np.float64)
        if not np.all(np.isfinite(s)) or np.any(s < 0):
            raise PopsynthError("fluxes must be finite and >= 0 erg cm^-2 s^-1", "check the flux values")
        if not self.has_area_curve:
            return (s > self.flux_limit).astype(np.float64)
        out = np.zeros_like(s)
        pos = s >= self.area_flux[0]
        ls = np.log10(np.where(pos, s, self.area_flux[0]))
        la = np.interp(ls, np.log10(self.area_flux), np.log10(self.area_deg2))
        out[pos] = 10.0 ** la[pos] / self.max_area
        return out

    def in_band(self, band_to) -> "Survey":
        """The same survey with its flux limit / area-curve fluxes converted to ``band_to`` (keV).

        Uses :func:`convert_flux` with the survey's ``conversion_gamma`` (a power law: the
        conversion surveys apply to their own catalogues). Raises PopsynthError when the
        survey has no conversion photon index.
        """
        t = _check_band(band_to, "band_to")
        if t == self.band_keV:
            return self
        if self.conversion_gamma is None:
            raise PopsynthError(f"survey '{self.name}' has no conversion photon index",
                                "set conversion_gamma (A19 sec. 4 lists the surveys' values) or keep its band")
        g = self.conversion_gamma
        if self.has_area_curve:
            return replace(self, band_keV=t, area_flux=convert_flux(self.area_flux, self.band_keV, t, g),
                           area_deg2=np.array(self.area_deg2))
        return replace(self, band_keV=t, flux_limit=convert_flux(self.flux_limit, self.band_keV, t, g))

    def describe(self) -> dict:
        """Plain-dict summary (for output headers)."""
        d = {"name": self.name, "band_keV": list(self.band_keV), "z_range": self.z_range,
             "conversion_gamma": self.conversion_gamma, "reference": self.reference, "label": self.label}
        if self.has_area_curve:
            d["area_curve"] = {"flux": self.area_flux.tolist(), "area_deg2": self.area_deg2.tolist()}
        else:
            d["flux_limit"] = self.flux_limit
            d["area_deg2"] = self.area
        return d


# ---------------------------------------------------------------------- from the loaded records
def counts_flux_bins(data) -> tuple[np.ndarray, np.ndarray] | None:
    """Bin edges (flux_lo, flux_hi) [n] of a differential counts table, or None.

    ``data`` is a :class:`popsynth.data.counts.CountsData`. The BAT differential table stores
    bin-averaged dN/dS with its bin edges (erg cm^-2 s^-1), which the loader keeps in
    ``data.flux_lo``/``data.flux_hi`` (validated there). Returns copies, or None for cumulative
    tables and for differential tables without edges.
    """
    if data.kind != "differential" or getattr(data, "flux_lo", None) is None or getattr(data, "flux_hi", None) is None:
        return None
    return np.array(data.flux_lo), np.array(data.flux_hi)


def survey_for_counts(data) -> Survey:
    """The :class:`Survey` behind a number-count table (a ``CountsData``), from its metadata.

    Band, flux limit (meta ``flux_limit``, else the faintest tabulated flux), nominal area,
    redshift range and conversion photon index come from the file header, as the loader kept
    them in the record. A table with an ``area_at_flux`` column (XMM-COSMOS) gets that area
    curve instead of a single limit.
    The published counts are already corrected for the area curve; the curve matters for
    samples (CT fractions, redshift distributions), not for N(>S).
    """
    common = dict(name=data.name, band_keV=data.band_keV, z_range=data.redshift_range,
                  conversion_gamma=data.conversion_gamma, reference=data.reference,
                  label=data.survey if data.survey is not None else data.label)
    if data.area_curve is not None:
        f, a = data.area_curve
        return Survey(area_flux=np.array(f), area_deg2=np.array(a), **common)
    limit = data.flux_limit if data.flux_limit is not None else float(data.flux[0])
    return Survey(flux_limit=limit, area=data.area_deg2, **common)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def survey_for_ct(ct) -> Survey:
    """The :class:`Survey` behind an observed CT fraction (a ``CTFraction``): band, flux limit, z range.

    Named ``"ct_" + slug(survey)``, e.g. ``ct_nustar_uds``. The flux limits of
    ``ct_fractions.ecsv`` are survey sensitivities (see its notes), used as sharp limits.
    """
    return Survey(name="ct_" + _slug(ct.survey), band_keV=ct.band_keV, flux_limit=ct.flux_limit,
                  z_range=ct.z_range, reference=ct.reference, label=ct.survey)


_REGISTRY: dict[str, Survey] = {}
_REGISTRY_DIR: str | None = None


def _registry(data_dir=None) -> dict[str, Survey]:
    global _REGISTRY, _REGISTRY_DIR
    from .data.counts import counts_dir, list_counts, load_counts, load_ct_fractions

    key = str(counts_dir(data_dir))
    if _REGISTRY and _REGISTRY_DIR == key:
        return _REGISTRY
    reg: dict[str, Survey] = {}
    for name in list_counts(data_dir):
        reg[name] = survey_for_counts(load_counts(name, data_dir))
    for ct in load_ct_fractions(data_dir):
        s = survey_for_ct(ct)
        reg[s.name] = s
    _REGISTRY, _REGISTRY_DIR = reg, key
    return reg


def list_surveys(data_dir=None) -> list[str]:
    """Names of the registered surveys: counts-file stems and ``ct_*`` CT-fraction surveys, sorted."""
    return sorted(_registry(data_dir))


def get_survey(name: str, data_dir=None) -> Survey:
    """A registered :class:`Survey` by name (see :func:`list_surveys`)."""
    reg = _registry(data_dir)
    if name not in reg:
        raise PopsynthError(f"unknown survey {name!r}", f"use one of: {', '.join(sorted(reg))}")
    return reg[name]

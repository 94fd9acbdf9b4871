"""Figures 1-4 and 7 of Ananna et al. 2019 (A19) drawn from popsynth's spectral library.

Run ``python -m popsynth.figures --out figures/`` (needs matplotlib: ``pip install -e ".[plots]"``);
see ``docs/figures.md``. The data functions (:func:`fig1_data`, :func:`fig2_data`,
:func:`fig3_data`, :func:`fig4_data`, :func:`fig7_data`) need only numpy and torch and return
plain dicts of numpy arrays; :func:`plot_figure` draws them with matplotlib, imported only when
called.

Components, as A19 names them (section 2 and 5.2, ``f_scatt * cutoffpl + wabs * pexmon +
bntorus * highecut``), and the popsynth components that make them:

* ``scattered``: f_scatt times the primary (:class:`~popsynth.spectra.component.Scattered`);
* ``reflection``: disk reflection with fluorescence lines, R-scaled, absorbed by the line-of-sight
  column (:class:`~popsynth.spectra.reprocessed.Reflection`, the pexmon equivalent);
* ``torus``: A19's BNTorus curve, i.e. the transmitted beam plus the torus's scattered light and
  lines (:class:`~popsynth.spectra.component.Transmitted` +
  :class:`~popsynth.spectra.reprocessed.TorusReprocessed`); the two parts are also returned
  separately as ``transmitted`` and ``reprocessed``;
* ``total``: the sum of scattered, reflection and torus.

Units:

* rest-frame figures (2, 3, 4, 7): E L_E = E^2 dN/dE * (1.602e-9 erg/keV) in erg s^-1, for an
  intrinsic (primary, unabsorbed) L(2-10 keV) of 10^log_l erg/s. A19 plots these spectra in
  XSPEC's keV^2 (photons cm^-2 s^-1 keV^-1) without stating a distance; E L_E has the same
  shape and needs no assumed distance.
* Figure 1 (observed frame): E_obs^2 N_obs(E_obs) in keV^2 photons cm^-2 s^-1 keV^-1, A19's
  axis unit, with the convention of :mod:`popsynth.cxb`:

      N_obs(E_obs) = L S(E_rest) (1+z)^2 / (4 pi d_L^2),    E_rest = E_obs (1+z),

  S(E) the rest-frame photon spectrum per erg/s of L(2-10) (photons s^-1 keV^-1 per erg/s); one
  (1+z) from dE_rest/dE_obs, one from time dilation over d_M^2 = d_L^2 / (1+z)^2. Then the
  observed energy flux integral E_obs N_obs dE_obs equals L_bol / (4 pi d_L^2). Each redshift
  keeps the rest-frame grid, so its observed energies are E_rest / (1+z) (exact, no
  interpolation).

The reflected and torus-scattered light come from the photon Monte Carlo, which covers 1-1000
keV in the rest frame: those components are zero outside it (the plots leave them out there).
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ._tensor import DTYPE
from .constants import KEV_ERG
from .errors import PopsynthError

FIGURES = (1, 2, 3, 4, 7)
R_UNABSORBED = 0.83  # Ricci et al. 2017 median R, log N_H < 22 (A19 Fig. 2 caption)
R_ABSORBED = 0.37  # the same for log N_H >= 22
A19_SINGLE = {"gamma": 1.96, "ecut": 200.0, "fscatt": 0.01, "theta_tor": 58.0}
"""Parameters of A19's single-AGN spectra (Figs. 1-4 captions): Gamma, E_cut (keV), f_scatt, and
the torus half-opening angle (deg): the middle of A19's uniform 55-61 deg."""
INSTRUMENT_BANDS = {"Chandra": (0.5, 8.0), "XMM-Newton": (0.5, 10.0), "NuSTAR": (3.0, 79.0),
                    "Swift/BAT": (14.0, 195.0)}
"""Observed-frame bands (keV) of A19 Fig. 1's caption."""
CLASS_LOGNH = {"unabsorbed": 21.0, "compton_thin": 23.0, "compton_thick": 25.0}
"""Representative log N_H (cm^-2) of A19's three N_H classes (Fig. 7 panels)."""
PLOT_LINE_SIGMA = 0.01  # Gaussian width of the fluorescence lines in ln E for plots (64 eV at 6.4 keV)
LOGNH_RANGE = (20.0, 26.0)  # the torus Green's functions' column range
THETA_TOR_RANGE = (25.8, 84.3)  # and their opening-angle range, deg
COMPONENT_KEYS = ("scattered", "transmitted", "reprocessed", "torus", "reflection", "total")
E_L_E_UNITS = "erg s^-1 (E L_E, rest frame)"
E2N_OBS_UNITS = "keV^2 photons cm^-2 s^-1 keV^-1 (E^2 N(E), observed frame)"


# ------------------------------------------------------------------------------------------
# Spectra of one AGN by component
# ------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _components(line_sigma: float):
    """The four A19 components with lines of width ``line_sigma`` (cached: they cache their operators)."""
    from .spectra.component import Scattered, Transmitted
    from .spectra.reprocessed import Reflection, TorusReprocessed

    return Scattered(), Transmitted(), Reflection(line_sigma=line_sigma), TorusReprocessed(line_sigma=line_sigma)


def a19_reflection(log_nh) -> np.ndarray:
    """A19's reflection factor for single spectra: 0.83 for log N_H < 22, 0.37 above (Fig. 2 caption).

    Args: log_nh scalar or [K] (log10 cm^-2). Returns float64 of the same shape.
    """
    return np.where(np.asarray(log_nh, dtype=np.float64) < 22.0, R_UNABSORBED, R_ABSORBED)


def _check_single(log_nh, gamma, refl, ecut, fscatt, theta_tor, line_sigma):
    checks = [
        (np.all(np.isfinite(log_nh)) and np.all((log_nh >= LOGNH_RANGE[0]) & (log_nh <= LOGNH_RANGE[1])),
         f"log N_H {log_nh} outside the torus tables' {LOGNH_RANGE[0]:g}-{LOGNH_RANGE[1]:g}",
         "pass log10 N_H/cm^-2 between 20 and 26"),
        (np.all(np.isfinite(gamma)) and np.all((gamma >= 1.0) & (gamma <= 3.0)),
         f"photon index {gamma} outside 1-3", "pass Gamma between 1 and 3 (A19: 1.72-1.96)"),
        (np.all(np.isfinite(refl)) and np.all(refl >= 0), f"reflection factor {refl} is not >= 0",
         "pass R >= 0 (A19: 0.37-2)"),
        (np.all(ecut > 0), f"cutoff energy {ecut} keV is not > 0", "pass E_cut in keV (A19: 200)"),
        (np.all(np.isfinite(fscatt)) and np.all((fscatt >= 0) & (fscatt <= 1)),
         f"scattered fraction {fscatt} outside 0-1", "pass f_scatt as a fraction (A19: 0.01)"),
        (np.all(np.isfinite(theta_tor)) and np.all((theta_tor >= THETA_TOR_RANGE[0]) & (theta_tor <= THETA_TOR_RANGE[1])),
         f"torus opening angle {theta_tor} deg outside the tables' {THETA_TOR_RANGE[0]:g}-{THETA_TOR_RANGE[1]:g}",
         "pass theta_tor in degrees (A19: 55-61)"),
        (np.isfinite(line_sigma) and line_sigma > 0, f"line width {line_sigma} is not > 0",
         "pass a Gaussian width in ln E, e.g. 0.01"),
    ]
    for ok, what, fix in checks:
        if not ok:
            raise PopsynthError(what, fix)


def component_spectra(log_nh, gamma=A19_SINGLE["gamma"], refl=None, ecut=A19_SINGLE["ecut"],
                      fscatt=A19_SINGLE["fscatt"], theta_tor=A19_SINGLE["theta_tor"],
                      line_sigma: float = PLOT_LINE_SIGMA) -> dict[str, np.ndarray]:
    """Rest-frame spectra by component of single AGN with fixed parameters.

    Args (scalars or sequences, broadcast together to K spectra):
      log_nh: line-of-sight column, log10 cm^-2 (20-26);
      gamma: photon index; refl: reflection factor R (default :func:`a19_reflection` of log_nh);
      ecut: cutoff energy, keV; fscatt: scattered fraction; theta_tor: torus half-opening angle, deg;
      line_sigma: Gaussian width of the fluorescence lines in ln E (numerical; 0.01 for plots).
    Returns a dict of float64 numpy arrays: ``energy`` [nE] rest-frame keV
    (:func:`~popsynth.spectra.table.default_energy_grid`), ``primary`` [K, nE] and the
    components ``scattered``, ``transmitted``, ``reprocessed``, ``torus`` (= transmitted +
    reprocessed), ``reflection``, ``total`` [K, nE], all in photons s^-1 keV^-1 per erg/s of
    intrinsic L(2-10 keV); and the parameters ``log_nh``, ``gamma``, ``refl``, ``ecut``,
    ``fscatt``, ``theta_tor`` [K].
    """
    from .spectra.table import default_energy_grid
    from .spectra.primary import primary_spectrum

    if refl is None:
        refl = a19_reflection(log_nh)
    try:
        arrs = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64))
                                     for v in (log_nh, gamma, refl, ecut, fscatt, theta_tor)))
    except (ValueError, TypeError) as err:
        raise PopsynthError(f"spectral parameters do not broadcast together ({err})",
                            "pass scalars or sequences of one common length") from None
    if any(a.ndim != 1 for a in arrs):
        raise PopsynthError("spectral parameters must be scalars or 1-D sequences", "flatten the inputs")
    lnh, g, r, ec, fs, th = (a.copy() for a in arrs)
    _check_single(lnh, g, r, ec, fs, th, float(line_sigma))
    scat, trans, refl_c, torus_c = _components(float(line_sigma))
    energy = default_energy_grid()
    out = {k: [] for k in ("primary", *COMPONENT_KEYS)}
    for k in range(lnh.size):
        p = {name: torch.tensor([v[k]], dtype=DTYPE)
             for name, v in (("gamma", g), ("refl", r), ("ecut", ec), ("fscatt", fs), ("theta_tor", th))}
        col = torch.tensor([lnh[k]], dtype=DTYPE)
        prim = primary_spectrum(energy, p["gamma"], p["ecut"])  # [1, nE]
        s = {"scattered": scat.spectrum(energy, prim, p, col)[0, 0],
             "transmitted": trans.spectrum(energy, prim, p, col)[0, 0],
             "reprocessed": torus_c.spectrum(energy, prim, p, col)[0, 0],
             "reflection": refl_c.spectrum(energy, prim, p, col)[0, 0]}
        s["torus"] = s["transmitted"] + s["reprocessed"]
        s["total"] = s["scattered"] + s["torus"] + s["reflection"]
        s["primary"] = prim[0]
        for key, v in s.items():
            out[key].append(v.numpy())
    res = {"energy": energy.numpy()}
    res.update({k: np.stack(v) for k, v in out.items()})
    res.update({"log_nh": lnh, "gamma": g, "refl": r, "ecut": ec, "fscatt": fs, "theta_tor": th})
    return res


def to_e_l_e(energy, photon_spectrum, log_l: float) -> np.ndarray:
    """E L_E in erg s^-1 of a source of intrinsic L(2-10) = 10^log_l erg/s.

    Args: energy [nE] keV; photon_spectrum [..., nE] photons s^-1 keV^-1 per erg/s.
    Returns [..., nE] = 10^log_l E^2 S(E) * 1.602e-9 erg/keV.
    """
    e = np.asarray(energy, dtype=np.float64)
    return 10.0 ** float(log_l) * e ** 2 * np.asarray(photon_spectrum) * KEV_ERG


def band_luminosity(energy, e_l_e, e_lo: float = 2.0, e_hi: float = 10.0) -> np.ndarray:
    """Luminosity in a band, integral_{e_lo}^{e_hi} L_E dE = integral E L_E dln E (trapezoid in ln E).

    Args: energy [nE] keV (increasing); e_l_e [..., nE] (erg/s, or any E^2 N unit). The band ends
    are placed by log-log interpolation. Returns [...] in the unit of ``e_l_e``.
    """
    e = np.asarray(energy, dtype=np.float64)
    y = np.asarray(e_l_e, dtype=np.float64)
    if not (e[0] <= e_lo < e_hi <= e[-1]):
        raise PopsynthError(f"band {e_lo:g}-{e_hi:g} keV outside the grid {e[0]:g}-{e[-1]:g} keV",
                            "choose a band inside the energy grid")
    inside = (e > e_lo) & (e < e_hi)
    le = np.concatenate([[math.log(e_lo)], np.log(e[inside]), [math.log(e_hi)]])
    ly = np.log(np.clip(y, 1e-300, None))
    ends = [np.exp(np.apply_along_axis(lambda row: np.interp(math.log(x), np.log(e), row), -1, ly))
            for x in (e_lo, e_hi)]
    yy = np.concatenate([ends[0][..., None], y[..., inside], ends[1][..., None]], axis=-1)
    return np.trapezoid(yy, le, axis=-1) if hasattr(np, "trapezoid") else np.trapz(yy, le, axis=-1)


def _rest_frame_components(spec: dict, log_l: float) -> dict[str, np.ndarray]:
    return {k: to_e_l_e(spec["energy"], spec[k], log_l) for k in ("primary", *COMPONENT_KEYS)}


# ------------------------------------------------------------------------------------------
# Figure data
# ------------------------------------------------------------------------------------------
def fig1_data(z=(0.002, 1.0, 3.0), log_l: float = 44.0, log_nh: float = 23.0,
              line_sigma: float = PLOT_LINE_SIGMA) -> dict:
    """A19 Fig. 1: observed-frame spectra of one AGN at several redshifts.

    Parameters as A19 Figs. 1-2: Gamma 1.96, R 0.37 (absorbed; 0.83 if log_nh < 22), E_cut 200 keV,
    f_scatt 0.01, theta_tor 58 deg; intrinsic L(2-10) = 10^log_l erg/s, column log_nh (cm^-2).
    Returns a dict:
      ``figure`` (1), ``z`` [nz], ``d_l_cm`` [nz] (luminosity distance, cm; H0 = 70, Om = 0.3),
      ``log_l``, ``log_nh``, ``params`` {name: float};
      ``energy_rest`` [nE] keV; ``energy`` [nz, nE] observed keV (= energy_rest / (1+z));
      ``scattered``, ``reflection``, ``torus``, ``transmitted``, ``reprocessed``, ``total``
      [nz, nE]: E_obs^2 N_obs(E_obs) in keV^2 photons cm^-2 s^-1 keV^-1 with
      N_obs = L S(E_rest) (1+z)^2 / (4 pi d_L^2) (module docstring);
      ``bands`` {instrument: [2] keV}; ``units`` (str).
    """
    from .cosmology import distance_tables

    zz = np.atleast_1d(np.asarray(z, dtype=np.float64))
    if zz.ndim != 1 or zz.size == 0 or not np.all(np.isfinite(zz)) or np.any(zz <= 0) or np.any(zz > 5):
        raise PopsynthError(f"redshifts {z} must be a non-empty list of values in (0, 5]",
                            "pass e.g. z=(0.002, 1.0, 3.0)")
    spec = component_spectra(float(log_nh), line_sigma=line_sigma)
    d_l = distance_tables(zz)["d_l_cm"].numpy()
    e_rest = spec["energy"]
    e_obs = e_rest[None, :] / (1.0 + zz[:, None])  # [nz, nE]
    geom = 10.0 ** float(log_l) * (1.0 + zz) ** 2 / (4.0 * math.pi * d_l ** 2)  # [nz] erg/s cm^-2
    out = {"figure": 1, "z": zz, "d_l_cm": d_l, "log_l": float(log_l), "log_nh": float(log_nh),
           "params": {"gamma": A19_SINGLE["gamma"], "refl": float(spec["refl"][0]), "ecut": A19_SINGLE["ecut"],
                      "fscatt": A19_SINGLE["fscatt"], "theta_tor": A19_SINGLE["theta_tor"]},
           "energy_rest": e_rest, "energy": e_obs}
    for k in ("scattered", "reflection", "torus", "transmitted", "reprocessed", "total"):
        out[k] = e_obs ** 2 * geom[:, None] * spec[k][0][None, :]
    out["bands"] = {name: np.array(b, dtype=np.float64) for name, b in INSTRUMENT_BANDS.items()}
    out["units"] = E2N_OBS_UNITS
    return out


def _variation_data(figure: int, varied: str, values, log_l: float, line_sigma: float, **fixed) -> dict:
    spec = component_spectra(line_sigma=line_sigma, **{varied: values}, **fixed)
    out = {"figure": figure, "varied": varied, "values": np.asarray(spec[varied]), "log_l": float(log_l),
           "energy": spec["energy"]}
    out.update(_rest_frame_components(spec, log_l))
    out.update({k: spec[k] for k in ("log_nh", "gamma", "refl", "ecut", "fscatt", "theta_tor")})
    out["units"] = E_L_E_UNITS
    return out


_VARIATION_DOC = """
    Returns a dict: ``figure``, ``varied`` (the parameter's name), ``values`` [K], ``log_l``,
    ``energy`` [nE] rest-frame keV; ``primary`` (the intrinsic cutoff power law, not plotted),
    ``scattered``, ``reflection``, ``torus`` (transmitted + reprocessed), ``transmitted``,
    ``reprocessed``, ``total`` [K, nE] as E L_E in erg/s for intrinsic L(2-10) = 10^log_l erg/s;
    the parameters of each spectrum ``log_nh``, ``gamma``, ``refl``, ``ecut``, ``fscatt``,
    ``theta_tor`` [K]; ``units`` (str).
"""


def fig2_data(log_nh=(21.0, 23.0, 25.0), log_l: float = 44.0, line_sigma: float = PLOT_LINE_SIGMA) -> dict:
    """A19 Fig. 2: rest-frame spectra at several columns log_nh (log10 cm^-2).

    Gamma 1.96, R 0.83 for log N_H < 22 and 0.37 above, E_cut 200 keV, f_scatt 0.01, theta_tor 58 deg.
    """
    return _variation_data(2, "log_nh", log_nh, log_l, line_sigma)


def fig3_data(gamma=(1.72, 1.84, 1.96), log_nh: float = 23.0, refl: float = R_UNABSORBED, log_l: float = 44.0,
              line_sigma: float = PLOT_LINE_SIGMA) -> dict:
    """A19 Fig. 3: rest-frame spectra for several photon indices.

    log N_H 23, R 0.83 (as A19's caption), E_cut 200 keV, f_scatt 0.01, theta_tor 58 deg.
    """
    return _variation_data(3, "gamma", gamma, log_l, line_sigma, log_nh=log_nh, refl=refl)


def fig4_data(refl=(0.37, 0.83, 2.0), log_nh: float = 23.0, log_l: float = 44.0,
              line_sigma: float = PLOT_LINE_SIGMA) -> dict:
    """A19 Fig. 4: rest-frame spectra for several reflection factors R.

    Gamma 1.96, log N_H 23, E_cut 200 keV, f_scatt 0.01, theta_tor 58 deg.
    """
    return _variation_data(4, "refl", refl, log_l, line_sigma, log_nh=log_nh)


for _f in (fig2_data, fig3_data, fig4_data):
    _f.__doc__ += _VARIATION_DOC


def fig7_data(sets=(1, 2, 3, 4, 5), classes=("unabsorbed", "compton_thin", "compton_thick"), log_nh=None,
              n_draws: int = 64, seed: int = 0, log_l: float = 44.0, line_sigma: float = PLOT_LINE_SIGMA) -> dict:
    """A19 Fig. 7: mean spectra of the spectral sets (A19 Table 4) for each N_H class.

    For each set, ``n_draws`` stratified parameter draws (:func:`~popsynth.spectra.sets.draw_parameters`,
    ``seed``) of the class's distributions (log N_H < 22: unobscured, else obscured) are
    reprocessed at one representative column per class (default :data:`CLASS_LOGNH`: 21, 23,
    25; or ``log_nh`` [nC]) and averaged over the draws (as
    :func:`~popsynth.spectra.table.spectra_per_draw` does for the total).
    Returns a dict: ``figure`` (7), ``sets`` [nS] int, ``classes`` [nC] str, ``log_nh`` [nC],
    ``n_draws``, ``seed``, ``log_l``, ``energy`` [nE] rest-frame keV; ``scattered``,
    ``reflection``, ``torus``, ``total`` [nS, nC, nE] mean E L_E in erg/s for intrinsic
    L(2-10) = 10^log_l erg/s; ``total_p16``, ``total_p84`` [nS, nC, nE] the 16th and 84th
    percentiles of the total over the draws; ``descriptions`` [nS] str; ``units`` (str).
    """
    from .spectra.table import OBSCURED_LOGNH, default_energy_grid
    from .spectra.primary import primary_spectrum
    from .spectra.sets import draw_parameters, get_spectral_set

    specs = [get_spectral_set(s) for s in sets]
    if not specs:
        raise PopsynthError("no spectral sets given", "pass sets=(1, 2, 3, 4, 5)")
    classes = tuple(classes)
    if log_nh is None:
        unknown = [c for c in classes if c not in CLASS_LOGNH]
        if unknown or not classes:
            raise PopsynthError(f"unknown N_H classes {unknown or classes}",
                                f"use some of {', '.join(CLASS_LOGNH)} or pass log_nh=[...] for each class")
        cols = np.array([CLASS_LOGNH[c] for c in classes], dtype=np.float64)
    else:
        cols = np.atleast_1d(np.asarray(log_nh, dtype=np.float64))
        if cols.shape != (len(classes),):
            raise PopsynthError(f"{cols.size} columns for {len(classes)} classes", "pass one log N_H per class")
    if int(n_draws) < 1:
        raise PopsynthError(f"need at least one draw, got {n_draws}", "pass n_draws >= 1")
    _check_single(cols, 1.9, 1.0, 200.0, 0.01, 58.0, float(line_sigma))
    scat, trans, refl_c, torus_c = _components(float(line_sigma))
    energy = default_energy_grid()
    en = energy.numpy()
    shape = (len(specs), cols.size, en.size)
    out = {k: np.zeros(shape) for k in ("scattered", "reflection", "torus", "total", "total_p16", "total_p84")}
    for i, spec in enumerate(specs):
        params = draw_parameters(spec, int(n_draws), int(seed))
        for j, col in enumerate(cols):
            p = {k: v[int(col >= OBSCURED_LOGNH)] for k, v in params.items()}
            prim = primary_spectrum(energy, p["gamma"], p["ecut"])  # [D, nE]
            c = torch.tensor([col], dtype=DTYPE)
            s_sc = scat.spectrum(energy, prim, p, c)[:, 0]
            s_to = trans.spectrum(energy, prim, p, c)[:, 0] + torus_c.spectrum(energy, prim, p, c)[:, 0]
            s_re = refl_c.spectrum(energy, prim, p, c)[:, 0]
            tot = (s_sc + s_to + s_re).numpy()  # [D, nE]
            for key, v in (("scattered", s_sc.numpy()), ("torus", s_to.numpy()), ("reflection", s_re.numpy()),
                           ("total", tot)):
                out[key][i, j] = to_e_l_e(en, v.mean(0), log_l)
            lo, hi = np.percentile(tot, [16.0, 84.0], axis=0)
            out["total_p16"][i, j] = to_e_l_e(en, lo, log_l)
            out["total_p84"][i, j] = to_e_l_e(en, hi, log_l)
    out.update({"figure": 7, "sets": np.array([s.number for s in specs]), "classes": np.array(classes),
                "log_nh": cols, "n_draws": int(n_draws), "seed": int(seed), "log_l": float(log_l), "energy": en,
                "descriptions": np.array([s.description for s in specs]), "units": E_L_E_UNITS})
    return out


FIGURE_DATA = {1: fig1_data, 2: fig2_data, 3: fig3_data, 4: fig4_data, 7: fig7_data}


# ------------------------------------------------------------------------------------------
# Plotting (matplotlib imported only here)
# ------------------------------------------------------------------------------------------
COLORS = {"scattered": "0.3", "reflection": "#56b4e9", "torus": "#7b3294", "total": "#4daf4a"}
"""A19's colours: dark grey scattered, light blue reflection, purple torus, light green total."""
LINESTYLES = ("-", "--", ":", "-.")
SET_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)))  # sets 2 and 3 coincide for unabsorbed AGN
SET_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf")
BAND_COLORS = {"Chandra": "#d95f02", "XMM-Newton": "#1b9e77", "NuSTAR": "#7570b3", "Swift/BAT": "#e7298a"}
LABELS = {"scattered": "scattered", "reflection": "reflection (pexmon-like)",
          "torus": "torus (transmitted + reprocessed)", "total": "total"}
_Y_DYNAMIC_RANGE = 3e-4  # plots show 3.5 dex below the peak of the total (Fig. 1: per redshift group)


def _require_matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise PopsynthError("matplotlib is not installed; it is needed to draw the figures",
                            'install the plots extra: pip install -e ".[plots]" (or pip install "matplotlib>=3.6")') from None
    return matplotlib


def _positive(y):
    """Nonpositive values as NaN, so log axes leave them out rather than clipping."""
    y = np.asarray(y, dtype=np.float64)
    return np.where(y > 0, y, np.nan)


def _axes(ax, n_panels: int, figsize, layout):
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=figsize, layout="constrained")
        axes = list(np.atleast_1d(fig.subplots(*layout, squeeze=False)).ravel()[:n_panels])
        return fig, axes
    axes = list(np.atleast_1d(np.asarray(ax, dtype=object)).ravel())
    if len(axes) != n_panels:
        raise PopsynthError(f"this figure needs {n_panels} axes, got {len(axes)}",
                            f"pass {n_panels} matplotlib Axes (or ax=None)")
    return axes[0].figure, axes


def _limits(ax, x_range, peak):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*x_range)
    ax.set_ylim(peak * _Y_DYNAMIC_RANGE, peak * 3.0)


def _peak(energy, y, x_range):
    e = np.broadcast_to(energy, np.shape(y))
    sel = (e >= x_range[0]) & (e <= x_range[1])
    return float(np.nanmax(np.where(sel, y, np.nan)))


def _style_legend(ax, handles_comp, handles_var, title_var, locs=("lower left", "lower right"), styles=None):
    """Two legends: component colours (``locs[0]``) and the line style of each variation (``locs[1]``)."""
    from matplotlib.lines import Line2D

    styles = styles or [LINESTYLES[i % len(LINESTYLES)] for i in range(len(handles_var))]
    comp = [Line2D([], [], color=COLORS[k], lw=2, label=LABELS[k]) for k in handles_comp]
    var = [Line2D([], [], color="k", ls=ls, label=lab) for ls, lab in zip(styles, handles_var)]
    leg = ax.legend(handles=comp, loc=locs[0], fontsize=8, frameon=False)
    ax.add_artist(leg)
    ax.legend(handles=var, loc=locs[1], fontsize=8, title=title_var or None, title_fontsize=8, frameon=False)


def _plot_fig1(data, ax):
    z = data["z"]
    groups = [list(range(i, min(i + 2, z.size))) for i in range(0, z.size, 2)]  # A19: z = 0.002 and 1 on top
    fig, axes = _axes(ax, len(groups), (7.0, 4.2 * len(groups)), (len(groups), 1))
    x_range = (0.3, 300.0)
    comps = ("scattered", "reflection", "torus", "total")
    for a, grp in zip(axes, groups):
        for idx in grp:
            ls = LINESTYLES[idx % len(LINESTYLES)]
            for k in comps:
                a.plot(data["energy"][idx], _positive(data[k][idx]), color=COLORS[k], ls=ls,
                       lw=2.2 if k == "total" else 1.4)
        peak = max(_peak(data["energy"][i], data["total"][i], x_range) for i in grp)
        floor = min(_peak(data["energy"][i], data["total"][i], x_range) for i in grp) * _Y_DYNAMIC_RANGE
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlim(*x_range)
        a.set_ylim(floor * 0.1, peak * 30.0)  # headroom for the legends
        trans = a.get_xaxis_transform()
        for b, (name, (lo, hi)) in enumerate(data["bands"].items()):
            y = 0.05 + 0.06 * b
            a.plot([lo, hi], [y, y], transform=trans, color=BAND_COLORS.get(name, "k"), lw=4, alpha=0.6,
                   solid_capstyle="butt")
            a.text(hi * 1.08, y, f"{name} {lo:g}-{hi:g} keV", transform=trans, va="center", fontsize=7,
                   color=BAND_COLORS.get(name, "k"))
        a.set_xlabel("observed-frame energy (keV)")
        a.set_ylabel(r"$E^2 N(E)$ (keV$^2$ photons cm$^{-2}$ s$^{-1}$ keV$^{-1}$)")
        _style_legend(a, comps, [f"z = {z[i]:g}" for i in grp], "", locs=("upper right", "upper left"),
                      styles=[LINESTYLES[i % len(LINESTYLES)] for i in grp])
    axes[0].set_title(rf"$L_{{2-10}} = 10^{{{data['log_l']:g}}}$ erg/s, $\log N_H = {data['log_nh']:g}$, "
                      rf"$\Gamma = {data['params']['gamma']:g}$, $R = {data['params']['refl']:g}$, "
                      rf"$E_c = {data['params']['ecut']:g}$ keV", fontsize=9)
    return fig


def _plot_variation(data, ax):
    fig, (a,) = _axes(ax, 1, (7.0, 5.0), (1, 1))
    x_range = (0.5, 500.0)
    comps = ("reflection", "torus", "total")
    for i in range(data["values"].size):
        ls = LINESTYLES[i % len(LINESTYLES)]
        for k in comps:
            a.plot(data["energy"], _positive(data[k][i]), color=COLORS[k], ls=ls, lw=2.2 if k == "total" else 1.4)
    _limits(a, x_range, _peak(data["energy"], data["total"], x_range))
    a.set_xlabel("rest-frame energy (keV)")
    a.set_ylabel(r"$E L_E$ (erg s$^{-1}$)")
    name = {"log_nh": r"$\log N_H$", "gamma": r"$\Gamma$", "refl": "R"}[data["varied"]]
    _style_legend(a, comps, [f"{v:g}" for v in data["values"]], name)
    fixed = {"log_nh": rf"$\Gamma = {data['gamma'][0]:g}$, $R = 0.83$ ($\log N_H < 22$) / 0.37, ",
             "gamma": rf"$\log N_H = {data['log_nh'][0]:g}$, $R = {data['refl'][0]:g}$, ",
             "refl": rf"$\Gamma = {data['gamma'][0]:g}$, $\log N_H = {data['log_nh'][0]:g}$, "}[data["varied"]]
    a.set_title(rf"A19 Fig. {data['figure']}: {fixed}$E_c = {data['ecut'][0]:g}$ keV, "
                rf"$f_{{scatt}} = {data['fscatt'][0]:g}$" "\n"
                rf"$L_{{2-10}} = 10^{{{data['log_l']:g}}}$ erg/s (the scattered light is in the total, not drawn)",
                fontsize=9)
    return fig


def _plot_fig7(data, ax):
    n_cls = data["classes"].size
    layout = (1, n_cls)
    fig, axes = _axes(ax, n_cls, (4.6 * n_cls, 4.4), layout)
    x_range = (0.5, 500.0)
    titles = {"unabsorbed": "unabsorbed", "compton_thin": "Compton-thin", "compton_thick": "Compton-thick"}
    for j, a in enumerate(axes):
        for i, s in enumerate(data["sets"]):
            a.plot(data["energy"], _positive(data["total"][i, j]), color=SET_COLORS[i % len(SET_COLORS)],
                   ls=SET_LINESTYLES[i % len(SET_LINESTYLES)], lw=1.6,
                   label=f"spectral set {s}")
        _limits(a, x_range, _peak(data["energy"], data["total"][:, j], x_range))
        a.set_xlabel("rest-frame energy (keV)")
        a.set_ylabel(r"$E L_E$ (erg s$^{-1}$)")
        c = str(data["classes"][j])
        a.set_title(f"{titles.get(c, c)}, log N_H = {data['log_nh'][j]:g}", fontsize=10)
        a.legend(loc="lower center" if data["log_nh"][j] >= 22 else "lower left", fontsize=8, frameon=False)
    fig.suptitle(rf"A19 Fig. 7: mean spectra of spectral sets ({data['n_draws']} draws), "
                 rf"$L_{{2-10}} = 10^{{{data['log_l']:g}}}$ erg/s", fontsize=10)
    return fig


def plot_figure(n: int, data: dict | None = None, ax=None):
    """Draw A19 figure ``n`` (1, 2, 3, 4 or 7) and return the matplotlib Figure.

    Args:
      n: figure number; data: the dict of the matching ``figN_data`` (computed with its defaults
        when None); ax: None (a new Figure, no pyplot state) or the Axes to draw on: one Axes for
        figures 2-4, one per redshift pair for figure 1 (2 for three redshifts), one per class
        for figure 7 (3).
    Raises PopsynthError when matplotlib is missing or ``data`` belongs to another figure.
    """
    _require_matplotlib()
    try:
        n = int(n)
    except (TypeError, ValueError):
        n = None
    if n not in FIGURE_DATA:
        raise PopsynthError(f"no figure {n}", f"choose one of {', '.join(map(str, FIGURES))}")
    if data is None:
        data = FIGURE_DATA[n]()
    if data.get("figure") != n:
        raise PopsynthError(f"the data given are for figure {data.get('figure')}, not figure {n}",
                            f"pass the dict of fig{n}_data()")
    if n == 1:
        return _plot_fig1(data, ax)
    if n == 7:
        return _plot_fig7(data, ax)
    return _plot_variation(data, ax)


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m popsynth.figures",
        description="Draw Ananna et al. 2019 Figures 1-4 and 7 (AGN X-ray spectra by component and the "
                    "mean spectra of the five spectral sets) from popsynth's spectral library.",
        epilog="example: python -m popsynth.figures --out figures/ --which 1 2 7 --format pdf")
    p.add_argument("--out", default="figures", help="output folder (created if missing; default figures/)")
    p.add_argument("--which", type=int, nargs="+", default=list(FIGURES), metavar="N",
                   help="figures to draw, any of 1 2 3 4 7 (default all)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"), help="file format (default png)")
    p.add_argument("--dpi", type=int, default=150, help="resolution of png files (default 150)")
    p.add_argument("--draws", type=int, default=64, help="parameter draws per spectral set for figure 7 (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the figure 7 draws (default 0)")
    p.add_argument("--line-sigma", type=float, default=PLOT_LINE_SIGMA,
                   help=f"Gaussian width of the fluorescence lines in ln E (default {PLOT_LINE_SIGMA})")
    return p


def main(argv=None) -> int:
    """Command line entry: writes <out>/fig<N>.<format>; returns 0, or 2 after a PopsynthError."""
    args = build_parser().parse_args(argv)
    try:
        _require_matplotlib()
        bad = sorted(set(args.which) - set(FIGURES))
        if bad:
            raise PopsynthError(f"no figure {', '.join(map(str, bad))}", f"choose from {' '.join(map(str, FIGURES))}")
        if args.dpi < 1:
            raise PopsynthError(f"dpi {args.dpi} is not >= 1", "pass --dpi 150")
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise PopsynthError(f"cannot create the output folder {out} ({err.strerror})",
                                "pass a writable --out folder") from None
        for n in dict.fromkeys(args.which):
            kw = {"line_sigma": args.line_sigma}
            if n == 7:
                kw.update(n_draws=args.draws, seed=args.seed)
            fig = plot_figure(n, FIGURE_DATA[n](**kw))
            path = out / f"fig{n}.{args.format}"
            fig.savefig(path, dpi=args.dpi)
            print(f"wrote {path}")
    except PopsynthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Survey forecasts from a fitted XLF: expected numbers of AGN and Compton-thick AGN, their
redshift and luminosity distributions and N(>S), with intervals over the run's weight samples.

::

    popsynth forecast RUN --survey erass8_like                 # a shipped survey (data/surveys/)
    popsynth forecast RUN --survey all --out forecasts/        # every shipped survey
    popsynth forecast RUN --band 2 10 --flux-limit 1e-15 --area 2 --zmin 0 --zmax 3 --name my_field
    popsynth forecast RUN --band 2 10 --area-curve curve.ecsv --name my_field
    popsynth forecast --list                                   # the survey names

Survey descriptions: ``data/surveys/surveys.ecsv`` (band, flux limit or area-curve file, area,
z range, provenance, a published number of sources where one exists; written by
``data/surveys/make_survey_tables.py``) and, by name, every survey of the
:mod:`popsynth.survey` registry (the constraint files of the fit). A name is looked up in the
shipped index first.

Definitions (all from :func:`popsynth.observables.build_survey_model`, i.e. the same grid
contractions, spectra and selection as the fit; a survey with an area curve detects a source of
flux S with probability area(S) / max area):

* ``n_agn``: expected number of detected AGN = max area (deg^2) x selected sources per deg^2
  (of the largest area) in the z range = integral dN/dS area(S) dS;
* ``n_ct``: the same for log N_H >= 24 (N_H >= 1e24 cm^-2); ``f_ct`` = n_ct / n_agn (the
  observed CT fraction of the sample);
* ``dn_dz`` (per unit z, at the grid's z nodes), ``dn_dlogl`` (per dex of intrinsic 2-10 keV
  luminosity, at the log L cell centres), all and CT: distributions of the detected sample,
  numbers in the survey (not per deg^2);
* N(>S) at fluxes from the survey's faintest flux up: ``n_sky`` (sources per deg^2 brighter than
  S, no selection) and ``n_detected`` (detected sources of the survey brighter than S: area x
  n_sky for a single limit; for an area curve the curve truncated below S).

Every quantity is computed for each weight vector of ``RunOutputs.weight_samples`` (posterior
samples, or the converged starts of an A19 run, thinned to ``--samples``) and reported as the
16th, 50th and 84th percentiles, plus the value of the run's best weights (``best``).

Outputs per survey NAME in ``--out`` (default RUN/forecast/): ``NAME_summary.ecsv``,
``NAME_dndz.ecsv``, ``NAME_dndlogl.ecsv``, ``NAME_logn_logs.ecsv`` (ECSV with units and the
provenance in the header) and ``NAME.png`` (matplotlib, optional extra; ``--no-figure`` skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .errors import PopsynthError
from .response import dndz_response
from .survey import Survey

__all__ = [
    "SURVEY_INDEX",
    "load_survey_index",
    "list_forecast_surveys",
    "resolve_survey",
    "read_area_curve",
    "Forecast",
    "forecast_survey",
    "write_forecast",
    "plot_forecast",
    "main",
]

SURVEY_INDEX = "surveys.ecsv"
PERCENTILES = (16.0, 50.0, 84.0)
NH_CT = 1e24  # cm^-2


# ----------------------------------------------------------------------------- survey descriptions
def _surveys_dir(data_dir=None) -> Path:
    from .paths import data_dir as _data_dir

    return Path(data_dir if data_dir is not None else _data_dir()) / "surveys"


def read_area_curve(path) -> tuple[np.ndarray, np.ndarray]:
    """An area curve from an ECSV (or any astropy-readable table) with columns ``flux``
    (erg cm^-2 s^-1; unit converted when given) and ``area`` (deg^2; likewise): (flux [n], area [n]),
    float64. ECSV files are read by :func:`popsynth.io.ecsv.read_ecsv`; columns without a unit are
    taken as they are."""
    from .io.ecsv import EcsvTable, read_ecsv

    p = Path(path)
    label, fix = "area-curve file", "write it as ECSV with columns flux (erg cm-2 s-1) and area (deg2)"
    if p.suffix.lower() == ".ecsv":
        t = read_ecsv(p, label=label, fix=fix, missing_fix="pass an ECSV with columns flux and area")
    else:
        from astropy.table import Table

        if not p.exists():
            raise PopsynthError(f"{label} {p}: file not found", "pass an ECSV with columns flux and area")
        try:
            t = EcsvTable(Table.read(p), p, label, fix)
        except Exception as exc:  # astropy raises many types; the user gets one line
            raise PopsynthError(f"{label} {p}: not a readable table ({type(exc).__name__})", fix) from None
    if "flux" not in t or "area" not in t:
        raise t.fail(f"lacks a 'flux' or 'area' column (has {t.colnames})",
                     "name the columns flux (erg cm-2 s-1) and area (deg2)")

    def col(name, unit):
        return t.column(name, unit if t[name].unit is not None else None,
                        fixes={"wrong_unit": f"give {name} in {unit}"})

    return col("flux", "erg cm-2 s-1"), col("area", "deg2")


def _read_index(surveys_dir: Path):
    """The survey index ``surveys_dir/surveys.ecsv`` (an :class:`~popsynth.io.ecsv.EcsvTable`)."""
    from .io.ecsv import read_ecsv

    return read_ecsv(surveys_dir / SURVEY_INDEX, label="survey index",
                     fix="regenerate it with 'python data/surveys/make_survey_tables.py'")


def load_survey_index(data_dir=None) -> dict[str, Survey]:
    """The shipped survey descriptions (``data/surveys/surveys.ecsv``): {name: Survey}.

    Each Survey's ``reference`` holds the paper(s), ``label`` the description; the published
    number of sources, where the index has one, is in :func:`published_numbers`."""
    d = _surveys_dir(data_dir)
    t = _read_index(d)
    if len(t) != int(t.meta.get("n_points", -1)):
        raise t.fail(f"{len(t)} rows, its header says {t.meta.get('n_points')}")
    t.require_columns(("name", "label", "band_lo", "band_hi", "flux_limit", "area", "z_lo", "z_hi", "area_curve",
                       "reference"))
    band_lo, band_hi = t.column("band_lo", "keV"), t.column("band_hi", "keV")
    flux_limit, area = t.column("flux_limit", "erg cm-2 s-1"), t.column("area", "deg2")
    z_lo, z_hi = t.column("z_lo"), t.column("z_hi")
    out = {}
    for i, row in enumerate(t.table):
        zl, zh = float(z_lo[i]), float(z_hi[i])
        common = dict(name=str(row["name"]), band_keV=(float(band_lo[i]), float(band_hi[i])),
                      z_range=None if math.isnan(zl) else (zl, zh), reference=str(row["reference"]),
                      label=str(row["label"]))
        curve = str(row["area_curve"]).strip()
        if curve and curve != "--":
            f, a = read_area_curve(d / curve)
            out[common["name"]] = Survey(area_flux=f, area_deg2=a, **common)
        else:
            out[common["name"]] = Survey(flux_limit=float(flux_limit[i]), area=float(area[i]), **common)
    return out


def published_numbers(data_dir=None) -> dict[str, tuple[float, str, str]]:
    """{name: (published number of sources, what it counts, reference)} for index rows that have one."""
    t = _read_index(_surveys_dir(data_dir))
    return {str(r["name"]): (float(r["n_published"]), str(r["n_published_note"]), str(r["reference"]))
            for r in t.table if np.isfinite(float(r["n_published"]))}


def list_forecast_surveys(data_dir=None) -> list[str]:
    """Names usable with ``--survey``: the shipped index, then the :mod:`popsynth.survey` registry."""
    from .survey import list_surveys

    shipped = list(load_survey_index(data_dir))
    return shipped + [n for n in list_surveys() if n not in shipped]


def resolve_survey(name: str, data_dir=None) -> Survey:
    """A survey by name: the shipped index (data/surveys) first, then the constraint registry."""
    idx = load_survey_index(data_dir)
    if name in idx:
        return idx[name]
    from .survey import list_surveys, get_survey

    if name in list_surveys():
        return get_survey(name)
    raise PopsynthError(f"unknown survey {name!r}", f"use one of: {', '.join(list_forecast_surveys(data_dir))}")


def _survey_area(s: Survey) -> float:
    a = s.max_area
    if a is None:
        raise PopsynthError(f"survey '{s.name}' has no sky area",
                            "use a shipped survey with an area (popsynth forecast --list) or pass --area")
    return float(a)


def _truncate(s: Survey, flux: float) -> Survey:
    """The survey restricted to sources brighter than ``flux`` (selection a(S) 1[S > flux])."""
    if not s.has_area_curve:
        return replace(s, flux_limit=max(float(s.flux_limit), flux))
    f, a = s.area_flux, s.area_deg2
    if flux <= f[0]:
        return s
    if flux >= f[-1]:
        return replace(s, area_flux=np.array([flux, flux * 10.0]), area_deg2=np.array([a[-1], a[-1]]))
    la = np.interp(math.log10(flux), np.log10(f), np.log10(a))
    keep = f > flux
    return replace(s, area_flux=np.concatenate([[flux], f[keep]]), area_deg2=np.concatenate([[10 ** la], a[keep]]))


# ----------------------------------------------------------------------------- computing
@dataclass
class Forecast:
    """One survey's forecast. Arrays over weight samples have a leading axis [N]; ``best`` values
    use the run's best weights.

    Fields: survey (Survey), area_deg2 (float), n_agn, n_ct, f_ct ([N] each), best (dict of the
    same at the best weights), z [nz], dn_dz, dn_dz_ct ([N, nz], per unit z), logl [nL] (cell
    centres, log10 erg/s), dn_dlogl, dn_dlogl_ct ([N, nL], per dex), flux [nS] (erg cm^-2 s^-1),
    n_sky ([N, nS], deg^-2), n_detected ([N, nS]), best_curves (dict of the curves at the best
    weights), provenance (dict).
    """

    survey: Survey
    area_deg2: float
    n_agn: np.ndarray
    n_ct: np.ndarray
    f_ct: np.ndarray
    best: dict
    z: np.ndarray
    dn_dz: np.ndarray
    dn_dz_ct: np.ndarray
    logl: np.ndarray
    dn_dlogl: np.ndarray
    dn_dlogl_ct: np.ndarray
    flux: np.ndarray
    n_sky: np.ndarray
    n_detected: np.ndarray
    best_curves: dict
    provenance: dict


def _flux_grid(s: Survey, n_per_dex: int = 4, dex: float = 4.0) -> np.ndarray:
    lo = s.min_flux
    return lo * 10.0 ** (np.arange(int(dex * n_per_dex) + 1) / n_per_dex)


def forecast_survey(r, survey: Survey, max_samples: int = 400, seed: int = 0, table=None) -> Forecast:
    """Forecast one survey from a run (:class:`popsynth.results.RunOutputs`); see the module docstring.

    ``max_samples`` thins the weight samples (seeded); ``table`` is the run's spectral table
    (default: :meth:`popsynth.results.RunOutputs.spectral_table`)."""
    from . import __version__
    from .observables import build_survey_model

    if not isinstance(survey, Survey):
        raise PopsynthError(f"expected a Survey, got {type(survey).__name__}", "pass a popsynth.survey.Survey")
    area = _survey_area(survey)
    prob = r.problem()
    grid = prob.grid
    table = r.spectral_table() if table is None else table
    ws = r.weight_samples(max_samples=max_samples, seed=seed)  # the best weights when the run has no spread
    wb = r.best_weights()
    w_all = torch.cat([wb, ws.to(wb.dtype)], 0)  # row 0: best
    fluxes = _flux_grid(survey)
    m = build_survey_model(survey, grid, prob.phi0, table, fluxes=fluxes, nh_threshold=NH_CT)
    n_agn = (m.sample_density(w_all) * area).numpy()
    n_ct = (w_all @ m.ct_response).numpy() * area
    dn_dz = (m.dndz(w_all) * area).numpy()
    # CT and luminosity distributions: block responses from the model's selection share
    masks = grid.block_masks("cpu")  # [15, nL, nN]
    cell_n = m.dlognh * m.nh_share  # [nN], CT share of each N_H cell
    sel, vol = m.selection, m.vol
    phi0 = m.on_model_z(prob.phi0)  # the XLF at the survey model's z nodes (refined at low z)
    dl = m.dlogl
    resp_dz_ct = dndz_response(phi0, sel, dl, m.dlognh, m.dvol, (m.z_weights > 0).to(m.dvol.dtype), masks,
                               share=m.nh_share)  # the CT part of the sample's dN/dz
    resp_l = torch.einsum("zln,zln,n,kln,z->kl", phi0, sel, m.dlognh, masks, vol)
    resp_l_ct = torch.einsum("zln,zln,n,kln,z->kl", phi0, sel, cell_n, masks, vol)
    dn_dz_ct = (w_all @ resp_dz_ct).numpy() * area
    dn_dlogl = (w_all @ resp_l).numpy() * area
    dn_dlogl_ct = (w_all @ resp_l_ct).numpy() * area
    n_sky = m.cumulative(w_all).numpy()
    if survey.has_area_curve:
        n_det = np.stack([(build_survey_model(_truncate(survey, s), grid, prob.phi0, table).sample_density(w_all)
                           * _truncate(survey, s).max_area).numpy() for s in fluxes], -1)
    else:
        n_det = n_sky * area
    f_ct = n_ct / np.where(n_agn > 0, n_agn, np.nan)
    prov = {"run": str(r.folder.resolve()), "mode": r.mode, "spec_set": r.spec_set, "uncertainty": r.uncertainty,
            "n_weight_samples": int(len(ws)), "sample_seed": int(seed), "best_weights": wb[0].tolist(),
            "popsynth_version": __version__, "survey": survey.describe(), "area_deg2": area,
            "nh_ct_cm2": NH_CT, "spectral_draws": int(table.n_draws)}
    return Forecast(
        survey=survey, area_deg2=area, n_agn=n_agn[1:], n_ct=n_ct[1:], f_ct=f_ct[1:],
        best={"n_agn": float(n_agn[0]), "n_ct": float(n_ct[0]), "f_ct": float(f_ct[0])},
        z=m.z.numpy(), dn_dz=dn_dz[1:], dn_dz_ct=dn_dz_ct[1:], logl=np.asarray(grid.logl),
        dn_dlogl=dn_dlogl[1:], dn_dlogl_ct=dn_dlogl_ct[1:], flux=fluxes, n_sky=n_sky[1:], n_detected=n_det[1:],
        best_curves={"dn_dz": dn_dz[0], "dn_dz_ct": dn_dz_ct[0], "dn_dlogl": dn_dlogl[0],
                     "dn_dlogl_ct": dn_dlogl_ct[0], "n_sky": n_sky[0], "n_detected": n_det[0]},
        provenance=prov)


def _pct(x: np.ndarray) -> np.ndarray:
    """16/50/84th percentiles over axis 0: [3, ...]."""
    return np.nanpercentile(x, PERCENTILES, axis=0)


# ----------------------------------------------------------------------------- writing
def write_forecast(fc: Forecast, out_dir, name: str | None = None) -> list[Path]:
    """Write NAME_summary/_dndz/_dndlogl/_logn_logs.ecsv in ``out_dir``; returns the paths."""
    import astropy.units as u
    from astropy.table import Table

    from .io.ecsv import write_ecsv

    name = name or fc.survey.name
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PopsynthError(f"cannot create the output folder {out} ({err.strerror})", "pass a writable --out") from None
    meta = {"survey": name, "label": fc.survey.label, "reference": fc.survey.reference,
            "percentiles": list(PERCENTILES), "definitions": "see popsynth/forecast.py and docs/products_mock.md",
            "provenance": json.loads(json.dumps(fc.provenance))}
    paths = []

    def write(t, suffix):
        t.meta.update(meta)
        p = out / f"{name}_{suffix}.ecsv"
        write_ecsv(p, t)
        paths.append(p)

    rows = []
    for q, arr in (("n_agn", fc.n_agn), ("n_ct", fc.n_ct), ("f_ct", fc.f_ct)):
        p16, p50, p84 = _pct(arr)
        rows.append((q, fc.best[q], p16, p50, p84))
    t = Table(rows=rows, names=("quantity", "best", "p16", "p50", "p84"))
    t["quantity"].description = ("n_agn: detected AGN in the survey; n_ct: detected AGN with N_H >= 1e24 cm^-2; "
                                 "f_ct = n_ct / n_agn")
    write(t, "summary")

    def curves(x, xname, xunit, pairs, yunit):
        t = Table()
        t[xname] = x
        t[xname].unit = xunit
        for key, arr, desc in pairs:
            t[f"{key}_best"] = fc.best_curves[key]
            p16, p50, p84 = _pct(arr)
            t[f"{key}_p16"], t[f"{key}_p50"], t[f"{key}_p84"] = p16, p50, p84
            for c in ("best", "p16", "p50", "p84"):
                t[f"{key}_{c}"].unit = yunit[key] if isinstance(yunit, dict) else yunit
                t[f"{key}_{c}"].description = desc
        return t

    write(curves(fc.z, "z", None, [("dn_dz", fc.dn_dz, "detected AGN per unit z"),
                                   ("dn_dz_ct", fc.dn_dz_ct, "detected CT AGN per unit z")], None), "dndz")
    write(curves(fc.logl, "log_lx", u.dex(u.erg / u.s), [
        ("dn_dlogl", fc.dn_dlogl, "detected AGN per dex of intrinsic 2-10 keV luminosity"),
        ("dn_dlogl_ct", fc.dn_dlogl_ct, "detected CT AGN per dex")], None), "dndlogl")
    write(curves(fc.flux, "flux", u.Unit("erg cm-2 s-1"), [
        ("n_sky", fc.n_sky, "AGN per deg^2 brighter than flux (no selection)"),
        ("n_detected", fc.n_detected, "detected AGN of the survey brighter than flux")],
        {"n_sky": u.deg ** -2, "n_detected": None}), "logn_logs")
    return paths


def plot_forecast(fc: Forecast, path, name: str | None = None):
    """A 2x2 figure (N(>S), dN/dz, dN/dlog L, numbers) written to ``path``. Needs matplotlib."""
    try:
        import matplotlib
    except ImportError:
        raise PopsynthError("matplotlib is not installed", "pip install matplotlib, or pass --no-figure") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name = name or fc.survey.name
    fig, ax = plt.subplots(2, 2, figsize=(10, 8))

    def band(a, x, arr, best, label, color):
        p16, p50, p84 = _pct(arr)
        a.fill_between(x, p16, p84, color=color, alpha=0.3, lw=0)
        a.plot(x, p50, color=color, label=f"{label} (median, 16-84 %)")
        a.plot(x, best, color=color, ls="--", lw=1)

    a = ax[0, 0]
    band(a, fc.flux, fc.n_detected, fc.best_curves["n_detected"], "detected", "C0")
    a.set(xscale="log", yscale="log", xlabel=f"S ({fc.survey.band_keV[0]:g}-{fc.survey.band_keV[1]:g} keV) "
          "[erg cm$^{-2}$ s$^{-1}$]", ylabel="N(>S) in the survey")
    a = ax[0, 1]
    band(a, fc.z, fc.dn_dz, fc.best_curves["dn_dz"], "all", "C0")
    band(a, fc.z, fc.dn_dz_ct, fc.best_curves["dn_dz_ct"], "CT", "C3")
    a.set(xlabel="z", ylabel="dN/dz")
    a = ax[1, 0]
    band(a, fc.logl, fc.dn_dlogl, fc.best_curves["dn_dlogl"], "all", "C0")
    band(a, fc.logl, fc.dn_dlogl_ct, fc.best_curves["dn_dlogl_ct"], "CT", "C3")
    a.set(yscale="log", xlabel="log L$_{2-10}$ [erg s$^{-1}$]", ylabel="dN/dlog L")
    lo = max(1e-3, 1e-4 * float(np.nanmax(fc.best_curves["dn_dlogl"]) or 1))
    a.set_ylim(bottom=lo)
    for a in (ax[0, 1], ax[1, 0]):
        a.legend(fontsize=8)
    a = ax[1, 1]
    a.axis("off")
    lines = [f"{name}: {fc.survey.label}", f"area {fc.area_deg2:.4g} deg$^2$, band "
             f"{fc.survey.band_keV[0]:g}-{fc.survey.band_keV[1]:g} keV"]
    lines.append("area curve" if fc.survey.has_area_curve else f"flux limit {fc.survey.flux_limit:.3g} erg cm$^{{-2}}$ s$^{{-1}}$")
    for q, lab, fmt in (("n_agn", "N(AGN)", "{:.4g}"), ("n_ct", "N(CT)", "{:.4g}"), ("f_ct", "f(CT)", "{:.3f}")):
        p16, p50, p84 = _pct(getattr(fc, q))
        lines.append(f"{lab} = {fmt.format(p50)} (16-84 %: {fmt.format(p16)}-{fmt.format(p84)}), best {fmt.format(fc.best[q])}")
    lines.append(f"run: {fc.provenance['mode']}, spectral set {fc.provenance['spec_set']}, "
                 f"{fc.provenance['n_weight_samples']} weight samples ({fc.provenance['uncertainty']})")
    a.text(0, 1, "\n".join(lines), va="top", fontsize=9, wrap=True)
    fig.tight_layout()
    from .io.files import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix[1:] or "png"))
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="popsynth forecast",
        description="Expected numbers of AGN and Compton-thick AGN, their z and L distributions and N(>S) for a "
                    "survey, with 16-84 %% intervals over the run's weight samples.",
        epilog="Examples: popsynth forecast checkpoints/spec-set-5 --survey erass8_like;  popsynth forecast RUN "
               "--band 2 10 --flux-limit 1e-15 --area 2 --name my_field   (docs/products_mock.md)")
    p.add_argument("run", nargs="?", help="run folder written by train.py, or its xlf_best.h5")
    p.add_argument("--list", action="store_true", help="list the survey names and exit")
    p.add_argument("--survey", action="append", default=None,
                   help="shipped or registry survey name (repeatable; 'all' = every shipped survey)")
    p.add_argument("--band", type=float, nargs=2, metavar=("LO", "HI"), help="custom survey: band in keV")
    p.add_argument("--flux-limit", type=float, help="custom survey: flux limit, erg cm^-2 s^-1")
    p.add_argument("--area", type=float, help="custom survey: area in deg^2")
    p.add_argument("--area-curve", help="custom survey: ECSV with columns flux (erg cm-2 s-1) and area (deg2)")
    p.add_argument("--zmin", type=float, help="redshift range of the sample (custom, or override a survey's)")
    p.add_argument("--zmax", type=float)
    p.add_argument("--name", default="custom", help="name of a custom survey (file names)")
    p.add_argument("--samples", type=int, default=400, help="at most this many weight samples (default 400)")
    p.add_argument("--seed", type=int, default=0, help="seed of the thinning of the weight samples")
    p.add_argument("--out", help="output folder (default RUN/forecast)")
    p.add_argument("--no-figure", action="store_true", help="skip the PNG (no matplotlib needed)")
    return p


def _surveys_from_args(args) -> list[Survey]:
    custom = any(x is not None for x in (args.band, args.flux_limit, args.area, args.area_curve))
    if custom and args.survey:
        raise PopsynthError("both --survey and custom survey options given", "pass --survey NAME or --band/--flux-limit/--area")
    zr = None
    if (args.zmin is None) != (args.zmax is None):
        raise PopsynthError("--zmin and --zmax go together", "pass both, or neither")
    if args.zmin is not None:
        zr = (args.zmin, args.zmax)
    if custom:
        if args.band is None:
            raise PopsynthError("a custom survey needs --band LO HI", "e.g. --band 2 10")
        if (args.flux_limit is None) == (args.area_curve is None):
            raise PopsynthError("a custom survey needs exactly one of --flux-limit or --area-curve",
                                "pass --flux-limit S --area A, or --area-curve FILE")
        if args.area_curve is not None:
            f, a = read_area_curve(args.area_curve)
            return [Survey(name=args.name, band_keV=tuple(args.band), area_flux=f, area_deg2=a, z_range=zr,
                           label=f"custom ({args.area_curve})")]
        if args.area is None:
            raise PopsynthError("a custom survey with --flux-limit needs --area DEG2", "e.g. --area 2")
        return [Survey(name=args.name, band_keV=tuple(args.band), flux_limit=args.flux_limit, area=args.area,
                       z_range=zr, label="custom")]
    if not args.survey:
        raise PopsynthError("no survey", "pass --survey NAME (popsynth forecast --list) or a custom survey")
    names = []
    for n in args.survey:
        names += list(load_survey_index()) if n == "all" else [n]
    out = []
    for n in dict.fromkeys(names):
        s = resolve_survey(n)
        if zr is not None:
            s = replace(s, z_range=zr)
        if args.area is not None:
            s = replace(s, area=args.area) if not s.has_area_curve else s
        out.append(s)
    return out


def main(argv=None) -> int:
    """Command line entry; returns 0, or 2 after a one-line error."""
    args = build_parser().parse_args(argv)
    try:
        if args.list:
            idx = load_survey_index()
            for n in list_forecast_surveys():
                s = idx.get(n) or resolve_survey(n)
                lim = "area curve" if s.has_area_curve else f"S > {s.flux_limit:.3g}"
                area = "no area" if s.max_area is None else f"{s.max_area:.4g} deg2"
                print(f"{n:<44} {s.band_keV[0]:g}-{s.band_keV[1]:g} keV  {lim:<14} {area:<14} "
                      f"{'(shipped)' if n in idx else '(registry)'}")
            return 0
        if args.run is None:
            raise PopsynthError("no run folder", "pass RUN (a folder written by train.py)")
        if args.samples < 1:
            raise PopsynthError(f"--samples {args.samples} must be >= 1", "pass e.g. --samples 400")
        from .results import load_run

        surveys = _surveys_from_args(args)
        r = load_run(args.run)
        table = r.spectral_table()
        out = Path(args.out) if args.out else r.folder / "forecast"
        for s in surveys:
            t0 = time.time()
            fc = forecast_survey(r, s, max_samples=args.samples, seed=args.seed, table=table)
            paths = write_forecast(fc, out, s.name)
            if not args.no_figure:
                paths.append(plot_forecast(fc, out / f"{s.name}.png", s.name))
            p16, p50, p84 = _pct(fc.n_agn)
            c16, c50, c84 = _pct(fc.n_ct)
            print(f"{s.name}: N(AGN) = {p50:.4g} ({p16:.4g}-{p84:.4g}), N(CT) = {c50:.3g} ({c16:.3g}-{c84:.3g}); "
                  f"wrote {len(paths)} files in {out} ({time.time() - t0:.1f} s)")
    except PopsynthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

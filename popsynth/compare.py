"""Comparison figures of a finished run against published data (A19 Figs. 9-11, 15-17 in spirit).

``python -m popsynth.compare RUN_FOLDER --out DIR`` (or ``popsynth compare ...``) writes five
PNG figures, each with the numbers behind it as an ECSV table of the same name (see
``docs/compare.md``):

* ``xlf``: dPhi/dlog L of Compton-thin + unabsorbed AGN (log N_H 20-24, the range of published
  hard-band XLFs) in redshift panels, median and 16-84 % band over the run's weight samples, the
  starting XLF (all weights 1), against the binned XLFs of Ueda et al. 2014 and Miyaji et al. 2015
  (``data/xlf_binned``) -- :func:`xlf_data`;
* ``nh``: the fraction of AGN per 1-dex log N_H bin (20-26) in ranges of L and z -- :func:`nh_data`;
* ``ct``: the intrinsic CT fraction of all AGN to redshift z (0 < z' < z), with A19's quoted values
  and the observed CT fractions of the fit -- :func:`ct_data`;
* ``counts``: N(>S) or binned dN/dS of every counts constraint of the run with its data --
  :func:`counts_data`;
* ``cxb``: the run's model CXB (``cxb_model.ecsv``) with its N_H classes and galaxies, against the
  training spectra -- :func:`cxb_data`.

The data functions return plain dicts of numpy arrays (no matplotlib); ``plot_*`` draw them with
matplotlib, imported only when called. Bands are quantiles over ``RunOutputs.weight_samples``
(posterior samples, or A19-mode converged starts), thinned to ``max_samples``. Every model curve is
linear in the 15 block weights, so each is a block response computed once from the starting cube
phi0 and contracted with the weights; the tests check each against the engine's full-cube path.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from ._tensor import DTYPE
from .blocks import BLOCKS
from .errors import PopsynthError
from .response import intrinsic_block_dndz, xlf_response

FIGURES = ("xlf", "nh", "ct", "counts", "cxb")
XLF_PANEL_Z = (0.1, 0.9, 1.8, 2.7)
"""Redshifts of the XLF panels: those of A19 Fig. 9."""
BINNED_XLFS = ("ueda14", "miyaji15")
BINNED_FILES = {"ueda14": "ueda14_binned_xlf_2_10keV.ecsv", "miyaji15": "miyaji15_binned_xlf_2_10keV.ecsv"}
NH_BIN_EDGES = (20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0)
NH_L_RANGES = ((41.0, 43.6), (43.6, 47.0))
"""log L ranges of the N_H panels: A19 Fig. 10's split at log L(2-10) = 43.6."""
NH_Z_RANGES = ((0.0, 0.1), (0.1, 1.0), (1.0, 3.0))
CT_ZMAX = 5.0
A19_CT_FRACTIONS = ({"z_max": 0.1, "fraction": 0.50, "err": 0.09}, {"z_max": 1.0, "fraction": 0.56, "err": 0.07})
"""A19 section 6 (spectral set 5): intrinsic CT fraction of all AGN to z = 0.1 and 1.0."""
QUANTILE_LEVELS = (0.16, 0.5, 0.84)


# ----------------------------------------------------------------------------- helpers
def _quantiles(x: torch.Tensor) -> np.ndarray:
    """16, 50, 84 % quantiles along the first axis: x [N, ...] -> [3, ...] (torch.quantile, as the run summary)."""
    q = torch.tensor(QUANTILE_LEVELS, dtype=DTYPE, device=x.device)
    return torch.quantile(x.to(DTYPE), q, dim=0).cpu().numpy()


def _weights(run, max_samples, seed):
    """(samples [N, 15], best [1, 15], start [1, 15]) float64 tensors."""
    ws = run.weight_samples(max_samples=max_samples, seed=seed).to(DTYPE)
    best = run.best_weights().to(DTYPE)
    return ws, best, torch.ones_like(best)


def _band(f, ws, best, start) -> dict:
    """Quantiles of f over the samples and f at the best and starting weights (numpy)."""
    q = _quantiles(f(ws))
    return {"p16": q[0], "p50": q[1], "p84": q[2], "best": f(best)[0].cpu().numpy(), "start": f(start)[0].cpu().numpy()}


def _check_zs(values, what: str, lo: float, hi: float) -> tuple:
    try:
        vals = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise PopsynthError(f"{what} must be numbers, got {values!r}", f"pass numbers in {lo:g}-{hi:g}") from None
    if not vals or any(not math.isfinite(v) or v < lo or v > hi for v in vals):
        raise PopsynthError(f"{what} {list(vals)} must be finite and within {lo:g}-{hi:g}", f"pass values in {lo:g}-{hi:g}")
    return vals


# ----------------------------------------------------------------------------- published binned XLFs
def binned_xlf_path(name: str, data_dir=None) -> Path:
    """Path of the binned-XLF table ``name`` ("ueda14" or "miyaji15") under ``data_dir/xlf_binned``."""
    if name not in BINNED_FILES:
        raise PopsynthError(f"unknown binned XLF {name!r}", f"choose one of {', '.join(BINNED_XLFS)}")
    if data_dir is None:
        from .paths import data_dir as _data_dir

        data_dir = _data_dir()
    return Path(data_dir) / "xlf_binned" / BINNED_FILES[name]


def load_binned_xlf(name: str, data_dir=None) -> dict:
    """A published binned XLF (``data/xlf_binned``), checked.

    Returns a dict: ``name``, ``label``, ``paper``; arrays [n]: ``z_lo``, ``z_hi`` (redshift bin),
    ``log_l`` (log10 erg/s, intrinsic rest-frame 2-10 keV), ``phi``, ``err_lo``, ``err_hi``
    (dPhi/dlog L in Mpc^-3 dex^-1, h = 0.7, Compton-thin AGN; errors are 1-sigma distances) and
    ``selection`` (str [n]: "hard"/"soft" for U14, "hard" for Miyaji et al. 2015).
    Read through :func:`popsynth.io.ecsv.read_ecsv`: ``phi`` and its errors are converted to Mpc^-3
    (per dex). A missing or damaged file, a missing column, a unit not convertible to Mpc^-3, a
    non-positive value or a row count that differs from the header's ``n_points`` raises PopsynthError.
    """
    from .io.ecsv import read_ecsv

    path = binned_xlf_path(name, data_dir)
    fix = "regenerate it with 'python data/xlf_binned/make_xlf_binned_tables.py'"
    t = read_ecsv(path, label="binned XLF file", fix=fix)
    need = ("z_lo", "z_hi", "log_l", "phi", "err_lo", "err_hi")
    t.require_columns(need)
    # phi and its errors per dex in Mpc^-3 (converted); z and log L as stored
    out = {c: t.column(c, "Mpc-3" if c in ("phi", "err_lo", "err_hi") else None) for c in need}
    if t.meta.get("n_points") is not None and int(t.meta["n_points"]) != len(t):
        raise t.fail(f"{len(t)} rows, its header declares {t.meta['n_points']}")
    if not all(np.all(np.isfinite(v)) for v in out.values()) or np.any(out["phi"] <= 0) \
            or np.any(out["err_lo"] <= 0) or np.any(out["err_hi"] <= 0) or np.any(out["z_hi"] <= out["z_lo"]):
        raise t.fail("non-finite, non-positive or inverted values")
    out["selection"] = np.asarray(t["selection"], dtype=str) if "selection" in t.colnames else np.full(len(t), "hard")
    out.update(name=name, label=str(t.meta.get("label", name)), paper=str(t.meta.get("paper", "")), path=str(path))
    return out


# ----------------------------------------------------------------------------- 1. XLF
def xlf_class_response(phi0: torch.Tensor, grid, nh_range=(20.0, 24.0)) -> torch.Tensor:
    """Block response of dPhi/dlog L integrated over log N_H in ``nh_range``: R[15, nz, nL].

    R[k, z, l] = sum over the N_H cells n of block k inside the range of phi0[z, l, n] dlogN_H(n)
    (Mpc^-3 dex^-1 at unit weight); then dPhi/dlog L [B, nz, nL] = einsum("bk,kzl->bzl", w, R).
    ``nh_range`` must lie on cell edges.
    """
    edges = grid.lognh_edges
    lo, hi = (float(v) for v in nh_range)
    if not (np.any(np.isclose(edges, lo)) and np.any(np.isclose(edges, hi)) and hi > lo):
        raise PopsynthError(f"log N_H range {nh_range} does not fall on the grid's cell edges", "use e.g. (20, 24)")
    sel = torch.as_tensor((grid.lognh > lo) & (grid.lognh < hi), dtype=DTYPE, device=phi0.device)
    dn = torch.as_tensor(grid.dlognh, dtype=DTYPE, device=phi0.device) * sel
    return xlf_response(phi0, dn, grid.block_masks(phi0.device))


def xlf_data(run, z_panels=XLF_PANEL_Z, max_samples: int | None = 200, seed: int = 0, binned=BINNED_XLFS) -> dict:
    """The fitted XLF against published binned XLFs (A19 Fig. 9).

    For each panel the grid's redshift node nearest to the requested z is used (``z`` holds them).
    Returns a dict: ``logl`` [nL] (cell centres, log10 erg/s); ``z`` [P]; for "thin" (log N_H
    20-24, the range of published hard-band XLFs) and "all" (20-26, CT included), dicts with
    ``p16``, ``p50``, ``p84`` (quantiles over the weight samples), ``best`` and ``start`` (weights
    1), each [P, nL] in Mpc^-3 dex^-1; ``binned``: {name: list over panels of the rows of the
    published table whose redshift bin holds the panel's z (dicts of arrays, see
    :func:`load_binned_xlf`)}; ``n_samples``, ``uncertainty``.
    """
    zs = _check_zs(z_panels, "XLF panel redshifts", 0.0, 5.0)
    prob = run.problem()
    grid = prob.grid
    idx = [int(np.argmin(np.abs(grid.z - z))) for z in zs]
    ws, best, start = _weights(run, max_samples, seed)
    out = {"logl": grid.logl.copy(), "z": grid.z[idx].copy(), "z_requested": np.asarray(zs),
           "n_samples": int(ws.shape[0]), "uncertainty": run.uncertainty}
    for key, rng in (("thin", (20.0, 24.0)), ("all", (20.0, 26.0))):
        resp = xlf_class_response(prob.phi0, grid, rng)[:, idx]  # [15, P, nL]
        out[key] = _band(lambda w: torch.einsum("bk,kpl->bpl", w, resp), ws, best, start)
    out["binned"] = {}
    for name in binned:
        tab = load_binned_xlf(name)
        panels = []
        for z in out["z"]:
            m = (tab["z_lo"] < z) & (z <= tab["z_hi"])
            panels.append({k: (v[m] if isinstance(v, np.ndarray) else v) for k, v in tab.items()})
        out["binned"][name] = panels
    return out


# ----------------------------------------------------------------------------- 2. N_H distributions
def _volume_weights(grid, z_range) -> np.ndarray:
    """4 pi dV_c/dz * quadrature weight over ``z_range`` at the z nodes: [nz] in Mpc^3."""
    from .cosmology import distance_tables
    from .observables import z_range_weights

    d = distance_tables(grid.z)
    return z_range_weights(grid.z, z_range) * d["dvc_dz_dsr_mpc3"].cpu().numpy() * 4 * math.pi


def nh_counts_response(phi0: torch.Tensor, grid, l_range, z_range) -> torch.Tensor:
    """Number of AGN (all sky) per log N_H cell and block for z in ``z_range`` and log L in ``l_range``: R[15, nN].

    R[k, n] = sum_z 4 pi dV_c/dz w_z sum_{l in range} phi0[z, l, n] dlogL dlogN_H [block(l, n) = k];
    the counts of weights w [B, 15] are w @ R [B, nN]. ``l_range`` must lie on log L cell edges.
    """
    lo, hi = (float(v) for v in l_range)
    if not (np.any(np.isclose(grid.logl_edges, lo)) and np.any(np.isclose(grid.logl_edges, hi)) and hi > lo):
        raise PopsynthError(f"log L range {l_range} does not fall on the grid's cell edges",
                            "use edges of the 0.05-dex cells, e.g. (41, 43.6)")
    dev = phi0.device
    vol = torch.as_tensor(_volume_weights(grid, z_range), dtype=DTYPE, device=dev)
    lsel = torch.as_tensor(((grid.logl > lo) & (grid.logl < hi)) * grid.dlogl, dtype=DTYPE, device=dev)
    dn = torch.as_tensor(grid.dlognh, dtype=DTYPE, device=dev)
    return torch.einsum("zln,z,l,n,kln->kn", phi0, vol, lsel, dn, grid.block_masks(dev))


def nh_data(run, l_ranges=NH_L_RANGES, z_ranges=NH_Z_RANGES, max_samples: int | None = 200, seed: int = 0) -> dict:
    """Fraction of AGN per 1-dex log N_H bin (20-26) in ranges of log L and z (cf. A19 Fig. 10).

    The fractions of one weight vector sum to 1 over 20-26 (A19 Fig. 10 normalises to 20-24
    instead). Returns ``nh_edges`` [7]; ``l_ranges``, ``z_ranges``; ``panels``: a list (l range
    major) of dicts with ``l_range``, ``z_range`` and ``p16``, ``p50``, ``p84``, ``best``, ``start``
    (each [6], dimensionless; the quantiles are per bin, so they need not sum to 1).
    """
    prob = run.problem()
    grid = prob.grid
    ws, best, start = _weights(run, max_samples, seed)
    edges = np.asarray(NH_BIN_EDGES)
    which = np.clip(np.searchsorted(edges, grid.lognh, side="right") - 1, 0, len(edges) - 2)
    agg = torch.as_tensor(np.eye(len(edges) - 1)[which], dtype=DTYPE)  # [nN, 6]
    panels = []
    for lr in l_ranges:
        _check_zs(lr, "log L range", float(grid.logl_edges[0]), float(grid.logl_edges[-1]))
        for zr in z_ranges:
            _check_zs(zr, "redshift range", 0.0, float(grid.z[-1]))
            resp = nh_counts_response(prob.phi0, grid, lr, zr) @ agg  # [15, 6]

            def frac(w, resp=resp):
                n = w @ resp
                return n / n.sum(-1, keepdim=True)
            panels.append({"l_range": tuple(lr), "z_range": tuple(zr), **_band(frac, ws, best, start)})
    return {"nh_edges": edges, "l_ranges": [tuple(x) for x in l_ranges], "z_ranges": [tuple(x) for x in z_ranges],
            "panels": panels, "n_samples": int(ws.shape[0]), "uncertainty": run.uncertainty}


# ----------------------------------------------------------------------------- 3. CT fraction
def cumulative_block_counts(phi0: torch.Tensor, grid) -> torch.Tensor:
    """AGN per block (all sky, all log L of the grid) from the first z node to each node: C[nz, 15].

    C[i, k] is :func:`popsynth.response.intrinsic_block_counts` with zmax = z_i (trapezoid over the nodes <= z_i);
    C[0] = 0.
    """
    f = intrinsic_block_dndz(phi0, grid)
    dz = torch.as_tensor(np.diff(grid.z), dtype=DTYPE, device=phi0.device)
    seg = 0.5 * dz[:, None] * (f[1:] + f[:-1])
    return torch.cat([torch.zeros_like(f[:1]), torch.cumsum(seg, 0)], 0)


def ct_data(run, z_max: float = CT_ZMAX, max_samples: int | None = 200, seed: int = 0) -> dict:
    """Intrinsic CT fraction N(log N_H >= 24) / N(all) of all AGN from the grid's first node to z.

    Returns ``z`` [m] (grid nodes from the second to ``z_max``); ``cumulative`` (AGN at z' < z) and
    ``differential`` (AGN at z) dicts with ``p16``, ``p50``, ``p84``, ``best``, ``start`` [m]
    (fractions, 0-1); ``a19``: A19's quoted values (section 6); ``observed``: the observed CT
    fractions of the fit (list of dicts: survey, z_range or None, observed, err_lo, err_hi and the
    model's p16/p50/p84/best/start, all 0-1), empty when the run had none.
    """
    (z_max,) = _check_zs([z_max], "z_max", 0.01, 5.0)
    prob = run.problem()
    grid = prob.grid
    ws, best, start = _weights(run, max_samples, seed)
    ct = BLOCKS.is_ct().to(DTYPE)
    sel = (grid.z <= z_max + 1e-9)
    sel[0] = False
    cum = cumulative_block_counts(prob.phi0, grid)[torch.as_tensor(sel)]  # [m, 15]
    diff = cumulative_block_counts_derivative(prob.phi0, grid)[torch.as_tensor(sel)]

    def frac(resp):
        return lambda w: (w @ (resp * ct).T) / (w @ resp.T)
    out = {"z": grid.z[sel].copy(), "cumulative": _band(frac(cum), ws, best, start),
           "differential": _band(frac(diff), ws, best, start), "a19": [dict(d) for d in A19_CT_FRACTIONS],
           "observed": [], "n_samples": int(ws.shape[0]), "uncertainty": run.uncertainty}
    cons = prob.constraints
    if cons is not None:
        for row in cons.ct_rows:
            from .constraints import ct_key

            m = cons.models[ct_key(row.survey)]
            band = _band(lambda w, m=m: m.ct_fraction(w)[:, None], ws, best, start)
            zr = None if row.z_range is None else tuple(float(v) for v in row.z_range)
            out["observed"].append({"survey": row.survey, "z_range": zr, "observed": row.fraction,
                                    "err_lo": row.err_lo, "err_hi": row.err_hi, "nh_threshold": row.nh_threshold,
                                    **{k: float(v[0]) for k, v in band.items()}})
    return out


def cumulative_block_counts_derivative(phi0: torch.Tensor, grid) -> torch.Tensor:
    """dN/dz per block at each z node (all sky, all log L): [nz, 15] AGN per unit z
    (:func:`popsynth.response.intrinsic_block_dndz`)."""
    return intrinsic_block_dndz(phi0, grid)


# ----------------------------------------------------------------------------- 4. number counts
def counts_data(run, max_samples: int | None = 200, seed: int = 0) -> dict:
    """The model of every counts constraint of the run against its data.

    Returns {constraint name: dict} with ``label``, ``kind`` ("cumulative" N(>S) in deg^-2, or
    "differential" dN/dS in deg^-2 (erg cm^-2 s^-1)^-1), ``band_keV``, ``flux`` [n] (erg cm^-2 s^-1),
    ``value``, ``err_lo``, ``err_hi`` [n] (the data) and ``p16``, ``p50``, ``p84``, ``best``,
    ``start`` [n] (the constraint's own prediction, ``SurveyModel.predict``, over the weight
    samples). Empty when the run had no counts constraints (``--mode cxb`` or ``--counts none``).
    """
    prob = run.problem()
    cons = prob.constraints
    out = {}
    if cons is None:
        return out
    ws, best, start = _weights(run, max_samples, seed)
    for name, m in cons.models.items():
        if cons.is_ct(name):
            continue
        d = m.data
        out[name] = {"label": d.label, "kind": d.kind, "band_keV": tuple(d.band_keV), "flux": np.asarray(d.flux),
                     "value": np.asarray(d.value), "err_lo": np.asarray(d.err_lo), "err_hi": np.asarray(d.err_hi),
                     **_band(m.predict, ws, best, start)}
    return out


# ----------------------------------------------------------------------------- 5. CXB
CXB_COMPONENTS = ("agn_unabsorbed", "agn_compton_thin", "agn_compton_thick", "galaxies")


def cxb_data(run) -> dict:
    """The run's model CXB (its ``cxb_model.ecsv``) and the training spectra.

    Returns ``energy`` [nE] (keV); ``total`` and each of :data:`CXB_COMPONENTS` [nE] (the run's
    answer: posterior mode or selected start) and, where the file has them, ``total_p16``,
    ``total_p50``, ``total_p84`` [nE], all E^2 dN/dE in keV^2 cm^-2 s^-1 keV^-1 sr^-1; ``data``:
    list of dicts (name, label, energy, intensity, err_lo, err_hi) of the run's CXB data sets
    (points used in the fit).
    """
    from .data.cxb import load_cxb
    from .io import RUN_FILES
    from .io.ecsv import read_ecsv

    path = run.folder / RUN_FILES.get("cxb_table", "cxb_model.ecsv")
    t = read_ecsv(path, label="model CXB file", fix="re-run train.py to rewrite it",
                  missing_fix="pass a run folder written by train.py (it writes cxb_model.ecsv)")
    need = ("energy", "total") + CXB_COMPONENTS
    t.require_columns(need)
    out = {c: t.column(c, "keV" if c == "energy" else "keV2 / (cm2 s keV sr)")
           for c in t.colnames if c in need or c.startswith("total_p")}
    out["data"] = [{"name": d.name, "label": d.label, "energy": d.energy, "intensity": d.intensity,
                    "err_lo": d.err_lo, "err_hi": d.err_hi} for d in load_cxb(run.config.datasets)]
    return out


# ----------------------------------------------------------------------------- tables behind the figures
def figure_table(name: str, data: dict):
    """The numbers behind figure ``name`` as an astropy Table (one long table, units set)."""
    from astropy.table import Table

    t = Table()
    meta = {"figure": name, "uncertainty": data.get("uncertainty", ""), "n_samples": data.get("n_samples"),
            "quantiles": "p16/p50/p84 over the run's weight samples; best: posterior mode or selected start; "
                         "start: all weights 1 (the starting XLF)"}
    stats = ("p16", "p50", "p84", "best", "start")
    if name == "xlf":
        rows = {k: [] for k in ("z", "log_l") + tuple(f"{c}_{s}" for c in ("thin", "all") for s in stats)}
        for p, z in enumerate(data["z"]):
            rows["z"] += [z] * len(data["logl"])
            rows["log_l"] += list(data["logl"])
            for c in ("thin", "all"):
                for s in stats:
                    rows[f"{c}_{s}"] += list(data[c][s][p])
        for k, v in rows.items():
            t[k] = np.asarray(v, dtype=np.float64)
            if k not in ("z", "log_l"):
                t[k].unit = "Mpc-3"
        t["log_l"].unit = "dex(erg / s)"
        meta["columns"] = ("thin_*: dPhi/dlog L integrated over log N_H 20-24 (Compton-thin + unabsorbed, as published "
                           "hard-band XLFs); all_*: over 20-26 (CT included); Mpc^-3 per dex of L")
    elif name == "nh":
        rows = {k: [] for k in ("l_lo", "l_hi", "z_lo", "z_hi", "nh_lo", "nh_hi") + stats}
        e = data["nh_edges"]
        for p in data["panels"]:
            for i in range(len(e) - 1):
                for k, v in zip(("l_lo", "l_hi", "z_lo", "z_hi", "nh_lo", "nh_hi"),
                                (*p["l_range"], *p["z_range"], e[i], e[i + 1])):
                    rows[k].append(v)
                for s in stats:
                    rows[s].append(p[s][i])
        for k, v in rows.items():
            t[k] = np.asarray(v, dtype=np.float64)
        meta["columns"] = "fraction of AGN (log L, z in range) per log N_H bin; a weight vector's fractions sum to 1 over 20-26"
    elif name == "ct":
        t["z"] = data["z"]
        for c in ("cumulative", "differential"):
            for s in stats:
                t[f"{c}_{s}"] = data[c][s]
        meta["columns"] = "intrinsic CT fraction (log N_H >= 24) of all AGN: cumulative = at z' < z, differential = at z"
        meta["a19"] = data["a19"]
        meta["observed"] = [{k: v for k, v in o.items()} for o in data["observed"]]
    elif name == "counts":
        rows = {k: [] for k in ("constraint", "kind", "flux", "value", "err_lo", "err_hi") + stats}
        for cname, c in data.items():
            if not isinstance(c, dict):
                continue
            for i in range(len(c["flux"])):
                rows["constraint"].append(cname)
                rows["kind"].append(c["kind"])
                for k in ("flux", "value", "err_lo", "err_hi") + stats:
                    rows[k].append(float(c[k][i]))
        for k, v in rows.items():
            t[k] = np.asarray(v, dtype=str if k in ("constraint", "kind") else np.float64)
        t["flux"].unit = "erg / (cm2 s)"
        meta["columns"] = "value and model in deg^-2 (N(>S)) or deg^-2 (erg cm^-2 s^-1)^-1 (dN/dS), per 'kind'"
    elif name == "cxb":
        for k, v in data.items():
            if isinstance(v, np.ndarray):
                t[k] = v
                t[k].unit = "keV" if k == "energy" else "keV2 / (cm2 s keV sr)"
        meta["data_sets"] = [d["label"] for d in data["data"]]
    else:
        raise PopsynthError(f"no figure {name!r}", f"choose from {', '.join(FIGURES)}")
    t.meta.update({k: v for k, v in meta.items() if v is not None})
    return t


# ----------------------------------------------------------------------------- plotting
def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PopsynthError("matplotlib is not installed", "pip install -e \".[plots]\" (or pip install matplotlib)") from None
    import matplotlib.pyplot as plt

    return plt


def plot_xlf(d: dict):
    """Figure of :func:`xlf_data`: one panel per redshift, log-log dPhi/dlog L against log L."""
    plt = _require_matplotlib()
    n = len(d["z"])
    ncol = 2 if n > 1 else 1
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 4.2 * nrow), squeeze=False)
    styles = {"ueda14": {"hard": ("tab:blue", "o"), "soft": ("tab:red", "s")}, "miyaji15": {"hard": ("k", "^")}}
    for p in range(n):
        ax = axes.flat[p]
        x = d["logl"]
        ax.fill_between(x, d["thin"]["p16"][p], d["thin"]["p84"][p], color="tab:purple", alpha=0.3, lw=0,
                        label="this run, 16-84 %")
        ax.plot(x, d["thin"]["p50"][p], color="tab:purple", label="this run, median (log N$_H$ 20-24)")
        ax.plot(x, d["all"]["p50"][p], color="tab:purple", ls=":", label="this run, median (20-26, CT incl.)")
        ax.plot(x, d["thin"]["start"][p], color="tab:green", ls="--", label="start (U14+R15, weights 1)")
        for name, panels in d["binned"].items():
            rows = panels[p]
            for sel in np.unique(rows["selection"]):
                m = rows["selection"] == sel
                color, marker = styles.get(name, {}).get(str(sel), ("gray", "o"))
                zl, zh = rows["z_lo"][m][:1], rows["z_hi"][m][:1]
                lab = f"{rows['label'].split(' binned')[0]} ({sel}, z {zl[0]:g}-{zh[0]:g})" if m.any() else None
                ax.errorbar(rows["log_l"][m], rows["phi"][m], yerr=[rows["err_lo"][m], rows["err_hi"][m]], fmt=marker,
                            color=color, ms=4, capsize=0, lw=1, label=lab)
        ax.set_yscale("log")
        ax.set_ylim(1e-10, 1e-2)
        ax.set_xlim(41, 47)
        ax.set_title(f"z = {d['z'][p]:.3g}")
        ax.set_xlabel("log L$_{2-10}$ (erg s$^{-1}$, intrinsic)")
        ax.set_ylabel("d$\\Phi$/dlog L (Mpc$^{-3}$ dex$^{-1}$), log N$_H$ 20-24")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    fig.suptitle("XLF of Compton-thin + unabsorbed AGN (log N$_H$ 20-24) against binned XLFs", fontsize=10)
    fig.tight_layout()
    return fig


def plot_nh(d: dict):
    """Figure of :func:`nh_data`: a step histogram per (L, z) range, median, band and start."""
    plt = _require_matplotlib()
    nl, nz = len(d["l_ranges"]), len(d["z_ranges"])
    fig, axes = plt.subplots(nl, nz, figsize=(4.2 * nz, 3.4 * nl), squeeze=False, sharey=True)
    e = d["nh_edges"]
    c = 0.5 * (e[1:] + e[:-1])
    for i, p in enumerate(d["panels"]):
        ax = axes[i // nz, i % nz]
        ax.stairs(p["p50"], e, color="tab:purple", label="this run, median")
        ax.errorbar(c, p["p50"], yerr=[p["p50"] - p["p16"], p["p84"] - p["p50"]], fmt="none", color="tab:purple",
                    label="16-84 %")
        ax.stairs(p["start"], e, color="tab:green", ls="--", label="start (weights 1)")
        ax.set_title(f"log L {p['l_range'][0]:g}-{p['l_range'][1]:g}, z {p['z_range'][0]:g}-{p['z_range'][1]:g}",
                     fontsize=9)
        ax.set_xlabel("log N$_H$ (cm$^{-2}$)")
        if i % nz == 0:
            ax.set_ylabel("fraction of AGN per dex (sum 20-26 = 1)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_ct(d: dict):
    """Figure of :func:`ct_data`: intrinsic CT fraction to z with band, A19's values, observed fractions."""
    plt = _require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    z = d["z"]
    c = d["cumulative"]
    ax.fill_between(z, c["p16"], c["p84"], color="tab:purple", alpha=0.3, lw=0, label="this run, 16-84 % (AGN at z' < z)")
    ax.plot(z, c["p50"], color="tab:purple", label="this run, median (z' < z)")
    ax.plot(z, d["differential"]["p50"], color="tab:purple", ls=":", label="this run, median (at z)")
    ax.plot(z, c["start"], color="tab:green", ls="--", label="start (weights 1), z' < z")
    for i, a in enumerate(d["a19"]):
        ax.errorbar([a["z_max"]], [a["fraction"]], yerr=[[a["err"]], [a["err"]]], fmt="D", color="k", capsize=3,
                    label="A19 section 6 (to z)" if i == 0 else None)
    for o in d["observed"]:
        zr = o["z_range"]
        zc = 0.05 if zr is None else 0.5 * (zr[0] + zr[1])
        xerr = None if zr is None else [[zc - zr[0]], [zr[1] - zc]]
        h = ax.errorbar([zc], [o["observed"]], xerr=xerr, yerr=[[o["err_lo"]], [o["err_hi"]]], fmt="o", ms=4,
                        capsize=2, label=f"observed: {o['survey']}")
        ax.plot([zc], [o["p50"]], marker="x", color=h[0].get_color(), ls="none")
    ax.set_xscale("log")
    ax.set_xlim(z[0], z[-1])
    ax.set_ylim(0, 1)
    ax.set_xlabel("z")
    ax.set_ylabel("Compton-thick fraction (log N$_H$ >= 24)")
    ax.set_title("intrinsic CT fraction; observed fractions (o) with the run's model for them (x)", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


def plot_counts(d: dict):
    """Figure of :func:`counts_data`: one panel per counts constraint (S^1.5 N(>S) or S^2.5 dN/dS)."""
    plt = _require_matplotlib()
    names = list(d)
    n = max(len(names), 1)
    ncol = 2 if n > 1 else 1
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 4.0 * nrow), squeeze=False)
    for ax, name in zip(axes.flat, names):
        c = d[name]
        s = c["flux"]
        k = (s / 1e-14) ** 1.5 if c["kind"] == "cumulative" else (s / 1e-14) ** 2.5 * 1e-14
        ax.fill_between(s, c["p16"] * k, c["p84"] * k, color="tab:purple", alpha=0.3, lw=0, label="this run, 16-84 %")
        ax.plot(s, c["p50"] * k, color="tab:purple", label="this run, median")
        ax.plot(s, c["start"] * k, color="tab:green", ls="--", label="start (weights 1)")
        ax.errorbar(s, c["value"] * k, yerr=[c["err_lo"] * k, c["err_hi"] * k], fmt="o", color="k", ms=3, label="data")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"S$_{{{c['band_keV'][0]:g}-{c['band_keV'][1]:g}\\,keV}}$ (erg cm$^{{-2}}$ s$^{{-1}}$)")
        ax.set_ylabel("(S/10$^{-14}$)$^{1.5}$ N(>S) (deg$^{-2}$)" if c["kind"] == "cumulative"
                      else "(S/10$^{-14}$)$^{2.5}$ dN/dS (deg$^{-2}$ per 10$^{-14}$ cgs)")
        ax.set_title(c["label"], fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def plot_cxb(d: dict):
    """Figure of :func:`cxb_data`: the model CXB, its band and components, and the training data."""
    plt = _require_matplotlib()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    e = d["energy"]
    if "total_p16" in d:
        ax.fill_between(e, d["total_p16"], d["total_p84"], color="tab:purple", alpha=0.3, lw=0, label="total, 16-84 %")
    ax.plot(e, d["total"], color="tab:purple", label="total (run's answer)")
    for comp, color in zip(CXB_COMPONENTS, ("tab:blue", "tab:orange", "tab:red", "tab:gray")):
        ax.plot(e, d[comp], color=color, ls="--", label=comp.replace("agn_", "AGN ").replace("_", " "))
    for ds, m in zip(d["data"], "osd^v"):
        ax.errorbar(ds["energy"], ds["intensity"], yerr=[ds["err_lo"], ds["err_hi"]], fmt=m, ms=3, label=ds["label"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(0.3, 100)
    ax.set_xlabel("E (keV)")
    ax.set_ylabel("E$^2$ dN/dE (keV$^2$ cm$^{-2}$ s$^{-1}$ keV$^{-1}$ sr$^{-1}$)")
    ax.legend(fontsize=6)
    fig.tight_layout()
    return fig


FIGURE_DATA = {"xlf": xlf_data, "nh": nh_data, "ct": ct_data, "counts": counts_data, "cxb": cxb_data}
PLOTS = {"xlf": plot_xlf, "nh": plot_nh, "ct": plot_ct, "counts": plot_counts, "cxb": plot_cxb}


def figure_data(name: str, run, max_samples: int | None = 200, seed: int = 0) -> dict:
    """The data dict of figure ``name`` (one of :data:`FIGURES`) for a run."""
    if name not in FIGURE_DATA:
        raise PopsynthError(f"no figure {name!r}", f"choose from {', '.join(FIGURES)}")
    if name == "cxb":
        return cxb_data(run)
    return FIGURE_DATA[name](run, max_samples=max_samples, seed=seed)


def write_figures(run_folder, out, which=FIGURES, max_samples: int | None = 200, seed: int = 0, fmt: str = "png",
                  dpi: int = 120, log=print) -> list[Path]:
    """Draw the figures ``which`` of the run in ``run_folder`` into ``out``: <name>.<fmt> and <name>.ecsv each.

    Returns the paths written."""
    from .io import atomic_write
    from .io.ecsv import write_ecsv
    from .results import load_run

    bad = [w for w in which if w not in FIGURES]
    if bad:
        raise PopsynthError(f"no figure(s) {', '.join(bad)}", f"choose from {', '.join(FIGURES)}")
    if max_samples is not None and int(max_samples) < 1:
        raise PopsynthError(f"--max-samples must be >= 1, got {max_samples}", "pass e.g. --max-samples 200")
    if dpi < 1:
        raise PopsynthError(f"dpi {dpi} is not >= 1", "pass --dpi 120")
    _require_matplotlib()
    run = load_run(run_folder)
    outp = Path(out)
    if outp.exists() and not outp.is_dir():
        raise PopsynthError(f"--out {outp} is a file", "pass a folder")
    try:
        outp.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PopsynthError(f"cannot create the output folder {outp} ({err.strerror})", "pass a writable --out folder") from None
    import matplotlib.pyplot as plt

    written = []
    for name in dict.fromkeys(which):
        data = figure_data(name, run, max_samples=max_samples, seed=seed)
        table = figure_table(name, data)
        tpath = outp / f"{name}.ecsv"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_ecsv(tpath, table)
        fig = PLOTS[name](data)
        fpath = outp / f"{name}.{fmt}"
        atomic_write(fpath, lambda tmp, fig=fig: fig.savefig(tmp, dpi=dpi, format=fmt))
        plt.close(fig)
        written += [fpath, tpath]
        log(f"wrote {fpath} and {tpath}")
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m popsynth.compare",
        description="Figures of a finished run against published data: XLF (with the binned XLFs of Ueda et al. 2014 "
                    "and Miyaji et al. 2015), N_H distributions, intrinsic CT fraction, number counts, CXB. Each "
                    "figure is written as <name>.png with its numbers in <name>.ecsv. See docs/compare.md.")
    p.add_argument("run", help="run folder written by train.py (holds xlf_best.h5), or its xlf_best.h5")
    p.add_argument("--out", required=True, help="output folder for the figures and tables")
    p.add_argument("--which", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)} (default: all)")
    p.add_argument("--max-samples", type=int, default=200,
                   help="thin the run's weight samples to at most this many for the bands (default 200)")
    p.add_argument("--seed", type=int, default=0, help="seed of the thinning (default 0)")
    p.add_argument("--format", default="png", choices=("png", "pdf", "svg"), help="figure format (default png)")
    p.add_argument("--dpi", type=int, default=120, help="figure resolution (default 120)")
    return p


def main(argv=None) -> int:
    """Command line entry; returns 0, or 2 after a one-line error."""
    args = build_parser().parse_args(argv)
    try:
        which = tuple(w.strip() for w in args.which.split(",") if w.strip())
        write_figures(args.run, args.out, which, max_samples=args.max_samples, seed=args.seed, fmt=args.format,
                      dpi=args.dpi)
    except PopsynthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

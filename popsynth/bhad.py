"""Black-hole accretion history from a fitted XLF: the accretion-rate density Psi_BH(z), the
accreted mass density rho_BH(z), their split by N_H class, with the run's uncertainty.

Definitions (Vito et al. 2016, MNRAS 463, 348, eq. 5; Soltan 1982)::

    Psi_BH(z) = (1 - eps) / (eps c^2) * int dlog L  int dlog N_H  K_bol(L) L phi(z, L, N_H)

in Msun yr^-1 Mpc^-3, with L the intrinsic rest-frame 2-10 keV luminosity (erg/s), phi in
Mpc^-3 dex^-2, K_bol = L_bol / L(2-10 keV) and eps the radiative efficiency (default 0.1). On the
grid the luminosity integral of each cell is exact: sum_l K_bol(L_l) phi1[z, l, n] L_l dlogL_l,
where phi1 is the starting cube's L-weighted cell average (:func:`popsynth.xlf.build_phi0` with
``l_moment=1``, the form the CXB uses) and K_bol is taken at the cell centre (cells of 0.05 dex:
K_bol varies by < 1 % across a cell). With block weights every term is linear in w:
Psi[b, z] = sum_k w[b, k] R[k, z] (:func:`bhad_response`).

The mass accreted from the top of the grid (z_max = 5) down to z::

    rho_BH(z) = int_z^{z_max} Psi_BH(z') |dt/dz'| dz',   dt/dz = -1 / ((1 + z) H(z))

in Msun Mpc^-3, integrated exactly in cosmic time: Psi is the piecewise-linear interpolant in z of
its node values, each grid interval is cut into 16 sub-intervals, and dt of each sub-interval is the
difference of astropy ages (the run's flat LambdaCDM, H0 = 70, Om0 = 0.3). Below the first node
(z < 0.002) Psi is held at its first-node value. Nothing is accreted above z_max in this sum.

Bolometric corrections (:data:`KBOL_MODELS`):

* ``constant``: K_bol = 10 at every L (Vito et al. 2016 sec. 4.5, appropriate for log L_X <~ 42).
* ``duras2020``: K_X(L_X) = a [1 + (log10(L_X / L_sun) / b)^c], a = 15.33, b = 11.48, c = 16.20
  (Duras et al. 2020, A&A 636, A73, the universal type 1 + type 2 hard-X-ray correction as a
  function of L_X, Table 1), L_sun = 3.828e33 erg/s (IAU 2015 nominal).
* ``hopkins2007``: L_bol / L_HX = c1 (L_bol / 1e10 L_sun)^k1 + c2 (L_bol / 1e10 L_sun)^k2,
  c1 = 10.83, k1 = 0.28, c2 = 6.08, k2 = -0.020 (Hopkins, Richards & Hernquist 2007, ApJ 654, 731,
  eq. 2 and Table 1, hard X-ray row); solved for L_bol at given L_X by bisection (monotonic).

``popsynth bhad RUN --out DIR`` writes ``bhad.ecsv`` (Psi and rho per z node: median and
16-84 % of the total and of each N_H class), ``bhad_summary.json``, ``faint_end_xlf.ecsv``
(the XLF at z = 4 and 5, log L = 41-44, for comparison with Vito et al. 2016 Fig. 16) and
``bhad.png``. See docs/bhad_unresolved.md.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ._tensor import DTYPE, as_tensor
from .cosmology import CosmologyParams
from .blocks import BLOCKS
from .constants import C_CM_S, L_SUN_ERG_S, M_SUN_G, YR_S
from .errors import PopsynthError
from .grid import NH_CLASS_NAMES, Grid
from .response import xlf_response

__all__ = ["KBOL_MODELS", "kbol", "bhad_response", "psi_bh", "accreted_mass_density", "compute_bhad",
           "load_literature", "write_outputs", "plot_bhad", "main"]

#: erg s^-1 Mpc^-3 of L_bol -> Msun yr^-1 Mpc^-3 of accreted rest mass, before (1 - eps) / eps.
ERG_S_TO_MSUN_YR = YR_S / (C_CM_S ** 2 * M_SUN_G)

KBOL_MODELS = ("constant", "duras2020", "hopkins2007")
DURAS2020_LX = (15.33, 11.48, 16.20)  # a, b, c: Duras et al. 2020, Table 1, K_X(L_X), general sample
HOPKINS2007_HX = (10.83, 0.28, 6.08, -0.020)  # c1, k1, c2, k2: Hopkins et al. 2007, Table 1, hard X-ray

#: Redshift ranges of the summary numbers (z nodes of the default grid).
SUMMARY_Z = (0.1, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0)


# ---------------------------------------------------------------------------- bolometric corrections
def _hopkins_ratio(log_lbol_sun: np.ndarray) -> np.ndarray:
    c1, k1, c2, k2 = HOPKINS2007_HX
    x = 10.0 ** (log_lbol_sun - 10.0)
    return c1 * x ** k1 + c2 * x ** k2


def kbol(logl_x, model: str = "duras2020", constant: float = 10.0) -> np.ndarray:
    """Bolometric correction K_bol = L_bol / L(2-10 keV) at intrinsic log10 L_X (erg/s).

    Args: logl_x array-like [...] (log10 erg/s); model one of :data:`KBOL_MODELS`; constant the
    value of the ``constant`` model (dimensionless, > 0).
    Returns float64 array of the same shape (dimensionless). See the module docstring for the
    published forms and coefficients."""
    x = np.asarray(logl_x, dtype=np.float64)
    if model not in KBOL_MODELS:
        raise PopsynthError(f"unknown bolometric correction '{model}'", f"use one of {', '.join(KBOL_MODELS)}")
    if not np.all(np.isfinite(x)):
        raise PopsynthError("log L_X values must be finite", "pass log10 of the 2-10 keV luminosity in erg/s")
    if model == "constant":
        if not (isinstance(constant, (int, float)) and math.isfinite(constant) and constant > 0):
            raise PopsynthError(f"constant K_bol must be a finite number > 0, got {constant!r}", "pass e.g. --kbol-constant 10")
        return np.full_like(x, float(constant))
    lx_sun = x - math.log10(L_SUN_ERG_S)
    if model == "duras2020":
        a, b, c = DURAS2020_LX
        return a * (1.0 + (lx_sun / b) ** c)
    # hopkins2007: solve log L_bol - log ratio(L_bol) = log L_X for log L_bol (monotonic increasing)
    lo = lx_sun.copy()  # ratio >= 1 at these luminosities, so log L_bol >= log L_X
    hi = lx_sun + 4.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        f = mid - np.log10(_hopkins_ratio(mid)) - lx_sun
        lo, hi = np.where(f < 0, mid, lo), np.where(f < 0, hi, mid)
    lbol = 0.5 * (lo + hi)
    return 10.0 ** (lbol - lx_sun)


# ---------------------------------------------------------------------------- Psi and rho
def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1):
        raise PopsynthError(f"radiative efficiency must be a number in (0, 1), got {eps!r}", "pass e.g. --eps 0.1")
    return float(eps)


def bhad_response(phi1: torch.Tensor, grid: Grid, kbol_cells, eps: float = 0.1) -> torch.Tensor:
    """Accretion-rate density of each block at unit weight: R[k, z] in Msun yr^-1 Mpc^-3.

    Args:
      phi1: [nz, nL, nN] L-weighted starting cube (Mpc^-3 dex^-2), sum(phi1 L_c dlogL) exact in L.
      grid: the XLF grid.
      kbol_cells: [nL] K_bol at the log L cell centres (dimensionless).
      eps: radiative efficiency in (0, 1).
    Returns float64 [15, nz]; Psi[b, z] = w[b] @ R for block weights w [B, 15]."""
    eps = _check_eps(eps)
    kb = as_tensor(np.asarray(kbol_cells, dtype=np.float64), phi1.device)
    if kb.shape != (grid.logl.size,):
        raise PopsynthError(f"kbol_cells must have {grid.logl.size} values (one per log L cell), got {tuple(kb.shape)}",
                            "evaluate K_bol at grid.logl")
    lw = as_tensor(10.0 ** grid.logl * grid.dlogl, phi1.device) * kb  # [nL] erg/s dex
    dn = as_tensor(grid.dlognh, phi1.device)
    masks = grid.block_masks(phi1.device)  # [15, nL, nN]
    per = torch.einsum("zln,l,n,kln->kz", phi1.to(DTYPE), lw, dn, masks)  # erg s^-1 Mpc^-3
    return per * ((1.0 - eps) / eps * ERG_S_TO_MSUN_YR)


def psi_bh(weights: torch.Tensor, response: torch.Tensor, by_class: bool = False) -> torch.Tensor:
    """Psi_BH for block weights [B, 15] and a response [15, nz]: [B, nz] Msun yr^-1 Mpc^-3, or
    [B, 3, nz] split by N_H class (unabsorbed, Compton-thin, Compton-thick) when ``by_class``."""
    w = torch.as_tensor(weights, dtype=DTYPE, device=response.device)
    if w.ndim != 2 or w.shape[1] != response.shape[0]:
        raise PopsynthError(f"weights must be [B, {response.shape[0]}], got {tuple(w.shape)}", "pass one row of 15 block weights per sample")
    if not by_class:
        return w @ response
    cls = BLOCKS.nh_class().to(response.device)
    return torch.stack([w[:, cls == c] @ response[cls == c] for c in range(BLOCKS.n_classes)], 1)


def accreted_mass_density(z, psi, cosmology: CosmologyParams = CosmologyParams(), n_sub: int = 16):
    """rho_BH(z) = int_z^{z_max} Psi |dt/dz'| dz' at the nodes and at z = 0.

    Args: z [nz] increasing redshift nodes (> 0); psi [..., nz] Msun yr^-1 Mpc^-3 at the nodes;
    n_sub sub-intervals per grid interval (Psi linear in z inside an interval, dt exact from
    astropy ages).
    Returns (rho_nodes [..., nz], rho_z0 [...]) in Msun Mpc^-3 (numpy float64). Psi is held at its
    first-node value over 0 < z < z[0]."""
    z = np.asarray(z, dtype=np.float64)
    p = np.asarray(psi.detach().cpu() if isinstance(psi, torch.Tensor) else psi, dtype=np.float64)
    if z.ndim != 1 or z.size < 2 or np.any(np.diff(z) <= 0) or z[0] <= 0:
        raise PopsynthError("z nodes must be an increasing 1-D array of values > 0", "pass the grid's z nodes")
    if p.shape[-1] != z.size:
        raise PopsynthError(f"psi has {p.shape[-1]} values along z, the z grid {z.size}", "pass psi on the same nodes")
    cosmo = cosmology.astropy()
    s = np.linspace(0.0, 1.0, n_sub + 1)
    zf = (z[:-1, None] + np.diff(z)[:, None] * s[None, :])  # [nz-1, n_sub+1]
    age_yr = cosmo.age(zf.ravel()).to_value("yr").reshape(zf.shape)
    dt = age_yr[:, :-1] - age_yr[:, 1:]  # [nz-1, n_sub] > 0 yr
    smid = 0.5 * (s[:-1] + s[1:])
    pmid = p[..., :-1, None] * (1 - smid) + p[..., 1:, None] * smid  # [..., nz-1, n_sub]
    seg = (pmid * dt).sum(-1)  # [..., nz-1] Msun Mpc^-3 accreted in each interval
    rho = np.concatenate([np.flip(np.cumsum(np.flip(seg, -1), -1), -1), np.zeros(p.shape[:-1] + (1,))], -1)
    t0 = cosmo.age(0.0).to_value("yr") - cosmo.age(z[0]).to_value("yr")
    return rho, rho[..., 0] + p[..., 0] * t0


# ---------------------------------------------------------------------------- literature
def load_literature(name: str):
    """A table of data/literature_products (astropy Table, units and provenance in ``meta``), read by
    :func:`popsynth.io.ecsv.read_ecsv` (a missing or damaged file is a one-line PopsynthError)."""
    from .io.ecsv import read_ecsv
    from .paths import data_dir

    path = data_dir() / "literature_products" / f"{name}.ecsv"
    return read_ecsv(path, label="literature table", fix="reinstall popsynth or set POPSYNTH_DATA to a full data/ copy").table


# ---------------------------------------------------------------------------- from a run
def _percentiles(x: np.ndarray) -> dict:
    q = np.percentile(x, [16, 50, 84], axis=0)
    return {"p16": q[0], "p50": q[1], "p84": q[2]}


def compute_bhad(run, kbol_model: str = "duras2020", eps: float = 0.1, kbol_constant: float = 10.0,
                 max_samples: int | None = 400, seed: int = 0) -> dict:
    """Psi_BH(z) and rho_BH(z) of a finished run (:func:`popsynth.results.load_run`) over its weight samples.

    Returns a dict of numpy arrays: ``z`` [nz]; ``psi`` [N, nz] and ``psi_class`` [N, 3, nz]
    (Msun yr^-1 Mpc^-3); ``rho`` [N, nz], ``rho_class`` [N, 3, nz] (Msun Mpc^-3, accreted from
    z_max down to each node); ``rho0`` [N], ``rho0_class`` [N, 3] at z = 0; ``best`` the same
    for the run's best weights; ``uncertainty`` (the run's kind of spread) and the settings."""
    from .run import STARTING_XLFS

    eps = _check_eps(eps)
    grid = Grid()
    cfg = run.config
    phi1 = STARTING_XLFS[cfg.xlf][0](grid, cfg.absorption, l_moment=1)
    resp = bhad_response(phi1, grid, kbol(grid.logl, kbol_model, kbol_constant), eps)
    try:
        w = run.weight_samples(max_samples=max_samples, seed=seed)
    except PopsynthError:
        w = run.best_weights()
    out = {"z": grid.z, "kbol_model": kbol_model, "kbol_constant": kbol_constant, "eps": eps,
           "uncertainty": run.uncertainty, "n_samples": int(w.shape[0])}
    # Comparison curves: the published XLFs themselves (all block weights 1), through the same K_bol,
    # eps and absorption function: U14 LDDE (Ueda et al. 2014) and A15 LADE (Aird et al. 2015, hard).
    ones = torch.ones(1, resp.shape[0], dtype=DTYPE)
    out["literature_xlf"] = {}
    for name, (make, label) in STARTING_XLFS.items():
        r_lit = resp if name == cfg.xlf else bhad_response(make(grid, cfg.absorption, l_moment=1), grid,
                                                           kbol(grid.logl, kbol_model, kbol_constant), eps)
        out["literature_xlf"][name] = {"label": label, "psi": psi_bh(ones, r_lit)[0].numpy()}
    for key, ww in (("", w), ("best_", run.best_weights())):
        pc = psi_bh(ww, resp, by_class=True).numpy()
        ps = pc.sum(1)
        rho, rho0 = accreted_mass_density(grid.z, ps)
        rhoc, rho0c = accreted_mass_density(grid.z, pc)
        out.update({key + "psi": ps, key + "psi_class": pc, key + "rho": rho, key + "rho_class": rhoc,
                    key + "rho0": rho0, key + "rho0_class": rho0c})
    return out


def faint_end_xlf(run, z_values=(4.0, 5.0), logl_max: float = 44.0, max_samples: int | None = 400, seed: int = 0) -> dict:
    """The XLF summed over N_H (all AGN, Compton-thick included), dN/(dV dlog L) in Mpc^-3 dex^-1,
    at the z nodes ``z_values`` and log L cells up to ``logl_max``: {"z", "logl", "p16", "p50", "p84"},
    arrays [nzv, nL']. For comparison with the Vito et al. 2016 Fig. 16 upper limits (not tabulated
    in the paper; see docs/bhad_unresolved.md)."""
    grid = Grid()
    iz = [int(np.argmin(np.abs(grid.z - zv))) for zv in z_values]
    il = grid.logl < logl_max
    try:
        w = run.weight_samples(max_samples=max_samples, seed=seed)
    except PopsynthError:
        w = run.best_weights()
    prob = run.problem()
    phi0 = prob.phi0[iz][:, il]  # [nzv, nL', nN]
    masks = grid.block_masks(phi0.device)[:, il]  # [15, nL', nN]
    resp = xlf_response(phi0, as_tensor(grid.dlognh, phi0.device), masks)  # [15, nzv, nL']
    x = torch.einsum("bk,kzl->bzl", w.to(DTYPE), resp).numpy()
    return {"z": grid.z[iz], "logl": grid.logl[il], **_percentiles(x)}


# ---------------------------------------------------------------------------- outputs
def _provenance(run) -> dict:
    return {"run_folder": str(run.folder), "run_mode": run.mode, "spec_set": run.spec_set,
            "uncertainty": run.uncertainty, "cosmology": "flat LambdaCDM H0 = 70 km/s/Mpc, Om0 = 0.3"}


def summary_numbers(res: dict) -> dict:
    """The JSON summary: Psi at SUMMARY_Z, rho(z = 0) total and by class with CT share, and the
    local mass-density estimates (data/literature_products/local_bh_mass_density.ecsv)."""
    z = res["z"]
    out = {"units": {"psi": "Msun / (yr Mpc3)", "rho": "Msun / Mpc3"}, "kbol_model": res["kbol_model"],
           "eps": res["eps"], "n_samples": res["n_samples"], "uncertainty": res["uncertainty"], "psi": {}}
    for zz in SUMMARY_Z:
        i = int(np.argmin(np.abs(z - zz)))
        q = _percentiles(res["psi"][:, i])
        out["psi"][f"z={z[i]:.3g}"] = {k: float(v) for k, v in q.items()}
    q = _percentiles(res["rho0"])
    out["rho_bh_z0"] = {k: float(v) for k, v in q.items()}
    out["rho_bh_z0_class"] = {name: {k: float(v) for k, v in _percentiles(res["rho0_class"][:, c]).items()}
                              for c, name in enumerate(NH_CLASS_NAMES)}
    share = res["rho0_class"] / res["rho0"][:, None]
    out["rho_bh_z0_share"] = {name: {k: float(v) for k, v in _percentiles(share[:, c]).items()}
                              for c, name in enumerate(NH_CLASS_NAMES)}
    out["rho_bh_z0_best"] = float(np.asarray(res["best_rho0"]).ravel()[0])
    try:
        lit = load_literature("local_bh_mass_density")
        out["local_estimates"] = [{"reference": str(r["reference"]), "rho": float(r["rho"]), "err_lo": float(r["err_lo"]),
                                   "err_hi": float(r["err_hi"]),
                                   "model_over_local": float(q["p50"] / r["rho"])} for r in lit]
    except PopsynthError:
        out["local_estimates"] = []
    return out


def write_outputs(run, res: dict, out: Path, xlf_faint: dict | None = None) -> dict:
    """Write bhad.ecsv, faint_end_xlf.ecsv (if given) and bhad_summary.json into ``out`` (each atomically);
    returns the summary."""
    from astropy.table import Table

    from .io.ecsv import write_ecsv
    from .io.files import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = Table()
    t["z"] = res["z"]
    t["z"].description = "redshift node of the XLF grid"
    for what, unit, desc in (("psi", "solMass / (yr Mpc3)", "black-hole accretion-rate density (Vito et al. 2016 eq. 5)"),
                             ("rho", "solMass / Mpc3", "mass accreted from z = 5 down to z")):
        for suffix, arr in [("", res[what])] + [(f"_{n}", res[f"{what}_class"][:, c]) for c, n in enumerate(NH_CLASS_NAMES)]:
            q = _percentiles(arr)
            for p in ("p16", "p50", "p84"):
                col = f"{what}{suffix}_{p}"
                t[col] = q[p]
                t[col].unit = unit
                t[col].description = f"{desc}{' of the ' + suffix[1:] + ' class' if suffix else ''}, {p} over weight samples"
    for name, lit in res.get("literature_xlf", {}).items():
        col = f"psi_{name}_xlf"
        t[col] = lit["psi"]
        t[col].unit = "solMass / (yr Mpc3)"
        t[col].description = f"Psi of the published {lit['label']} XLF (block weights 1), same K_bol and eps"
    t.meta.update({"product": "popsynth bhad", **_provenance(run), "kbol_model": res["kbol_model"],
                   "kbol_constant": res["kbol_constant"], "eps": res["eps"], "n_samples": res["n_samples"],
                   "definition": "Psi = (1-eps)/(eps c^2) int K_bol(L) L phi dlogL dlogNH; rho(z) = int_z^5 Psi |dt/dz| dz"})
    write_ecsv(out / "bhad.ecsv", t)
    if xlf_faint is not None:
        f = Table()
        rows_z = np.repeat(xlf_faint["z"], len(xlf_faint["logl"]))
        f["z"] = rows_z
        f["logl"] = np.tile(xlf_faint["logl"], len(xlf_faint["z"]))
        f["logl"].unit = "dex(erg / s)"
        f["logl"].description = "log10 intrinsic 2-10 keV luminosity, cell centre"
        for p in ("p16", "p50", "p84"):
            f[f"phi_{p}"] = xlf_faint[p].ravel()
            f[f"phi_{p}"].unit = "1 / Mpc3"
            f[f"phi_{p}"].description = f"dN/(dV_c dlogL) per dex, all N_H, {p} over weight samples"
        f.meta.update({"product": "popsynth bhad faint-end XLF", **_provenance(run)})
        write_ecsv(out / "faint_end_xlf.ecsv", f)
    summ = {"provenance": _provenance(run), **summary_numbers(res)}
    write_json(out / "bhad_summary.json", summ)
    return summ


def plot_bhad(res: dict, path: Path) -> Path:
    """bhad.png: Psi_BH(z) (median, 16-84 %) total and by N_H class, the published U14 and A15 XLFs
    through the same K_bol (dashed), with Vito et al. 2016 Table 4
    and the Madau & Dickinson 2014 eq. 15 SFRD scaled by 1e-3 (shape only); right panel rho_BH(z)
    with the local estimates at z = 0. matplotlib is imported here (optional extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = res["z"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.4))
    colors = ("tab:blue", "tab:orange", "tab:red")
    q = _percentiles(res["psi"])
    a1.fill_between(z, q["p16"], q["p84"], color="k", alpha=0.2, lw=0)
    a1.plot(z, q["p50"], "k-", label=f"popsynth total (K_bol {res['kbol_model']}, eps={res['eps']:g})")
    for c, n in enumerate(NH_CLASS_NAMES):
        qc = _percentiles(res["psi_class"][:, c])
        a1.plot(z, qc["p50"], color=colors[c], lw=1.2, label=n.replace("_", " "))
    zz = np.linspace(0, 5, 200)
    sfrd = 0.015 * (1 + zz) ** 2.7 / (1 + ((1 + zz) / 2.9) ** 5.6)
    a1.plot(zz, 1e-3 * sfrd, "g:", label="SFRD x 1e-3 (Madau & Dickinson 2014 eq. 15; shape)")
    for (name, lit), ls in zip(res.get("literature_xlf", {}).items(), ("--", "-.")):
        a1.plot(z, lit["psi"], color="grey", ls=ls, lw=1.0, label=f"{lit['label']} XLF, same K_bol")
    try:
        v = load_literature("vito2016_bhad")
        det = v[v["sample"] == "x-ray detected"]
        a1.errorbar(det["z_median"], det["bhad"], yerr=[det["err_lo"], det["err_hi"]],
                    xerr=[det["z_median"] - det["z_lo"], det["z_hi"] - det["z_median"]], fmt="s", color="grey",
                    label="Vito+16 Tab. 4, X-ray detected AGN")
        st = v[v["sample"] == "stacked all, case i"]
        up = st["upper_limit"]
        a1.errorbar(st["z_median"][~up], st["bhad"][~up], yerr=st["err_hi"][~up], fmt="o", color="m",
                    label="Vito+16 Tab. 4, stacked undetected (case i)")
        a1.errorbar(st["z_median"][up], st["bhad"][up], yerr=0.3 * st["bhad"][up], uplims=True, fmt="none", color="m")
    except PopsynthError:
        pass
    a1.set_yscale("log")
    a1.set_xlabel("z")
    a1.set_ylabel(r"$\Psi_{BH}$ [M$_\odot$ yr$^{-1}$ Mpc$^{-3}$]")
    a1.set_xlim(0, 6.6)
    a1.set_ylim(1e-8, 1e-3)
    a1.legend(fontsize=6.5, loc="lower center")
    qr = _percentiles(res["rho"])
    a2.fill_between(z, qr["p16"], qr["p84"], color="k", alpha=0.2, lw=0)
    a2.plot(z, qr["p50"], "k-", label="accreted from z = 5")
    for c, n in enumerate(NH_CLASS_NAMES):
        a2.plot(z, _percentiles(res["rho_class"][:, c])["p50"], color=colors[c], lw=1.2, label=n.replace("_", " "))
    try:
        lit = load_literature("local_bh_mass_density")
        for i, r in enumerate(lit):
            a2.errorbar([0.02 + 0.03 * i], [r["rho"]], yerr=[[r["err_lo"]], [r["err_hi"]]], fmt="D", ms=4,
                        label=f"local: {r['reference']}")
    except PopsynthError:
        pass
    a2.set_yscale("log")
    a2.set_xlabel("z")
    a2.set_ylabel(r"$\rho_{BH}$ [M$_\odot$ Mpc$^{-3}$]")
    a2.legend(fontsize=6.5)
    fig.tight_layout()
    from .io.files import atomic_write

    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix[1:] or "png"))
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- command line
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="popsynth bhad", description=(
        "Black-hole accretion-rate density Psi_BH(z) and accreted mass density rho_BH(z) of a run "
        "(Vito et al. 2016 eq. 5), by N_H class, median and 16-84 % over the run's weight samples."))
    p.add_argument("run", help="run folder written by train.py (or its xlf_best.h5)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/products/bhad)")
    p.add_argument("--kbol", default="duras2020", choices=KBOL_MODELS,
                   help="bolometric correction: constant (K_bol = --kbol-constant, Vito+16 use 10), "
                        "duras2020 (Duras et al. 2020, default) or hopkins2007")
    p.add_argument("--kbol-constant", type=float, default=10.0, help="K_bol of --kbol constant (default 10)")
    p.add_argument("--eps", type=float, default=0.1, help="radiative efficiency (default 0.1)")
    p.add_argument("--max-samples", type=int, default=400, help="weight samples used (seeded subset; default 400)")
    p.add_argument("--no-figure", action="store_true", help="skip bhad.png (no matplotlib needed)")
    args = p.parse_args(argv)
    from .results import load_run

    try:
        run = load_run(args.run)
        out = Path(args.out) if args.out else run.folder / "products" / "bhad"
        res = compute_bhad(run, args.kbol, args.eps, args.kbol_constant, args.max_samples)
        summ = write_outputs(run, res, out, faint_end_xlf(run, max_samples=args.max_samples))
        if not args.no_figure:
            plot_bhad(res, out / "bhad.png")
    except PopsynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    r = summ["rho_bh_z0"]
    print(f"rho_BH(z=0) = {r['p50']:.3g} (+{r['p84'] - r['p50']:.2g} / -{r['p50'] - r['p16']:.2g}) Msun/Mpc^3; "
          f"Compton-thick share {summ['rho_bh_z0_share']['compton_thick']['p50']:.1%}; outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

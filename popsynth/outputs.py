"""The outputs of a point-estimate run (modes a19, joint, cxb): the selection of the best start,
the files (xlf_best.h5, xlf_best_a19.npy, cxb_model.ecsv, summary.json) and the printed table.

The posterior mode's outputs are :mod:`popsynth.posterior_run`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .config import STARTING_XLFS, RunConfig
from .cosmology import CosmologyParams
from .errors import PopsynthError
from .fit import A19_CONVERGED_COST, a19_cost, chi2_by_dataset
from .blocks import BLOCKS
from .io import export_xlf_hdf5, run_files, write_a19_layout, write_cxb_table, write_json
from .posterior_run import A19_TABLE5, format_literature_rows
from .response import intrinsic_ct_fraction
from .xlf import apply_block_weights


@dataclass
class Selection:
    """The statistics of every start [B] and the selected one (:func:`select_start`)."""

    cost: torch.Tensor  # A19 eq. B3 cost [B]
    chi2: torch.Tensor  # CXB chi2 per data set [B, n_datasets]
    chi2_tot: torch.Tensor  # CXB chi2 [B]
    converged: torch.Tensor  # bool [B]: cost <= A19_CONVERGED_COST
    cons_chi2: dict  # constraint name -> chi2 [B] ({} without constraints)
    cons_tot: torch.Tensor  # total constraint chi2 [B] (zeros without constraints)
    best: int  # index of the selected start
    rule: str  # the selection rule, in words


def select_start(cfg: RunConfig, prob, w: torch.Tensor) -> Selection:
    """Evaluate all starts ``w`` [B, 15] and select one by the rule of ``cfg.mode``.

    Among the CXB-converged starts (all, when none converged): mode a19, the lowest counts +
    CT-fraction chi2 (A19 sec. 4), only among those with CXB chi2 <= ``select_chi2_max`` when
    set; mode joint, the lowest CXB + constraints chi2; mode cxb, the lowest CXB chi2.
    PopsynthError when ``select_chi2_max`` leaves no start.
    """
    data = prob.data
    pred = prob.model(w)
    cost = a19_cost(pred, data)
    chi2 = chi2_by_dataset(pred, data, cfg.sys_floor)
    chi2_tot = chi2.sum(-1)
    converged = cost <= A19_CONVERGED_COST
    pool = converged if bool(converged.any()) else torch.ones_like(converged)
    if cfg.mode == "a19" and cfg.select_chi2_max is not None:  # the constrained selection
        capped = pool & (chi2_tot <= cfg.select_chi2_max)
        if not bool(capped.any()):
            raise PopsynthError(f"no converged start has a CXB chi2 <= {cfg.select_chi2_max:g} (lowest "
                                f"{float(chi2_tot.min()):.1f})", "raise `select_chi2_max` or drop it")
        pool = capped
    cons = prob.constraints
    cons_chi2 = cons.chi2(w) if cons is not None else {}
    cons_tot = cons.total(w) if cons is not None else torch.zeros_like(chi2_tot)
    if cfg.mode == "a19":  # A19 sec. 4: the converged start that best fits counts and CT fractions
        select_stat, select_rule = cons_tot, "lowest counts + CT-fraction chi2 among CXB-converged starts"
        if cfg.select_chi2_max is not None:
            select_rule += f" with CXB chi2 <= {cfg.select_chi2_max:g}"
    elif cfg.mode == "joint":
        select_stat = chi2_tot + cons_tot
        select_rule = "lowest CXB + counts + CT-fraction chi2 among CXB-converged starts"
    else:
        select_stat, select_rule = chi2_tot, "lowest CXB chi2 among converged starts"
    best = int(torch.argmin(torch.where(pool, select_stat, torch.full_like(select_stat, math.inf))))
    return Selection(cost, chi2, chi2_tot, converged, cons_chi2, cons_tot, best, select_rule)


def write_outputs(cfg: RunConfig, prob, w: torch.Tensor, step: int, steps: int, stalled: torch.Tensor,
                  wall: float, out: Path, warnings: list[str] | None = None) -> dict:
    """Select the best start (:func:`select_start`) of the fitted weights ``w`` [B, 15] and write
    xlf_best.h5, xlf_best_a19.npy, cxb_model.ecsv and summary.json to ``out``; returns the summary.

    ``prob`` is the run's :class:`popsynth.run.Problem`; ``stalled`` bool [B]; ``wall`` seconds."""
    data, grid, cons = prob.data, prob.grid, prob.constraints
    sel = select_start(cfg, prob, w)
    cost, chi2, chi2_tot, converged, best = sel.cost, sel.chi2, sel.chi2_tot, sel.converged, sel.best
    select_rule, cons_chi2, cons_tot = sel.rule, sel.cons_chi2, sel.cons_tot
    ctf = {z: intrinsic_ct_fraction(w, c) for z, c in prob.ct_blocks.items()}
    wb = w[best:best + 1]
    cube = apply_block_weights(prob.phi0, wb, grid)[0].cpu().numpy()
    n_pts = [int((data.dataset == i).sum()) for i in range(len(data.names))]
    fit_stats = {
        "chi2_cxb": {n: float(chi2[best, i]) for i, n in enumerate(data.names)},
        "n_points": dict(zip(data.names, n_pts)),
        "chi2_total": float(chi2_tot[best]),
        "dof": data.n - BLOCKS.n,
        "reduced_chi2_cxb": float(chi2_tot[best]) / (data.n - BLOCKS.n),
        "a19_cost": float(cost[best]),
    }
    if cons is not None:
        fit_stats["chi2_constraints"] = {n: float(v[best]) for n, v in cons_chi2.items()}
        fit_stats["n_points_constraints"] = {n: cons.n_points(n) for n in cons.names}
        fit_stats["chi2_constraints_total"] = float(cons_tot[best])
        fit_stats["ct_fractions_observed_vs_model"] = cons.ct_fractions(w[best:best + 1])
    spec = cfg.spectral_set
    attrs = {"spec_set": cfg.spec_set, "spec_set_description": spec.description, "spectral_set": spec.describe(),
             "cosmology": CosmologyParams().describe(), "weights": wb[0].tolist(), "block_names": BLOCKS.names(),
             "fit_statistics": fit_stats, "config": cfg.to_dict(), "best_start": best, "selection": select_rule,
             "absorption_function": cfg.absorption, "xlf_start": f"{STARTING_XLFS[cfg.xlf][1]} x absorption function"}
    export_xlf_hdf5(out / "xlf_best.h5", cube, grid, attrs,
                    extra={"weights_all_starts": w.cpu().numpy(), "converged": converged.cpu().numpy(),
                           "a19_cost_all_starts": cost.cpu().numpy(), "chi2_all_starts": chi2_tot.cpu().numpy()})
    write_a19_layout(out / "xlf_best_a19.npy", cube, grid)
    fine = prob.fine
    cols = {"energy": fine.energy.cpu().numpy(), "total": fine(wb)[0].cpu().numpy()}
    by = fine.by_class(wb)[0]
    for c, name in enumerate(BLOCKS.nh_names):
        cols[f"agn_{name}"] = by[c].cpu().numpy()
    cols["galaxies"] = fine.extra.cpu().numpy()
    if int(converged.sum()) >= 2:
        allc = fine(w[converged]).cpu().numpy()
        cols["total_p16"], cols["total_p84"] = np.percentile(allc, [16, 84], axis=0)
    write_cxb_table(out / "cxb_model.ecsv", cols, {
        "quantity": "E^2 dN/dE of the model CXB, best start; total = AGN classes + galaxies",
        "spec_set": cfg.spec_set, "galaxies": cfg.galaxies, "best_start": best, "popsynth_version": __version__,
        "p16_p84": "spread over converged starts" if "total_p16" in cols else "fewer than 2 converged starts"})

    def spread(x: torch.Tensor) -> dict:
        xs = x[converged] if bool(converged.any()) else x
        q = torch.quantile(xs, torch.tensor([0.16, 0.5, 0.84], dtype=xs.dtype, device=xs.device)).tolist()
        return {"median": q[1], "p16": q[0], "p84": q[2], "std": float(xs.std()) if xs.numel() > 1 else 0.0,
                "best_start": float(x[best]), "n": int(xs.numel())}

    summary = {
        "popsynth_version": __version__,
        "spec_set": cfg.spec_set,
        "n_starts": cfg.starts,
        "n_converged": int(converged.sum()),
        "convergence_criterion": f"A19 eq. B3 cost <= {A19_CONVERGED_COST}",
        "n_stalled": int(stalled.sum()),
        "steps_done": step,
        "steps_max": steps,
        "optimizer": cfg.optimizer,
        "loss": cfg.loss,
        "sys_floor": cfg.sys_floor,
        "weight_prior_dex": cfg.weight_prior,
        "seed": cfg.seed,
        "mode": cfg.mode,
        "best_start": best,
        "selection": select_rule,
        "best_weights": dict(zip(BLOCKS.names(), wb[0].tolist())),
        **fit_stats,
        "ct_fraction_z0.1": spread(ctf[0.1]),
        "ct_fraction_z1.0": spread(ctf[1.0]),
        "xlf_start": cfg.xlf, "literature_rows": prob.literature,
        "wall_seconds": round(wall, 3),
        "setup_seconds": round(prob.setup_seconds, 3),
        "warnings": list(warnings or []),
        "spectra": prob.spectra_summary(cfg),
        "files": run_files(out),
    }
    write_json(out / "summary.json", summary)
    return summary


def format_table(s: dict) -> str:
    """A19 Table 5 style: chi^2 per CXB dataset for the best start, plus CT fractions.

    The reference column holds A19's numbers only where A19 gives them for this run's spectral
    set (A19 Table 5 and sec. 6 give them for spectral set 5), "-" elsewhere."""
    t5 = A19_TABLE5.get(s["spec_set"])
    ours = t5 is not None
    labels = {"chandra_cosmos": "Chandra COSMOS", "rxte": "RXTE", "swift_bat": "Swift-BAT"}
    ref_head = f"A19 set {s['spec_set']}" if ours else "A19"

    def ref(key, fmt=".2f"):
        x = t5.get(key) if ours else None
        return f"{x:>12{fmt}}" if x is not None else f"{'-':>12}"

    lines = [f"CXB fit, spectral set {s['spec_set']}: {s['n_converged']}/{s['n_starts']} starts converged "
             f"({s['convergence_criterion']}); best start {s['best_start']}",
             f"{'CXB constraint':<18}{'points':>8}{'chi2':>10}{ref_head:>12}"]
    for name, chi in s["chi2_cxb"].items():
        lines.append(f"{labels.get(name, name):<18}{s['n_points'][name]:>8}{chi:>10.2f}{ref(name)}")
    lines.append(f"{'Total':<18}{sum(s['n_points'].values()):>8}{s['chi2_total']:>10.2f}{ref('total')}")
    lines.append(f"{'Reduced chi2':<18}{s['dof']:>8}{s['reduced_chi2_cxb']:>10.2f}{ref('reduced')}")
    lines += format_literature_rows(s)
    if "chi2_constraints" in s:
        lines.append(f"selected start {s['best_start']} ({s['selection']})")
        lines.append(f"{'Counts / CT constraint':<44}{'points':>7}{'chi2':>10}")
        for name, chi in s["chi2_constraints"].items():
            lines.append(f"{name:<44}{s['n_points_constraints'][name]:>7}{chi:>10.2f}")
        lines.append(f"{'Total':<44}{sum(s['n_points_constraints'].values()):>7}{s['chi2_constraints_total']:>10.2f}")
        lines.append(f"{'Observed CT fraction':<34}{'band keV':>10}{'observed %':>18}{'model %':>9}")
        for c in s["ct_fractions_observed_vs_model"]:
            band = f"{c['band_keV'][0]:g}-{c['band_keV'][1]:g}"
            obs = f"{100 * c['observed']:.1f} +{100 * c['err_hi']:.1f}/-{100 * c['err_lo']:.1f}"
            lines.append(f"{c['survey']:<34}{band:>10}{obs:>18}{100 * c['model']:>9.1f}")
    for z, r in (("0.1", "50 +/- 9 %"), ("1.0", "56 +/- 7 %")):
        c = s[f"ct_fraction_z{z}"]
        lines.append(f"CT fraction to z={z}: {100 * c['median']:.1f} % (16-84 % over converged starts: {100 * c['p16']:.1f}-"
                     f"{100 * c['p84']:.1f} %, selected start {100 * c['best_start']:.1f} %; "
                     f"{'A19 set 5: ' + r if s['spec_set'] == 5 else 'A19: -'})")
    lines.append(f"wall time {s['wall_seconds']:.1f} s; outputs in {Path(s['files']['summary']).parent}")
    return "\n".join(lines)

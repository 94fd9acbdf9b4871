"""The posterior stage of a run (``--mode posterior``): likelihood, sampling and the outputs with intervals.

:func:`build_inference` makes the joint likelihood and the prior of a run; after the batched
optimiser has found the posterior mode (the fit loop of :mod:`popsynth.run`, with
:func:`residual_fn` as its residuals), :func:`posterior_stage` samples the posterior and writes:

* ``xlf_best.h5``: ``phi`` at the posterior mode, ``phi_p16``, ``phi_p50``, ``phi_p84`` (each cell
  depends on one block weight, so the percentile cube is phi0 times the weight's percentile),
  ``posterior_weights`` [chains, samples, 15];
* ``cxb_model.ecsv``: the CXB at the mode with its N_H classes and galaxies, and the posterior
  median and 16-84 % band of the total;
* ``summary.json``: medians and 16-84 % intervals of every block weight, the intrinsic CT fraction
  to z = 0.1 and 1.0, the observed CT fraction of each survey; -2 ln L of each data set at the
  posterior median weights and at the best sample; sampler diagnostics (R-hat, ESS, divergences).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from . import __version__
from .blocks import BLOCKS
from .cosmology import CosmologyParams
from .io import export_xlf_hdf5, run_files, write_a19_layout, write_cxb_table, write_json
from .likelihood import Likelihood, LogWeightPrior, build_likelihood, smoothness_pairs
from .posterior import SamplerConfig, interval, neg_log_posterior, quantiles, sample_posterior
from .response import intrinsic_ct_fraction
from .xlf import apply_block_weights



def build_inference(cfg, prob, device=None) -> tuple[Likelihood, LogWeightPrior]:
    """The run's likelihood (CXB + counts + CT fractions) and prior, from its config and problem."""
    lik = build_likelihood(prob.model, prob.data, prob.constraints, sys_floor=cfg.sys_floor, device=device,
                           norm_sigma=getattr(cfg, "cxb_norm_sigma", 0.0))
    prior = LogWeightPrior(cfg.weight_prior, getattr(cfg, "smooth_prior", 0.0), smoothness_pairs())
    return lik, prior


def residual_fn_for(lik: Likelihood, prior: LogWeightPrior):
    """Residuals [B, n] whose squares sum to -2 ln p(w | data) + const (for the batched optimiser)."""
    return lambda w: torch.cat([lik.residuals(w), prior.residuals(w)], dim=-1)


def posterior_stage(cfg, prob, lik: Likelihood, prior: LogWeightPrior, w_starts: torch.Tensor, step: int, out: Path,
                    wall_fit: float, log=print) -> dict:
    """Sample the posterior from the best optimised start, write the outputs, return the summary."""
    nlp = neg_log_posterior(lik, prior, w_starts)
    best = int(torch.argmin(torch.nan_to_num(nlp, nan=math.inf)))
    w_mode = w_starts[best]
    scfg = SamplerConfig(chains=cfg.chains, warmup=cfg.warmup, samples=cfg.samples, seed=cfg.seed)
    log(f"sampling the posterior: NUTS, {scfg.chains} chains, {scfg.warmup} warm-up (twice: pilot and main) + "
        f"{scfg.samples} kept iterations each")
    post = sample_posterior(lik, prior, w_mode, scfg, progress=cfg.progress)
    diag = post.diagnostics()
    log(f"sampled in {post.seconds:.1f} s: R-hat max {diag['r_hat_max']:.4f}, ESS min {diag['ess_min']:.0f}, "
        f"{post.divergences} divergences")
    return write_posterior_outputs(cfg, prob, lik, prior, w_mode, post, step, out, wall_fit)


def _chi2_table(lik: Likelihood, w: torch.Tensor) -> dict:
    return {n: float(v[0]) for n, v in lik.chi2_by_term(w).items()}


def _normalisation_samples(lik: Likelihood, ws: torch.Tensor, seed: int) -> dict:
    """Posterior of each free CXB normalisation: c | w is Gaussian (mean c*, sd from
    :meth:`CXBTerm.normalisation`), so one exact draw per weight sample gives the marginal."""
    gen = torch.Generator().manual_seed(int(seed))
    out = {}
    for name, (mean, sd) in lik.normalisations(ws).items():
        c = mean + sd * torch.randn(mean.shape, dtype=mean.dtype, generator=gen).to(mean.device)
        out[name] = {**interval(c), "prior_sigma": lik.term(name).norm_sigma}
    return out


def write_posterior_outputs(cfg, prob, lik, prior, w_mode, post, step, out: Path, wall_fit: float) -> dict:
    out = Path(out)
    ws = post.weights  # [N, 15]
    q = quantiles(ws)  # [3, 15]
    w_med = q[1][None]
    lp = neg_log_posterior(lik, prior, ws)
    i_best = int(torch.argmin(lp))
    w_best = ws[i_best:i_best + 1]
    names = BLOCKS.names()
    weights = {n: {"median": float(q[1, k]), "p16": float(q[0, k]), "p84": float(q[2, k]), "mode": float(w_mode[k])}
               for k, n in enumerate(names)}
    ct_intr = {f"ct_fraction_z{z:.1f}": {**interval(intrinsic_ct_fraction(ws, c)),
                                          "mode": float(intrinsic_ct_fraction(w_mode[None], c)[0])}
               for z, c in prob.ct_blocks.items()}
    for z, c in prob.ct_blocks.items():  # the same above log L 42 and 43, where surveys see the sources
        ct_intr[f"ct_fraction_z{z:.1f}_by_min_logl"] = {f"{lmin:g}": interval(intrinsic_ct_fraction(ws, c, lmin))
                                                        for lmin in (42.0, 43.0)}
    observed = []
    for t in lik.terms:
        if t.kind == "ct_fraction":
            observed.append({"survey": t.label, "observed": t.value, "err_lo": t.err_lo, "err_hi": t.err_hi,
                             **{f"model_{k}": v for k, v in interval(t.predict(ws)).items()}})
    chi_med = lik.chi2_of_median_prediction(ws)
    chi_wmed, chi_best = _chi2_table(lik, w_med), _chi2_table(lik, w_best)
    npts = {t.name: t.n_points for t in lik.terms}
    cxb_names = [t.name for t in lik.group("cxb")]

    def group_sum(d, cxb):
        return float(sum(v for k, v in d.items() if (k in cxb_names) == cxb))

    grid = prob.grid
    cube_mode = apply_block_weights(prob.phi0, w_mode[None], grid)[0].cpu().numpy()
    cubes = {f"phi_p{int(round(100 * p))}": apply_block_weights(prob.phi0, q[i][None], grid)[0].cpu().numpy()
             for i, p in enumerate((0.16, 0.5, 0.84))}
    fit_stats = {
        "chi2_definition": "chi2 (Poisson deviance for binned source numbers) of each data set's points; "
                           "at_median: of the posterior-median prediction of every point; at_best_sample: at the "
                           "sample of highest posterior density; at_median_weights: at the per-weight medians (not a "
                           "typical point of a correlated posterior). CXB predictions include each instrument's "
                           "normalisation (conditional mean given the weights) when it is free.",
        "chi2_at_median": chi_med, "chi2_at_best_sample": chi_best, "chi2_at_median_weights": chi_wmed,
        "n_points": npts,
        "cxb_chi2_at_median": group_sum(chi_med, True), "cxb_points": lik.n_points("cxb"),
        "constraints_chi2_at_median": group_sum(chi_med, False), "constraints_points": lik.n_points("constraints"),
        "cxb_chi2_at_best_sample": group_sum(chi_best, True),
        "constraints_chi2_at_best_sample": group_sum(chi_best, False),
        "cxb_chi2_at_median_weights": group_sum(chi_wmed, True),
        "constraints_chi2_at_median_weights": group_sum(chi_wmed, False),
        "cxb_normalisations": _normalisation_samples(lik, ws, cfg.seed),
    }
    attrs = {"spec_set": cfg.spec_set, "mode": "posterior", "weights": w_mode.tolist(), "block_names": names,
             "cosmology": CosmologyParams().describe(), "config": cfg.to_dict(),
             "phi": "cube at the posterior mode; phi_p16/p50/p84: percentile cubes over the posterior samples",
             "fit_statistics": fit_stats, "absorption_function": cfg.absorption,
             "xlf_start": cfg.xlf, "prior": prior.describe()}
    export_xlf_hdf5(out / "xlf_best.h5", cube_mode, grid, attrs,
                    extra={**cubes, "posterior_weights": post.u.exp().cpu().numpy()})
    write_a19_layout(out / "xlf_best_a19.npy", cube_mode, grid)
    fine = prob.fine
    cols = {"energy": fine.energy.cpu().numpy(), "total": fine(w_mode[None])[0].cpu().numpy()}
    by = fine.by_class(w_mode[None])[0]
    for c, cname in enumerate(BLOCKS.nh_names):
        cols[f"agn_{cname}"] = by[c].cpu().numpy()
    cols["galaxies"] = fine.extra.cpu().numpy()
    band = quantiles(fine(ws)).cpu().numpy()
    cols["total_p16"], cols["total_p50"], cols["total_p84"] = band
    write_cxb_table(out / "cxb_model.ecsv", cols, {
        "quantity": "E^2 dN/dE of the model CXB; total and classes at the posterior mode, total_p16/p50/p84 over "
                    "the posterior samples", "spec_set": cfg.spec_set, "galaxies": cfg.galaxies,
        "popsynth_version": __version__})
    summary = {
        "popsynth_version": __version__, "spec_set": cfg.spec_set, "mode": "posterior",
        "likelihood": lik.describe(), "prior": prior.describe(),
        "sampler": post.diagnostics(), "optimiser_steps": step, "n_starts": cfg.starts,
        "xlf_start": cfg.xlf, "literature_rows": prob.literature, "block_weights": weights, **ct_intr, "ct_fractions_observed_vs_model": observed, **fit_stats,
        "wall_seconds": round(wall_fit + post.seconds, 3), "setup_seconds": round(prob.setup_seconds, 3),
        "spectra": prob.spectra_summary(cfg), "files": run_files(out),
    }
    write_json(out / "summary.json", summary)
    return summary


#: A19 Table 5: CXB chi^2 per data set. "This work" for spectral sets 5 and 1, and the literature
#: XLFs as A19 computed them (each with its own paper's spectral prescription, A19 Table 4).
A19_TABLE5 = {5: {"chandra_cosmos": 21.75, "rxte": 17.98, "swift_bat": 11.66, "total": 51.4, "reduced": 0.87},
              1: {"chandra_cosmos": 58.3, "rxte": 45.74, "swift_bat": 46.02, "total": 150.05, "reduced": 2.54}}
A19_TABLE5_LITERATURE = {"u14": {"chandra_cosmos": 70.84, "rxte": 46.5, "swift_bat": 36.5, "total": 153.84},
                         "a15": {"chandra_cosmos": 17.36, "rxte": 152.95, "swift_bat": 137.88, "total": 308.2}}


def format_literature_rows(s: dict) -> list[str]:
    """A19 Table 5's literature rows: each starting XLF, all weights 1, under this run's spectra."""
    rows = s.get("literature_rows") or {}
    if not rows:
        return []
    lines = [f"{'Starting XLF, weights 1':<30}{'Chandra':>9}{'RXTE':>8}{'BAT':>8}{'total':>9}{'A19 total':>11}"]
    for name, r in rows.items():
        ref = A19_TABLE5_LITERATURE.get(name, {}).get("total")
        lines.append(f"{name.upper():<30}{r.get('chandra_cosmos', float('nan')):>9.1f}{r.get('rxte', float('nan')):>8.1f}"
                     f"{r.get('swift_bat', float('nan')):>8.1f}{r['total']:>9.1f}{'-' if ref is None else f'{ref:.1f}':>11}")
    lines.append("  (A19 computed its literature rows with each paper's own spectra; popsynth uses this run's)")
    return lines


def format_posterior_table(s: dict) -> str:
    """Printed summary of a posterior run: -2 ln L per data set, CT fractions with intervals, diagnostics."""
    d = s["sampler"]
    lines = [f"Posterior, spectral set {s['spec_set']}: {d['chains']} chains x {d['samples_per_chain']} samples, "
             f"R-hat max {d['r_hat_max']:.4f}, ESS min {d['ess_min']:.0f}, {d['divergences']} divergences",
             f"prior: {s['prior']}",
             f"{'data set':<46}{'points':>7}{'chi2 med':>11}{'best':>9}"]
    for name, v in s["chi2_at_median"].items():
        lines.append(f"{name:<46}{s['n_points'][name]:>7}{v:>11.2f}{s['chi2_at_best_sample'][name]:>9.2f}")
    lines.append(f"{'CXB total':<46}{s['cxb_points']:>7}{s['cxb_chi2_at_median']:>11.2f}{s['cxb_chi2_at_best_sample']:>9.2f}")
    lines.append(f"{'counts + CT total':<46}{s['constraints_points']:>7}{s['constraints_chi2_at_median']:>11.2f}"
                 f"{s['constraints_chi2_at_best_sample']:>9.2f}")
    lines.append("  (med: the posterior-median prediction of each point; best: the highest-density sample)")
    norms = s.get("cxb_normalisations") or {}
    if norms:
        lines.append("CXB normalisation (data / model), posterior median (16-84 %), prior 1 +/- sigma: " + "; ".join(
            f"{k} {v['median']:.3f} ({v['p16']:.3f}-{v['p84']:.3f}, sigma {v['prior_sigma']:g})" for k, v in norms.items()))
    lines.append(f"{'Observed CT fraction':<34}{'observed %':>18}{'model % (16-84)':>22}")
    for c in s["ct_fractions_observed_vs_model"]:
        obs = f"{100 * c['observed']:.1f} +{100 * c['err_hi']:.1f}/-{100 * c['err_lo']:.1f}"
        mod = f"{100 * c['model_median']:.1f} ({100 * c['model_p16']:.1f}-{100 * c['model_p84']:.1f})"
        lines.append(f"{c['survey']:<34}{obs:>18}{mod:>22}")
    ref = {"0.1": "A19 set 5: 50 +/- 9 %", "1.0": "A19 set 5: 56 +/- 7 %"}
    for z in ("0.1", "1.0"):
        c = s[f"ct_fraction_z{z}"]
        r = ref[z] if s["spec_set"] == 5 else "A19 gives this for set 5 only"
        lines.append(f"intrinsic CT fraction to z={z}: {100 * c['median']:.1f} % (16-84 %: {100 * c['p16']:.1f}-"
                     f"{100 * c['p84']:.1f} %; {r})")
        by = s.get(f"ct_fraction_z{z}_by_min_logl") or {}
        if by:
            lines.append("  above " + "; ".join(f"log L {k}: {100 * v['median']:.1f} % ({100 * v['p16']:.1f}-"
                                                f"{100 * v['p84']:.1f} %)" for k, v in by.items()))
    lines += format_literature_rows(s)
    lines.append(f"wall time {s['wall_seconds']:.1f} s; outputs in {Path(s['files']['summary']).parent}")
    return "\n".join(lines)

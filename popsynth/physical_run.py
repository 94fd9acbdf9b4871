"""Fit and sample the physical population model (``popsynth physical``).

    popsynth physical --spec-set 5 [--config FILE] [--out DIR] [--starts 8] [--chains 4]
                      [--warmup 300] [--samples 500] [--seed 0] [--pilot] [--no-sample] [--profile-sets 1,2,3,4,5]
                      [--free-spectra] [--threads N]

1. Set-up: the block run's problem (:func:`popsynth.run.build_problem`: grid, spectral table of the
   set, CXB data, counts and CT-fraction survey models) and the kernels of every observable
   (:mod:`popsynth.physical_kernels`).
2. Posterior mode: batched Levenberg-Marquardt on the unbounded coordinates u of the free
   parameters (Jacobians by forward-mode autograd) from ``--starts`` starts (the configured values
   and draws from the prior); the residuals are those of the shared likelihood plus the prior's.
3. NUTS (pyro-ppl, the block posterior's sampler :func:`popsynth.posterior._nuts`): chains as one
   product-space batch in u, whitened by the Laplace approximation at the mode (``--warmup`` +
   ``--samples`` per chain); with ``--pilot`` first a pilot run (``--warmup`` + ``--warmup``) whose
   sample covariance whitens the main run, as the block posterior does. R-hat and bulk ESS
   (of theta) from ``pyro.ops.stats``. The mode and the sampler run on ``--threads`` torch threads
   (default torch's: the cores, or OMP_NUM_THREADS).
4. Outputs in ``--out`` (default ``checkpoints/physical-set-N``): summary.json, parameters.md
   (posterior medians against the literature), xlf_best.h5 (phi at the mode; phi_p16/p50/p84 per
   cell over up to 200 posterior samples; the parameter samples), parameter_samples.csv,
   cxb_model.ecsv (total + N_H classes + galaxies at the mode, posterior band of the total) and
   corner.png (when matplotlib is installed).

``--profile-sets`` instead finds the mode for each listed spectral set and compares them (-2 ln L,
chi^2 per data group, Laplace evidence): the spectral hyperparameters profiled over the A19 sets.
``--free-spectra`` instead samples them (gamma, refl, ecut) with kernels interpolated over nodes
(:mod:`popsynth.physical_spectra`, docs/physical.md).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from ._tensor import DTYPE
from .errors import PopsynthError
from .physical import PARAM_INDEX, PARAMETERS, ParameterMap, PhysicalModel
from .physical_kernels import PhysicalKernels, build_kernels

A19_CT = {"0.1": "50 +/- 9 %", "1.0": "56 +/- 7 %"}


# ---------------------------------------------------------------------------- set-up
@dataclass
class PhysicalProblem:
    """Everything built once: the block run's config and problem, the kernels, the parameter map."""

    cfg: object  # popsynth.run.RunConfig
    prob: object  # popsynth.run.Problem
    kernels: PhysicalKernels
    model: PhysicalModel
    pmap: ParameterMap
    setup_seconds: float

    # ------------------------------------------------------------------ model evaluation
    def _eval(self, u: torch.Tensor):
        params = self.pmap.full(self.pmap.theta(u))
        phi, phi1 = self.kernels.builder(params)
        names = getattr(self.kernels, "hyper_names", ())
        eta = torch.stack([params[n] for n in names], -1) if names else None
        return phi, phi1, eta

    def cubes(self, u: torch.Tensor):
        """Reduced cubes (phi_red, phi1_red) [B, nz, nL, 6] at unbounded coordinates u [B, P]."""
        return self.kernels.builder(self.pmap.full(self.pmap.theta(u)))

    def features(self, u: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """Feature vector x [B, F] (every data point's linear functional) at u [B, P]; with free
        spectral hyperparameters the kernels are the emulator's at theirs (:mod:`popsynth.physical_spectra`)."""
        return self.features_of(*self._eval(u), sparse=sparse)

    def features_of(self, phi, phi1, eta, sparse: bool = False) -> torch.Tensor:
        """Feature vector x [B, F] of reduced cubes phi, phi1 [B, nz, nL, 6] and spectral
        hyperparameters eta [B, k] (None when they are fixed)."""
        if eta is None:
            return self.kernels.features(phi, phi1, sparse=sparse)
        return self.kernels.features(phi, phi1, eta=eta)

    def cxb_fine(self, u: torch.Tensor) -> torch.Tensor:
        """AGN CXB per N_H class on the output energies [B, 3, nE_fine] at u [B, P]."""
        _, phi1, eta = self._eval(u)
        return self.kernels.cxb_fine(phi1) if eta is None else self.kernels.cxb_fine(phi1, eta=eta)

    def residuals(self, u: torch.Tensor) -> torch.Tensor:
        """[B, n]: squares sum to -2 ln L - 2 ln prior (+ const) of theta(u) (the MAP objective in theta)."""
        x = self.features(u)
        return torch.cat([self.kernels.likelihood.residuals(x), self.pmap.prior_residuals(self.pmap.theta(u))], -1)

    def neg_log_post_u(self, u: torch.Tensor, sparse: bool = False) -> torch.Tensor:
        """-ln p(u | data) [B] up to a constant, with the Jacobian of theta(u) (the sampler's target)."""
        x = self.features(u, sparse=sparse)
        pr = self.pmap.prior_residuals(self.pmap.theta(u))
        return 0.5 * (self.kernels.likelihood.neg2_loglike(x) + (pr ** 2).sum(-1)) - self.pmap.log_jacobian(u)


def with_set_values(model: PhysicalModel, spec_set: int) -> PhysicalModel:
    """``model`` with the spectral hyperparameters it does not set taken from spectral set ``spec_set``."""
    from dataclasses import replace

    from .physical import SPECTRAL_PARAM_NAMES
    from .physical_spectra import set_value

    vals = dict(model.values)
    for n in SPECTRAL_PARAM_NAMES:
        vals.setdefault(n, set_value(spec_set, n))
    return model if vals == model.values else replace(model, values=vals)


def setup(spec_set: int = 5, model: PhysicalModel | None = None, draws: int = 64, device="cpu",
          log=print, emulator_cache: bool = True) -> PhysicalProblem:
    """Build the problem of spectral set ``spec_set`` (A19 Table 4) for ``model`` (default config).

    With free spectral hyperparameters (``gamma``, ``refl``, ``ecut``) the kernels are a
    :class:`popsynth.physical_spectra.EmulatedKernels` over their nodes (built once, cached)."""
    from .constraints import DEFAULT_COUNTS
    from .physical import SPECTRAL_PARAM_NAMES
    from .physical_spectra import _problem_with_table, build_emulator, spectral_set_at, EmulatedKernels
    from .run import RunConfig, build_problem
    from .spectra.cache import build_spectral_table
    from .spectra.registry import make_components
    from .spectra.sets import get_spectral_set

    t0 = time.time()
    model = with_set_values(PhysicalModel() if model is None else model, spec_set)
    cfg = RunConfig(spec_set=spec_set, draws=draws, device=str(device), progress=False, sys_floor=model.sys_floor,
                    cxb_norm_sigma=model.cxb_norm_sigma,
                    counts=DEFAULT_COUNTS if model.counts is None else tuple(model.counts), use_ct=model.use_ct)
    cfg.validate()
    dev = torch.device(device)
    prob = build_problem(cfg, dev, log=lambda *a: None)
    spec = spectral_set_at(get_spectral_set(spec_set), {n: model.value(n) for n in SPECTRAL_PARAM_NAMES})
    table = build_spectral_table(spec, prob.grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed,
                                 components=make_components(cfg.spectral_model, cfg.torus_table), device=dev)
    if spec is not get_spectral_set(spec_set):  # hyperparameters fixed away from the set: its survey models
        prob = _problem_with_table(prob, cfg, table, dev)
    kernels = build_kernels(prob, table, cfg, model, device=dev)
    if model.free_spectral:
        em = build_emulator(prob, cfg, model, spec, kernels, model.free_spectral, device=dev, cache=emulator_cache,
                            log=log)
        kernels = EmulatedKernels(kernels, em)
    pp = PhysicalProblem(cfg, prob, kernels, model, ParameterMap(model, dev), time.time() - t0)
    log(f"set-up {pp.setup_seconds:.1f} s (kernels {kernels.seconds:.1f} s): spectral set {spec_set}, "
        f"{len(pp.pmap.names)} free parameters, {kernels.n_features} features, "
        f"{kernels.likelihood.n_points()} data points")
    return pp


# ---------------------------------------------------------------------------- mode
def _threads_ctx(threads: int | None):
    """torch's intra-op threads for the mode and the sampler: ``threads`` (None: torch's default,
    the machine's cores or OMP_NUM_THREADS). The sparse node contractions of the free-spectra
    model (11.6M nonzeros) are memory-bound products that two threads on two cores do 25-40 %
    faster (benchmarks/bench_physical.py --threads); on a machine shared with other jobs, one thread
    (``--threads 1`` or OMP_NUM_THREADS=1) avoids threads spinning while another process holds a core."""
    from .posterior import torch_threads

    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise PopsynthError(f"`threads` must be a positive integer, got {threads!r}", "pass e.g. --threads 1")
    return torch_threads(threads)


def find_mode(pp: PhysicalProblem, u0: torch.Tensor, steps: int = 100, rtol: float = 1e-10):
    """Batched Levenberg-Marquardt from starts u0 [B, P]; returns (u [B, P], -2 ln p [B]) per start.

    Per start: solve (J^T J + lam diag(J^T J)) d = -J^T r (J by forward-mode autograd), accept if
    the objective drops (lam /= 3) else lam *= 4; steps capped at |d| <= 2 per coordinate."""
    u = u0.clone().to(DTYPE)
    b, p = u.shape

    def single(v):
        return pp.residuals(v[None])[0]

    jac = torch.func.vmap(torch.func.jacfwd(single))
    with torch.no_grad():
        r = pp.residuals(u)
    loss = (r ** 2).sum(-1)
    lam = torch.full((b,), 1e-2, dtype=DTYPE)
    stall = torch.zeros(b, dtype=torch.long)
    for _ in range(steps):
        j = jac(u).detach()  # [B, n, P]
        jtj = j.transpose(1, 2) @ j
        g = (j.transpose(1, 2) @ r[..., None])[..., 0]
        diag = torch.diagonal(jtj, dim1=1, dim2=2).clamp_min(1e-12)
        a = jtj + torch.diag_embed(lam[:, None] * diag) + 1e-12 * torch.eye(p, dtype=DTYPE)
        d = -torch.linalg.solve(a, g[..., None])[..., 0]
        d = d.clamp(-2.0, 2.0)
        with torch.no_grad():
            r_new = pp.residuals(u + d)
        loss_new = (r_new ** 2).sum(-1)
        ok = torch.isfinite(loss_new) & (loss_new < loss)
        gain = torch.where(ok, (loss - loss_new) / loss.abs().clamp_min(1e-300), torch.zeros_like(loss))
        u = torch.where(ok[:, None], u + d, u)
        r = torch.where(ok[:, None], r_new, r)
        loss = torch.where(ok, loss_new, loss)
        lam = torch.where(ok, lam / 3.0, lam * 4.0).clamp(1e-12, 1e12)
        stall = torch.where(gain < rtol, stall + 1, torch.zeros_like(stall))
        if bool((stall >= 5).all()):
            break
    return u, loss


def initial_points(pp: PhysicalProblem, n: int, seed: int) -> torch.Tensor:
    """Starts in u [n, P]: the configured values first, then draws from the priors (within 2 sigma,
    clipped inside the bounds; block weights from their prior within 1 sigma)."""
    pm = pp.pmap
    theta = pm.default_theta(n)
    if n > 1:
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n - 1, pm.n_free, dtype=DTYPE, generator=g).clamp(-2, 2)
        phys = pm.mean + pm.sigma * z[:, :pm.n_phys]
        span = pm.hi - pm.lo
        phys = torch.minimum(torch.maximum(phys, pm.lo + 0.02 * span), pm.hi - 0.02 * span)
        bw = z[:, pm.n_phys:] * 0.5 * pp.model.block_weight_prior_dex
        theta[1:] = torch.cat([phys, bw], -1)
    return pm.u_of(theta)


def laplace(pp: PhysicalProblem, u_mode: torch.Tensor) -> dict:
    """Gauss-Newton curvature at the mode: H_u [P, P] (in u), covariance in u and in theta,
    the Laplace log-evidence ln Z (up to the data's constant, same for every spectral set)."""
    u_mode = u_mode.reshape(1, -1)
    j = torch.func.jacfwd(lambda v: pp.residuals(v[None])[0])(u_mode[0]).detach()  # [n, P]
    h_u = j.T @ j
    pm = pp.pmap
    dth = pm.dtheta_du(u_mode)[0]
    ev, vec = torch.linalg.eigh(0.5 * (h_u + h_u.T))
    ev = ev.clamp_min(float(ev.max()) * 1e-12)
    cov_u = (vec / ev) @ vec.T
    cov_theta = dth[:, None] * cov_u * dth[None, :]
    with torch.no_grad():
        x = pp.features(u_mode)
        m2ll = float(pp.kernels.likelihood.neg2_loglike(x)[0])
        pr = pm.prior_residuals(pm.theta(u_mode))[0]
    sig = torch.cat([pm.sigma, torch.full((pm.n_free - pm.n_phys,), pp.model.block_weight_prior_dex, dtype=DTYPE)])
    ln_prior = float(-0.5 * (pr ** 2).sum() - torch.log(sig * math.sqrt(2 * math.pi)).sum())
    logdet_theta = float(torch.log(ev).sum() - 2 * torch.log(dth).sum())
    ln_z = -0.5 * m2ll + ln_prior + 0.5 * pm.n_free * math.log(2 * math.pi) - 0.5 * logdet_theta
    return {"h_u": h_u, "cov_u": cov_u, "cov_theta": cov_theta, "neg2_loglike": m2ll, "ln_prior": ln_prior,
            "ln_evidence": ln_z}


# ---------------------------------------------------------------------------- sampling
@dataclass
class PhysicalSamples:
    """u [C, S, P] samples with r_hat [P], ess [P], divergences, step size, seconds, settings."""

    u: torch.Tensor
    r_hat: torch.Tensor
    ess: torch.Tensor
    divergences: int
    step_size: float
    seconds: float
    settings: dict


def sample(pp: PhysicalProblem, u_mode: torch.Tensor, cov_u: torch.Tensor, chains: int = 4, warmup: int = 300,
           samples: int = 500, seed: int = 0, progress: bool = False, pilot: bool | None = None,
           threads: int | None = None, adapt_mass: bool | None = None) -> PhysicalSamples:
    """NUTS around the mode (see the module docstring); returns the kept samples of the main run.

    ``pilot``: a pilot run (``warmup`` + ``warmup``) whose sample covariance whitens the main run;
    None: with block weights (their posterior is far from Gaussian where only the prior bounds
    them, so the Laplace approximation whitens poorly, as in the block posterior), else not.
    ``threads``: torch threads while sampling (None: torch's default; see :func:`_threads_ctx`).
    ``adapt_mass``: diagonal mass-matrix adaptation in the main run; None: with a pilot only. Without
    a pilot the coordinates are whitened by the Laplace approximation, and the step size is adapted
    over the whole warm-up in one window: measured on the free-spectra model, the windowed
    adaptation's last 50-iteration window left the step size at 0.15 with acceptance 0.98 (twice
    the leapfrog steps needed) in one run out of two."""
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    from .posterior import SamplerConfig, _nuts, _whitening

    if pilot is None:
        pilot = bool(pp.model.block_weights)
    if adapt_mass is None:
        adapt_mass = pilot

    scfg = SamplerConfig(chains=chains, warmup=warmup, samples=samples, seed=seed, jit=False)
    scfg.validate()
    t0 = time.time()
    p = u_mode.numel()
    center = u_mode.reshape(-1).to(DTYPE)
    chol = _whitening(cov_u)
    g = torch.Generator().manual_seed(int(seed))
    z0 = torch.randn(chains, p, dtype=DTYPE, generator=g)

    calls = [0]  # potential evaluations (one per leapfrog step, plus the initial ones)

    def make_potential(c, lower):
        def potential(params):
            calls[0] += 1
            return pp.neg_log_post_u(c + params["z"] @ lower.T, sparse=True).sum()
        return potential

    with _threads_ctx(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pot = make_potential(center, chol)
        if not bool(torch.isfinite(pot({"z": z0}))):
            raise PopsynthError("the posterior is not finite at the chains' starting points",
                                "check the priors and bounds of the configuration")
        div_pilot = 0
        if pilot:
            z, div_pilot, _ = _nuts(pot, z0, warmup, warmup, scfg, seed, progress)
            up = center + z @ chol.T  # [C, S, P]
            flat = up.reshape(-1, p)
            center = flat.mean(0)
            chol = _whitening(torch.cov(flat.T) + 1e-12 * torch.eye(p, dtype=DTYPE))
            z0 = torch.linalg.solve_triangular(chol, (up[:, -1] - center).T, upper=False).T.contiguous()
        z, n_div, step = _nuts(make_potential(center, chol), z0, warmup, samples, scfg, seed + 1, progress,
                               adapt_mass=adapt_mass)
    u = center + z @ chol.T
    theta = pp.pmap.theta(u.reshape(-1, p)).reshape(u.shape)
    r_hat = split_gelman_rubin(theta, chain_dim=0, sample_dim=1)
    ess = effective_sample_size(theta, chain_dim=0, sample_dim=1)
    return PhysicalSamples(u, r_hat, ess, n_div, step, time.time() - t0,
                           {"chains": chains, "warmup": warmup, "samples_per_chain": samples, "pilot": pilot,
                            "pilot_divergences": div_pilot, "max_tree_depth": scfg.max_tree_depth,
                            "target_accept": scfg.target_accept, "seed": seed, "adapt_mass_matrix": bool(adapt_mass),
                            "threads": torch.get_num_threads()
                            if threads is None else int(threads), "potential_evaluations": calls[0],
                            "evaluations_per_iteration": round(calls[0] / ((2 * warmup if pilot else 0) + warmup + samples), 2),
                            "sampler": "NUTS (pyro-ppl), chains as one product-space batch, unbounded coordinates "
                                       "whitened by the Laplace approximation" + (" (pilot) and the pilot covariance (main)"
                                                                                  if pilot else "")})


# ---------------------------------------------------------------------------- outputs
def _q(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return torch.quantile(x, torch.tensor([0.16, 0.5, 0.84], dtype=DTYPE), dim=dim)


def _interval(x: torch.Tensor) -> dict:
    q = _q(x.reshape(-1)).tolist()
    return {"median": q[1], "p16": q[0], "p84": q[2]}


def _batched(fn, u: torch.Tensor, size: int = 64) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(u[i:i + size]) for i in range(0, u.shape[0], size)], 0)


def _literature(name: str) -> float | None:
    if name in PARAM_INDEX:
        return PARAMETERS[PARAM_INDEX[name]].default
    return 0.0  # block weights: log10 w = 0 is the U14+R15 cube


def write_outputs(pp: PhysicalProblem, u_mode: torch.Tensor, lap: dict, post: PhysicalSamples | None, out: Path,
                  wall: dict, log=print, max_cube_samples: int = 200) -> dict:
    """Write every output file (see the module docstring) and return the summary dict."""
    from .grid import NH_CLASS_NAMES
    from .io import export_xlf_hdf5, write_cxb_table, write_json
    from .spectra.sets import get_spectral_set

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pm, ks, lik = pp.pmap, pp.kernels, pp.kernels.likelihood
    names = list(pm.names)
    u_mode = u_mode.reshape(1, -1)
    th_mode = pm.theta(u_mode)[0]
    sd_lap = torch.sqrt(torch.diagonal(lap["cov_theta"]))
    if post is not None:
        u_all = post.u.reshape(-1, post.u.shape[-1])
    else:  # no sampling: the Laplace approximation in u stands in (stated in the summary)
        g = torch.Generator().manual_seed(0)
        chol = torch.linalg.cholesky(lap["cov_u"] + 1e-12 * torch.eye(u_mode.shape[1], dtype=DTYPE))
        u_all = u_mode + torch.randn(1000, u_mode.shape[1], dtype=DTYPE, generator=g) @ chol.T
    th_all = pm.theta(u_all)
    qs = _q(th_all)
    params = {}
    for i, n in enumerate(names):
        pn = n if n in PARAM_INDEX else None
        prior = pp.model.prior(pn) if pn else (0.0, pp.model.block_weight_prior_dex)
        params[n] = {"median": float(qs[1, i]), "p16": float(qs[0, i]), "p84": float(qs[2, i]),
                     "mode": float(th_mode[i]), "laplace_sd": float(sd_lap[i]), "literature": _literature(n),
                     "prior_mean": prior[0], "prior_sigma": prior[1],
                     "bounds": list(pp.model.bound(pn)) if pn else None,
                     "source": PARAMETERS[PARAM_INDEX[pn]].source if pn else "block weight (log10 w), A19 section 5.1",
                     "shift_in_prior_sigma": (float(qs[1, i]) - prior[0]) / prior[1]}
        if post is not None:
            params[n].update(r_hat=float(post.r_hat[i]), ess=float(post.ess[i]))
    def one_pass(v):  # features and both CT fractions from one cube per sample
        phi, phi1, eta = pp._eval(v)
        return torch.cat([pp.features_of(phi, phi1, eta), ks.ct_fraction(phi, 0.1)[:, None],
                          ks.ct_fraction(phi, 1.0)[:, None]], -1)

    per_sample = _batched(one_pass, u_all)
    x_all, ct_all = per_sample[:, :-2], {0.1: per_sample[:, -2], 1.0: per_sample[:, -1]}
    chi_med = lik.chi2_of_median_prediction(x_all)
    with torch.no_grad():
        x_mode = pp.features(u_mode)
    chi_mode = {n: float(v[0]) for n, v in lik.chi2_by_term(x_mode).items()}
    npts = {t.name: t.n_points for t in lik.terms}
    groups = {"cxb": [t.name for t in lik.terms if t.kind == "cxb"],
              "counts_ct": [t.name for t in lik.terms if t.kind not in ("cxb", "binned_xlf")],
              "binned_xlf": [t.name for t in lik.terms if t.kind == "binned_xlf"]}
    group_chi = {g: {"chi2_at_median": sum(chi_med[n] for n in ns), "chi2_at_mode": sum(chi_mode[n] for n in ns),
                     "points": sum(npts[n] for n in ns)} for g, ns in groups.items() if ns}
    phi_all_ct = {}
    with torch.no_grad():
        phi_mode_red = pp.cubes(u_mode)[0]
    for z in (0.1, 1.0):
        phi_all_ct[f"ct_fraction_z{z:.1f}"] = {**_interval(ct_all[z]), "mode": float(ks.ct_fraction(phi_mode_red, z)[0])}
    observed = []
    for t in lik.terms:
        if t.kind == "ct_fraction":
            observed.append({"survey": t.label, "observed": t.value, "err_lo": t.err_lo, "err_hi": t.err_hi,
                             **{f"model_{k}": v for k, v in _interval(t.predict(x_all)).items()}})
    norms = {}
    gen = torch.Generator().manual_seed(0)
    for name, (mean, sd) in lik.normalisations(x_all).items():
        c = mean + sd * torch.randn(mean.shape, dtype=DTYPE, generator=gen)
        norms[name] = {**_interval(c), "prior_sigma": lik.term(name).norm_sigma}

    # cubes: mode, and per-cell percentiles over up to max_cube_samples samples
    grid = pp.prob.grid
    xb = ks.builder
    with torch.no_grad():
        phi_mode, phi1_mode = pp.cubes(u_mode)
        step = max(1, u_all.shape[0] // max_cube_samples)
        u_thin = u_all[::step][:max_cube_samples]
        red = _batched(lambda v: pp.cubes(v)[0], u_thin, 32)
        qc = _q(red)  # [3, nz, nL, 6]
        cubes = {f"phi_p{p}": xb.expand(qc[i]).numpy() for i, p in enumerate((16, 50, 84))}
        fine_cls = _batched(lambda v: pp.cxb_fine(v), u_thin, 32)  # [N, 3, nE]
        fine_mode = pp.cxb_fine(u_mode)[0]
    spec = get_spectral_set(pp.cfg.spec_set)
    fit_stats = {"chi2_at_median": chi_med, "chi2_at_mode": chi_mode, "n_points": npts, "groups": group_chi,
                 "chi2_definition": "chi2 (Poisson deviance for binned source numbers; log-normal chi2 for binned XLF "
                                    "points) of each data set; at_median: of the posterior-median prediction of every "
                                    "point; at_mode: at the posterior mode. CXB predictions include each instrument's "
                                    "normalisation (conditional mean) when it is free."}
    attrs = {"spec_set": pp.cfg.spec_set, "spec_set_description": spec.description, "mode": "physical",
             "cosmology": {"H0": 70.0, "Om0": 0.3, "flat": True}, "model": pp.model.describe(),
             "parameter_names": names, "parameters_at_mode": th_mode.tolist(),
             "phi": "cube at the posterior mode; phi_p16/p50/p84: per-cell percentiles over "
                    f"{u_thin.shape[0]} posterior samples", "fit_statistics": fit_stats}
    post_arr = pm.theta(post.u.reshape(-1, post.u.shape[-1])).reshape(post.u.shape).numpy() if post is not None \
        else th_all.numpy()[None]
    export_xlf_hdf5(out / "xlf_best.h5", xb.expand(phi_mode[0]).numpy(), grid, attrs,
                    extra={**cubes, "posterior_parameters": post_arr})
    with open(out / "parameter_samples.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["chain", "iteration"] + names)
        for c in range(post_arr.shape[0]):
            for s in range(post_arr.shape[1]):
                w.writerow([c, s] + [f"{v:.10g}" for v in post_arr[c, s]])
    gal = ks.galaxies_fine
    tot = fine_cls.sum(1) + gal
    cols = {"energy": ks.fine_energy.numpy(), "total": (fine_mode.sum(0) + gal).numpy()}
    for c, cname in enumerate(NH_CLASS_NAMES):
        cols[f"agn_{cname}"] = fine_mode[c].numpy()
    cols["galaxies"] = gal.numpy()
    band = _q(tot).numpy()
    cols["total_p16"], cols["total_p50"], cols["total_p84"] = band
    write_cxb_table(out / "cxb_model.ecsv", cols, {
        "quantity": "E^2 dN/dE of the model CXB of the physical model; total and classes at the posterior mode, "
                    "total_p16/p50/p84 over posterior samples", "spec_set": pp.cfg.spec_set,
        "galaxies": pp.cfg.galaxies, "popsynth_version": __version__})
    summary = {
        "popsynth_version": __version__, "spec_set": pp.cfg.spec_set, "mode": "physical",
        "model": pp.model.describe(), "likelihood": lik.describe(),
        "sampler": None if post is None else {**post.settings, "r_hat_max": float(post.r_hat.max()),
                                              "ess_min": float(post.ess.min()), "divergences": post.divergences,
                                              "step_size": post.step_size, "seconds": round(post.seconds, 2)},
        "intervals_from": "NUTS samples" if post is not None else "Laplace approximation at the mode (no sampling)",
        "parameters": params, **phi_all_ct, "ct_fractions_observed_vs_model": observed, "cxb_normalisations": norms,
        **fit_stats, "laplace_ln_evidence": lap["ln_evidence"], "neg2_loglike_at_mode": lap["neg2_loglike"],
        "timings_seconds": {k: round(v, 3) for k, v in wall.items()},
        "files": {k: str(out / v) for k, v in (("summary", "summary.json"), ("xlf", "xlf_best.h5"),
                                               ("samples", "parameter_samples.csv"), ("cxb", "cxb_model.ecsv"),
                                               ("table", "parameters.md"), ("corner", "corner.png"))},
    }
    (out / "parameters.md").write_text(format_parameter_table(summary) + "\n")
    corner_ok = write_corner(post_arr.reshape(-1, post_arr.shape[-1]), names, out / "corner.png",
                             truths=[_literature(n) for n in names])
    if not corner_ok:
        summary["files"].pop("corner")
    write_json(out / "summary.json", summary)
    return summary


def format_parameter_table(s: dict) -> str:
    """Markdown table: posterior median (16-84 %) of every free parameter next to its literature value and prior."""
    lines = ["| parameter | posterior median (16-84 %) | mode | literature | prior (mean, sigma) | shift / prior sigma | R-hat |",
             "|---|---|---|---|---|---|---|"]
    for n, p in s["parameters"].items():
        rh = f"{p['r_hat']:.3f}" if "r_hat" in p else "-"
        lines.append(f"| {n} | {p['median']:.4g} ({p['p16']:.4g} - {p['p84']:.4g}) | {p['mode']:.4g} | "
                     f"{p['literature']:.4g} | {p['prior_mean']:.4g}, {p['prior_sigma']:.3g} | "
                     f"{p['shift_in_prior_sigma']:+.2f} | {rh} |")
    return "\n".join(lines)


def format_summary(s: dict) -> str:
    """Printed summary: parameters, chi2 per data set, CT fractions, diagnostics."""
    lines = [f"Physical model, spectral set {s['spec_set']} ({s['intervals_from']})"]
    if s["sampler"]:
        d = s["sampler"]
        lines.append(f"NUTS: {d['chains']} chains x {d['samples_per_chain']}, R-hat max {d['r_hat_max']:.3f}, "
                     f"ESS min {d['ess_min']:.0f}, {d['divergences']} divergences, {d['seconds']:.0f} s")
    lines.append(format_parameter_table(s))
    lines.append(f"{'data set':<46}{'points':>7}{'chi2 med':>10}{'mode':>9}")
    for n, v in s["chi2_at_median"].items():
        lines.append(f"{n:<46}{s['n_points'][n]:>7}{v:>10.2f}{s['chi2_at_mode'][n]:>9.2f}")
    for g, v in s["groups"].items():
        lines.append(f"{g + ' total':<46}{v['points']:>7}{v['chi2_at_median']:>10.2f}{v['chi2_at_mode']:>9.2f}")
    for z in ("0.1", "1.0"):
        c = s[f"ct_fraction_z{z}"]
        lines.append(f"intrinsic CT fraction to z={z}: {100 * c['median']:.1f} % (16-84 %: {100 * c['p16']:.1f}-"
                     f"{100 * c['p84']:.1f} %; A19 set 5: {A19_CT[z]})")
    for c in s["ct_fractions_observed_vs_model"]:
        lines.append(f"  observed CT fraction {c['survey']}: {100 * c['observed']:.1f} %, model "
                     f"{100 * c['model_median']:.1f} ({100 * c['model_p16']:.1f}-{100 * c['model_p84']:.1f}) %")
    return "\n".join(lines)


def write_corner(samples: np.ndarray, names: list, path: Path, truths=None, max_params: int = 24) -> bool:
    """A small corner plot (histograms on the diagonal, 2-d histograms below) of samples [N, P] with
    the literature values marked; False (nothing written) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from matplotlib.ticker import MaxNLocator

    p = min(samples.shape[1], max_params)
    fig = plt.figure(figsize=(1.4 * p + 1, 1.4 * p + 1))
    gs = fig.add_gridspec(p, p, left=0.06, right=0.99, bottom=0.06, top=0.99, wspace=0.05, hspace=0.05)
    for i in range(p):  # the lower triangle only (matplotlib's cost is per axes and per tick)
        for j in range(i + 1):
            ax = fig.add_subplot(gs[i, j])
            if i == j:
                ax.hist(samples[:, i], bins=30, histtype="step", color="k")
                if truths is not None and truths[i] is not None:
                    ax.axvline(truths[i], color="tab:red", lw=0.8)
            else:  # 2-d histogram as one image (a scatter of every sample costs seconds to render)
                h, xe, ye = np.histogram2d(samples[:, j], samples[:, i], bins=30)
                ax.imshow(h.T, origin="lower", extent=(xe[0], xe[-1], ye[0], ye[-1]), aspect="auto", cmap="Greys",
                          interpolation="nearest")
                if truths is not None and truths[i] is not None and truths[j] is not None:
                    ax.plot(truths[j], truths[i], "+", color="tab:red", ms=6)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            ax.yaxis.set_major_locator(MaxNLocator(3))
            ax.tick_params(labelsize=4, labelbottom=i == p - 1, labelleft=j == 0 and i > 0)
            if i == p - 1:
                ax.set_xlabel(names[j], fontsize=5)
            if j == 0 and i > 0:
                ax.set_ylabel(names[i], fontsize=5)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------- the whole run
def run(spec_set: int = 5, model: PhysicalModel | None = None, out="checkpoints/physical-set-5", starts: int = 8,
        chains: int = 4, warmup: int = 300, samples: int = 500, seed: int = 0, draws: int = 64, do_sample: bool = True,
        pilot: bool | None = None, progress: bool = False, log=print, threads: int | None = None) -> dict:
    """Set-up, mode, NUTS, outputs (see the module docstring); returns the summary dict.
    ``threads``: torch threads for the mode and the sampler (None: torch's default)."""
    t0 = time.time()
    pp = setup(spec_set, model, draws=draws, log=log)
    t1 = time.time()
    with _threads_ctx(threads):
        u, loss = find_mode(pp, initial_points(pp, starts, seed))
    best = int(torch.argmin(torch.nan_to_num(loss, nan=math.inf)))
    u_mode = u[best:best + 1]
    lap = laplace(pp, u_mode)
    t2 = time.time()
    spread = float((loss - loss[best]).abs().max())
    log(f"mode from {starts} starts in {t2 - t1:.1f} s: -2 ln p = {float(loss[best]):.2f} "
        f"(largest difference between starts {spread:.3g})")
    post = None
    if do_sample:
        post = sample(pp, u_mode, lap["cov_u"], chains, warmup, samples, seed, progress, pilot, threads)
        log(f"NUTS in {post.seconds:.0f} s: R-hat max {float(post.r_hat.max()):.3f}, ESS min {float(post.ess.min()):.0f}, "
            f"{post.divergences} divergences, step size {post.step_size:.3f}, "
            f"{post.settings['evaluations_per_iteration']:.1f} gradient evaluations per iteration "
            f"({post.settings['threads']} threads)")
    t3 = time.time()
    wall = {"setup": pp.setup_seconds, "kernels": pp.kernels.seconds, "mode": t2 - t1, "sampling": t3 - t2}
    s = write_outputs(pp, u_mode, lap, post, Path(out), wall, log)
    s["timings_seconds"]["outputs"] = round(time.time() - t3, 3)
    s["timings_seconds"]["total"] = round(time.time() - t0, 3)
    s["mode_spread_between_starts"] = spread
    from .io import write_json

    write_json(Path(out) / "summary.json", s)
    return s


def profile_sets(sets, model: PhysicalModel | None = None, out="checkpoints/physical-profile", starts: int = 4,
                 seed: int = 0, draws: int = 64, log=print) -> dict:
    """Mode and Laplace evidence of the physical model for each spectral set: the spectral
    hyperparameters (Gamma, R, E_cut) profiled over the A19 sets. Writes profile.json."""
    from .io import write_json

    rows = {}
    for s in sets:
        pp = setup(s, model, draws=draws, log=log)
        with _threads_ctx(None):
            u, loss = find_mode(pp, initial_points(pp, starts, seed))
        best = int(torch.argmin(torch.nan_to_num(loss, nan=math.inf)))
        lap = laplace(pp, u[best:best + 1])
        with torch.no_grad():
            x = pp.features(u[best:best + 1])
        chi = {n: float(v[0]) for n, v in pp.kernels.likelihood.chi2_by_term(x).items()}
        kinds = {t.name: t.kind for t in pp.kernels.likelihood.terms}
        cxb = sum(v for n, v in chi.items() if kinds[n] == "cxb")
        rest = sum(v for n, v in chi.items() if kinds[n] != "cxb")
        ct = {f"ct_fraction_z{z}": float(pp.kernels.ct_fraction(pp.cubes(u[best:best + 1])[0], z)[0]) for z in (0.1, 1.0)}
        rows[str(s)] = {"neg2_log_posterior": float(loss[best]), "neg2_loglike": lap["neg2_loglike"],
                        "chi2_cxb": cxb, "chi2_counts_ct": rest, "chi2": chi, "ln_evidence_laplace": lap["ln_evidence"],
                        **ct, "parameters_at_mode": dict(zip(pp.pmap.names, pp.pmap.theta(u[best:best + 1])[0].tolist()))}
        log(f"set {s}: -2 ln L {lap['neg2_loglike']:.2f} (CXB chi2 {cxb:.1f}, counts+CT {rest:.1f}), "
            f"ln Z {lap['ln_evidence']:.2f}, CT(z<0.1) {100 * ct['ct_fraction_z0.1']:.1f} %")
    top = max(r["ln_evidence_laplace"] for r in rows.values())
    for r in rows.values():
        r["delta_ln_evidence"] = r["ln_evidence_laplace"] - top
    res = {"sets": rows, "note": "spectral hyperparameters profiled over the A19 spectral sets (not sampled); "
                                 "Laplace evidence up to a constant common to all sets"}
    Path(out).mkdir(parents=True, exist_ok=True)
    write_json(Path(out) / "profile.json", res)
    return res


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="popsynth physical", description=(
        "Fit and sample the physical population model: U14 LDDE and A19 absorption-function parameters "
        "(optionally the 15 block weights on top) against the CXB, number counts and CT fractions, with "
        "precomputed linear kernels of every observable. See docs/physical.md."))
    ap.add_argument("--spec-set", type=int, default=5, help="A19 spectral set 1-5 (default 5)")
    ap.add_argument("--config", default=None, help="model configuration TOML (default: the built-in one; "
                                                   "see examples/physical_model.toml)")
    ap.add_argument("--out", default=None, help="output folder (default checkpoints/physical-set-N, "
                                                "with free spectral hyperparameters checkpoints/physical-set-N-free-spectra)")
    ap.add_argument("--starts", type=int, default=8, help="optimiser starts: the configured values + prior draws (8)")
    ap.add_argument("--chains", type=int, default=4, help="NUTS chains, one batch (4)")
    ap.add_argument("--warmup", type=int, default=300, help="warm-up iterations per chain, pilot and main run each (300)")
    ap.add_argument("--samples", type=int, default=500, help="kept iterations per chain (500)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the starts and the sampler (0)")
    ap.add_argument("--draws", type=int, default=64, help="spectral draws per N_H cell (64, as train.py)")
    ap.add_argument("--no-sample", action="store_true", help="mode and Laplace approximation only")
    ap.add_argument("--pilot", action=argparse.BooleanOptionalAction, default=None,
                    help="a pilot run (--warmup + --warmup) whose covariance whitens the main run (default: with "
                         "block weights; without, the Laplace approximation whitens it)")
    ap.add_argument("--profile-sets", default=None, metavar="LIST",
                    help="comma-separated spectral sets: mode and Laplace evidence per set instead of sampling")
    ap.add_argument("--free-spectra", action="store_true",
                    help="also sample the spectral hyperparameters gamma, refl and ecut (mean Gamma, R, E_cut; "
                         "kernels interpolated over 3 nodes each, built once and cached)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads for the mode and the sampler (default: torch's, i.e. the cores or "
                         "OMP_NUM_THREADS); pass 1 on a machine shared with other jobs")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _check_args(a) -> None:
    from .spectra.sets import get_spectral_set

    get_spectral_set(a.spec_set)
    for name, lo, hi in (("starts", 1, 1000), ("chains", 2, 64), ("warmup", 10, 100000), ("samples", 10, 1000000),
                         ("draws", 1, 10000)):
        v = getattr(a, name)
        if not lo <= v <= hi:
            raise PopsynthError(f"--{name} must be an integer in {lo}..{hi}, got {v}", f"pass e.g. --{name} {lo + 1}")
    if a.threads is not None and not 1 <= a.threads <= 1024:
        raise PopsynthError(f"--threads must be an integer in 1..1024, got {a.threads}", "pass e.g. --threads 1")
    if not 0 <= a.seed < 2 ** 63:
        raise PopsynthError(f"--seed must be in 0 .. 2**63 - 1, got {a.seed}", "pass e.g. --seed 0")
    if a.out is not None and Path(a.out).exists() and not Path(a.out).is_dir():
        raise PopsynthError(f"--out {a.out} is a file", "pass a folder")


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    try:
        _check_args(a)
        model = PhysicalModel.from_toml(a.config) if a.config else PhysicalModel()
        if a.free_spectra:
            from dataclasses import replace

            from .physical import SPECTRAL_PARAM_NAMES

            model = replace(model, free=tuple(model.free) + tuple(n for n in SPECTRAL_PARAM_NAMES if n not in model.free))
        if a.profile_sets:
            try:
                sets = [int(x) for x in a.profile_sets.split(",") if x.strip()]
            except ValueError:
                raise PopsynthError(f"--profile-sets must be a comma-separated list of set numbers, got {a.profile_sets!r}",
                                    "e.g. --profile-sets 1,2,3,4,5") from None
            from .spectra.sets import get_spectral_set

            for s in sets:
                get_spectral_set(s)
            res = profile_sets(sets, model, a.out or "checkpoints/physical-profile", min(a.starts, 8), a.seed, a.draws)
            print(f"profile written to {Path(a.out or 'checkpoints/physical-profile') / 'profile.json'}")
            for s, r in res["sets"].items():
                print(f"set {s}: delta ln Z {r['delta_ln_evidence']:+.2f}, -2 ln L {r['neg2_loglike']:.2f}")
            return 0
        default_out = f"checkpoints/physical-set-{a.spec_set}" + ("-free-spectra" if model.free_spectral else "")
        s = run(a.spec_set, model, a.out or default_out, a.starts, a.chains, a.warmup,
                a.samples, a.seed, a.draws, not a.no_sample, a.pilot, progress=not a.quiet, threads=a.threads)
        print(format_summary(s))
        print(f"outputs in {Path(s['files']['summary']).parent}")
        return 0
    except PopsynthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

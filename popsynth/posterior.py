"""Posterior of the block weights: NUTS (pyro-ppl), several chains sampled as one batch.

Target: p(u | data) with u = ln w [P] (P = 15 block weights),
    -ln p(u) = 0.5 [-2 ln L(w)] + 0.5 [-2 ln prior(w)] + const,
from :class:`popsynth.likelihood.Likelihood` and :class:`popsynth.likelihood.LogWeightPrior`
(the prior is a density on log10 w, i.e. on u).

Coordinates. The model is linear in w, so the likelihood is close to Gaussian in w where the
data constrain a weight and flat where they do not (there the prior alone acts, in log w). The
sampler therefore works in v with w = softplus(v) = ln(1 + e^v): w ~ v for large w (no
exponential walls, as sampling in ln w would have) and w ~ e^v for small w (the prior's log
scale); the Jacobian of u(v) enters the target. v is whitened twice: first with the Laplace
approximation at the posterior mode (the inverse Hessian of -ln p, by autograd), then, after a
short pilot run, with the covariance of the pilot samples (pyro's NUTS adapts only a diagonal
mass matrix, and the CXB makes the weights strongly correlated).

Chains as one batch: the C chains are sampled by one No-U-Turn sampler (Hoffman & Gelman 2014,
pyro's implementation) on the product space of C copies of v, whose density is the product of C
copies of the posterior. Every chain's marginal is the posterior; the chains share the step size,
the tree depth of each iteration and the adapted mass matrix, not their states. Chains start from
C different points (the pilot: mode plus ``init_jitter`` standard deviations of the Laplace
approximation; the main run: the pilot chains' last states), and R-hat (split Gelman-Rubin) and
the effective sample size (``pyro.ops.stats``) are computed over the C chains of the main run.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ._tensor import DTYPE
from .errors import PopsynthError
from .likelihood import Likelihood, LogWeightPrior

QUANTILES = (0.16, 0.5, 0.84)


@dataclass
class SamplerConfig:
    """NUTS settings: chains, warm-up and kept iterations per chain, tree depth, target acceptance, seed."""

    chains: int = 4
    warmup: int = 300
    samples: int = 1600
    max_tree_depth: int = 8
    target_accept: float = 0.8
    init_jitter: float = 1.0  # pilot starts: standard deviations of the Laplace approximation
    seed: int = 0
    jit: bool = True

    def validate(self) -> None:
        for name in ("chains", "warmup", "samples", "max_tree_depth"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise PopsynthError(f"sampler setting `{name}` must be a positive integer, got {v!r}",
                                    f"pass `{name}` >= 1")
        if self.chains < 2:
            raise PopsynthError("R-hat needs at least 2 chains", "pass `chains` >= 2")
        if not (0.5 <= self.target_accept < 1.0):
            raise PopsynthError(f"`target_accept` must be in [0.5, 1), got {self.target_accept}", "e.g. 0.8")
        if not (math.isfinite(self.init_jitter) and self.init_jitter >= 0):
            raise PopsynthError(f"`init_jitter` must be finite and >= 0, got {self.init_jitter}", "e.g. 0.3")


@dataclass
class PosteriorSamples:
    """Samples u = ln w [C, S, 15] with diagnostics: r_hat [15], ess [15] (bulk, all chains together),
    divergences (count over all kept iterations), step_size, seconds, settings."""

    u: torch.Tensor
    r_hat: torch.Tensor
    ess: torch.Tensor
    divergences: int
    step_size: float
    seconds: float
    settings: dict = field(default_factory=dict)

    @property
    def weights(self) -> torch.Tensor:
        """All kept samples of w, chains concatenated: [C*S, 15]."""
        return torch.exp(self.u.reshape(-1, self.u.shape[-1]))

    def diagnostics(self) -> dict:
        return {"chains": int(self.u.shape[0]), "samples_per_chain": int(self.u.shape[1]),
                "r_hat_max": float(self.r_hat.max()), "ess_min": float(self.ess.min()),
                "r_hat": self.r_hat.tolist(), "ess": self.ess.tolist(), "divergences": self.divergences,
                "step_size": self.step_size, "seconds": round(self.seconds, 2), **self.settings}


@contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` inside the block (None: left as they are),
    restored after it."""
    n = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _one_thread():
    """The sampler's tensors are tiny: intra-op threads only add synchronisation (and spin badly
    when another process holds a core), so sampling runs on one thread."""
    return torch_threads(1)


def neg_log_posterior(lik: Likelihood, prior: LogWeightPrior, w: torch.Tensor) -> torch.Tensor:
    """-ln p(ln w | data) up to a constant, per row of w [B, P] -> [B]."""
    return 0.5 * (lik.neg2_loglike(w) + prior.neg2_logprior(w))


def find_mode(lik: Likelihood, prior: LogWeightPrior, w0: torch.Tensor, steps: int = 200, rtol: float = 1e-9,
              patience: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mode in ln w by the batched Levenberg-Marquardt optimiser from starts w0 [B, P].

    Returns (w [B, P] at each start's optimum, -2 ln p [B]); the best start is the argmin."""
    from .fit import Convergence, LevenbergMarquardt

    def residual_fn(w):
        return torch.cat([lik.residuals(w), prior.residuals(w)], dim=-1)

    opt, conv = LevenbergMarquardt(), Convergence(rtol, patience)
    with _one_thread():
        state = opt.init(w0.to(DTYPE))
        cstate = conv.init((residual_fn(w0) ** 2).sum(-1))
        for _ in range(steps):
            state, loss = opt.step(state, residual_fn)
            cstate = conv.update(cstate, loss)
            if bool(conv.stalled(cstate).all()):
                break
    w = opt.weights(state).detach()
    return w, 2.0 * neg_log_posterior(lik, prior, w).detach()


def _softplus_inv(w: torch.Tensor) -> torch.Tensor:
    return w + torch.log(-torch.expm1(-w))


def _nlp_v(lik, prior, v: torch.Tensor) -> torch.Tensor:
    """-ln p(v) [B] for v [B, P], w = softplus(v): -ln p(u) - ln |du/dv|, du/dv = sigmoid(v) / w."""
    w = torch.nn.functional.softplus(v)
    return neg_log_posterior(lik, prior, w) - (torch.nn.functional.logsigmoid(v) - torch.log(w)).sum(-1)


def _whitening(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of a symmetric matrix, with eigenvalues floored at 1e-10 of the largest."""
    cov = 0.5 * (cov + cov.T)
    ev, vec = torch.linalg.eigh(cov)
    ev = ev.clamp_min(float(ev.max()) * 1e-10)
    return torch.linalg.cholesky((vec * ev) @ vec.T)


def _nuts(potential, z0: torch.Tensor, warmup: int, samples: int, cfg: SamplerConfig, seed: int, progress: bool,
          adapt_mass: bool = True):
    """pyro's NUTS on ``potential`` from z0 [C, P] (the chains as one product-space state); returns
    (samples [C, S, P], divergences, final step size). ``adapt_mass``: diagonal mass-matrix
    adaptation in windows (each window restarts the step-size search); without it the step size is
    adapted by dual averaging over the whole warm-up (for coordinates already whitened)."""
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    pyro.set_rng_seed(int(seed))
    kernel = NUTS(potential_fn=potential, adapt_step_size=True, adapt_mass_matrix=adapt_mass, full_mass=False,
                  target_accept_prob=cfg.target_accept, max_tree_depth=cfg.max_tree_depth,
                  jit_compile=cfg.jit, ignore_jit_warnings=True)
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, initial_params={"z": z0},
                disable_progbar=not progress)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mcmc.run()
    z = mcmc.get_samples()["z"].permute(1, 0, 2).contiguous()  # [C, S, P]
    div = mcmc.diagnostics().get("divergences", {})
    n_div = sum(len(v) for v in div.values()) if isinstance(div, dict) else 0
    return z, n_div, float(kernel.step_size)


def sample_posterior(lik: Likelihood, prior: LogWeightPrior, w_mode: torch.Tensor, cfg: SamplerConfig = SamplerConfig(),
                     progress: bool = False) -> PosteriorSamples:
    """NUTS around the posterior mode ``w_mode`` [P] (from the batched optimiser); returns the kept samples.

    Pilot run (``cfg.warmup`` warm-up + ``cfg.warmup`` kept iterations per chain) whitened by the
    Laplace approximation, then the main run (``cfg.warmup`` warm-up + ``cfg.samples`` kept)
    whitened by the pilot covariance. Runs on the device of w_mode; seeded.
    """
    cfg.validate()
    with _one_thread():
        return _sample(lik, prior, w_mode, cfg, progress)


def _sample(lik, prior, w_mode, cfg, progress) -> PosteriorSamples:
    from pyro.ops.stats import effective_sample_size, split_gelman_rubin

    w_mode = w_mode.to(DTYPE).reshape(-1)
    if not bool(torch.isfinite(w_mode).all() and (w_mode > 0).all()):
        raise PopsynthError("the starting weights of the chains must be finite and > 0", "start from a fitted mode")
    dev, P = w_mode.device, w_mode.numel()
    t0 = time.time()
    v_mode = _softplus_inv(w_mode.clamp_min(1e-12))
    # Laplace approximation: Gauss-Newton curvature J^T J of the residuals in u = ln w (positive
    # semi-definite, unlike the exact Hessian away from the exact mode), carried to v by du/dv.
    def res(u):
        w = torch.exp(u)[None]
        return torch.cat([lik.residuals(w), prior.residuals(w)], dim=-1)[0]

    jac = torch.func.jacfwd(res)(torch.log(w_mode))
    dudv = torch.sigmoid(v_mode) / torch.nn.functional.softplus(v_mode)
    hess = dudv[:, None] * (jac.T @ jac) * dudv[None, :]
    if not bool(torch.isfinite(hess).all()):
        raise PopsynthError("the posterior's curvature at the mode is not finite", "check the data and the prior")
    ev, vec = torch.linalg.eigh(0.5 * (hess + hess.T))
    ev = ev.clamp_min(float(ev.max()) * 1e-8)
    chol = _whitening((vec / ev) @ vec.T)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    z0 = (cfg.init_jitter * torch.randn(cfg.chains, P, dtype=DTYPE, generator=gen)).to(dev)

    def make_potential(center, lower):
        return lambda params: _nlp_v(lik, prior, center + params["z"] @ lower.T).sum()

    pot = make_potential(v_mode, chol)
    if not bool(torch.isfinite(pot({"z": z0}))):
        raise PopsynthError("the posterior is not finite at the chains' starting points", "check the data and the prior")
    z, div_pilot, _ = _nuts(pot, z0, cfg.warmup, cfg.warmup, cfg, cfg.seed, progress)
    v_pilot = v_mode + z @ chol.T  # [C, S, P]
    flat = v_pilot.reshape(-1, P)
    center = flat.mean(0)
    chol2 = _whitening(torch.cov(flat.T) + 1e-12 * torch.eye(P, dtype=DTYPE, device=dev))
    z0 = torch.linalg.solve_triangular(chol2, (v_pilot[:, -1] - center).T, upper=False).T
    z, n_div, step = _nuts(make_potential(center, chol2), z0.contiguous(), cfg.warmup, cfg.samples, cfg, cfg.seed + 1,
                           progress)
    w = torch.nn.functional.softplus(center + z @ chol2.T)
    u = torch.log(w)
    if not bool(torch.isfinite(u).all()):
        raise PopsynthError("the sampler produced non-finite weights", "use a narrower prior (`weight_prior`) or check the data")
    r_hat = split_gelman_rubin(u, chain_dim=0, sample_dim=1)
    ess = effective_sample_size(u, chain_dim=0, sample_dim=1)
    return PosteriorSamples(u, r_hat, ess, n_div, step, time.time() - t0,
                            {"warmup": cfg.warmup, "pilot_samples": cfg.warmup, "pilot_divergences": div_pilot,
                             "max_tree_depth": cfg.max_tree_depth, "target_accept": cfg.target_accept,
                             "init_jitter": cfg.init_jitter, "seed": cfg.seed,
                             "sampler": "NUTS (pyro-ppl) in whitened softplus coordinates, chains as one "
                                        "product-space batch"})


def quantiles(x: torch.Tensor, q=QUANTILES, dim: int = 0) -> torch.Tensor:
    """Quantiles of x along ``dim``: [len(q), ...]."""
    return torch.quantile(x.to(DTYPE), torch.tensor(q, dtype=DTYPE, device=x.device), dim=dim)


def interval(x: torch.Tensor) -> dict:
    """Median and 16-84 % interval of a 1-d tensor of samples, as floats."""
    q = quantiles(x.reshape(-1)).tolist()
    return {"median": q[1], "p16": q[0], "p84": q[2]}

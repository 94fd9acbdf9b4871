"""The NUTS posterior of block weights (popsynth.posterior) on synthetic data made by the model.

Coverage: D independent synthetic data sets, each with its own true weights drawn from the prior,
are sampled in one run (their posteriors are independent blocks of one product target, as the
chains are); the 68 % intervals must contain the truth 68 % of the time within binomial error.
"""

import math

import numpy as np
import pytest
import torch

from popsynth.errors import PopsynthError
from popsynth.likelihood import CXBTerm, Likelihood, LogWeightPrior
from popsynth.posterior import SamplerConfig, find_mode, quantiles, sample_posterior

D = torch.float64


def _synthetic(n_sets: int, n_w: int, n_pts: int, sigma_dex: float, seed: int):
    """n_sets independent linear-Gaussian data sets; set d uses weights [d*n_w, (d+1)*n_w)."""
    rng = np.random.default_rng(seed)
    truth = 10 ** rng.normal(0.0, sigma_dex, size=n_sets * n_w)
    terms = []
    for d in range(n_sets):
        r = np.zeros((n_sets * n_w, n_pts))
        r[d * n_w:(d + 1) * n_w] = rng.uniform(0.5, 1.5, size=(n_w, n_pts))
        model = truth @ r
        err = 0.1 * model
        obs = model + err * rng.normal(size=n_pts)
        t = lambda x: torch.as_tensor(x, dtype=D)  # noqa: E731
        terms.append(CXBTerm(f"set{d}", t(r), t(np.zeros(n_pts)), t(obs), t(err), t(err)))
    return Likelihood(terms), torch.as_tensor(truth, dtype=D)


def test_recovers_weights_and_coverage():
    n_sets, n_w = 40, 1
    lik, truth = _synthetic(n_sets, n_w, n_pts=4, sigma_dex=0.3, seed=11)
    prior = LogWeightPrior(0.3)
    mode, _ = find_mode(lik, prior, torch.ones(1, n_sets * n_w, dtype=D))
    post = sample_posterior(lik, prior, mode[0],
                            SamplerConfig(chains=2, warmup=100, samples=200, seed=1, jit=False))
    assert float(post.r_hat.max()) < 1.05
    assert float(post.ess.min()) > 50
    assert post.divergences == 0
    q = quantiles(post.weights)  # [3, P]
    inside = ((truth >= q[0]) & (truth <= q[2])).double()
    n = truth.numel()
    frac = float(inside.mean())
    sd = math.sqrt(0.68 * 0.32 / n)
    assert abs(frac - 0.68) < 3 * sd, f"coverage {frac:.2f} of {n} intervals (expected 0.68 +/- {sd:.2f})"
    # medians recover the truth: log ratio small compared with the prior width
    assert float(torch.median(torch.abs(torch.log10(q[1] / truth)))) < 0.1


def test_sampler_settings_are_checked():
    lik, _ = _synthetic(1, 2, 4, 0.3, 0)
    with pytest.raises(PopsynthError, match="at least 2 chains"):
        sample_posterior(lik, LogWeightPrior(1.0), torch.ones(2, dtype=D), SamplerConfig(chains=1))
    with pytest.raises(PopsynthError, match="finite and > 0"):
        sample_posterior(lik, LogWeightPrior(1.0), torch.tensor([1.0, -1.0], dtype=D), SamplerConfig(chains=2))
    with pytest.raises(PopsynthError, match="positive integer"):
        sample_posterior(lik, LogWeightPrior(1.0), torch.ones(2, dtype=D), SamplerConfig(samples=0))


def test_intrinsic_ct_fraction_above_a_luminosity():
    """CT fraction of the blocks at log L >= 42 / 43 against a hand sum over the block layout
    (k = 5 c + j: class c = 2 is Compton-thick, j = 0 is log L 41-42)."""
    from popsynth.response import intrinsic_ct_fraction

    counts = torch.arange(1.0, 16.0, dtype=torch.float64)
    w = torch.linspace(0.5, 2.0, 15, dtype=torch.float64)[None]
    n = (w * counts)[0].reshape(3, 5)  # [class, luminosity range]
    for lmin, j0 in ((None, 0), (42.0, 1), (43.0, 2)):
        want = float(n[2, j0:].sum() / n[:, j0:].sum())
        assert float(intrinsic_ct_fraction(w, counts, lmin)[0]) == pytest.approx(want, rel=1e-14)

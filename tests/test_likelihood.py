"""The joint likelihood (popsynth.likelihood) against hand computations, scipy and the data files."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from popsynth.data.counts import load_counts
from popsynth.errors import PopsynthError
from popsynth.likelihood import (CUMULATIVE_ERROR_MODELS, CTFractionTerm, CovarianceTerm, CXBTerm, Likelihood,
                                 LogWeightPrior, PoissonTerm, cumulative_covariance, smoothness_pairs)

D = torch.float64


def test_cxb_term_split_normal_with_floor():
    """Residual = (m - d) / sqrt(sigma_side^2 + (f d)^2), the upper error where the model is above."""
    resp = torch.tensor([[1.0, 2.0], [0.5, 0.0]], dtype=D)
    extra = torch.tensor([0.1, 0.2], dtype=D)
    obs = torch.tensor([2.0, 2.0], dtype=D)
    lo, hi = torch.tensor([0.2, 0.3], dtype=D), torch.tensor([0.4, 0.5], dtype=D)
    t = CXBTerm("x", resp, extra, obs, lo, hi, sys_floor=0.1)
    w = torch.tensor([[1.0, 2.0]], dtype=D)
    m = [1.0 + 1.0 + 0.1, 2.0 + 0.0 + 0.2]  # 2.1 (above), 2.2 (above)
    want = [(m[0] - 2) / math.sqrt(0.4 ** 2 + 0.2 ** 2), (m[1] - 2) / math.sqrt(0.5 ** 2 + 0.2 ** 2)]
    np.testing.assert_allclose(t.residuals(w)[0].numpy(), want, rtol=1e-12)
    w2 = torch.tensor([[0.5, 0.0]], dtype=D)  # m = 0.6, 1.2: below -> lower errors
    want2 = [(0.6 - 2) / math.sqrt(0.2 ** 2 + 0.2 ** 2), (1.2 - 2) / math.sqrt(0.3 ** 2 + 0.2 ** 2)]
    np.testing.assert_allclose(t.residuals(w2)[0].numpy(), want2, rtol=1e-12)
    with pytest.raises(PopsynthError, match="systematic floor"):
        CXBTerm("x", resp, extra, obs, lo, hi, sys_floor=float("nan"))


def test_poisson_term_is_the_deviance():
    """-2 ln L(mu) + 2 ln L(n) from scipy's Poisson pmf equals the term, including empty bins."""
    n = torch.tensor([0.0, 3.0, 17.0], dtype=D)
    resp = torch.tensor([[0.5, 2.0, 10.0], [0.1, 1.0, 5.0]], dtype=D)
    t = PoissonTerm("p", resp, n)
    w = torch.tensor([[1.0, 2.0], [0.3, 0.1]], dtype=D)
    mu = (w @ resp).numpy()
    want = -2 * (stats.poisson.logpmf(n.numpy(), mu) - stats.poisson.logpmf(n.numpy(), np.maximum(n.numpy(), 1e-300)))
    np.testing.assert_allclose(t.neg2_loglike(w).numpy(), want.sum(-1), rtol=1e-10)
    np.testing.assert_allclose((t.residuals(w) ** 2).sum(-1).numpy(), want.sum(-1), rtol=1e-9)
    # sign of the residual follows the model minus the data
    assert np.all(np.sign(t.residuals(w).numpy()) == np.sign(mu - n.numpy()))


def test_covariance_term_is_mahalanobis():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 4))
    cov = a @ a.T + 4 * np.eye(4)
    resp = torch.as_tensor(rng.uniform(1, 2, size=(2, 4)))
    val = torch.as_tensor(rng.uniform(2, 3, size=4))
    t = CovarianceTerm("c", resp, val, torch.as_tensor(cov))
    w = torch.tensor([[0.7, 1.1], [1.0, 1.0]], dtype=D)
    r = (w @ resp - val).numpy()
    want = np.einsum("bi,ij,bj->b", r, np.linalg.inv(cov), r)
    np.testing.assert_allclose(t.neg2_loglike(w).numpy(), want, rtol=1e-10)
    with pytest.raises(PopsynthError, match="not positive definite"):
        CovarianceTerm("bad", resp, val, -torch.eye(4, dtype=D))


def test_cumulative_covariance_nested_poisson():
    """Poisson part of N(>S): Var = N/area, Cov(i, j) = Var of the brighter point (shared sources)."""
    area = 2.0
    n = np.array([100.0, 40.0, 10.0])  # deg^-2, fluxes increasing
    cov = cumulative_covariance(n, n * area, 0.0, True)
    np.testing.assert_allclose(cov, [[50, 20, 5], [20, 20, 5], [5, 5, 5]])
    cov_sys = cumulative_covariance(n, n * area, 0.1, True) - cov
    np.testing.assert_allclose(cov_sys, 0.01 * np.outer(n, n))
    cov_ind = cumulative_covariance(n, n * area, 0.1, False) - cov
    np.testing.assert_allclose(cov_ind, 0.01 * np.diag(n ** 2))


@pytest.mark.parametrize("name", sorted(CUMULATIVE_ERROR_MODELS))
def test_covariance_models_reproduce_the_files_errors(name):
    """The diagonal of each cumulative table's covariance equals its tabulated 1-sigma errors, and
    the matrix is positive definite (data/counts/README.md, 'Adopted errors')."""
    from astropy.table import Table

    d = load_counts(name)
    n_eff = np.asarray(Table.read(d.path, format="ascii.ecsv")["n_eff"], float)
    f, common = CUMULATIVE_ERROR_MODELS[name]
    cov = cumulative_covariance(d.value, n_eff, f, common)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), d.err_hi, rtol=1e-6)
    assert np.linalg.eigvalsh(cov).min() > 0


def test_ct_fraction_term():
    num = torch.tensor([0.0, 1.0], dtype=D)
    den = torch.tensor([4.0, 1.0], dtype=D)
    t = CTFractionTerm("ct", num, den, 0.1, 0.02, 0.05)
    w = torch.tensor([[1.0, 1.0], [1.0, 0.1]], dtype=D)  # fractions 0.2 (above), 0.1/4.1 (below)
    want = [((0.2 - 0.1) / 0.05) ** 2, ((0.1 / 4.1 - 0.1) / 0.02) ** 2]
    np.testing.assert_allclose(t.neg2_loglike(w).numpy(), want, rtol=1e-12)


def test_prior_and_smoothness():
    p = LogWeightPrior(0.5, 0.25, ((0, 1),))
    w = torch.tensor([[10.0, 1.0]], dtype=D)
    np.testing.assert_allclose(p.neg2_logprior(w).item(), (1 / 0.5) ** 2 + (1 / 0.25) ** 2)
    assert LogWeightPrior(0.0).neg2_logprior(w).item() == 0.0
    pairs = smoothness_pairs()
    assert len(pairs) == 12 and (4, 5) not in pairs and (9, 10) not in pairs  # never across N_H classes


def test_likelihood_sums_terms_and_residuals():
    t1 = PoissonTerm("p", torch.tensor([[1.0, 2.0]], dtype=D), torch.tensor([2.0, 1.0], dtype=D))
    t2 = CTFractionTerm("ct", torch.tensor([1.0], dtype=D), torch.tensor([3.0], dtype=D), 0.3, 0.1, 0.1)
    lik = Likelihood([t1, t2])
    w = torch.tensor([[0.5], [2.0]], dtype=D)
    tot = lik.neg2_loglike(w)
    np.testing.assert_allclose(tot.numpy(), (t1.neg2_loglike(w) + t2.neg2_loglike(w)).numpy(), rtol=1e-12)
    np.testing.assert_allclose((lik.residuals(w) ** 2).sum(-1).numpy(), tot.numpy(), rtol=1e-9)
    assert lik.n_points() == 3 and lik.n_points("cxb") == 0
    with pytest.raises(PopsynthError, match="duplicate"):
        Likelihood([t1, t1])

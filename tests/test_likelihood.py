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
    n_eff = d.columns["n_eff"]  # the loaded record carries every column
    assert np.array_equal(n_eff, np.asarray(Table.read(d.path, format="ascii.ecsv")["n_eff"], float))
    f, common = CUMULATIVE_ERROR_MODELS[name]
    cov = cumulative_covariance(d.value, n_eff, f, common)
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), d.err_hi, rtol=1e-6)
    assert np.linalg.eigvalsh(cov).min() > 0


def test_counts_terms_use_the_loaded_record():
    """counts_term takes source numbers, bin edges and n_eff from the CountsData record (the file is not
    read again: its path is made unreadable here); the values equal the file's columns bit for bit."""
    from types import SimpleNamespace

    from astropy.table import Table

    from popsynth.likelihood import counts_term

    gen = torch.Generator().manual_seed(0)
    bat = load_counts("bat105_agn_differential_14_195keV")
    t = Table.read(bat.path, format="ascii.ecsv")
    gone = bat._replace(path="/nonexistent/bat.ecsv")
    resp = torch.rand(15, len(bat.flux), generator=gen, dtype=D)
    term = counts_term(SimpleNamespace(target="binned", data=gone, bin_response=resp, device=torch.device("cpu")))
    assert isinstance(term, PoissonTerm)
    assert torch.equal(term.n_obs, torch.as_tensor(np.asarray(t["n_sources"], dtype=np.float64)))
    width = torch.as_tensor(np.asarray(t["flux_hi"], np.float64) - np.asarray(t["flux_lo"], np.float64))
    assert torch.equal(term.response, resp * width * float(bat.area_deg2))
    with pytest.raises(PopsynthError, match=r"/nonexistent/bat.ecsv lacks column\(s\) \['n_sources'\]"):
        counts_term(SimpleNamespace(target="binned", data=gone._replace(columns={}), bin_response=resp,
                                    device=torch.device("cpu")))
    name = sorted(CUMULATIVE_ERROR_MODELS)[0]
    cum = load_counts(name)
    n_eff = np.asarray(Table.read(cum.path, format="ascii.ecsv")["n_eff"], dtype=np.float64)
    resp = torch.rand(15, len(cum.flux), generator=gen, dtype=D)
    term = counts_term(SimpleNamespace(target="cumulative", data=cum._replace(path="/nonexistent/c.ecsv"),
                                       cum_response=resp, device=torch.device("cpu")))
    f, common = CUMULATIVE_ERROR_MODELS[name]
    want = torch.linalg.cholesky(torch.as_tensor(cumulative_covariance(cum.value, n_eff, f, common)))
    assert isinstance(term, CovarianceTerm) and torch.equal(term.chol, want)


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


def _norm_term(s, sym=True, n=12, seed=5):
    rng = np.random.default_rng(seed)
    resp = torch.as_tensor(rng.uniform(0.5, 2.0, size=(3, n)))
    extra = torch.as_tensor(rng.uniform(0.0, 0.2, size=n))
    obs = torch.as_tensor(rng.uniform(3.0, 5.0, size=n))
    lo = torch.as_tensor(rng.uniform(0.1, 0.3, size=n))
    hi = lo if sym else lo * 1.5
    return CXBTerm("x", resp, extra, obs, lo, hi, norm_sigma=s)


def test_cxb_normalisation_is_marginalised_exactly():
    """A free calibration factor c ~ N(1, s^2) per instrument, marginalised: for symmetric errors
    -2 ln L must equal the Gaussian marginal with covariance D + s^2 m m^T, i.e.
    (d - m)^T C^-1 (d - m) + ln det C - ln det D (the constant ln det D dropped), by hand with numpy."""
    s = 0.1
    t = _norm_term(s)
    w = torch.tensor([[1.0, 0.5, 0.8], [0.3, 1.2, 0.9]], dtype=D)
    got = t.neg2_loglike(w).numpy()
    sig2 = t.err_lo.numpy() ** 2
    for b in range(2):
        m = t.predict(w)[b].numpy()
        d = t.obs.numpy()
        cov = np.diag(sig2) + s ** 2 * np.outer(m, m)
        r = d - m
        want = r @ np.linalg.solve(cov, r) + np.linalg.slogdet(cov)[1] - np.log(sig2).sum()
        assert got[b] == pytest.approx(want, rel=1e-10)
    # the conditional mean of c is the minimiser of the c-dependent chi2 (a fine scan), its sd the curvature
    c, sd = t.normalisation(w[:1])
    m, d = t.predict(w[:1])[0].numpy(), t.obs.numpy()
    grid = np.linspace(0.5, 1.5, 200001)
    q = (((grid[:, None] * m - d) ** 2) / sig2).sum(1) + ((grid - 1) / s) ** 2
    assert float(c) == pytest.approx(grid[np.argmin(q)], abs=1e-5)
    assert float(sd) == pytest.approx(1 / math.sqrt((m * m / sig2).sum() + 1 / s ** 2), rel=1e-12)
    # chi2 of the points alone uses the normalised model c* m
    assert float(t.chi2(w[:1])) == pytest.approx((((float(c) * m - d) ** 2) / sig2).sum(), rel=1e-12)


def test_cxb_normalisation_limits_and_errors():
    """s -> 0 recovers the fixed-normalisation chi2; s = 0 is exactly it; bad widths are refused."""
    w = torch.tensor([[1.0, 0.5, 0.8]], dtype=D)
    fixed = _norm_term(0.0, sym=False)
    tiny = _norm_term(1e-7, sym=False)
    assert float(tiny.neg2_loglike(w)) == pytest.approx(float(fixed.neg2_loglike(w)), rel=1e-6)
    assert float(fixed.normalisation(w)[0]) == 1.0 and float(fixed.chi2(w)) == float(fixed.neg2_loglike(w))
    for bad in (-0.1, 1.0, float("inf")):
        with pytest.raises(PopsynthError, match="normalisation uncertainty"):
            _norm_term(bad)


def test_chi2_of_the_median_prediction():
    """For one sample the median prediction is that sample's; for three, the per-point median."""
    t = _norm_term(0.1)
    ct = CTFractionTerm("ct", torch.tensor([1.0, 0.0, 0.0], dtype=D), torch.tensor([1.0, 1.0, 1.0], dtype=D), 0.3, 0.05, 0.1)
    lik = Likelihood([t, ct])
    w = torch.tensor([[1.0, 0.5, 0.8], [0.3, 1.2, 0.9], [0.6, 0.6, 0.6]], dtype=D)
    one = lik.chi2_of_median_prediction(w[:1])
    assert one["x"] == pytest.approx(float(t.chi2(w[:1])), rel=1e-12)
    assert one["ct"] == pytest.approx(float(ct.neg2_loglike(w[:1])), rel=1e-12)
    med = torch.quantile(t.predict_observed(w), 0.5, dim=0)
    assert lik.chi2_of_median_prediction(w)["x"] == pytest.approx(float(t.chi2_of(med[None])), rel=1e-12)
    f = (w[:, 0] / w.sum(1)).median()
    want = ((float(f) - 0.3) / (0.1 if float(f) > 0.3 else 0.05)) ** 2
    assert lik.chi2_of_median_prediction(w)["ct"] == pytest.approx(want, rel=1e-12)

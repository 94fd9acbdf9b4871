"""The physical population model (issue 9): cube, kernels, shared likelihood, gradients, recovery, CLI."""

import copy
import json

import numpy as np
import pytest
import torch

from popsynth.errors import PopsynthError
from popsynth.grid import Grid
from popsynth.physical import (DEFAULT_FREE, PHYSICAL_NAMES, ParameterMap, PhysicalModel, XLFBuilder, absorption_bins,
                               ldde, with_block_weights_only)
from popsynth.xlf import A19AbsorptionParams, absorption_a19, apply_block_weights, build_phi0, ldde_ueda14

D = torch.float64


@pytest.fixture(scope="module")
def pp():
    """Spectral set 5 with 8 spectral draws per cell (the kernels do not depend on the draw count)."""
    from popsynth.physical_run import setup

    return setup(5, PhysicalModel(), draws=8, log=lambda *a: None)


@pytest.fixture(scope="module")
def table(pp):
    from popsynth.spectra.cache import build_spectral_table
    from popsynth.spectra.registry import make_components

    cfg = pp.cfg
    return build_spectral_table(cfg.spec_set, pp.prob.grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed,
                                components=make_components(cfg.spectral_model, cfg.torus_table))


def _variant(pp, model):
    """The same problem and kernels with another parameter configuration."""
    from popsynth.physical_run import PhysicalProblem

    return PhysicalProblem(pp.cfg, pp.prob, pp.kernels, model, ParameterMap(model), 0.0)


def _default_params(b=1):
    pm = ParameterMap(PhysicalModel(free=PHYSICAL_NAMES))
    return pm, pm.default_theta(b)


# ------------------------------------------------------------------------------ the cube
def test_cube_at_published_parameters_equals_build_phi0():
    grid = Grid()
    pm, th = _default_params()
    phi, phi1 = XLFBuilder(grid)(pm.full(th))
    xb = XLFBuilder(grid)
    for red, ref in ((phi, build_phi0(grid)), (phi1, build_phi0(grid, l_moment=1))):
        full = xb.expand(red[0])
        assert full.shape == ref.shape
        assert torch.allclose(full, ref, rtol=1e-10, atol=0.0)


def test_ldde_and_absorption_equal_the_library_functions():
    g = torch.Generator().manual_seed(3)
    z = torch.rand(500, generator=g, dtype=D) * 5 + 0.001
    ll = torch.rand(500, generator=g, dtype=D) * 6 + 41
    pm, th = _default_params()
    p = {k: v[0] for k, v in pm.full(th).items() if k != "log10_w"}
    assert torch.allclose(ldde(z, ll, p), ldde_ueda14(z, ll), rtol=1e-12, atol=0)
    f = absorption_bins(z, ll, p)  # [500, 6]
    for k, nh in enumerate((20.5, 21.5, 22.5, 23.5, 24.5, 25.5)):
        assert torch.allclose(f[:, k], absorption_a19(z, ll, torch.full_like(z, nh), A19AbsorptionParams()),
                              rtol=1e-13, atol=0)
    assert torch.allclose(f[:, :4].sum(-1), torch.ones_like(z), rtol=1e-13)


def test_gradcheck_cube_in_ldde_and_absorption_parameters():
    grid = Grid(z=np.array([0.05, 0.6, 1.5, 2.6, 4.0]), logl_edges=np.linspace(41, 47, 13),
                lognh_edges=np.linspace(20, 26, 7))
    xb = XLFBuilder(grid)
    pm = ParameterMap(PhysicalModel(free=PHYSICAL_NAMES))
    g = torch.Generator().manual_seed(0)
    u0 = pm.u_of(pm.default_theta(2) + 0.3 * pm.sigma * torch.randn(2, pm.n_free, generator=g, dtype=D))

    def f(u):
        phi, phi1 = xb(pm.full(pm.theta(u)))
        return torch.log(phi), torch.log(phi1)

    assert torch.autograd.gradcheck(f, (u0.clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_block_weights_and_posterior(pp):
    m = PhysicalModel(free=("logLstar", "gamma1", "p1_star", "psi0_lo", "a1", "epsilon_hi", "f_ct_lo"),
                      block_weights=True)
    v = _variant(pp, m)
    g = torch.Generator().manual_seed(1)
    u0 = v.pmap.u_of(v.pmap.default_theta(1)) + 0.05 * torch.randn(1, v.pmap.n_free, generator=g, dtype=D)
    for sparse in (False, True):
        fn = lambda u, s=sparse: v.neg_log_post_u(u, sparse=s)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (u0.clone().requires_grad_(True),), eps=1e-6, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ kernels
def _random_cubes(pp, n=2, seed=5):
    pm, th = _default_params()
    phi, _ = pp.kernels.builder(pm.full(th))
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *phi.shape[1:], generator=g, dtype=D) * 3 * phi[0]


def test_kernels_equal_the_engine_for_random_cubes(pp, table):
    from popsynth.cxb import cxb_from_cube, cxb_kernel
    from popsynth.observables import build_survey_model
    from popsynth.survey import counts_flux_bins

    ks, xb, grid = pp.kernels, pp.kernels.builder, pp.prob.grid
    r, r1 = _random_cubes(pp), _random_cubes(pp, seed=6)
    x = ks.features(r, r1)
    assert torch.allclose(ks.features(r, r1, sparse=True), x, rtol=1e-12, atol=0)
    names = ks.feature_names
    n_cxb = ks.k_cxb.shape[-1]
    ref = cxb_from_cube(xb.expand(r1), cxb_kernel(table, grid, pp.prob.data.energy), grid)
    assert torch.allclose(x[:, :n_cxb], ref, rtol=1e-10, atol=0)
    checked = 0
    for name, m in pp.prob.constraints.models.items():
        full = xb.expand(r)
        if m.target == "cumulative":
            i = names.index(name + "[0]")
            got, want = x[:, i:i + m.fluxes.numel()], m.cumulative_cube(full)
        elif m.target == "ct_fraction":
            i, j = names.index(name + ":num[0]"), names.index(name + ":den[0]")
            got, want = x[:, i] / x[:, j], m.ct_fraction_cube(full)
        else:  # binned BAT counts: (N(>lo) - N(>hi)) / (hi - lo) times width * area = expected numbers
            lo, hi = counts_flux_bins(m.data)
            mm = build_survey_model(m.survey, grid, pp.prob.phi0, table, fluxes=np.concatenate([lo, hi]))
            c = mm.cumulative_cube(full)
            want = (c[:, :lo.size] - c[:, lo.size:]) * float(m.data.area_deg2)
            i = names.index(name + "[0]")
            got = x[:, i:i + lo.size]
        assert torch.allclose(got, want, rtol=1e-10, atol=0), name
        checked += 1
    assert checked == len(pp.prob.constraints.models) == 8


def test_block_weight_special_case_equals_block_model(pp):
    from popsynth.likelihood import LogWeightPrior
    from popsynth.physical_kernels import block_likelihood

    v = _variant(pp, with_block_weights_only())
    assert v.pmap.n_free == 15 and v.pmap.n_phys == 0
    g = torch.Generator().manual_seed(2)
    lw = 0.5 * torch.randn(4, 15, generator=g, dtype=D)
    w = 10.0 ** lw
    u = v.pmap.u_of(lw)
    phi, _ = v.cubes(u)
    assert torch.allclose(v.kernels.builder.expand(phi), apply_block_weights(pp.prob.phi0, w, pp.prob.grid),
                          rtol=1e-12, atol=0)
    blik = block_likelihood(pp.prob, pp.cfg)
    x = v.features(u)
    plik = v.kernels.likelihood
    assert [t.name for t in plik.terms] == [t.name for t in blik.terms]
    for tp, tb in zip(plik.terms, blik.terms):
        assert torch.allclose(tp.neg2_loglike(x), tb.neg2_loglike(w), rtol=1e-10, atol=1e-10), tp.name
    prior = LogWeightPrior(1.0)
    want = 0.5 * (blik.neg2_loglike(w) + prior.neg2_logprior(w))
    got = v.neg_log_post_u(u) + v.pmap.log_jacobian(u)  # without the Jacobian of the sampling coordinates
    assert torch.allclose(got, want, rtol=1e-10, atol=0)


# ------------------------------------------------------------------------------ spectra
def test_gradcheck_spectral_components_in_gamma_ecut_r():
    from popsynth.spectra.primary import primary_spectrum
    from popsynth.spectra.reprocessed import Reflection, TorusReprocessed

    energy = torch.logspace(-0.3, 3.1, 30, dtype=D)  # covers the Green's tables' input range
    log_nh = torch.tensor([22.5, 24.3], dtype=D)
    refl, torus = Reflection(), TorusReprocessed()

    def f(gamma, ecut, r):
        prim = primary_spectrum(energy, gamma, ecut)
        p = {"gamma": gamma, "ecut": ecut, "refl": r, "theta_tor": torch.full_like(gamma, 58.0)}
        return prim, refl.spectrum(energy, prim, p, log_nh), torus.spectrum(energy, prim, p, log_nh)

    args = (torch.tensor([1.8, 1.96], dtype=D, requires_grad=True), torch.tensor([150.0, 230.0], dtype=D, requires_grad=True),
            torch.tensor([0.4, 0.9], dtype=D, requires_grad=True))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-8, rtol=1e-5)


# ------------------------------------------------------------------------------ recovery
def test_recovers_known_parameters_from_synthetic_data(pp):
    """Data made by the model at known parameters (3 published sigma from the defaults, priors widened
    tenfold so the data decide); the mode must lie within 3 Laplace sigma of the truth."""
    from popsynth.physical_run import find_mode, laplace

    free = ("logLstar", "gamma1", "gamma2", "p1_star", "psi0_lo", "f_ct_lo", "f_ct_hi")
    base = PhysicalModel(free=free)
    model = PhysicalModel(free=free, priors={n: (base.prior(n)[0], 10 * base.prior(n)[1]) for n in free})
    v = _variant(pp, model)
    v.kernels = copy.copy(pp.kernels)
    v.kernels.likelihood = copy.deepcopy(pp.kernels.likelihood)
    truth = v.pmap.default_theta(1) + torch.as_tensor([base.prior(n)[1] for n in free], dtype=D) * \
        torch.tensor([3.0, -3.0, 3.0, -3.0, 3.0, 3.0, -3.0], dtype=D)
    with torch.no_grad():
        x = v.features(v.pmap.u_of(truth))
    for t in v.kernels.likelihood.terms:  # noise-free (Asimov) data at the truth
        if t.kind == "ct_fraction":
            t.value = float(t.predict(x)[0])
        elif t.kind == "poisson":
            t.n_obs = t.predict(x)[0]
        elif t.kind == "cxb":
            t.obs = t.predict(x)[0]
        else:
            t.value = t.predict(x)[0]
    u, loss = find_mode(v, v.pmap.u_of(v.pmap.default_theta(1)))
    lap = laplace(v, u)
    est = v.pmap.theta(u)[0]
    sd = torch.sqrt(torch.diagonal(lap["cov_theta"]))
    pull = ((est - truth[0]) / sd).abs()
    assert bool((pull < 3).all()), dict(zip(free, pull.tolist()))
    start_pull = ((v.pmap.default_theta(1)[0] - truth[0]) / sd).abs()
    assert float(start_pull.max()) > 3  # the data do move the parameters: the start is far from the truth


# ------------------------------------------------------------------------------ configuration and CLI
def test_config_from_toml_and_example(tmp_path):
    from pathlib import Path

    ex = PhysicalModel.from_toml(Path(__file__).parent.parent / "examples" / "physical_model.toml")
    assert set(ex.free) <= set(PHYSICAL_NAMES)
    p = tmp_path / "m.toml"
    p.write_text('free = ["logLstar", "f_ct_lo"]\nblock_weights = true\n[priors]\nlogLstar = [44.0, 0.2]\n'
                 '[bounds]\nf_ct_lo = [0.0, 3.0]\n')
    m = PhysicalModel.from_toml(p)
    assert m.free == ("logLstar", "f_ct_lo") and m.block_weights
    assert m.prior("logLstar") == (44.0, 0.2) and m.bound("f_ct_lo") == (0.0, 3.0)
    assert ParameterMap(m).n_free == 17
    assert PhysicalModel().free == DEFAULT_FREE


@pytest.mark.parametrize("text, words", [
    ('free = ["logLstr"]', "unknown parameter"),
    ('free = ["logLstar"]\ncolour = 3', "unknown key"),
    ('free = ["logLstar"]\n[priors]\nlogLstar = [44.0, -1.0]', "sigma"),
    ('free = ["logLstar"]\n[bounds]\nlogLstar = [45.0, 44.0]', "lo < hi"),
    ('free = ["logLstar"]\n[values]\nlogLstar = 50.0', "outside its bounds"),
    ('free = []', "no free parameter"),
    ('free = "logLstar', "not valid TOML"),
    ('binned_xlf = ["ueda15"]', "unknown binned XLF"),
    ('spectral_nodes = 4', "odd integer"),
    ('free = ["gamma"]\n[values]\ngamma = 2.5', "outside its bounds"),
])
def test_bad_config_is_one_line_error(tmp_path, text, words):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(PopsynthError) as e:
        PhysicalModel.from_toml(p)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    from popsynth.physical_run import main

    assert main(["--config", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not found" in err and "\n" not in err
    assert main(["--spec-set", "9"]) == 2
    assert main(["--chains", "1"]) == 2
    assert main(["--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err


def test_cli_writes_the_outputs(pp, table, tmp_path, monkeypatch):
    import popsynth.physical_run as pr
    from popsynth.io import load_xlf

    cfg = tmp_path / "small.toml"
    cfg.write_text('free = ["logLstar", "psi0_lo", "f_ct_lo"]\nbinned_xlf = ["ueda14"]\n')

    def fake_setup(spec_set, model, draws=64, device="cpu", log=print):
        from popsynth.physical_kernels import build_kernels

        v = _variant(pp, model)
        v.kernels = build_kernels(pp.prob, table, pp.cfg, model)  # with the binned-XLF kernels
        return v

    monkeypatch.setattr(pr, "setup", fake_setup)
    out = tmp_path / "run"
    threads = torch.get_num_threads()
    code = pr.main(["--config", str(cfg), "--out", str(out), "--starts", "2", "--chains", "2", "--warmup", "10",
                    "--samples", "12", "--quiet", "--threads", "1"])
    assert code == 0
    assert torch.get_num_threads() == threads  # restored after the run
    for f in ("summary.json", "xlf_best.h5", "parameter_samples.csv", "cxb_model.ecsv", "parameters.md", "corner.png"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["sampler"]["threads"] == 1 and s["sampler"]["adapt_mass_matrix"] is False  # whitened by Laplace
    assert s["sampler"]["potential_evaluations"] >= 2 * (10 + 12)
    assert s["sampler"]["evaluations_per_iteration"] == pytest.approx(s["sampler"]["potential_evaluations"] / 22, abs=0.01)
    assert set(s["parameters"]) == {"logLstar", "psi0_lo", "f_ct_lo"}
    assert "xlf:ueda14" in s["chi2_at_median"] and s["groups"]["binned_xlf"]["points"] > 50
    assert 0 < s["ct_fraction_z0.1"]["p16"] <= s["ct_fraction_z0.1"]["median"] <= s["ct_fraction_z0.1"]["p84"] < 1
    assert s["sampler"]["chains"] == 2 and s["sampler"]["samples_per_chain"] == 12
    lo, mid, hi = (load_xlf(out / "xlf_best.h5", w).phi(0.5, 44.0, 23.5) for w in ("p16", "p50", "p84"))
    assert 0 < lo <= mid <= hi
    rows = (out / "parameter_samples.csv").read_text().strip().splitlines()
    assert rows[0] == "chain,iteration,logLstar,psi0_lo,f_ct_lo" and len(rows) == 1 + 2 * 12



# ------------------------------------------------------------------------------ spectral hyperparameters
@pytest.fixture(scope="module")
def pp_spec(pp):
    """Spectral set 5 (8 draws) with the mean photon index free: kernels on 3 nodes (1.71, 1.96, 2.21)."""
    from popsynth.physical_run import setup

    return setup(5, PhysicalModel(free=("logLstar", "psi0_lo", "f_ct_lo", "gamma")), draws=8, log=lambda *a: None,
                 emulator_cache=False)


def test_spectral_set_at_moves_the_distributions():
    from popsynth.physical_spectra import set_value, spectral_set_at
    from popsynth.spectra.sets import get_spectral_set

    s5 = get_spectral_set(5)
    assert spectral_set_at(5, {n: set_value(5, n) for n in ("gamma", "refl", "ecut")}) is s5
    s = spectral_set_at(1, {"gamma": 1.9, "refl": 1.66, "ecut": 152.0})
    s1 = get_spectral_set(1)
    assert s.gamma[0].a == 1.9 and s.gamma[1].a == pytest.approx(s1.gamma[1].a + 0.1, abs=1e-12)
    assert s.refl[1].a == pytest.approx(2 * s1.refl[1].a) and s.ecut[1].a == pytest.approx(152.0)
    assert s.gamma[0].b == s1.gamma[0].b  # scatters unchanged


def test_spectral_hyperparameters_at_set_values_equal_the_fixed_model(pp, pp_spec):
    """The emulator path with gamma at set 5's value is today's physical model (same features,
    same likelihood; the posteriors differ only by gamma's prior and Jacobian)."""
    from popsynth.physical_spectra import EmulatedKernels

    assert isinstance(pp_spec.kernels, EmulatedKernels) and pp_spec.kernels.hyper_names == ("gamma",)
    fixed = _variant(pp, PhysicalModel(free=("logLstar", "psi0_lo", "f_ct_lo")))
    g = torch.Generator().manual_seed(4)
    th = fixed.pmap.default_theta(3) + 0.5 * fixed.pmap.sigma * torch.randn(3, 3, generator=g, dtype=D)
    th4 = torch.cat([th, torch.full((3, 1), 1.96, dtype=D)], -1)
    x_fixed = fixed.features(fixed.pmap.u_of(th))
    x_spec = pp_spec.features(pp_spec.pmap.u_of(th4))
    assert torch.allclose(x_spec, x_fixed, rtol=1e-10, atol=0)
    lik_f = fixed.kernels.likelihood.neg2_loglike(x_fixed)
    assert torch.allclose(pp_spec.kernels.likelihood.neg2_loglike(x_spec), lik_f, rtol=1e-10, atol=0)


def test_gradcheck_spectral_hyperparameter_path(pp_spec):
    th = pp_spec.pmap.default_theta(2)
    th[:, 3] = torch.tensor([1.83, 2.07], dtype=D)  # off the nodes
    u0 = pp_spec.pmap.u_of(th)
    assert torch.autograd.gradcheck(pp_spec.neg_log_post_u, (u0.clone().requires_grad_(True),), eps=1e-6, atol=1e-5,
                                    rtol=1e-5)
    # and through the CXB on the output grid
    assert torch.autograd.gradcheck(lambda u: pp_spec.cxb_fine(u)[..., ::40].log(), (u0.clone().requires_grad_(True),),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


def test_emulator_interpolation_error_against_direct_builds(pp_spec):
    """Features of the emulator at gamma = 1.835 and 2.085 (midway between nodes) against kernels
    built directly for those spectral sets (interpolation in ln x, quadratic in gamma). Measured (8
    draws): max relative error 9.2e-5 / 8.3e-5 over the 74 CXB points, 9.7e-4 / 9.6e-4 over the counts,
    CT and binned-BAT features; -2 ln L differs by 0.22 / 0.57. Without interpolation (the set-5
    kernels) the same features are off by up to 0.40 / 0.66."""
    from popsynth.physical_spectra import build_node, spectral_set_at

    v = pp_spec
    th = v.pmap.default_theta(1)
    for gam, tol_cxb, tol_rest in ((1.835, 3e-4, 3e-3), (2.085, 3e-4, 3e-3)):
        th[:, 3] = gam
        u = v.pmap.u_of(th)
        phi, phi1 = v.cubes(u)
        _, ks = build_node(v.prob, v.cfg, v.model, spectral_set_at(5, {"gamma": gam}))
        direct = ks.features(phi, phi1)
        emu = v.features(u)
        rel = ((emu - direct) / direct).abs()[0]
        n_cxb = ks.k_cxb.shape[-1]
        assert float(rel[:n_cxb].max()) < tol_cxb, float(rel[:n_cxb].max())
        assert float(rel[n_cxb:].max()) < tol_rest, float(rel[n_cxb:].max())
        off = ((v.kernels.center.features(phi, phi1) - direct) / direct).abs().max()
        assert float(off) > 100 * float(rel.max())
        lik = v.kernels.likelihood
        assert abs(float(lik.neg2_loglike(emu) - lik.neg2_loglike(direct))) < 1.0


def test_recovers_a_spectral_hyperparameter_from_synthetic_data(pp_spec):
    """Asimov data made by the emulator at gamma = 2.06 (off the nodes) and shifted LDDE / absorption
    parameters (priors widened tenfold); the mode lies within 3 Laplace sigma of the truth."""
    from popsynth.physical_run import PhysicalProblem, find_mode, laplace

    free = ("logLstar", "psi0_lo", "f_ct_lo", "gamma")
    base = pp_spec.model
    model = PhysicalModel(free=free, values=dict(base.values),
                          priors={n: (base.prior(n)[0], 10 * base.prior(n)[1]) for n in free})
    v = PhysicalProblem(pp_spec.cfg, pp_spec.prob, copy.copy(pp_spec.kernels), model, ParameterMap(model), 0.0)
    v.kernels.center = copy.copy(pp_spec.kernels.center)
    v.kernels.center.likelihood = copy.deepcopy(pp_spec.kernels.likelihood)
    truth = v.pmap.default_theta(1) + torch.tensor([[0.12, -0.06, 0.2, 0.1]], dtype=D)
    with torch.no_grad():
        x = v.features(v.pmap.u_of(truth))
    for t in v.kernels.likelihood.terms:
        if t.kind == "ct_fraction":
            t.value = float(t.predict(x)[0])
        elif t.kind == "poisson":
            t.n_obs = t.predict(x)[0]
        elif t.kind == "cxb":
            t.obs = t.predict(x)[0]
        else:
            t.value = t.predict(x)[0]
    u, _ = find_mode(v, v.pmap.u_of(v.pmap.default_theta(1)))
    lap = laplace(v, u)
    est = v.pmap.theta(u)[0]
    sd = torch.sqrt(torch.diagonal(lap["cov_theta"]))
    pull = ((est - truth[0]) / sd).abs()
    assert bool((pull < 3).all()), dict(zip(free, pull.tolist()))
    assert abs(float(est[3]) - 2.06) < 0.02
    assert float(((v.pmap.default_theta(1)[0, 3] - 2.06) / sd[3]).abs()) > 3


def test_node_contraction_equals_the_dense_kernels_with_gradients(pp):
    """The emulator's node kernels held as sparse matrices (cumulative kernels differenced along
    log L against the reverse cumulative cube, the others as they are) give the dense contraction
    to 1e-12, with reverse-mode, forward-mode (jacfwd) and vmapped derivatives that agree."""
    from popsynth.physical_sparse import NodeContraction

    k = pp.kernels.k_phi  # [60, N]: counts, CT and binned-BAT kernels of set 5
    nz, nl = pp.prob.grid.z.size, pp.prob.grid.logl.size
    point = torch.zeros(nz, nl, 6, dtype=D)  # a binned-XLF-like row: one log L cell per (z, dex): kept as is
    point[:, 60, :4] = 1.0
    kp = torch.cat([k, 0.7 * k, point.reshape(1, -1)], 0)
    nc = NodeContraction(kp, nz, torch.as_tensor(pp.prob.grid.dlogl, dtype=D))
    assert nc.rows_k.tolist() == [120] and nc.rows_g.numel() == 120
    assert nc.nnz < 0.5 * nc.nnz_dense_form  # measured 0.20 at 8 draws
    pm = pp.pmap
    g = torch.Generator().manual_seed(3)
    u = pm.u_of(pm.default_theta(3) + 0.5 * pm.sigma * torch.randn(3, pm.n_free, generator=g, dtype=D))
    phi = pp.cubes(u)[0]
    dense = phi.reshape(3, -1) @ kp.T
    assert torch.allclose(nc(phi), dense, rtol=1e-12, atol=0)

    def f(v):
        return nc(pp.cubes(v)[0]).log()[:, ::7]

    assert torch.autograd.gradcheck(f, (u[:1].clone().requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-5)
    jf = torch.func.vmap(torch.func.jacfwd(lambda v: f(v[None])[0]))(u[:2])
    jr = torch.stack([torch.autograd.functional.jacobian(lambda v: f(v[None])[0], u[i]) for i in range(2)])
    assert torch.allclose(jf, jr, rtol=1e-10, atol=1e-12 * float(jr.abs().max()))


def test_tail_sum_and_its_one_pass_adjoint():
    """C[j] = sum_{l >= j} x[l] w[l] (the reverse cumulative sum of the summation by parts): the same
    numbers as flip-cumsum-flip, the adjoint as a forward cumulative sum bit for bit equal to
    autograd's, and forward-mode / vmap / double-backward derivatives that agree."""
    from popsynth.physical_sparse import _TailSum

    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, 9, 6, dtype=D, generator=g, requires_grad=True)
    w = torch.rand(9, dtype=D, generator=g) + 0.5
    ref = lambda v: torch.flip(torch.cumsum(torch.flip(v * w[:, None], (-2,)), -2), (-2,))  # noqa: E731
    assert torch.equal(_TailSum.apply(x, w), ref(x))
    expect = torch.stack([(x[..., j:, :] * w[j:, None]).sum(-2) for j in range(9)], -2)
    assert torch.allclose(_TailSum.apply(x, w), expect, rtol=1e-14, atol=1e-14)
    gout = torch.randn(3, 4, 9, 6, dtype=D, generator=g)
    a, = torch.autograd.grad(_TailSum.apply(x, w), x, gout)
    b, = torch.autograd.grad(ref(x), x, gout)
    assert torch.equal(a, b)
    f = lambda v: _TailSum.apply(v, w) ** 2  # noqa: E731
    assert torch.autograd.gradcheck(f, (x[:1, :2],)) and torch.autograd.gradgradcheck(f, (x[:1, :2],))
    jf = torch.func.vmap(torch.func.jacfwd(lambda v: _TailSum.apply(v, w).sum(-1)))(x.detach())
    jr = torch.func.vmap(torch.func.jacrev(lambda v: ref(v).sum(-1)))(x.detach())
    assert torch.allclose(jf, jr, rtol=0, atol=1e-14)


def test_emulator_cache_is_sparse_and_converts_the_dense_format(pp, tmp_path, monkeypatch):
    """The emulator's cache file holds the CXB kernels and the sparse contraction (format 2), which
    rebuild the same emulator bit for bit; a format-1 file (dense kernels) is read, gives the same
    features, and is rewritten in format 2 in place (no rebuild of the nodes)."""
    import popsynth.physical_spectra as ps
    from popsynth.spectra.sets import get_spectral_set

    monkeypatch.setenv("POPSYNTH_CACHE", str(tmp_path))
    model = PhysicalModel(free=("logLstar", "gamma"))
    names = ("gamma",)
    spec = get_spectral_set(5)
    nodes = ps.node_values(model, spec, names)
    ks = pp.kernels
    k_phi = torch.cat([ks.k_phi, 0.9 * ks.k_phi, 1.1 * ks.k_phi], 0)  # three stand-in nodes
    k_cxb = torch.stack([ks.k_cxb, 0.95 * ks.k_cxb, 1.05 * ks.k_cxb])
    k_fine = torch.stack([ks.k_fine] * 3)
    dlogl = torch.as_tensor(pp.prob.grid.dlogl, dtype=D)
    direct = ps.SpectralEmulator(names, nodes, k_cxb, k_phi, k_fine, dlogl)
    pm = ParameterMap(PhysicalModel(free=("logLstar",)))
    phi, phi1 = ks.builder(pm.full(pm.default_theta(2) + torch.tensor([[0.0], [0.05]], dtype=D)))
    want = direct.node_features(phi, phi1, ks.lw)

    path = tmp_path / "physical" / f"emulator-{ps._cache_key(pp.cfg, model, spec, names, nodes)}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"k_cxb": k_cxb, "k_phi": k_phi, "k_fine": k_fine}, path)  # format 1
    size1 = path.stat().st_size
    msgs = []
    em = ps.build_emulator(pp.prob, pp.cfg, model, spec, None, names, log=msgs.append)
    assert any("rewritten in the sparse format" in m for m in msgs)
    assert torch.equal(em.node_features(phi, phi1, ks.lw), want)
    d = torch.load(path, weights_only=True)
    assert d["format"] == 2 and "k_phi" not in d and path.stat().st_size < 0.6 * size1
    em2 = ps.build_emulator(pp.prob, pp.cfg, model, spec, None, names, log=msgs.append)
    assert torch.equal(em2.node_features(phi, phi1, ks.lw), want)
    assert em2.contraction.nnz == direct.contraction.nnz and em2.n_phi == direct.n_phi


def test_block_weight_coordinates_and_sampler():
    """Block weights are sampled in w = softplus(u) (the block posterior's coordinates): theta and
    its inverse agree, the log-Jacobian is that of autograd, and NUTS (pilot whitening, the default
    with block weights) on a stub target with the log-normal prior and a likelihood Gaussian in w
    (7 weights measured, w = 2 +/- 0.3; 8 only bounded, w = 0 +/- 3, as the CXB bounds unseen
    blocks) returns the posterior moments of log10 w computed by quadrature."""
    from types import SimpleNamespace

    from popsynth.physical_run import PhysicalProblem, sample

    model = PhysicalModel(free=("f_ct_lo",), block_weights=True)
    pm = ParameterMap(model)
    g = torch.Generator().manual_seed(7)
    th = torch.cat([torch.full((5, 1), 0.9, dtype=D), 1.5 * torch.randn(5, 15, generator=g, dtype=D)], -1)
    u = pm.u_of(th)
    assert torch.allclose(pm.theta(u), th, rtol=0, atol=1e-12)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: pm.theta(v[None])[0], u[i]) for i in range(5)])
    assert torch.allclose(pm.dtheta_du(u), torch.diagonal(jac, dim1=1, dim2=2), rtol=1e-12, atol=0)
    assert torch.allclose(pm.log_jacobian(u), torch.log(pm.dtheta_du(u).abs()).sum(-1), rtol=1e-12, atol=0)

    model = PhysicalModel(free=(), block_weights=True)
    pm = ParameterMap(model)
    mu = torch.tensor([2.0] * 7 + [0.0] * 8, dtype=D)
    sd = torch.tensor([0.3] * 7 + [3.0] * 8, dtype=D)
    stub = SimpleNamespace(builder=lambda p: (10.0 ** p["log10_w"], None),
                           features=lambda phi, phi1, sparse=False: phi,
                           likelihood=SimpleNamespace(neg2_loglike=lambda x: (((x - mu) / sd) ** 2).sum(-1)))
    v = PhysicalProblem(None, None, stub, model, pm, 0.0)
    u0 = pm.u_of(torch.log10(torch.tensor([[2.0] * 7 + [1.0] * 8], dtype=D)))
    d = pm.dtheta_du(u0)[0]
    post = sample(v, u0, torch.diag(0.25 / d ** 2), chains=2, warmup=60, samples=200, seed=3)
    assert post.settings["pilot"] is True and post.settings["adapt_mass_matrix"] is True
    assert float(post.r_hat.max()) < 1.05 and post.divergences == 0
    lw = pm.theta(post.u.reshape(-1, 15))
    grid = torch.linspace(-6.0, 3.0, 20001, dtype=D)
    for group in (slice(0, 7), slice(7, 15)):
        k = group.start
        dens = torch.exp(-0.5 * grid ** 2 - 0.5 * ((10 ** grid - mu[k]) / sd[k]) ** 2)
        dens = dens / dens.sum()
        mean = float((dens * grid).sum())
        std = float((dens * (grid - mean) ** 2).sum().sqrt())  # 0.284 +/- 0.070; -0.496 +/- 0.720
        assert abs(float(lw[:, group].mean()) - mean) < 0.1 * std
        assert abs(float(lw[:, group].std(0).mean()) / std - 1) < 0.1


@pytest.mark.slow
def test_emulator_error_with_all_three_hyperparameters_free():
    """All three hyperparameters free (27 nodes, 8 draws; builds 26 spectral sets once, cached):
    the tensor grid midway between nodes in every hyperparameter (the 8 octant centres) against
    direct builds, and the first-order (additive) alternative at the 8 corners. Measured (8 draws,
    16 cubes): tensor grid max 2.3e-3 (CXB), 5.9e-3 (counts / CT), |delta(-2 ln L)| <= 11.4 (median
    over cubes <= 9.0); first order 4.2e-2 and 0.10, median |delta(-2 ln L)| up to 295: the cross
    terms matter, hence the tensor grid."""
    from popsynth.physical_run import setup
    from popsynth.physical_spectra import emulator_error

    pp3 = setup(5, PhysicalModel(free=DEFAULT_FREE + ("gamma", "refl", "ecut")), draws=8, log=lambda *a: None)
    res = emulator_error(pp3)
    tensor, first = res["tensor"], res["first_order"]
    assert len(tensor) == len(first) == 8
    assert max(r["cxb"] for r in tensor) < 5e-3 and max(r["counts_ct"] for r in tensor) < 1e-2
    assert max(r["dlnl_max"] for r in tensor) < 20.0
    assert max(r["counts_ct"] for r in first) > 5 * max(r["counts_ct"] for r in tensor)
    assert max(r["dlnl_median"] for r in first) > 50.0


def test_hyperparameter_nodes_and_weights_in_their_coordinates():
    """Nodes lie evenly in the interpolation coordinates (gamma, ln R, 1/E_cut) between the bounds and
    the value, with the bounds and the value exact; the Lagrange weights are one-hot at every node
    of the tensor grid and sum to 1 anywhere."""
    from popsynth.physical_run import with_set_values
    from popsynth.physical_spectra import SpectralEmulator, node_values

    m = with_set_values(PhysicalModel(free=("gamma", "refl", "ecut"), spectral_nodes=5), 5)
    nodes = node_values(m, None, ("gamma", "refl", "ecut"))
    assert nodes[0] == pytest.approx([1.71, 1.835, 1.96, 2.085, 2.21], abs=1e-12)
    assert nodes[1] == pytest.approx([0.33, (0.33 * 0.83) ** 0.5, 0.83, (0.83 * 1.33) ** 0.5, 1.33], rel=1e-12)
    assert nodes[2] == pytest.approx([100.0, 400.0 / 3, 200.0, 800.0 / 3, 400.0], rel=1e-12)
    assert [n[0] for n in nodes] == [1.71, 0.33, 100.0] and [n[-1] for n in nodes] == [2.21, 1.33, 400.0]
    three = [n[::2] for n in nodes]
    em = SpectralEmulator(("gamma", "refl", "ecut"), three, torch.zeros(27, 2, 6, 1, dtype=D),
                          torch.ones(27, 2 * 3 * 6, dtype=D), torch.zeros(27, 2, 6, 1, dtype=D),
                          torch.full((3,), 0.1, dtype=D))
    eta = torch.tensor([[g, r, e] for g in three[0] for r in three[1] for e in three[2]], dtype=D)
    assert torch.allclose(em.weights(eta), torch.eye(27, dtype=D), rtol=0, atol=1e-12)
    rnd = torch.tensor([[1.8, 0.5, 150.0], [2.1, 1.2, 350.0]], dtype=D)
    assert torch.allclose(em.weights(rnd).sum(-1), torch.ones(2, dtype=D), rtol=0, atol=1e-12)
    assert torch.allclose(em.additive_weights(eta[[0, 13, 26]]).sum(-1), torch.ones(3, dtype=D), rtol=0, atol=1e-12)

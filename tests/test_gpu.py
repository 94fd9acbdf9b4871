"""GPU readiness: on CUDA the CXB, the counts and CT fractions and the posterior log density
agree with CPU to 1e-10 relative in float64, and the run paths (fit, outputs, NUTS, Monte Carlo)
work on the device. Tests marked ``cuda`` skip cleanly without a CUDA GPU (``pytest -m cuda``
selects them). ``benchmarks/gpu_check.sh`` runs them on a GPU; its CPU fallback is tested here."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
HAS_CUDA = torch.cuda.is_available()
RTOL = 1e-10


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    """a (CPU) equals b (any device) to ``rtol`` relative, elementwise, and both are float64."""
    assert a.dtype == torch.float64 and b.dtype == torch.float64, (a.dtype, b.dtype)
    torch.testing.assert_close(b.detach().cpu(), a.detach().cpu(), rtol=rtol, atol=0.0)


@pytest.fixture(scope="module")
def problems():
    """The same problem (mode posterior: CXB, counts, CT fractions, likelihood) on CPU and CUDA,
    with 6 random weight vectors."""
    from popsynth.posterior_run import build_inference
    from popsynth.run import RunConfig, build_problem

    cfg = RunConfig(draws=4, starts=6, progress=False)
    out = {}
    for dev in ("cpu", "cuda"):
        d = torch.device(dev)
        prob = build_problem(cfg, d, log=lambda *a: None)
        lik, prior = build_inference(cfg, prob, d)
        out[dev] = (prob, lik, prior)
    gen = torch.Generator().manual_seed(7)
    w = 0.3 + 4.7 * torch.rand(6, 15, dtype=torch.float64, generator=gen)
    return out, w


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of torch")
def test_cxb_agrees_with_cpu(request):
    (cpu, gpu), w = _pair(request)
    _close(cpu[0].phi0, gpu[0].phi0)
    assert gpu[0].phi0.device.type == "cuda" and gpu[0].model.response.device.type == "cuda"
    _close(cpu[0].model(w), gpu[0].model(w.cuda()))
    _close(cpu[0].fine(w), gpu[0].fine(w.cuda()))
    _close(cpu[0].model.by_class(w), gpu[0].model.by_class(w.cuda()))
    for z in (0.1, 1.0):
        _close(cpu[0].ct_blocks[z], gpu[0].ct_blocks[z])


def _pair(request):
    probs, w = request.getfixturevalue("problems")
    return (probs["cpu"], probs["cuda"]), w


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of torch")
def test_counts_and_ct_fractions_agree_with_cpu(request):
    (cpu, gpu), w = _pair(request)
    cc, cg = cpu[0].constraints, gpu[0].constraints
    a, b = cc.chi2(w), cg.chi2(w.cuda())
    assert list(a) == list(b)
    for name in a:
        _close(a[name], b[name])
    _close(cc.total(w), cg.total(w.cuda()))
    fa, fb = cc.ct_fractions(w[:1]), cg.ct_fractions(w[:1].cuda())
    for x, y in zip(fa, fb):
        assert x["survey"] == y["survey"]
        assert y["model"] == pytest.approx(x["model"], rel=RTOL)
        assert y["model_intrinsic"] == pytest.approx(x["model_intrinsic"], rel=RTOL)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of torch")
def test_posterior_log_density_and_terms_agree_with_cpu(request):
    from popsynth.posterior import neg_log_posterior

    (cpu, gpu), w = _pair(request)
    _, lik_c, prior_c = cpu
    _, lik_g, prior_g = gpu
    _close(neg_log_posterior(lik_c, prior_c, w), neg_log_posterior(lik_g, prior_g, w.cuda()))
    _close(lik_c.neg2_loglike(w), lik_g.neg2_loglike(w.cuda()))
    a, b = lik_c.chi2_by_term(w), lik_g.chi2_by_term(w.cuda())
    for name in a:
        _close(a[name], b[name])
    # the gradient the optimiser and NUTS follow
    wc = w.clone().requires_grad_(True)
    wg = w.cuda().requires_grad_(True)
    neg_log_posterior(lik_c, prior_c, wc).sum().backward()
    neg_log_posterior(lik_g, prior_g, wg).sum().backward()
    _close(wc.grad, wg.grad, rtol=1e-9)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of torch")
@pytest.mark.parametrize("mode", ["joint", "a19"])
def test_fit_runs_on_cuda_and_matches_cpu(tmp_path, mode):
    from popsynth.run import RunConfig, run

    kw = dict(mode=mode, starts=8, draws=4, steps=30 if mode == "joint" else 300, progress=False)
    if mode == "a19":
        kw.update(optimizer="gd", loss="a19", weight_prior=0.0)
    s_cpu = run(RunConfig(out=str(tmp_path / "cpu"), device="cpu", **kw), log=lambda *a: None)
    s_gpu = run(RunConfig(out=str(tmp_path / "gpu"), device="cuda", **kw), log=lambda *a: None)
    assert s_gpu["best_start"] == s_cpu["best_start"]
    assert s_gpu["chi2_total"] == pytest.approx(s_cpu["chi2_total"], rel=1e-6)
    assert s_gpu["chi2_constraints_total"] == pytest.approx(s_cpu["chi2_constraints_total"], rel=1e-6)
    for f in s_gpu["files"].values():
        assert Path(f).is_file()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of torch")
def test_posterior_run_on_cuda(tmp_path):
    from popsynth.results import load_run
    from popsynth.run import RunConfig, run

    s = run(RunConfig(out=str(tmp_path), device="cuda", starts=4, draws=4, steps=30, chains=2, warmup=10,
                      samples=10, progress=False), log=lambda *a: None)
    assert s["mode"] == "posterior" and s["cxb_chi2_at_median"] > 0
    assert 0 < s["ct_fraction_z0.1"]["p16"] <= s["ct_fraction_z0.1"]["median"] <= s["ct_fraction_z0.1"]["p84"] < 1
    r = load_run(tmp_path)
    assert r.weight_samples().shape[1] == 15
    assert r.cubes(r.best_weights(), device="cuda").device.type == "cuda"


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and a CUDA build of torch")
def test_spectral_table_and_monte_carlo_on_cuda():
    from popsynth.grid import Grid
    from popsynth.mc.build import build_table
    from popsynth.mc.transport import tabulate_medium
    from popsynth.spectra.cache import build_spectral_table

    edges = Grid().lognh_edges
    a = build_spectral_table(5, edges, n_draws=2, device=torch.device("cpu"))
    b = build_spectral_table(5, edges, n_draws=2, device=torch.device("cuda"))
    _close(a.mean, b.mean)
    medium = tabulate_medium(device=torch.device("cuda"))
    tab = build_table("torus", medium, photons=20000, seed=1, device=torch.device("cuda"), log_nh=(24.0,),
                      theta_tor_deg=(60.0,), n_batches=4, progress=None, max_active=1 << 16)
    assert tab is not None


def test_cuda_tests_skip_cleanly_without_cuda():
    """The device-resolution path the CUDA tests rely on: without CUDA, asking for it is a
    one-line PopsynthError, not a torch crash; with CUDA it resolves."""
    from popsynth._tensor import resolve_device
    from popsynth.errors import PopsynthError

    if HAS_CUDA:
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(PopsynthError, match="sees no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")


def test_gpu_check_script_cpu_fallback(tmp_path):
    """benchmarks/gpu_check.sh in its CPU fallback with tiny sizes: every step runs and is reported."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    env = {**os.environ, "GPU_CHECK_FORCE_CPU": "1", "GPU_CHECK_STARTS": "4", "GPU_CHECK_BIG_STARTS": "300",
           "GPU_CHECK_DRAWS": "2", "GPU_CHECK_PHOTONS": "4000", "GPU_CHECK_SAMPLES": "10", "GPU_CHECK_CHAINS": "2",
           "GPU_CHECK_STEPS": "5",
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "POPSYNTH_CACHE": str(tmp_path / "cache")}
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True, text=True,
                       timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "CPU fallback" in out
    for step in ("CUDA tests", "spectral table", "default fit", "starts fit", "posterior", "Monte Carlo"):
        assert step in out, (step, out[-3000:])
    assert "300 starts" in out and "4000 photons" in out and "NUTS 2 chains" in out
    assert "FAILED" not in out

"""Cost of one -ln p and its gradient of the physical model with free spectral hyperparameters.

    python benchmarks/bench_physical.py [--spec-set 5] [--draws 64] [--free-spectra gamma,refl,ecut]
                                        [--chains 4] [--repeat 20] [--rebuild]

Prints the split of one evaluation (forward and backward of -ln p for ``--chains`` chains as one
batch) between
  cube          LDDE x absorption function, 4-point quadrature in log L (popsynth.physical.XLFBuilder)
  contractions  the cubes contracted with every node's kernels (CXB and counts / CT / binned XLF)
  spectral      the hyperparameters' interpolation weights and the ln-interpolation of the features
  likelihood    the shared likelihood on the feature vector and the prior
  backward      the reverse pass through all of it
and, with ``--rebuild``, what an exact rebuild of the spectral dependence costs once (spectral
table, survey models, kernels of one hyperparameter node), the reason for the emulator
(popsynth/physical_spectra.py). The emulator itself is built once and cached on disk (the first
run with a new configuration builds 3^k nodes). Medians of ``--repeat`` repetitions, ``--threads``
torch threads (default 1).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def _median_time(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec-set", type=int, default=5)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--free-spectra", default="gamma,refl,ecut", help="comma-separated hyperparameters ('' for none)")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1; the sampler's default is the cores)")
    ap.add_argument("--rebuild", action="store_true", help="also time one exact rebuild of a node")
    ap.add_argument("--emulator-error", action="store_true",
                    help="also measure the emulator against direct builds: the tensor grid at the 8 octant centres "
                         "(off the nodes in every hyperparameter) and the first-order alternative at the 8 corners")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    from popsynth.physical import DEFAULT_FREE, PhysicalModel
    from popsynth.physical_run import setup

    spectral = tuple(n for n in a.free_spectra.split(",") if n.strip())
    model = PhysicalModel(free=DEFAULT_FREE + spectral)
    t0 = time.perf_counter()
    pp = setup(a.spec_set, model, draws=a.draws, log=lambda *x: None)
    t_setup = time.perf_counter() - t0
    pm, ks = pp.pmap, pp.kernels
    g = torch.Generator().manual_seed(0)
    u = pm.u_of(pm.default_theta(a.chains)) + 0.1 * torch.randn(a.chains, pm.n_free, generator=g, dtype=torch.float64)
    em = getattr(ks, "emulator", None)

    def cube():
        return ks.builder(pm.full(pm.theta(u)))

    phi, phi1 = cube()
    params = pm.full(pm.theta(u))
    eta = torch.stack([params[n] for n in spectral], -1) if spectral else None

    def contractions():
        if em is None:
            return ks.features(phi, phi1, sparse=True)
        return em.node_features(phi, phi1, ks.lw)

    out = contractions()

    def spectral_part():
        if em is None:
            return None
        from popsynth.physical_spectra import _log_interp

        return _log_interp(em.weights(eta), out)

    x = spectral_part() if em is not None else out

    def likelihood():
        return ks.likelihood.neg2_loglike(x) + (pm.prior_residuals(pm.theta(u)) ** 2).sum(-1)

    def forward_backward():
        v = u.clone().requires_grad_(True)
        pp.neg_log_post_u(v, sparse=True).sum().backward()

    def forward():
        with torch.no_grad():
            pp.neg_log_post_u(u, sparse=True)

    with torch.no_grad():
        rows = {"cube": _median_time(cube, a.repeat), "contractions": _median_time(contractions, a.repeat),
                "spectral": _median_time(spectral_part, a.repeat), "likelihood": _median_time(likelihood, a.repeat)}
    t_fwd = _median_time(forward, a.repeat)
    t_all = _median_time(forward_backward, a.repeat)
    rows["backward"] = max(t_all - t_fwd, 0.0)
    print(f"physical model, spectral set {a.spec_set}, {a.draws} draws, {pm.n_free} free parameters "
          f"({', '.join(spectral) or 'no spectral hyperparameters'}), {a.chains} chains as one batch; "
          f"emulator nodes: {em.n_nodes if em else 1}; {a.threads} thread(s); set-up {t_setup:.1f} s; "
          f"load {os.getloadavg()[0]:.2f}")
    if em is not None:
        nc = em.contraction
        print(f"node kernels: {nc.nnz / 1e6:.2f}M nonzeros held ({nc.nnz_dense_form / 1e6:.2f}M in the cube form, "
              f"{em.n_nodes * em.n_phi * nc.shape[0] * nc.shape[1] * nc.shape[2] / 1e6:.1f}M dense)")
    print(f"{'step':<14}{'ms':>10}")
    for k, v in rows.items():
        print(f"{k:<14}{1e3 * v:>10.2f}")
    print(f"{'forward':<14}{1e3 * t_fwd:>10.2f}")
    print(f"{'fwd+backward':<14}{1e3 * t_all:>10.2f}   (-ln p and its gradient, {a.chains} chains)")
    if a.emulator_error and em is not None and len(spectral) == 3:
        from popsynth.physical_spectra import emulator_error

        t0 = time.perf_counter()
        res = emulator_error(pp)
        print(f"emulator against direct builds ({res['n_cubes']} cubes; max relative error of the CXB points and of "
              f"the counts / CT features, |delta(-2 ln L)| median and max), {time.perf_counter() - t0:.0f} s:")
        for kind in ("tensor", "first_order"):
            for r in res[kind]:
                at = ", ".join(f"{n}={v:.4g}" for n, v in r["at"].items())
                print(f"  {kind:<11} at {at}: CXB {r['cxb']:.1e}, counts/CT {r['counts_ct']:.1e}, "
                      f"d(-2 ln L) {r['dlnl_median']:.3f} / {r['dlnl_max']:.3f}")
    if a.rebuild:
        from popsynth.physical_spectra import build_node, spectral_set_at
        from popsynth.spectra.sets import get_spectral_set

        t0 = time.perf_counter()
        build_node(pp.prob, pp.cfg, pp.model, spectral_set_at(get_spectral_set(a.spec_set), {"gamma": 1.9}))
        print(f"one exact rebuild (spectral table + survey models + kernels): {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

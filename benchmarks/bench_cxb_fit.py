#!/usr/bin/env python
"""popsynth's CXB against adaptive quadrature in z: the accuracy of its z-trapezoid.

    python benchmarks/bench_cxb_fit.py [--starts 3] [--epsrel 1e-4]

popsynth integrates the CXB over redshift with the trapezoid rule on its grid nodes, inside the
pre-contracted block response A [15, nE] of the run (spectral set 5, the training data's 74
energies). The reference integrates the same integrand over continuous z: ``cxb_integrand`` of
tests/reference.py (the U14 LDDE x A19 absorption cell averages and the log-log interpolated
spectra in numpy, the same functions benchmarks/run.py times popsynth against) with the geometry
from astropy, by ``scipy.integrate.quad_vec`` (all energies in one adaptive Gauss-Kronrod
integral, max norm, break points at z = 1, 2, 3) to ``--epsrel``. The integrand has a kink
wherever E (1 + z) crosses a node of the spectral table, so a tight tolerance is expensive:
measured (2 weight vectors, load ~2.5) epsrel 1e-4, 1e-5, 1e-6, 1e-8 take 4.3e4, 9.1e4, 1.9e5,
4.2e5 integrand calls (25 s to 240 s per weight vector) and all give the same difference to
popsynth (1.9e-3 max, 1.2e-4 median), so the default 1e-4 resolves it. It checks

1. the reference integrand summed on popsynth's z nodes with their trapezoid weights equals
   popsynth (the same integrand; agreement to ~1e-13), and
2. popsynth against the converged integral: the z-discretisation error, the number reported.

The AGN part only (the galaxy term is not integrated over z). Speed is benchmarks/run.py's job
(popsynth against a vectorised numpy implementation of the same algorithm, side by side); the
adaptive integral is a different algorithm, its cost is printed as information only. Prints a
summary on stderr and one JSON line on stdout (read by ``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
Z_BREAKS = (1.0, 2.0, 3.0)  # near the LDDE's characteristic redshifts and at the z = 2 cap of the absorption function


def accuracy(starts: int = 3, epsrel: float = 1e-4, seed: int = 0) -> dict:
    """popsynth's block-path AGN CXB against the reference integrand, summed on the nodes and
    integrated adaptively, for ``starts`` random starts (U(0.3, 5) weights) and w = 1."""
    import numpy as np
    import torch
    from scipy import integrate

    sys.path.insert(0, str(ROOT / "tests"))
    import reference as ref

    from popsynth.config import RunConfig
    from popsynth.cosmology import MPC_CM, CosmologyParams, distance_tables
    from popsynth.fit import initial_weights
    from popsynth.run import build_problem
    from popsynth.spectra.cache import build_spectral_table

    cfg = RunConfig(mode="cxb", progress=False)
    prob = build_problem(cfg, torch.device("cpu"), log=lambda *a: None)
    grid = prob.grid
    table = build_spectral_table(cfg.spectral_set, grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed)
    w = torch.cat([torch.ones(1, 15, dtype=torch.float64), initial_weights(starts, 15, seed)])
    pop = prob.model.agn(w).numpy()  # [B, nE]
    e = prob.data.energy.numpy()
    cosmo = CosmologyParams().astropy()
    d_h = cosmo.hubble_distance.to_value("Mpc")

    def geometry(z):  # dV_c/dz/dOmega (1+z)^2 / (4 pi d_L^2) = D_H / (4 pi E(z)) in a flat cosmology
        return d_h / (4 * math.pi * cosmo.efunc(z) * MPC_CM ** 2)

    zs = np.array([0.01, 0.5, 1.3, 4.0])
    g_astropy = (cosmo.differential_comoving_volume(zs).value * (1 + zs) ** 2
                 / (4 * math.pi * (cosmo.luminosity_distance(zs).value * MPC_CM) ** 2))
    geo_err = float(np.max(np.abs(np.array([geometry(z) for z in zs]) / g_astropy - 1)))
    args = (grid.block_index.numpy(), grid.logl_edges, grid.logl, grid.dlogl, grid.lognh, grid.dlognh,
            table.energy.numpy(), table.mean.numpy(), e)
    d = distance_tables(grid.z)
    g_nodes = d["dvc_dz_dsr_mpc3"].numpy() * (1 + grid.z) ** 2 / (4 * math.pi * d["d_l_cm"].numpy() ** 2)
    nodes, quad, neval, seconds = [], [], [], []
    for wb in w.numpy():
        nodes.append((grid.z_weights[:, None] * np.array([ref.cxb_integrand(z, wb, *args, g)
                                                          for z, g in zip(grid.z, g_nodes)])).sum(0))
        t0 = time.perf_counter()
        val, _err, info = integrate.quad_vec(lambda z: ref.cxb_integrand(z, wb, *args, geometry(z)),  # noqa: B023
                                             float(grid.z[0]), float(grid.z[-1]), epsabs=0.0, epsrel=epsrel,
                                             norm="max", points=Z_BREAKS, full_output=True)
        seconds.append(time.perf_counter() - t0)
        quad.append(val)
        neval.append(int(info.neval))
    nodes, quad = np.array(nodes), np.array(quad)
    rel = np.abs(pop / quad - 1)
    worst = np.unravel_index(int(np.argmax(rel)), rel.shape)
    return {"starts": int(w.shape[0]), "energies": int(e.size), "epsrel": epsrel, "z_range": [float(grid.z[0]),
            float(grid.z[-1])], "z_nodes": int(grid.z.size), "geometry_max_rel_diff_vs_astropy": geo_err,
            "nodes_vs_popsynth_max_rel_diff": float(np.max(np.abs(nodes / pop - 1))),
            "popsynth_vs_quad_max_rel_diff": float(rel.max()), "popsynth_vs_quad_median_rel_diff": float(np.median(rel)),
            "worst_energy_keV": float(e[worst[1]]), "worst_start": int(worst[0]),
            "quad_neval_per_start": float(np.mean(neval)), "quad_s_per_start": float(np.mean(seconds))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=3, help="random starts besides w = 1 (default 3)")
    ap.add_argument("--epsrel", type=float, default=1e-4, help="relative tolerance of the adaptive integral")
    a = ap.parse_args(argv)
    res = accuracy(a.starts, a.epsrel)
    print(f"popsynth z-trapezoid ({res['z_nodes']} nodes, z {res['z_range'][0]:g}-{res['z_range'][1]:g}) against "
          f"quad_vec (epsrel {a.epsrel:g}), {res['starts']} weight vectors x {res['energies']} energies: max rel. diff "
          f"{res['popsynth_vs_quad_max_rel_diff']:.1e} (at {res['worst_energy_keV']:.3g} keV), median "
          f"{res['popsynth_vs_quad_median_rel_diff']:.1e}; reference integrand on popsynth's nodes = popsynth to "
          f"{res['nodes_vs_popsynth_max_rel_diff']:.1e}; geometry vs astropy {res['geometry_max_rel_diff_vs_astropy']:.1e}; "
          f"quad_vec {res['quad_neval_per_start']:.0f} integrand calls, {res['quad_s_per_start']:.2f} s per weight vector",
          file=sys.stderr)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Time popsynth's CXB evaluation and full fits against a plain scipy reference.

    python benchmarks/bench_cxb_fit.py            # full run (B = 100 and 10,000 starts; a few minutes)
    python benchmarks/bench_cxb_fit.py --quick    # B = 100 cases only, small reference sample (< 1 min)
    python benchmarks/bench_cxb_fit.py --threads 1  # torch intra-op threads (default: torch's choice)

Every case runs in its own subprocess (``--case NAME``), so its peak resident memory
(``ru_maxrss``) is its own; the parent collects the results, prints one table and writes it
as JSON to ``benchmarks/results/bench_cxb_fit_<hostname>[_quick][_threadsN].json``. Cases run
while other processes used > 10 % of the CPUs are flagged CONTENDED (from /proc/stat). What each case measures
and how the reference is built: ``benchmarks/README.md``.

The reference ("ref") evaluates the same CXB integral per start and per energy with
``scipy.integrate.quad`` over z (XLF re-implemented in numpy, spectra interpolated with
numpy), its tolerance chosen so it is as accurate as popsynth (~1e-3; the achieved
difference is reported). Reference times for many starts are extrapolated linearly from a
timed sample and marked as such. Timings are wall-clock; nothing here is a unit test.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
N_BLOCKS = 15
TARGET_REL = 1e-3  # "matched accuracy": reference error vs a converged integral <= this


# ----------------------------------------------------------------------------- helpers

def _rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2 ** 20


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot, all cores (from /proc/stat), or None."""
    try:
        f = open("/proc/stat").readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f[1:9])
        return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _mem_available_mb() -> float | None:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _fmt_t(s) -> str:
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 2 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _fmt_ratio(r) -> str:
    if r is None:
        return "-"
    return f"{r:.3g}" if r < 1e5 else f"{r:.2e}"


def _sync(device) -> None:
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def _time_call(fn, device, min_time: float, repeats: int) -> dict:
    """Median seconds per call of ``fn()``: ``repeats`` repeats of n calls each, n chosen so a
    repeat lasts >= ``min_time`` (after one warm-up call)."""
    fn()
    _sync(device)
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        dt = time.perf_counter() - t0
        if dt >= min_time or n >= 1 << 20:
            break
        n = max(n * 2, int(n * min_time / max(dt, 1e-9) * 1.2))
    per = [dt / n]
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        per.append((time.perf_counter() - t0) / n)
    return {"median_s": statistics.median(per), "min_s": min(per), "max_s": max(per), "calls_per_repeat": n,
            "repeats": repeats}


def _device(name: str):
    from popsynth._tensor import resolve_device

    return resolve_device(name)


def _problem(device):
    import torch  # noqa: F401

    from popsynth.run import RunConfig, build_problem

    return build_problem(RunConfig(progress=False, device=str(device)), device, log=lambda *a, **k: None)


def _cuda_peak(device) -> float | None:
    import torch

    if getattr(device, "type", "") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return None


# ----------------------------------------------------------------------------- the reference

class Reference:
    """Plain per-start CXB: I(E) = E^2 int dz dV/dz/dOmega (1+z)^2 / (4 pi d_L^2) sum_cells phi w L dlogL dlogNH S(E(1+z)).

    Same cells in log L and log N_H as popsynth (the L-moment cell average of the U14 LDDE
    times the A19 absorption function, 4-point Gauss-Legendre in each log L cell, re-written
    here in numpy and checked against ``popsynth.xlf.build_phi0``), same spectral table
    (interpolated log-log with numpy), but z continuous: scipy ``quad`` (adaptive
    Gauss-Kronrod) over [z_min, z_max] of the popsynth grid, once per start and energy.

    quad gets the break points z = 1, 2, 3 (``Z_BREAKS``): near the LDDE's characteristic redshifts
    (zc1 = 0.7-1.86 depending on L, zc2 = 3-3.8) and at the z = 2 cap of the absorption function.
    Without them quad's first 21-point Gauss-Kronrod estimate over 0.002-5 can look converged
    while it is off by 3e-3 (seen at 1.05 keV, at every epsrel >= 1e-3), which forces epsrel 1e-4
    and five times the cost; with them epsrel ~1e-2 meets the 1e-3 target.

    Geometry: dV_c/dz/dOmega (1+z)^2 / (4 pi d_L^2) = D_H / (4 pi E(z)) (the D_M^2 cancel), with
    E(z) from astropy; checked against astropy's dV_c/dz/dOmega and d_L at start-up. Calling those
    two astropy methods (with units) at every z instead is ``astropy_units=True``: same values,
    several times slower per integrand call (the cost is reported).
    """

    Z_BREAKS = (1.0, 2.0, 3.0)

    def __init__(self, grid, table, energy, extra, astropy_units: bool = False):
        import numpy as np

        from popsynth.cosmology import MPC_CM, CosmologyParams
        from popsynth.xlf import UEDA14, A19AbsorptionParams

        self.np = np
        self.grid = grid
        self.energy = np.asarray(energy, dtype=float)
        self.extra = np.asarray(extra, dtype=float)
        self.cosmo = CosmologyParams().astropy()
        self.mpc_cm = MPC_CM
        self.d_h = self.cosmo.hubble_distance.to_value("Mpc")
        self.astropy_units = astropy_units
        p, a = UEDA14, A19AbsorptionParams()
        self.p, self.a = p, a
        x, wq = np.polynomial.legendre.leggauss(4)
        lo, hi = grid.logl_edges[:-1], grid.logl_edges[1:]
        ls = 0.5 * (hi - lo)[:, None] * x[None, :] + 0.5 * (hi + lo)[:, None]  # [nL, 4] sub-nodes
        self.w_sub = wq / 2.0 * 10.0 ** (ls - grid.logl[:, None])  # L-moment cell average weights
        xx = ls - p.logLstar
        self.phi_local = p.A / (10.0 ** (p.gamma1 * xx) + 10.0 ** (p.gamma2 * xx))
        self.p1 = p.p1_star + p.beta1 * (ls - p.logLp)
        self.zc1 = np.where(ls <= p.logLa1, p.zc1_star * 10.0 ** (p.alpha1 * (ls - p.logLa1)), p.zc1_star)
        self.zc2 = np.where(ls <= p.logLa2, p.zc2_star * 10.0 ** (p.alpha2 * (ls - p.logLa2)), p.zc2_star)
        self.l1, self.l2 = np.log1p(self.zc1), np.log1p(self.zc2)
        hi_l = ls >= a.log_l_split
        pick = lambda pair: np.where(hi_l, pair[1], pair[0])  # noqa: E731
        self.psi0, self.frac, self.eps, self.fct = pick(a.psi0), pick(a.frac_20_21), pick(a.epsilon), pick(a.f_ct)
        self.nh_bin = np.clip(np.floor(grid.lognh - 20.0), 0, 4).astype(int)  # [nN] 1-dex absorption bin
        self.l_w = 10.0 ** grid.logl * grid.dlogl  # L_c dlogL, erg/s dex
        self.dlognh = grid.dlognh
        self.block = grid.block_index.cpu().numpy()  # [nL, nN]
        self.log_e = np.log(table.energy.cpu().numpy())
        self.log_s = np.log(np.clip(table.mean.cpu().numpy(), 1e-300, None))  # [nN, nE_table]
        self.z_lo, self.z_hi = float(grid.z[0]), float(grid.z[-1])
        self.calls = 0

    # -- pieces
    def geometry(self, z: float) -> float:
        """dV_c/dz/dOmega (1+z)^2 / (4 pi d_L^2): Mpc^3 sr^-1 cm^-2, as popsynth.cxb.cxb_kernel."""
        if self.astropy_units:
            dv = self.cosmo.differential_comoving_volume(z).value
            dl = self.cosmo.luminosity_distance(z).value * self.mpc_cm
            return dv * (1 + z) ** 2 / (4 * math.pi * dl * dl)
        return self.d_h / (4 * math.pi * self.cosmo.efunc(z) * self.mpc_cm ** 2)

    def phi1(self, z: float):
        """L-moment cell averages of the U14 LDDE x A19 absorption function at z: [nL, nN], Mpc^-3 dex^-2."""
        np, p, a = self.np, self.p, self.a
        lz = math.log1p(z)
        le = np.where(z <= self.zc1, self.p1 * lz,
                      np.where(z <= self.zc2, self.p1 * self.l1 + p.p2 * (lz - self.l1),
                               self.p1 * self.l1 + p.p2 * (self.l2 - self.l1) + p.p3 * (lz - self.l2)))
        ldde = self.phi_local * np.exp(le)  # [nL, 4]
        psi = np.clip(self.psi0 * (1 + min(z, a.z_cap)) ** a.a1, a.psi_min, a.psi_max)
        f = np.stack([self.frac * (1 - psi), (1 - self.frac) * (1 - psi), psi / (1 + self.eps),
                      self.eps / (1 + self.eps) * psi, self.fct * psi], -1)  # [nL, 4, 5] per 1-dex bin
        return ((ldde * self.w_sub)[..., None] * f).sum(1)[:, self.nh_bin]

    def spectra(self, e_rest):
        """S_n(E_rest) for all log N_H cells, log-log interpolation: [nN] (or [nN, k] for an array)."""
        np = self.np
        le = np.log(e_rest)
        i = np.clip(np.searchsorted(self.log_e, le), 1, self.log_e.size - 1)
        t = (le - self.log_e[i - 1]) / (self.log_e[i] - self.log_e[i - 1])
        return np.exp(self.log_s[:, i - 1] + (self.log_s[:, i] - self.log_s[:, i - 1]) * t)

    def integrand(self, z: float, e_obs: float, wfield) -> float:
        self.calls += 1
        m = (self.phi1(z) * wfield * self.l_w[:, None]).sum(0) * self.dlognh  # [nN]
        return self.geometry(z) * float(m @ self.spectra(e_obs * (1 + z)))

    # -- the CXB
    def agn_one(self, w, e_obs: float, epsrel: float) -> tuple[float, int]:
        """AGN CXB of one start at one energy (keV^2 cm^-2 s^-1 keV^-1 sr^-1) and quad's integrand calls."""
        from scipy import integrate

        val, _err, info = integrate.quad(self.integrand, self.z_lo, self.z_hi, args=(float(e_obs), w[self.block]),
                                         epsabs=0.0, epsrel=epsrel, limit=500, points=self.Z_BREAKS,
                                         full_output=1)[:3]
        return e_obs * e_obs * val, int(info["neval"])

    def agn(self, w, idx, epsrel: float):
        """AGN CXB of one start at the energies ``self.energy[idx]``: [len(idx)]."""
        return self.np.array([self.agn_one(w, self.energy[i], epsrel)[0] for i in idx])

    def agn_vec(self, w, epsrel: float):
        """Variant: all energies in one adaptive integral (scipy quad_vec, max norm): [nE], neval."""
        from scipy import integrate

        np = self.np
        wfield = w[self.block]

        def f(z):
            self.calls += 1
            m = (self.phi1(z) * wfield * self.l_w[:, None]).sum(0) * self.dlognh
            return self.geometry(z) * (m @ self.spectra(self.energy * (1 + z)))

        val, _err, info = integrate.quad_vec(f, self.z_lo, self.z_hi, epsabs=0.0, epsrel=epsrel, norm="max",
                                             points=self.Z_BREAKS, full_output=True)
        return np.asarray(val) * self.energy ** 2, int(info.neval)


def _residuals_np(u, model, obs, err_lo, err_hi, prior_dex: float = 1.0):
    """popsynth's default loss (chi2, error on the model's side, 1-dex prior on log10 w) in numpy."""
    import numpy as np

    w = np.exp(u)
    pred = model(w)
    s = np.where(pred > obs, err_hi, err_lo)
    return np.concatenate([(pred - obs) / s, np.log10(w) / prior_dex])


# ----------------------------------------------------------------------------- cases (each in a subprocess)

def case_setup(args) -> dict:
    """Import + build_problem (grid, phi0 cubes, spectral table, data, kernels, block responses)."""
    t0 = time.perf_counter()
    import popsynth.run  # noqa: F401

    t_import = args.torch_import_s + time.perf_counter() - t0  # import torch (timed in child()) + popsynth
    device = _device(args.device)
    t0 = time.perf_counter()
    prob = _problem(device)
    _sync(device)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    _problem(device)  # again in the same process: no lazy imports, no first-touch of fresh memory
    _sync(device)
    t_again = time.perf_counter() - t0
    return {"import_s": t_import, "build_problem_s": t_build, "build_problem_again_same_process_s": t_again,
            "n_points": prob.data.n, "popsynth_s": t_build, "cache_dir": os.environ.get("POPSYNTH_CACHE")}


def case_cxb_block(args) -> dict:
    import torch

    from popsynth.cxb import CXBModel, block_response, cxb_kernel
    from popsynth.fit import initial_weights
    from popsynth.spectra.model import build_spectral_table
    from popsynth.xlf import build_phi0

    device = _device(args.device)
    prob = _problem(device)
    grid = prob.grid
    # the one-time contraction behind the block path (part of build_problem; timed here on its own)
    table = build_spectral_table(5, grid.lognh_edges, n_draws=64, seed=0, device=device)
    phi1 = build_phi0(grid, "a19", l_moment=1, device=device)
    t0 = time.perf_counter()
    k = cxb_kernel(table, grid, prob.data.energy, device=device)
    model = CXBModel(block_response(phi1, k, grid), prob.data.energy, prob.model.extra)
    _sync(device)
    t_pre = time.perf_counter() - t0
    w = initial_weights(args.B, N_BLOCKS, 0, device=device)
    rss0 = _rss_mb()
    with torch.no_grad():
        tm = _time_call(lambda: model(w), device, args.min_time, args.repeats)
        out = model(w)
    return {"popsynth_s": tm["median_s"], "timing": tm, "precompute_kernel_and_response_s": t_pre,
            "rss_before_mb": rss0, "shape": list(out.shape), "energies": int(prob.data.n)}


def case_cxb_cube(args) -> dict:
    import torch

    from popsynth.cxb import cxb_from_cube, cxb_kernel
    from popsynth.fit import initial_weights
    from popsynth.spectra.model import build_spectral_table
    from popsynth.xlf import apply_block_weights, build_phi0

    device = _device(args.device)
    prob = _problem(device)
    grid = prob.grid
    table = build_spectral_table(5, grid.lognh_edges, n_draws=64, seed=0, device=device)
    phi1 = build_phi0(grid, "a19", l_moment=1, device=device)
    k = cxb_kernel(table, grid, prob.data.energy, device=device)
    w = initial_weights(args.B, N_BLOCKS, 0, device=device)
    extra = prob.model.extra

    def f():
        return cxb_from_cube(apply_block_weights(phi1, w, grid), k, grid) + extra

    rss0 = _rss_mb()
    with torch.no_grad():
        tm = _time_call(f, device, args.min_time, args.repeats)
        out = f()
        ref = prob.model(w)
    agree = float(((out - ref).abs() / ref.abs()).max())
    nz, nl, nn = grid.shape
    return {"popsynth_s": tm["median_s"], "timing": tm, "rss_before_mb": rss0,
            "cube_mb": args.B * nz * nl * nn * 8 / 2 ** 20, "max_rel_diff_vs_block_path": agree}


def case_fit(args) -> dict:
    from popsynth.run import RunConfig, run

    with tempfile.TemporaryDirectory(prefix="bench_fit_") as out:
        cfg = RunConfig(starts=args.B, optimizer=args.optimizer, out=out, progress=False, device=args.device)
        t0 = time.perf_counter()
        s = run(cfg, log=lambda *a, **k: None)
        _sync(_device(args.device))
        wall = time.perf_counter() - t0
    return {"popsynth_s": wall, "run_wall_seconds": s["wall_seconds"], "setup_seconds": s["setup_seconds"],
            "steps_done": s["steps_done"], "steps_max": s["steps_max"], "n_converged": s["n_converged"],
            "n_stalled": s["n_stalled"], "n_starts": s["n_starts"], "chi2_total_best": s["chi2_total"],
            "optimizer": s["optimizer"]}


def _reference_setup(args):
    import numpy as np
    import torch

    from popsynth.spectra.model import build_spectral_table
    from popsynth.xlf import build_phi0

    device = torch.device("cpu")  # the reference is numpy/scipy
    prob = _problem(device)
    grid = prob.grid
    table = build_spectral_table(5, grid.lognh_edges, n_draws=64, seed=0)
    ref = Reference(grid, table, prob.data.energy.numpy(), prob.model.extra.numpy())
    # the numpy XLF must be popsynth's XLF at the grid nodes
    phi1 = build_phi0(grid, "a19", l_moment=1).numpy()
    xlf_err = max(float(np.max(np.abs(ref.phi1(z) / phi1[i] - 1))) for i, z in enumerate(grid.z))
    zs = (0.01, 0.5, 1.3, 4.0)
    ref.astropy_units = True
    g_astropy = [ref.geometry(z) for z in zs]
    ref.astropy_units = False
    geo_err = max(abs(ref.geometry(z) / g - 1) for z, g in zip(zs, g_astropy))
    return prob, ref, {"xlf_max_rel_diff_vs_build_phi0": xlf_err, "geometry_max_rel_diff_vs_astropy": geo_err}


def _energy_subset(n: int, k: int):
    import numpy as np

    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def case_ref_cxb(args) -> dict:
    """Reference CXB: choose epsrel for matched accuracy, then time quad per (start, energy)."""
    import numpy as np
    import torch

    from popsynth.fit import initial_weights

    prob, ref, checks = _reference_setup(args)
    n_e = prob.data.n
    w_all = initial_weights(max(args.ref_starts, 1), N_BLOCKS, 0).numpy()
    pop = prob.model.agn(torch.as_tensor(w_all)).numpy()  # popsynth AGN part [B, nE]
    # integrand cost, both geometry variants
    wf = w_all[0][ref.block]
    t_int = {}
    for units in (False, True):
        ref.astropy_units = units
        t0 = time.perf_counter()
        for z in np.linspace(0.01, 4.9, 200):
            ref.integrand(z, 5.0, wf)
        t_int["astropy_unit_calls" if units else "efunc_identity"] = (time.perf_counter() - t0) / 200
    ref.astropy_units = False
    # 1. converged integrals of the scan starts at all energies (truth for both implementations)
    n_scan = min(args.scan_starts, len(w_all))
    t0 = time.perf_counter()
    truth = np.array([ref.agn_vec(w_all[b], args.truth_epsrel)[0] for b in range(n_scan)])  # [n_scan, nE]
    t_truth = time.perf_counter() - t0
    pop_err = float(np.max(np.abs(pop[:n_scan] / truth - 1)))
    # 2. the loosest quad tolerance whose error (scan starts x energy subset) is <= TARGET_REL
    sub = _energy_subset(n_e, args.ref_scan_energies)
    scan = []
    chosen = None
    for eps in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4):
        t0 = time.perf_counter()
        vals = [[ref.agn_one(w_all[b], ref.energy[i], eps) for i in sub] for b in range(n_scan)]
        dt = time.perf_counter() - t0
        v = np.array([[x for x, _ in r] for r in vals])
        row = {"epsrel": eps, "max_rel_err_vs_converged": float(np.max(np.abs(v / truth[:, sub] - 1))),
               "max_rel_diff_vs_popsynth": float(np.max(np.abs(v / pop[:n_scan, sub] - 1))),
               "mean_neval": float(np.mean([[n for _, n in r] for r in vals])), "s_per_energy": dt / v.size}
        scan.append(row)
        if row["max_rel_err_vs_converged"] <= TARGET_REL:
            chosen = eps
            break
    if chosen is None:
        chosen = scan[-1]["epsrel"]
    # 3. timing at the chosen tolerance: ref_starts starts x ref_energies energies
    idx = _energy_subset(n_e, args.ref_energies)
    ref.calls = 0
    t0 = time.perf_counter()
    vals = np.array([ref.agn(w_all[b], idx, chosen) for b in range(args.ref_starts)])
    t_sample = time.perf_counter() - t0
    sample_calls = ref.calls
    n_q = args.ref_starts * len(idx)
    per_q = t_sample / n_q
    diff_pop = float(np.max(np.abs(vals / pop[: args.ref_starts, idx] - 1)))
    # 4. variant: quad_vec, all energies of a start in one adaptive integral, same accuracy target
    vec = []
    for eps in (1e-2, 1e-3, 1e-4):
        t0 = time.perf_counter()
        v, nv = ref.agn_vec(w_all[0], eps)
        dt = time.perf_counter() - t0
        err = float(np.max(np.abs(v / truth[0] - 1)))
        vec.append({"epsrel": eps, "s_per_start": dt, "neval": nv, "max_rel_err_vs_converged": err,
                    "max_rel_diff_vs_popsynth": float(np.max(np.abs(v / pop[0] - 1)))})
        if err <= TARGET_REL:
            break
    return {"checks": checks, "integrand_s": t_int, "truth": {"method": "quad_vec", "epsrel": args.truth_epsrel,
                                                              "starts": n_scan, "s": t_truth},
            "z_breaks": list(ref.Z_BREAKS), "scan_starts": n_scan, "scan_energies": len(sub),
            "popsynth_max_rel_err_vs_converged_all_energies": pop_err, "epsrel_scan": scan, "epsrel": chosen,
            "sample": {"starts": args.ref_starts, "energies": len(idx), "quad_calls": n_q, "s": t_sample,
                       "integrand_calls": sample_calls, "s_per_start_energy": per_q,
                       "max_rel_diff_vs_popsynth": diff_pop},
            "s_per_start_all_energies": per_q * n_e, "quad_vec": vec[-1], "quad_vec_scan": vec, "energies": n_e}


def case_ref_fit(args) -> dict:
    """Reference fit: scipy least_squares with a finite-difference Jacobian, one start per call.

    (1) The number of model evaluations a full (74-point) fit needs, per start, counted by running
    the same least_squares on popsynth's block model (same residuals; cheap). (2) One real fit of
    start 0 with the reference model on a reduced problem (a few energies + the prior), timed:
    seconds per model evaluation per energy. Extrapolated: (1) x (2) x 74 energies per start.
    """
    import numpy as np
    from scipy.optimize import least_squares

    from popsynth.fit import A19_CONVERGED_COST, initial_weights

    prob, ref, checks = _reference_setup(args)
    d = prob.data
    obs, elo, ehi = d.obs.numpy(), d.err_lo.numpy(), d.err_hi.numpy()
    a_blk, extra = prob.model.response.numpy(), prob.model.extra.numpy()
    ls_kw = dict(method="trf", jac="2-point", ftol=1e-6, xtol=1e-6, gtol=1e-8)
    w0 = initial_weights(args.surrogate_starts, N_BLOCKS, 0).numpy()
    counts, conv, t0 = [], 0, time.perf_counter()
    for b in range(args.surrogate_starts):
        n = [0]

        def model(w):
            n[0] += 1
            return w @ a_blk + extra

        r = least_squares(_residuals_np, np.log(w0[b]), args=(model, obs, elo, ehi), **ls_kw)
        counts.append(n[0])
        pred = np.exp(r.x) @ a_blk + extra
        conv += int(((pred - obs) ** 2).sum() / (2 * d.n) <= A19_CONVERGED_COST)
    t_sur = time.perf_counter() - t0
    # the real reference fit on a reduced problem
    idx = _energy_subset(d.n, args.reduced_energies)
    n_ref = [0]

    def ref_model(w):
        n_ref[0] += 1
        return ref.agn(w, idx, args.epsrel) + extra[idx]

    t0 = time.perf_counter()
    r = least_squares(_residuals_np, np.log(w0[0]), args=(ref_model, obs[idx], elo[idx], ehi[idx]),
                      max_nfev=args.reduced_max_nfev, **ls_kw)
    t_red = time.perf_counter() - t0
    per_eval_energy = t_red / (n_ref[0] * len(idx))
    mean_evals = float(np.mean(counts))
    per_start = per_eval_energy * d.n * mean_evals
    return {"checks": checks, "least_squares": {k: str(v) for k, v in ls_kw.items()},
            "surrogate": {"starts": args.surrogate_starts, "mean_model_evals": mean_evals,
                          "min_model_evals": int(min(counts)), "max_model_evals": int(max(counts)),
                          "sum_model_evals": int(sum(counts)), "n_converged": conv, "s": t_sur},
            "reduced_fit": {"energies": len(idx), "epsrel": args.epsrel, "model_evals": n_ref[0], "s": t_red,
                            "status": int(r.status), "message": str(r.message), "nfev": int(r.nfev),
                            "max_nfev": args.reduced_max_nfev, "s_per_model_eval_per_energy": per_eval_energy},
            "s_per_start_full_problem": per_start, "energies": d.n}


CASES = {"setup": case_setup, "cxb_block": case_cxb_block, "cxb_cube": case_cxb_cube, "fit": case_fit,
         "ref_cxb": case_ref_cxb, "ref_fit": case_ref_fit}


def child(args) -> None:
    t0 = time.perf_counter()
    import torch

    args.torch_import_s = time.perf_counter() - t0
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out = CASES[args.case](args)
    out["case_wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _rss_mb()
    out["torch_threads"] = torch.get_num_threads()
    dev = _device(args.device)
    out["cuda_max_allocated_mb"] = _cuda_peak(dev)
    Path(args.json).write_text(json.dumps(out, indent=1, default=float))


# ----------------------------------------------------------------------------- orchestration

def _spawn(case: str, opts: dict, common: list[str], env: dict, timeout: float = 1800) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        jpath = fh.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", case, "--json", jpath, *common]
    for k, v in opts.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    label = case + " " + " ".join(f"{k}={v}" for k, v in opts.items())
    print(f"  running {label} ...", file=sys.stderr, flush=True)
    load0 = _loadavg()
    busy0, own0 = _cpu_busy_s(), _children_cpu_s()
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        ok = p.returncode == 0
        err = p.stderr[-2000:] if not ok else ""
    except subprocess.TimeoutExpired:
        ok, err = False, f"timed out after {timeout} s"
    wall = time.perf_counter() - t0
    busy1, own1 = _cpu_busy_s(), _children_cpu_s()
    res = json.loads(Path(jpath).read_text()) if ok and Path(jpath).stat().st_size else {"error": err}
    os.unlink(jpath)
    res["subprocess_wall_s"] = wall
    res["loadavg_before"], res["loadavg_after"] = load0, _loadavg()
    res["case_cpu_s"] = own1 - own0
    if busy0 is not None and busy1 is not None:
        # CPU time used by other processes during this case, as a share of all cores: > ~0.1 means
        # the timing was contended (the machine is shared)
        foreign = max(busy1 - busy0 - (own1 - own0), 0.0)
        res["foreign_cpu_share"] = foreign / (wall * (os.cpu_count() or 1))
    if not ok:
        print(f"  FAILED {label}: {err}", file=sys.stderr)
    return res


def main_parent(args) -> int:
    import numpy as np
    import torch

    quick = args.quick
    _device(args.device)  # fail now (PopsynthError) on an unavailable device, not in every case
    common = ["--device", args.device, "--repeats", str(args.repeats), "--min-time", str(args.min_time)]
    common += ["--threads", str(args.threads)] if args.threads else []
    t_start = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="bench_cache_")
    env = {**os.environ, "POPSYNTH_CACHE": cache}
    rows, raw = [], {}

    def row(case, pop_s, ref_s=None, peak=None, notes="", extrapolated=False, key=None, **extra):
        share = raw.get(key, {}).get("foreign_cpu_share") if key else None
        if share is not None and share > 0.1:
            notes += f" [CONTENDED: other processes used {100 * share:.0f} % of the CPUs]"
        rows.append({"foreign_cpu_share": share, "case": case, "popsynth_s": pop_s, "reference_s": ref_s,
                     "ratio_ref_over_popsynth": (ref_s / pop_s) if (ref_s and pop_s) else None,
                     "reference_extrapolated": extrapolated if ref_s else None, "peak_rss_mb": peak,
                     "notes": notes, "raw_key": key, **extra})

    print(f"bench_cxb_fit ({'quick' if quick else 'full'}): {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"device {args.device}, load average {_loadavg()}", file=sys.stderr)
    # -- set-up
    raw["setup_cold"] = s = _spawn("setup", {}, common, env)
    row("set-up, cold spectral table", s.get("build_problem_s"), peak=s.get("peak_rss_mb"),
        notes=f"build_problem in a fresh process, empty cache (+ import torch and popsynth {s.get('import_s', float('nan')):.2f} s)",
        key="setup_cold")
    raw["setup_cached"] = s = _spawn("setup", {}, common, env)
    row("set-up, cached spectral table", s.get("build_problem_s"), peak=s.get("peak_rss_mb"),
        notes=f"build_problem in a fresh process, table from cache; again in the same process: "
        f"{_fmt_t(s.get('build_problem_again_same_process_s'))}", key="setup_cached")
    # -- reference CXB (matched accuracy, timing sample)
    ref_opts = ({"ref_starts": 1, "ref_energies": 8, "scan_starts": 1, "ref_scan_energies": 74, "truth_epsrel": 1e-4}
                if quick else
                {"ref_starts": 10, "ref_energies": 74, "scan_starts": 3, "ref_scan_energies": 74, "truth_epsrel": 1e-6})
    raw["ref_cxb"] = rc = _spawn("ref_cxb", ref_opts, common, env)
    per_start = rc.get("s_per_start_all_energies")
    vec_per_start = rc.get("quad_vec", {}).get("s_per_start")
    smp = rc.get("sample", {})
    ref_note = (f"ref: quad per start x energy, epsrel {rc.get('epsrel')}, extrapolated from "
                f"{smp.get('starts')} start(s) x {smp.get('energies')} energies")
    # -- popsynth CXB evaluations
    sizes = [100] if quick else [100, 10000]
    for B in sizes:
        key = f"cxb_block_B{B}"
        raw[key] = s = _spawn("cxb_block", {"B": B}, common, env)
        row(f"CXB eval, block path, B={B}", s.get("popsynth_s"), per_start * B if per_start else None,
            s.get("peak_rss_mb"), ref_note, True, key)
        if vec_per_start:
            row(f"CXB eval, block path, B={B}, vs quad_vec ref", s.get("popsynth_s"), vec_per_start * B,
                s.get("peak_rss_mb"), f"ref variant: quad_vec over z, all {rc.get('energies')} energies at once, "
                f"epsrel {rc['quad_vec']['epsrel']}, extrapolated from 1 start", True, key)
    cube_sizes = [100] if quick else [100, 1000]
    nz, nl, nn = 119, 120, 60
    for B in cube_sizes:
        cube_mb = B * nz * nl * nn * 8 / 2 ** 20
        need_mb = 2 * cube_mb + 700  # weighted cube + its L-weighted copy + the process itself
        avail = _mem_available_mb()
        key = f"cxb_cube_B{B}"
        if avail is not None and need_mb > 0.5 * avail and not args.force_cube:
            row(f"CXB eval, cube path, B={B}", None, notes=f"skipped: cube {cube_mb:.0f} MiB, needs ~{need_mb:.0f} MiB "
                f"peak, more than half of the {avail:.0f} MiB available (shared machine; --force-cube runs it)")
            continue
        raw[key] = s = _spawn("cxb_cube", {"B": B, "repeats": 3 if B >= 1000 else args.repeats}, common, env)
        row(f"CXB eval, cube path, B={B}", s.get("popsynth_s"), per_start * B if per_start else None,
            s.get("peak_rss_mb"), f"cube {s.get('cube_mb', 0):.0f} MiB; agrees with block path to "
            f"{s.get('max_rel_diff_vs_block_path', float('nan')):.1e}", True, key)
    # -- reference fit
    fit_opts = ({"surrogate_starts": 20, "reduced_energies": 2, "reduced_max_nfev": 1, "epsrel": rc.get("epsrel", 1e-2)}
                if quick else
                {"surrogate_starts": 100, "reduced_energies": 8, "reduced_max_nfev": 60, "epsrel": rc.get("epsrel", 1e-2)})
    raw["ref_fit"] = rf = _spawn("ref_fit", fit_opts, common, env)
    ref_fit_start = rf.get("s_per_start_full_problem")
    sur = rf.get("surrogate", {})
    red = rf.get("reduced_fit", {})
    # -- popsynth fits
    fits = [(100, "lm"), (100, "adam")] if quick else [(100, "lm"), (10000, "lm"), (100, "adam")]
    for B, opt in fits:
        key = f"fit_{opt}_B{B}"
        raw[key] = s = _spawn("fit", {"B": B, "optimizer": opt}, common, env)
        ref_s = None
        if ref_fit_start:
            ref_s = (rf["s_per_start_full_problem"] / sur["mean_model_evals"] * sur["sum_model_evals"]
                     if B == sur.get("starts") else ref_fit_start * B)
        row(f"full fit, {opt}, B={B}", s.get("popsynth_s"), ref_s, s.get("peak_rss_mb"),
            f"{s.get('steps_done')} steps, {s.get('n_converged')}/{B} converged; run() in a fresh process, "
            f"incl. set-up {s.get('setup_seconds', float('nan')):.1f} s and output files; ref: least_squares trf 2-point, "
            f"{sur.get('mean_model_evals', float('nan')):.0f} model evals/start, extrapolated", True, key,
            steps=s.get("steps_done"), n_converged=s.get("n_converged"))
    shutil_rm(cache)
    total = time.perf_counter() - t_start

    # -- report
    acc = {"target_rel": TARGET_REL, "epsrel": rc.get("epsrel"),
           "ref_max_rel_diff_vs_popsynth_sample": smp.get("max_rel_diff_vs_popsynth"),
           "popsynth_max_rel_err_vs_converged_all_energies": rc.get("popsynth_max_rel_err_vs_converged_all_energies"),
           "epsrel_scan": rc.get("epsrel_scan"), "quad_vec": rc.get("quad_vec"), "checks": rc.get("checks"),
           "integrand_s": rc.get("integrand_s")}
    hdr = ("case", "popsynth", "reference", "ratio ref/pop", "peak RSS", "notes")
    lines = [f"{hdr[0]:<42} {hdr[1]:>10} {hdr[2]:>11} {hdr[3]:>13} {hdr[4]:>9}  {hdr[5]}"]
    for r in rows:
        ref_txt = (_fmt_t(r["reference_s"]) + ("*" if r["reference_extrapolated"] else "")) if r["reference_s"] else "-"
        peak = f"{r['peak_rss_mb']:.0f} MiB" if r["peak_rss_mb"] else "-"
        lines.append(f"{r['case']:<42} {_fmt_t(r['popsynth_s']):>10} {ref_txt:>11} "
                     f"{_fmt_ratio(r['ratio_ref_over_popsynth']):>13} {peak:>9}  {r['notes']}")
    lines.append("* reference time extrapolated linearly from the timed sample (see notes); peak RSS = whole "
                 "subprocess (Python + torch + problem), popsynth side")
    scan_last = (rc.get("epsrel_scan") or [{}])[-1]
    lines.append(f"matched accuracy (max rel. error vs a converged quad_vec integral, {rc.get('scan_starts')} start(s) x "
                 f"{rc.get('scan_energies')} energies): popsynth {_g(acc['popsynth_max_rel_err_vs_converged_all_energies'])}, "
                 f"ref {_g(scan_last.get('max_rel_err_vs_converged'))} at quad epsrel {acc['epsrel']} (loosest of the "
                 f"scan with <= {TARGET_REL:g}); ref vs popsynth on the timed sample: max rel diff "
                 f"{_g(acc['ref_max_rel_diff_vs_popsynth_sample'])}; numpy XLF vs build_phi0 "
                 f"{_g((acc['checks'] or {}).get('xlf_max_rel_diff_vs_build_phi0'))}")
    lines.append(f"reference fit: {sur.get('starts')} surrogate fits need {sur.get('mean_model_evals', float('nan')):.0f} "
                 f"model evals/start (range {sur.get('min_model_evals')}-{sur.get('max_model_evals')}, "
                 f"{sur.get('n_converged')}/{sur.get('starts')} converged); real reduced fit: {red.get('energies')} "
                 f"energies, {red.get('model_evals')} evals in {_fmt_t(red.get('s'))} "
                 f"({'stopped by tolerance' if red.get('status', 0) > 0 else 'stopped at max_nfev ' + str(red.get('max_nfev'))}) "
                 f"-> {_fmt_t(red.get('s_per_model_eval_per_energy'))} per eval per energy "
                 f"-> {_fmt_t(ref_fit_start)} per start at 74 energies")
    rss_ref = max((raw[k].get("peak_rss_mb") or 0) for k in ("ref_cxb", "ref_fit"))
    lines.append(f"reference peak RSS {rss_ref:.0f} MiB; torch threads {raw['setup_cold'].get('torch_threads')}; "
                 f"total benchmark wall {total:.0f} s")
    text = "\n".join(lines)
    print(text)
    result = {"meta": {"script": "benchmarks/bench_cxb_fit.py", "mode": "quick" if quick else "full",
                       "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                       "hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
                       "scipy": __import__("scipy").__version__, "device": args.device,
                       "torch_threads": raw["setup_cold"].get("torch_threads"), "total_wall_s": total,
                       "note": "timings are wall clock on a machine that may be shared; see loadavg per case"},
              "table": rows, "accuracy": acc, "raw": raw, "text": text}
    out_dir = HERE / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = ("_quick" if quick else "") + (f"_threads{args.threads}" if args.threads else "")
    path = out_dir / f"bench_cxb_fit_{socket.gethostname()}{suffix}.json"
    path.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {path}", file=sys.stderr)
    return 0 if all("error" not in v for v in raw.values()) else 1


def _g(x) -> str:
    return "-" if x is None else f"{x:.1e}"


def shutil_rm(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only B = 100 cases and a small reference sample")
    ap.add_argument("--device", default="cpu", help="popsynth device: cpu, cuda, auto (the reference is always CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=7, help="timing repeats per CXB case (median reported)")
    ap.add_argument("--force-cube", action="store_true", help="run the B = 1000 cube case even if memory looks short")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per timing repeat (CXB cases)")
    # internal: one case in this process
    ap.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--B", type=int, default=100, help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", default="lm", help=argparse.SUPPRESS)
    ap.add_argument("--ref-starts", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--ref-energies", type=int, default=8, help=argparse.SUPPRESS)
    ap.add_argument("--scan-starts", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--ref-scan-energies", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--truth-epsrel", type=float, default=1e-6, help=argparse.SUPPRESS)
    ap.add_argument("--surrogate-starts", type=int, default=20, help=argparse.SUPPRESS)
    ap.add_argument("--reduced-energies", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--reduced-max-nfev", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--epsrel", type=float, default=1e-2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.reduced_max_nfev == 0:
        a.reduced_max_nfev = None
    return a


def main(argv=None) -> int:
    args = parse(argv)
    if args.case:
        child(args)
        return 0
    from popsynth.errors import PopsynthError

    try:
        return main_parent(args)
    except PopsynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

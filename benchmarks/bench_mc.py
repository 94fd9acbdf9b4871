"""Photon Monte Carlo throughput: photons per second on CPU (and CUDA when present), and the
time the Green's function tables take to build.

    python benchmarks/bench_mc.py [--photons 300000] [--threads 1] [--no-cuda]

For each device it runs the weighted (table-building) estimator on a few representative
configurations of the default grids (torus at log N_H = 22, 24, 25.5 with theta_tor = 58 deg;
the semi-infinite slab) and prints photons/s and interactions/s. It then prints the build
time recorded in the shipped tables (data/greens/*.h5) and the time a default rebuild would
take on each device at the measured rates. Last, it times the spectral table of one spectral
set (set 5, 64 draws, 60 log N_H cells x 4 sub-nodes, the full A19 model) built from the
tables, against a plain reference that applies the interpolated Green's matrix
(popsynth.mc.response_matrix) draw by draw and column by column, and checks both agree.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from popsynth.mc.geometry import SlabGeometry, SphereBiconeGeometry
from popsynth.io.greens import read_greens
from popsynth.mc.grids import (
    DEFAULT_THETA_TOR,
    default_torus_log_nh,
    input_energy_edges,
    output_energy_edges,
    slab_cos_edges,
    torus_cos_edges,
)
from popsynth.mc.shipped import default_table_path
from popsynth.mc.build import DEFAULT_PHOTONS
from popsynth.mc.transport import TallyGrid, run_photons, tabulate_medium


def _rate(geom, cos_edges, medium, photons, device, max_active):
    grid = TallyGrid(
        torch.as_tensor(input_energy_edges()), torch.as_tensor(output_energy_edges()), torch.as_tensor(cos_edges)
    )
    per_bin = max(8, photons // grid.n_in)
    gen = torch.Generator(device=device).manual_seed(1)
    run_photons(geom, medium, grid, 8, gen, n_batches=8, max_active=max_active)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    r = run_photons(geom, medium, grid, per_bin, gen, n_batches=8, max_active=max_active)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    n = float(r.injected.sum())
    return n / dt, r.n_interactions / dt, dt


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photons", type=int, default=300_000, help="photons per configuration (default 3e5)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--no-cuda", action="store_true", help="skip CUDA even if available")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.no_cuda:
        devices.append(torch.device("cuda"))
    configs = [(f"torus logNH={x} th=58", SphereBiconeGeometry(10**x, 58.0), torus_cos_edges(58.0)) for x in (22.0, 24.0, 25.5)]
    configs.append(("slab semi-infinite", SlabGeometry(), slab_cos_edges()))
    print(f"{'device':8s} {'configuration':24s} {'photons/s':>12s} {'interact./s':>12s} {'time (s)':>9s}")
    rates = {}
    for dev in devices:
        medium = tabulate_medium(device=dev)
        max_active = (1 << 21) if dev.type == "cuda" else (1 << 16)
        photons = args.photons * (20 if dev.type == "cuda" else 1)
        for name, geom, ce in configs:
            ph_s, int_s, dt = _rate(geom, ce, medium, photons, dev, max_active)
            rates[(dev.type, name)] = ph_s
            print(f"{dev.type:8s} {name:24s} {ph_s:12,.0f} {int_s:12,.0f} {dt:9.2f}")
    print()
    print(f"{'table':6s} {'configs':>7s} {'photons/config':>15s} {'built (s)':>10s} {'on':>6s}  projected default rebuild (s)")
    n_torus = len(default_torus_log_nh()) * len(DEFAULT_THETA_TOR)
    for kind, n_cfg in (("torus", n_torus), ("slab", 1)):
        path = default_table_path(kind)
        built, where, phot = "-", "-", "-"
        if path.is_file():
            t = read_greens(path)
            built = f"{float(t.meta.get('build_seconds', np.nan)):.0f}"
            where = str(t.meta.get("device", "?")).split()[0]
            phot = f"{int(t.photons.max()):,}"
        proj = []
        for dev in devices:
            keys = [k for k in rates if k[0] == dev.type and k[1].startswith(kind)]
            mean_rate = np.mean([rates[k] for k in keys])
            proj.append(f"{dev.type} {n_cfg * DEFAULT_PHOTONS[kind] / mean_rate:,.0f}")
        print(f"{kind:6s} {n_cfg:7d} {phot:>15s} {built:>10s} {where:>6s}  {', '.join(proj)}")


    print()
    _bench_spectral_table(devices)


def _bench_spectral_table(devices) -> None:
    """Time the A19 spectral table of set 5 and compare the torus part with a plain loop."""
    from popsynth.grid import Grid
    from popsynth.mc.interpolate import response_matrix
    from popsynth.mc.shipped import load_greens
    from popsynth.spectra.cache import build_spectral_table
    from popsynth.spectra.table import default_energy_grid
    from popsynth.spectra.primary import primary_spectrum
    from popsynth.spectra.reprocessed import TorusReprocessed, a19_torus_inclination, binning_matrix
    from popsynth.spectra.sets import draw_parameters, get_spectral_set

    grid = Grid()
    for dev in devices:
        t0 = time.perf_counter()
        build_spectral_table(5, grid.lognh_edges, n_draws=64, cache=False, device=dev)
        print(f"spectral table, set 5, 64 draws x 60 cells x 4 sub-nodes, full A19 model, {dev.type}: "
              f"{time.perf_counter() - t0:.2f} s (cached on disk afterwards)")
    # torus reprocessing of 16 draws x 40 columns: batched component vs a per-configuration loop
    e = default_energy_grid()
    p = {k: v[1, :16] for k, v in draw_parameters(get_spectral_set(5), 16, 0).items()}
    prim = primary_spectrum(e, p["gamma"], p["ecut"])
    lnh = torch.linspace(22.05, 25.95, 40, dtype=torch.float64)
    comp = TorusReprocessed(cutoff="incident", lines=False)
    comp.spectrum(e, prim, p, lnh[:2])  # operators built once, as in a run
    t0 = time.perf_counter()
    fast = comp.spectrum(e, prim, p, lnh)
    t_fast = time.perf_counter() - t0
    table = load_greens("torus")
    B = binning_matrix(e.numpy(), table.e_in_edges)
    U = comp._ops.U
    t0 = time.perf_counter()
    ref = torch.empty_like(fast)
    for d in range(16):
        n_in = B @ prim[d]
        for m in range(40):
            inc = float(a19_torus_inclination(lnh[m], p["theta_tor"][d]))
            M, _ = response_matrix(table, inc, float(lnh[m]), float(p["theta_tor"][d]))
            ref[d, m] = U @ (M @ n_in)
    t_ref = time.perf_counter() - t0
    err = float(((fast - ref).abs().max() / ref.abs().max()))
    print(f"torus reprocessing, 16 draws x 40 columns: batched {t_fast:.3f} s, plain loop {t_ref:.3f} s, "
          f"ratio {t_ref / t_fast:.0f}x, max relative difference {err:.1e}")


if __name__ == "__main__":
    main()

"""popsynth's integrals equal the vectorised numpy reference (tests/reference.py) that
benchmarks/run.py times them against: the phi cube, the CXB kernel, the CXB of a batch of starts
through the block response and through the full cube, and N(>S) of a survey. Small inputs, fast."""

import numpy as np
import pytest
import torch

from popsynth.cosmology import distance_tables
from popsynth.cxb import block_response, cxb_from_cube, cxb_kernel
from popsynth.fit import initial_weights
from popsynth.grid import Grid
from popsynth.observables import build_survey_model
from popsynth.spectra.table import SpectralTable
from popsynth.survey import Survey
from popsynth.xlf import apply_block_weights, build_phi0

import reference as ref  # tests/ is on sys.path under pytest (rootdir conftest)

F64 = torch.float64
RTOL = 1e-10


def _table(grid, n_draws=3, seed=0):
    """Absorbed power laws with a per-draw photon index: a SpectralTable with per_draw [D, nN, nE]."""
    e = torch.logspace(-1, np.log10(2000.0), 801, dtype=F64)
    g = torch.Generator().manual_seed(seed)
    gam = 1.7 + 0.3 * torch.rand(n_draws, dtype=F64, generator=g)
    nh = torch.as_tensor(10.0 ** grid.lognh, dtype=F64)
    absorb = torch.exp(-nh[:, None] * 2e-22 * e[None] ** -2.5)  # [nN, nE]
    pd = 1e-44 * e[None, None] ** -gam[:, None, None] * absorb[None] + 1e-52
    mean = pd.mean(0)
    return SpectralTable(e, torch.as_tensor(grid.lognh_edges), torch.as_tensor(grid.lognh), mean, {"primary": mean},
                         pd, {}, {})


@pytest.fixture(scope="module")
def setup():
    grid = Grid()
    return grid, _table(grid)


def _close(a, b, rtol=RTOL):
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    scale = np.abs(b).max()
    assert np.all(np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1e-300) + 1e-14 * scale), float(
        np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.mark.parametrize("l_moment", [0, 1])
def test_phi_cube(l_moment):
    grid = Grid()
    _close(build_phi0(grid, l_moment=l_moment), ref.phi_cube(grid.z, grid.logl_edges, grid.lognh, l_moment))


def test_cxb_kernel_block_and_cube_paths(setup):
    grid, tab = setup
    e = np.geomspace(0.5, 200.0, 9)
    d = distance_tables(grid.z)
    k_ref = ref.cxb_kernel(grid.z, grid.z_weights, d["dvc_dz_dsr_mpc3"].numpy(), d["d_l_cm"].numpy(), grid.dlognh,
                           tab.energy.numpy(), tab.mean.numpy(), e)
    k = cxb_kernel(tab, grid, e)
    _close(k, k_ref)
    phi1 = build_phi0(grid, l_moment=1)
    bi = grid.block_index.numpy()
    a_ref = ref.block_response(phi1.numpy(), k_ref, bi, grid.logl, grid.dlogl)
    a = block_response(phi1, k, grid)
    _close(a, a_ref)
    w = initial_weights(3, 15, seed=4)
    extra = np.full(e.size, 0.1)
    blocks_ref = ref.cxb_blocks(w.numpy(), a_ref, extra)
    cube_ref = ref.cxb_cube(w.numpy(), phi1.numpy(), k_ref, bi, grid.logl, grid.dlogl, extra)
    _close(w @ a + torch.as_tensor(extra), blocks_ref)
    _close(cxb_from_cube(apply_block_weights(phi1, w, grid), k, grid) + torch.as_tensor(extra), cube_ref)
    _close(cube_ref, blocks_ref, 1e-12)


def test_cumulative_counts(setup):
    grid, tab = setup
    phi0 = build_phi0(grid)
    sv = Survey(name="toy", band_keV=(2.0, 10.0), flux_limit=1e-15, z_range=(0.0, 3.0))
    fluxes = np.geomspace(1e-15, 1e-12, 5)
    m = build_survey_model(sv, grid, phi0, tab, fluxes=fluxes)
    w = initial_weights(2, 15, seed=1)
    phi = apply_block_weights(phi0, w, grid)
    got = m.cumulative_cube(phi)
    phi_z = m.on_model_z(phi).numpy()
    want = ref.cumulative_counts(phi_z, m.log_k.numpy(), fluxes, m.vol.numpy(), m.dlognh.numpy(), m.dlogl.numpy(),
                                 m.logl_edges.numpy())
    _close(got, want)
    _close(m.cumulative(w), want)  # the block responses give the same numbers


def test_cxb_integrand_on_the_z_nodes_is_the_block_path(setup):
    """The continuous-z reference integrand (for the adaptive quadrature of bench_cxb_fit.py), summed
    over popsynth's z nodes with their trapezoid weights, is popsynth's block-path CXB."""
    grid, tab = setup
    e = np.geomspace(0.5, 200.0, 7)
    d = distance_tables(grid.z)
    geom = d["dvc_dz_dsr_mpc3"].numpy() * (1 + grid.z) ** 2 / (4 * np.pi * d["d_l_cm"].numpy() ** 2)
    w = initial_weights(2, 15, seed=9)
    a = block_response(build_phi0(grid, l_moment=1), cxb_kernel(tab, grid, e), grid)
    bi = grid.block_index.numpy()
    for b in range(2):
        dz = np.array([ref.cxb_integrand(z, w[b].numpy(), bi, grid.logl_edges, grid.logl, grid.dlogl, grid.lognh,
                                         grid.dlognh, tab.energy.numpy(), tab.mean.numpy(), e, g)
                       for z, g in zip(grid.z, geom)])
        _close(w[b:b + 1] @ a, (grid.z_weights[:, None] * dz).sum(0)[None])


def test_run_py_renders_its_results_and_reads_bench_physical():
    """benchmarks/run.py: the README block from a results dict (kernels, runs, accuracy, physical,
    issue 13's targets) and the parser of bench_physical.py's table."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_run", Path(__file__).parents[1] / "benchmarks" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    out = ("physical model, spectral set 5, 8 draws, 18 free parameters\nnode kernels: 1.00M nonzeros\n"
           "step                  ms\ncube                1.50\ncontractions       12.25\nforward            20.00\n"
           "fwd+backward       45.50   (-ln p and its gradient, 4 chains)\n")
    title, rows = run.parse_physical(out)
    assert title.startswith("physical model") and [r["part"] for r in rows] == ["cube", "contractions", "forward",
                                                                                 "fwd+backward"]
    assert rows[3]["ms"] == 45.5 and rows[3]["note"] == "-ln p and its gradient, 4 chains"
    load = (1.5, 1.0, 1.0)
    res = {"meta": {"quick": True, "date": "d", "host": "h", "cpus": 2, "threads": 2, "python": "3", "torch": "2",
                    "numpy": "2", "repeats": 3},
           "kernels": [{"case": "phi cube", "note": "n", "starts": 1, "popsynth_s": 0.002, "reference_s": 0.003,
                        "ratio": 1.5, "max_rel_diff": 1e-15, "peak_rss_mib": 300, "load_before": load}],
           "runs": [{"args": "--mode joint", "wall_s": 3.0, "process_s": 4.5, "setup_s": 0.8, "steps": 421, "steps_max": 500,
                     "starts": 100, "stalled": 100, "peak_rss_mib": 700, "load_before": load, "ok": True,
                     "process_runs": [4.5, 4.1, 5.2]},
                    {"args": "--mode cxb --starts 10000", "wall_s": 8.0, "setup_s": 1.0, "steps": 76, "steps_max": 500,
                     "starts": 10000, "stalled": 10000, "peak_rss_mib": 600, "load_before": load, "ok": True},
                    {"args": "--mode cxb --starts 100000", "wall_s": 70.0, "setup_s": 1.0, "steps": 77,
                     "steps_max": 500, "starts": 100000, "stalled": 100000, "peak_rss_mib": 900, "load_before": load,
                     "ok": True}],
           "accuracy": {"ok": True, "z_nodes": 119, "epsrel": 1e-4, "starts": 2, "energies": 74,
                        "popsynth_vs_quad_max_rel_diff": 1.9e-3, "worst_energy_keV": 5.7,
                        "popsynth_vs_quad_median_rel_diff": 1.2e-4, "nodes_vs_popsynth_max_rel_diff": 2e-15,
                        "load_before": load},
           "physical": {"ok": True, "args": "--draws 8", "title": title, "rows": rows, "load_before": load}}
    text = run.render(res)
    assert "| `--mode cxb --starts 10000` | - | 8.0 s | 1.0 s | 76 (500) | 10000/10000 | 600 MiB | 1.50 |" in text
    assert "| `--mode joint` | 4.5 s (median of 3: 4.1-5.2 s) | 3.0 s | 0.8 s | 421 (500) | 100/100 | 700 MiB | 1.50 |" in text
    # targets use the process time (start to exit) where it was measured
    assert "| `--mode joint`, start to exit | < 5 s | 4.5 s | met (load 1.50) |" in text
    assert "| `--mode cxb --starts 10000`, start to exit | < 10 s | 8.0 s | met (load 1.50) |" in text
    assert "| `--mode cxb --starts 100000`, start to exit | < 60 s, peak < 2 GiB | 70.0 s, 900 MiB | NOT met (load 1.50) |" in text
    assert "max rel. diff 1.9e-03 (at 5.7 keV)" in text and "epsrel 1e-04" in text and "| fwd+backward | 45.50 |" in text
    assert "| every kernel at least as fast as numpy | numpy / popsynth >= 1 | 1.50 (lowest) | met |" in text

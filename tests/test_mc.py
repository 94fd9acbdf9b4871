"""Photon Monte Carlo (popsynth.mc): geometry, transport, Green's tables, validation.

Layers (STYLE lesson 6):
* exact results: ray/matter intervals against brute force and a hand-solved re-entry ray;
  photon-number conservation; the albedo and angular distribution of a semi-infinite,
  isotropically scattering atmosphere (Chandrasekhar 1960, H-function);
* statistics: the unscattered beam through the torus against exp(-N_H sigma_tot) (binomial,
  4 sigma); the Green's tables applied to a power law against a direct power-law simulation;
* published physics, on the shipped tables data/greens/{slab,torus}.h5: Compton hump, Fe K
  alpha equivalent widths (George & Fabian 1991; Nandra et al. 2007; Brightman & Nandra 2011),
  the optically thin fluorescence limit;
* plumbing: seeding, HDF5 round trip with version key, interpolation, grid limits, the CLI;
* currency: the shipped tables match today's physics within MEDIUM_RTOL = 1e-9 (noise of
  1e-15 passes, a change of 1e-6 in a cross section, yield or line energy fails, through
  is_current and through the one-per-process StaleTableWarning of load_greens).

Monte Carlo runs here use small photon counts and coarse grids so the file runs in well
under a minute on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import re
import warnings

import numpy as np
import pytest
import torch

from popsynth.errors import PopsynthError
from popsynth.io.greens import add_medium_reference, read_greens, write_greens
from popsynth.mc import shipped  # load_greens, its per-process tables and check caches
from popsynth.mc.currency import MEDIUM_RTOL, StaleTableWarning, check_nodes, check_table, is_current
from popsynth.mc.geometry import SlabGeometry, SphereBiconeGeometry, advance_along
from popsynth.mc.grids import input_energy_edges, slab_cos_edges, torus_cos_edges
from popsynth.mc.interpolate import apply_greens, response_matrix, transmitted_fraction
from popsynth.mc.shipped import check_shipped_tables, default_table_path, load_greens
from popsynth.mc.simulate import build_table, simulate_config
from popsynth.mc.table import GreensTable
from popsynth.mc.transport import (
    Medium,
    TallyGrid,
    grey_medium,
    isotropic_directions,
    rotate_directions,
    run_photons,
    tabulate_medium,
)

F64 = torch.float64


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """The photon loop is many small vector ops: one thread is faster and steadier on a shared
    2-core machine. Restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def medium():
    # 1000 nodes per decade (K edges sharp to 0.2 %) keeps the fixture fast; the tables use 4000
    return tabulate_medium(points_per_decade=1000)


def _grid(e_in, e_out, cos_edges):
    return TallyGrid(torch.as_tensor(e_in, dtype=F64), torch.as_tensor(e_out, dtype=F64),
                     torch.as_tensor(cos_edges, dtype=F64))


def _gen(seed, device="cpu"):
    return torch.Generator(device=device).manual_seed(seed)


def _bin_mean_transmission(edges, log_nh, n=401):
    """exp(-N_H sigma_tot) averaged over each bin uniformly in ln E (how photons are injected)."""
    lo, hi = edges[:-1], edges[1:]
    x = np.linspace(0, 1, n)
    e = np.exp(np.log(lo)[:, None] + x[None, :] * np.log(hi / lo)[:, None])
    return transmitted_fraction(torch.as_tensor(e), log_nh).numpy().mean(axis=1)


def _powerlaw_bins(edges, gamma):
    lo, hi = edges[:-1], edges[1:]
    return (hi ** (1 - gamma) - lo ** (1 - gamma)) / (1 - gamma)


# ------------------------------------------------------------------------------------------
# Geometry
# ------------------------------------------------------------------------------------------
def test_bicone_segments_match_brute_force():
    """Matter length along 600 random rays vs dense sampling (step 1e-4 -> tolerance 3e-4)."""
    geom = SphereBiconeGeometry(1e24, 58.0)
    g = torch.Generator().manual_seed(0)
    n = 600
    pos = torch.randn(n, 3, generator=g, dtype=F64)
    pos = pos / pos.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g, dtype=F64) ** (1 / 3)
    d = torch.randn(n, 3, generator=g, dtype=F64)
    d = d / d.norm(dim=1, keepdim=True)
    starts, lengths = geom.segments(pos, d)
    t = torch.linspace(0.0, 2.0, 20001, dtype=F64)
    pts = pos[:, None, :] + t[None, :, None] * d[:, None, :]
    r2 = (pts**2).sum(-1)
    c2 = math.cos(math.radians(58.0)) ** 2
    inside = (pts[..., 2] ** 2 < c2 * r2) & (r2 < 1.0)
    brute = inside.double().sum(1) * (t[1] - t[0])
    assert float((lengths.sum(1) - brute).abs().max()) < 3e-4
    assert int(((lengths > 0).sum(1) == 2).sum()) > 10  # some rays re-enter the torus
    # every non-empty interval's midpoint really is matter, and intervals are ordered
    mid = pos[:, None, :] + (starts + 0.5 * lengths)[:, :, None] * d[:, None, :]
    m2 = (mid**2).sum(-1)
    ok = (mid[..., 2] ** 2 < c2 * m2) & (m2 < 1.0)
    assert bool(ok[lengths > 1e-9].all())
    assert bool((starts[:, 1:] >= starts[:, :-1]).all())


def test_bicone_reentry_exact():
    """A ray crossing the upper cone: matter [-0.6, -x0], cone, matter [x0, xs] along x.

    At z = 0.2 and theta_tor = 60 deg (cos = 0.5) matter needs x^2 + 0.04 > 0.16, so
    x0 = sqrt(0.12); the sphere is left at xs = sqrt(0.96). Exact to 1e-12.
    """
    geom = SphereBiconeGeometry(1e24, 60.0)
    pos = torch.tensor([[-0.6, 0.0, 0.2]], dtype=F64)
    d = torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    starts, lengths = geom.segments(pos, d)
    x0, xs = math.sqrt(0.12), math.sqrt(0.96)
    seg = sorted((float(s), float(s + l)) for s, l in zip(starts[0], lengths[0]) if l > 0)
    assert len(seg) == 2
    assert seg[0] == pytest.approx((0.0, 0.6 - x0), abs=1e-12)
    assert seg[1] == pytest.approx((0.6 + x0, 0.6 + xs), abs=1e-12)
    # a matter path length beyond the first interval lands in the second one
    s = torch.tensor([(0.6 - x0) + 0.1], dtype=F64)
    t = advance_along(starts, lengths, s)
    assert float(t) == pytest.approx(0.6 + x0 + 0.1, abs=1e-12)
    # from the centre: along the axis nothing, in the equatorial plane the full radius
    c = torch.zeros(2, 3, dtype=F64)
    dd = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=F64)
    _, ln = geom.segments(c, dd)
    assert ln.sum(1).tolist() == pytest.approx([0.0, 1.0], abs=1e-12)


def test_slab_segments():
    slab = SlabGeometry()
    pos = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, -2.0], [0.0, 0.0, 0.0]], dtype=F64)
    d = torch.tensor([[0.0, 0.6, 0.8], [0.0, 0.6, -0.8], [1.0, 0.0, 0.0]], dtype=F64)
    _, ln = slab.segments(pos, d)
    assert float(ln[0, 0]) == pytest.approx(2.5)
    assert math.isinf(float(ln[1, 0])) and math.isinf(float(ln[2, 0]))
    finite = SlabGeometry(3e24)  # depth 3 units
    _, ln = finite.segments(pos, d)
    assert float(ln[1, 0]) == pytest.approx(1.0 / 0.8)


def test_direction_rotation_is_stable():
    """Rotations keep unit length and the requested scattering angle, also along +-z."""
    g = torch.Generator().manual_seed(1)
    n = 4000
    d = isotropic_directions(torch.rand(n, generator=g, dtype=F64), torch.rand(n, generator=g, dtype=F64))
    d[:4] = torch.tensor([[0, 0, 1.0], [0, 0, -1.0], [1.0, 0, 0], [0, -1.0, 0]], dtype=F64)
    mu = 2 * torch.rand(n, generator=g, dtype=F64) - 1
    phi = 2 * math.pi * torch.rand(n, generator=g, dtype=F64)
    out = rotate_directions(d, mu, phi)
    assert float((out.norm(dim=1) - 1).abs().max()) < 1e-14
    assert float(((out * d).sum(1) - mu).abs().max()) < 1e-12
    # azimuths are uniform: the mean new direction around a fixed axis is mu * axis
    z = torch.tensor([[0.0, 0.0, -1.0]], dtype=F64).expand(n, 3)
    o = rotate_directions(z, torch.full((n,), 0.3, dtype=F64), phi)
    assert o[:, :2].mean(0).abs().max() < 0.05


# ------------------------------------------------------------------------------------------
# Transport: conservation, zeroth order, exact radiative-transfer limit
# ------------------------------------------------------------------------------------------
COARSE_IN = input_energy_edges(2.0, 200.0, per_decade=4)


def test_photon_number_conservation(medium):
    """Analog game: escaped + absorbed + dropped + lost = injected exactly (integer counts);
    weighted game: the same balance including roulette, to float64 rounding (1e-12)."""
    cases = [
        (SphereBiconeGeometry(10**24.5, 58.0), torus_cos_edges(58.0, 3, 2)),
        (SlabGeometry(), slab_cos_edges(5)),
        (SlabGeometry(1e24), slab_cos_edges(5)),  # photons leave through the lower face: "lost"
    ]
    for geom, ce in cases:
        grid = _grid(COARSE_IN, input_energy_edges(1.0, 200.0, per_decade=4), ce)
        r = run_photons(geom, medium, grid, 300, _gen(3), forced=False, max_active=4096)
        total = r.escaped.sum() + r.absorbed.sum() + r.dropped.sum() + r.lost.sum()
        assert float(total) == float(r.injected.sum()) == 300 * grid.n_in
        assert torch.equal(r.roulette, torch.zeros_like(r.roulette))
        assert torch.all(r.escaped == r.escaped.round())  # counts
        rf = run_photons(geom, medium, grid, 300, _gen(4), forced=True, max_active=4096)
        assert float((rf.balance().abs() / rf.injected).max()) < 1e-12
    assert float(r.lost.sum()) > 0.0  # the finite slab does leak


@pytest.mark.parametrize("log_nh", [22.0, 23.0, 24.0])
def test_unscattered_beam_matches_exp_minus_tau(medium, log_nh):
    """Zeroth-order beam through the torus = exp(-N_H sigma_tot(E)) (BNTorus: same N_H on every
    sight line through the torus) and 1 through the opening. Analog game, binomial errors,
    4 sigma per (inclination, energy) bin; the expected value averages exp(-tau) over the bin
    the way photons are injected (uniform in ln E)."""
    theta = 60.0
    ce = torus_cos_edges(theta, 3, 2)
    grid = _grid(COARSE_IN, COARSE_IN, ce)
    n_per_bin = 4000
    r = run_photons(SphereBiconeGeometry(10**log_nh, theta), medium, grid, n_per_bin, _gen(7), forced=False,
                    max_active=1 << 15)
    counts = r.escaped[:, -1, :].numpy()  # [inc, in] unscattered channel
    dmu = np.diff(ce)
    tr = _bin_mean_transmission(COARSE_IN, log_nh)  # [in]
    for i in range(len(dmu)):
        p = dmu[i] * (tr if i < 3 else np.ones_like(tr))
        expect = n_per_bin * p
        sigma = np.sqrt(n_per_bin * p * (1 - p)) + 1e-9
        z = (counts[i] - expect) / sigma
        assert np.all(np.abs(z) < 4.0), (i, z)
    # transmitted_fraction knows the opening
    assert float(transmitted_fraction(torch.tensor([5.0]), 24.0, theta, 30.0)) == 1.0
    assert float(transmitted_fraction(torch.tensor([5.0]), 24.0, theta, 150.0)) == 1.0


def _chandrasekhar_h(omega, mu, n=64):
    """H-function of isotropic scattering (Chandrasekhar 1960, ch. V) at ``mu`` by iterating
    1/H(mu) = sqrt(1 - omega) + (omega/2) int_0^1 mu' H(mu') / (mu + mu') dmu' on a
    Gauss-Legendre grid, then evaluating the same right-hand side at ``mu`` (Nystrom)."""
    x, w = np.polynomial.legendre.leggauss(n)
    x, w = 0.5 * (x + 1), 0.5 * w
    h = np.ones(n)
    for _ in range(2000):
        h_new = 1.0 / (math.sqrt(1 - omega) + 0.5 * omega * (w * x * h / (x[:, None] + x[None, :])).sum(1))
        if np.max(np.abs(h_new - h)) < 1e-13:
            break
        h = h_new
    mu = np.asarray(mu, dtype=float)
    return 1.0 / (math.sqrt(1 - omega) + 0.5 * omega * (w * x * h / (mu[:, None] + x[None, :])).sum(1))


@pytest.mark.parametrize("omega,forced", [(0.5, True), (0.9, False)])
def test_grey_slab_matches_chandrasekhar(omega, forced):
    """Semi-infinite isotropically scattering slab, constant albedo omega, isotropic point
    source on the surface (photons enter with mu0 uniform in (0, 1]).

    Exact results (Chandrasekhar 1960): the photon albedo per entering photon is
    1 - sqrt(1-omega) (2/omega) (1 - sqrt(1-omega)) (0.17157 for omega = 0.5, 0.51949 for 0.9),
    and in our normalisation G(mu) = H(mu) - 1 (the reflection (omega/2) mu H(mu) H(mu0)/(mu+mu0)
    averaged over uniform mu0 collapses to H(mu) - 1 through the H equation). Tolerance:
    4 sigma of the batch-to-batch Monte Carlo error plus 1 % (bin averaging of H).
    """
    med = grey_medium(omega)
    ce = slab_cos_edges(5)
    grid = _grid([1.0, 2.0], [1.0, 2.0], ce)
    res = simulate_config(SlabGeometry(), med, grid, 100_000, _gen(11), n_batches=8, forced=forced,
                          max_active=1 << 15)
    g = res.G[:, 0, 0]  # [inc]
    err = res.G_rel_err[:, 0, 0] * g
    s = math.sqrt(1 - omega)
    albedo = 1 - s * (2 / omega) * (1 - s)
    total = float((g * np.diff(ce)).sum())
    total_err = float(np.sqrt(((err * np.diff(ce)) ** 2).sum()))
    assert abs(total - albedo) < 4 * total_err + 0.003, (total, albedo, total_err)
    mu = np.linspace(0, 1, 2001)
    hm1 = _chandrasekhar_h(omega, mu) - 1
    for i in range(len(ce) - 1):
        sel = (mu >= ce[i]) & (mu <= ce[i + 1])
        ref = hm1[sel].mean()
        assert abs(g[i] - ref) < 4 * err[i] + 0.01 * ref, (i, g[i], ref, err[i])


# ------------------------------------------------------------------------------------------
# Seeding, devices
# ------------------------------------------------------------------------------------------
def test_seeded_reproducibility(medium):
    geom = SphereBiconeGeometry(1e24, 58.0)
    grid = _grid(COARSE_IN, COARSE_IN, torus_cos_edges(58.0, 3, 2))
    a = run_photons(geom, medium, grid, 200, _gen(5), max_active=2048)
    b = run_photons(geom, medium, grid, 200, torch.Generator(device=torch.device("cpu")).manual_seed(5),
                    max_active=2048)
    c = run_photons(geom, medium, grid, 200, _gen(6), max_active=2048)
    assert torch.equal(a.escaped, b.escaped) and torch.equal(a.absorbed, b.absorbed)
    assert not torch.equal(a.escaped, c.escaped)
    # the same seed on a table build gives the identical table
    log = io.StringIO()  # with a progress bar (tqdm) on a stream: same table
    t1 = build_table("torus", medium, photons=2000, seed=9, log_nh=(23.0,), theta_tor_deg=(58.0,),
                     e_in_edges=COARSE_IN, e_out_edges=COARSE_IN, n_inc=(2, 2), n_batches=2, max_active=2048,
                     progress=log)
    t2 = build_table("torus", medium, photons=2000, seed=9, log_nh=(23.0,), theta_tor_deg=(58.0,),
                     e_in_edges=COARSE_IN, e_out_edges=COARSE_IN, n_inc=(2, 2), n_batches=2, max_active=2048)
    assert np.array_equal(t1.G, t2.G) and np.array_equal(t1.G_line, t2.G_line)
    assert t1.version_key == t2.version_key
    # the bar says what the old ETA lines said: configuration, label, photons, seconds, rate, elapsed, eta
    last = log.getvalue().strip().split("\r")[-1]
    assert re.fullmatch(r"\[torus\] 1/1 elapsed 00:\d\d, eta 00:00, log NH 23.00 theta 58.0: 2,000 photons in "
                        r"\d+\.\d s \([\d,]+ ph/s\)", last), last


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu_statistically(medium):
    geom = SphereBiconeGeometry(1e24, 58.0)
    grid = _grid(COARSE_IN, COARSE_IN, torus_cos_edges(58.0, 3, 2))
    cpu = simulate_config(geom, medium, grid, 200_000, _gen(1), n_batches=8)
    gpu = simulate_config(geom, medium, grid, 200_000, _gen(1, "cuda"), n_batches=8)
    a, b = cpu.G.sum(axis=(0, 1)), gpu.G.sum(axis=(0, 1))
    ea = cpu.G_rel_err.max() * a
    assert np.all(np.abs(a - b) < 5 * np.sqrt(2) * ea + 1e-12)


# ------------------------------------------------------------------------------------------
# Green's functions applied vs a direct power-law simulation
# ------------------------------------------------------------------------------------------
def test_greens_application_matches_direct_powerlaw(medium):
    """G (stratified injection per input bin) applied to a Gamma = 1.9 power law equals a
    direct simulation of photons drawn from that power law (same geometry: torus,
    N_H = 1e24, theta_tor = 60 deg), per inclination bin in four output bands, within
    5 combined sigma (batch errors) plus 3 % (the two inject different spectral shapes
    inside an input bin)."""
    e_in = input_energy_edges(1.0, 300.0, per_decade=10)
    e_out = input_energy_edges(1.0, 300.0, per_decade=10)
    ce = torus_cos_edges(60.0, 2, 2)
    grid = _grid(e_in, e_out, ce)
    geom = SphereBiconeGeometry(1e24, 60.0)
    res = simulate_config(geom, medium, grid, 160_000, _gen(21), n_batches=8, max_active=1 << 15)
    p = _powerlaw_bins(e_in, 1.9)
    p = p / p.sum()
    n_per_bin = 160_000 // (len(e_in) - 1)
    d = run_photons(geom, medium, grid, n_per_bin, _gen(22), n_batches=8, source_gamma=1.9, max_active=1 << 15)
    n_tot = float(d.injected.sum())
    dmu = np.diff(ce)
    n_out = grid.n_out
    direct_b = d.escaped[:, :, :n_out, :].sum(-1).numpy() / (n_tot / 8) / dmu[None, :, None]  # [B, inc, out]
    direct = direct_b.mean(0)
    direct_err = direct_b.std(0, ddof=1) / math.sqrt(8)
    table = GreensTable(
        kind="torus", e_in_edges=e_in, e_out_edges=e_out, log_nh=np.array([24.0]),
        theta_tor_deg=np.array([60.0]), cos_edges=ce[None], n_torus_bins=2,
        line_names=medium.line_names, line_energies_keV=medium.line_energies_keV.numpy(),
        G=res.G[None, None], G_line=res.G_line[None, None], T_mc=res.T_mc[None, None],
        G_rel_err=res.G_rel_err[None, None], G_line_rel_err=res.G_line_rel_err[None, None],
        T_mc_rel_err=res.T_mc_rel_err[None, None], photons=np.array([[res.photons]]),
        absorbed=res.absorbed[None, None], dropped=res.dropped[None, None], roulette=res.roulette[None, None],
    )
    ec = np.sqrt(e_out[:-1] * e_out[1:])
    bands = [(2, 6), (6, 10), (10, 40), (40, 200)]
    for i in range(len(dmu)):
        inc_deg = math.degrees(math.acos(0.5 * (ce[i] + ce[i + 1])))
        cont = apply_greens(table, torch.as_tensor(p), inc_deg, 24.0, 60.0).continuum.numpy()
        cont_err = np.sqrt(((res.G_rel_err[i] * res.G[i] * p) ** 2).sum(-1))
        for lo, hi in bands:
            sel = (ec > lo) & (ec < hi)
            a, b = cont[sel].sum(), direct[i][sel].sum()
            err = math.hypot(np.sqrt((cont_err[sel] ** 2).sum()), np.sqrt((direct_err[i][sel] ** 2).sum()))
            assert abs(a - b) < 5 * err + 0.03 * b, (i, lo, hi, a, b, err)


# ------------------------------------------------------------------------------------------
# Tables: IO, interpolation, limits, CLI
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_table(medium):
    return build_table(
        "torus", medium, photons=1500, seed=1, log_nh=(23.0, 24.0), theta_tor_deg=(55.0, 61.0),
        e_in_edges=COARSE_IN, e_out_edges=COARSE_IN, n_inc=(2, 2), n_batches=2, max_active=4096,
    )


def test_hdf5_round_trip(tiny_table, tmp_path):
    path = write_greens(tiny_table, tmp_path / "torus.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["torus.h5"]  # no temporary file left
    back = read_greens(path, expect_version_key=tiny_table.version_key)
    assert back.kind == "torus" and back.n_torus_bins == 2
    assert back.line_names == tiny_table.line_names
    np.testing.assert_allclose(back.G, tiny_table.G, rtol=5e-4, atol=0)
    np.testing.assert_allclose(back.G_line, tiny_table.G_line, rtol=5e-4, atol=0)
    np.testing.assert_allclose(back.G_rel_err, tiny_table.G_rel_err, rtol=0.035, atol=0)
    np.testing.assert_array_equal(back.photons, tiny_table.photons)
    for key in ("version_key", "physics_key", "seed", "medium_fingerprint", "normalisation", "created_utc"):
        assert key in back.meta
    # the physics it was built with travels with it, bit for bit, plus the xraydb provenance
    ref = back.medium_ref
    np.testing.assert_array_equal(ref["rows"], tiny_table.medium_ref["rows"])
    assert ref["rows"].shape == (6, 3344) and ref["line_names"] == ("Fe Ka", "Fe Kb", "Ni Ka", "Ni Kb")
    assert ref["source"]["points_per_decade"] == 1000 and ref["source"]["elements"] == ["Fe", "Ni"]
    assert _medium_from_ref(ref).fingerprint() == back.meta["medium_fingerprint"]
    import xraydb

    assert back.meta["xraydb_version"] == xraydb.__version__
    with open(xraydb.get_xraydb().dbname, "rb") as fh:
        assert back.meta["xraydb_db_sha256"] == hashlib.sha256(fh.read()).hexdigest()
    assert back.meta["medium_reference_version"] == "1" and len(back.meta["grids_key"]) == 20
    with pytest.raises(PopsynthError, match="version key"):
        read_greens(path, expect_version_key="not-this-one")
    with pytest.raises(PopsynthError, match="not found"):
        read_greens(tmp_path / "missing.h5")


def test_interpolation_and_limits(tiny_table):
    t = tiny_table
    n_in = torch.as_tensor(_powerlaw_bins(COARSE_IN, 1.9))
    # at a node and a bin centre the matrix is the stored one
    ce = t.cos_edges[0]
    c0 = 0.5 * (ce[0] + ce[1])
    M, ML = response_matrix(t, math.degrees(math.acos(c0)), 23.0, 55.0)
    np.testing.assert_allclose(M.numpy(), t.G[0, 0, 0], rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ML.numpy(), t.G_line[0, 0, 0], rtol=1e-6, atol=1e-12)
    # linear in log N_H and theta between nodes
    mid, _ = response_matrix(t, 85.0, 23.5, 58.0)
    corners = [response_matrix(t, 85.0, a, b)[0] for a in (23.0, 24.0) for b in (55.0, 61.0)]
    np.testing.assert_allclose(mid.numpy(), (sum(corners) / 4).numpy(), rtol=1e-9, atol=1e-15)
    # batched == loop; torus folded about the equator
    incs, nhs, ths = [85.0, 30.0, 70.0], [23.2, 23.9, 24.0], [55.0, 60.0, 58.5]
    batched = apply_greens(t, n_in, incs, nhs, ths).continuum
    for k in range(3):
        one = apply_greens(t, n_in, incs[k], nhs[k], ths[k]).continuum
        np.testing.assert_allclose(batched[k].numpy(), one.numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        apply_greens(t, n_in, 80.0, 23.5, 58.0).continuum.numpy(),
        apply_greens(t, n_in, 100.0, 23.5, 58.0).continuum.numpy(), rtol=1e-12,
    )
    # outside the grid: error, or clamp with a warning -- never silent
    with pytest.raises(PopsynthError, match="log_nh"):
        apply_greens(t, n_in, 85.0, 24.5, 58.0)
    with pytest.raises(PopsynthError, match="theta_tor"):
        apply_greens(t, n_in, 85.0, 23.5, 50.0)
    with pytest.warns(UserWarning, match="clamped"):
        out = apply_greens(t, n_in, 85.0, 24.5, 58.0, out_of_grid="clamp").continuum
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = apply_greens(t, n_in, 85.0, 24.0, 58.0).continuum
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-12)
    with pytest.raises(PopsynthError, match="bins"):
        apply_greens(t, n_in[:-1], 85.0, 23.5, 58.0)
    # differentiable in the input spectrum
    x = n_in.clone().requires_grad_(True)
    apply_greens(t, x, 85.0, 23.5, 58.0).continuum.sum().backward()
    assert torch.all(torch.isfinite(x.grad))


def test_build_cli_smoke(tmp_path, capsys):
    from popsynth.mc.build import main

    rc = main(["--kind", "slab", "--photons", "3000", "--out", str(tmp_path), "--batches", "2"])
    assert rc == 0
    cap = capsys.readouterr()
    out = cap.out
    assert "wrote" in out and "slab" in out
    assert "[slab] 1/1 elapsed" in cap.err and "slab: 3,000 photons in" in cap.err  # the progress bar, on stderr
    t = read_greens(tmp_path / "slab.h5")
    assert t.kind == "slab" and t.G.shape[:3] == (1, 1, 10)
    assert t.medium_ref["rows"].shape == (6, 13371) and t.meta["xraydb_version"]
    assert main(["--check", "--kind", "slab", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok ") and "slab.h5 is current" in out and "13371 of 13371" in out
    assert main(["--kind", "slab", "--device", "cuda:99", "--out", str(tmp_path)]) == 2  # clear error
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------
# Physics of the shipped tables
# ------------------------------------------------------------------------------------------
def _shipped(kind):
    path = default_table_path(kind)
    if not path.is_file():
        pytest.fail(f"shipped table {path} is missing: run 'python -m popsynth.mc.build --kind {kind}'")
    return read_greens(path)


def _line_continuum_per_keV(table, cont, lo=6.41, hi=6.85):
    """Continuum per keV just above the Fe K alpha line (6.41-6.85 keV: free of the Fe K alpha
    and K beta Compton shoulders, which lie below their lines)."""
    e = table.e_out_edges
    ec = np.sqrt(e[:-1] * e[1:])
    sel = (ec > lo) & (ec < hi)
    return np.mean(cont[sel] / np.diff(e)[sel]), ec[sel]


def test_slab_reflection_physics():
    """Disk reflection, isotropic source on a semi-infinite neutral slab (R = 1), Gamma = 1.9.

    * Fe K alpha EW against the total (direct + reflected) continuum at i = 30 deg:
      100-150 eV (George & Fabian 1991, MNRAS 249, 352; pexmon, Nandra et al. 2007, MNRAS 382,
      194). Against the reflected continuum alone: 0.9-1.5 keV (George & Fabian 1991: ~1 keV
      and more). Measured: 143 eV and 1.21 keV.
    * Compton hump (E^2 N(E) of the reflection) peaks in 20-50 keV for a pure power law, and in
      20-40 keV with the A19 cutoff E_c = 200 keV.
    * High-energy albedo: for monochromatic photons at 15-20 keV, where recoil is small (3-4 %
      per scattering), the photon albedo (all escaping photons per photon entering the slab)
      matches the Chandrasekhar value 1 - sqrt(1-w)(2/w)(1 - sqrt(1-w)) for the real
      single-scattering albedo w(E) = sigma_C / sigma_tot within 8 % (the residual difference:
      Rayleigh-like vs isotropic phase function and recoil).
    """
    from popsynth.physics import crosssections as xs

    t = _shipped("slab")
    e_in, e_out = t.e_in_edges, t.e_out_edges
    ec = np.sqrt(e_out[:-1] * e_out[1:])
    n_pl = torch.as_tensor(_powerlaw_bins(e_in, 1.9))
    r = apply_greens(t, n_pl, 30.0)
    cont, lines = r.continuum.numpy(), r.lines.numpy()
    refl, sel_e = _line_continuum_per_keV(t, cont)
    direct = np.mean(sel_e**-1.9)
    ew_total = 1000 * lines[0] / (direct + refl)
    ew_refl = 1000 * lines[0] / refl
    assert 100.0 <= ew_total <= 150.0, ew_total
    assert 900.0 <= ew_refl <= 1500.0, ew_refl
    assert t.line_names[0] == "Fe Ka" and 6.39 < t.line_energies_keV[0] < 6.41
    hump = ec**2 * cont / np.diff(e_out)
    peak = ec[np.argmax(np.where(ec > 10, hump, 0))]
    assert 20.0 <= peak <= 50.0, peak
    n_cut = n_pl * torch.exp(-torch.as_tensor(np.sqrt(e_in[:-1] * e_in[1:])) / 200.0)
    c2 = apply_greens(t, n_cut, 30.0).continuum.numpy()
    hump2 = ec**2 * c2 / np.diff(e_out)
    peak2 = ec[np.argmax(np.where(ec > 10, hump2, 0))]
    assert 20.0 <= peak2 <= 40.0, peak2
    dmu = np.diff(t.cos_edges[0])
    for e in (15.0, 20.0):
        j = int(np.searchsorted(e_in, e)) - 1
        ecj = math.sqrt(e_in[j] * e_in[j + 1])
        w = float(xs.ELECTRONS_PER_H * xs.sigma_kn(ecj) / (xs.sigma_photo(ecj) + xs.ELECTRONS_PER_H * xs.sigma_kn(ecj)))
        s = math.sqrt(1 - w)
        ref = 1 - s * (2 / w) * (1 - s)
        mc = float(((t.G[0, 0, :, :, j].sum(1) + t.G_line[0, 0, :, :, j].sum(1)) * dmu).sum())
        assert abs(mc / ref - 1) < 0.08, (e, mc, ref)


def test_torus_fe_line_physics(medium):
    """Torus (BNTorus geometry) Fe K alpha, Gamma = 1.9, against the total spectrum
    (transmitted beam exp(-N_H sigma) + reprocessed).

    * Optically thin limit (log N_H = 22, any inclination): EW = f_cov N_H Y_Ka
      int sigma_K,Fe(E) E^-1.9 dE / E_Ka^-1.9 with f_cov = cos(theta_tor); within 15 %.
    * Edge-on (i = 87 deg, theta_tor = 60 deg): EW rises monotonically from Compton-thin into
      the CT regime and passes 1 keV between log N_H = 24 and 24.75 (Brightman & Nandra 2011:
      ~1 keV at 1e24.5-1e25).
    * Unobscured sight lines (i = 25 deg): EW stays below ~150 eV x 1.5 for every N_H and
      approaches ~100-150 eV in the CT regime (Brightman & Nandra 2011, abstract: "with a torus
      geometry, unobscured sight lines can achieve a maximum EW of ~150 eV"); to exceed 150 eV
      the sight line must be obscured with N_H > 1e23.
    """
    from popsynth.physics import crosssections as xs

    t = _shipped("torus")
    e_in = t.e_in_edges
    n_pl = torch.as_tensor(_powerlaw_bins(e_in, 1.9))
    theta = 60.0

    def ew(log_nh, inc):
        r = apply_greens(t, n_pl, inc, log_nh, theta)
        cont, sel_e = _line_continuum_per_keV(t, r.continuum.numpy())
        tr = transmitted_fraction(torch.as_tensor(sel_e), log_nh, theta, inc).numpy()
        direct = np.mean(tr * sel_e**-1.9)
        return 1000 * float(r.lines[0]) / (direct + cont)

    fe = medium.line_names.index("Fe Ka")
    e = np.logspace(math.log10(7.1121), 3, 20000)
    integral = np.trapezoid(xs.sigma_photo_kshell("Fe", e).numpy() * e**-1.9, e)
    from popsynth.physics.atomic import fluorescence_lines

    line = fluorescence_lines()[fe]
    thin = 1000 * math.cos(math.radians(theta)) * 1e22 * line.yield_ * integral / line.energy_keV**-1.9
    for inc in (87.0, 25.0):
        assert abs(ew(22.0, inc) / thin - 1) < 0.15, (inc, ew(22.0, inc), thin)
    edge = [ew(x, 87.0) for x in (22.0, 23.0, 24.0, 24.5)]
    assert all(b > a for a, b in zip(edge, edge[1:])), edge
    assert ew(24.0, 87.0) < 1000.0 < ew(24.75, 87.0)
    assert ew(23.0, 87.0) < 150.0 < ew(24.0, 87.0)
    pole = [ew(x, 25.0) for x in (22.0, 23.0, 24.0, 25.0, 26.0)]
    assert max(pole) < 150.0 * 1.5, pole
    assert 150.0 / 1.5 < pole[-1] < 150.0 * 1.5, pole


def test_torus_table_bookkeeping():
    """The shipped torus table covers log N_H 20-26 and theta_tor 55-61 deg, records photon
    counts and errors, and its MC zeroth-order beam agrees with exp(-N_H sigma) for sight
    lines through the torus: per (N_H, theta, inclination) the median over energy bins of
    |z| = |MC - exact| / recorded error lies in 0.4-1.1 (errors estimated from 8 batches make z
    Student-t with 7 dof: median |z| = 0.71), and MC / exact averaged over energy is 1 within
    4 sigma of that mean + 0.2 %."""
    t = _shipped("torus")
    assert t.log_nh[0] <= 20.0 and t.log_nh[-1] >= 26.0
    assert t.theta_tor_deg[0] <= 55.0 and t.theta_tor_deg[-1] >= 61.0
    assert np.all(t.photons > 0) and t.meta["version_key"]
    assert np.all(np.isfinite(t.G)) and np.all(t.G >= 0)
    for a in range(0, len(t.log_nh), 4):
        tr = _bin_mean_transmission(t.e_in_edges, t.log_nh[a], n=101)
        for b in range(len(t.theta_tor_deg)):
            for i in range(t.n_torus_bins):
                mc, err = t.T_mc[a, b, i], t.T_mc_rel_err[a, b, i] * t.T_mc[a, b, i]
                ok = (tr > 1e-3) & (err > 0)
                if ok.sum() < 10:
                    continue
                z = np.abs(mc[ok] - tr[ok]) / err[ok]
                assert 0.4 < np.median(z) < 1.1, (t.log_nh[a], t.theta_tor_deg[b], i, np.median(z))
                tol = 4 * np.median(err[ok] / mc[ok]) / math.sqrt(ok.sum()) + 0.002
                assert abs(np.mean(mc[ok] / tr[ok]) - 1) < tol, (t.log_nh[a], t.theta_tor_deg[b], i)


# ------------------------------------------------------------------------------------------
# Currency of the shipped tables
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def build_medium():
    """Today's medium as the build command tabulates it (4000 nodes per decade, ~1.3 s)."""
    return tabulate_medium()


def _medium_from_ref(ref):
    return Medium(ref["ln_e0"], ref["dln"], torch.as_tensor(ref["rows"]),
                  torch.as_tensor(ref["line_energies_keV"]), tuple(ref["line_names"]), ref["scattering"])


def _perturbed(medium, rel, row=None, node=None):
    """``medium`` with sigma_tot and the probabilities scaled by (1 + rel): all rows and nodes,
    or only ``row`` (0: sigma_tot, via ln sigma_tot + log1p(rel)) at ``node``."""
    rows = medium.rows.clone()
    sel = slice(None) if node is None else node
    for r in range(rows.shape[0]) if row is None else (row,):
        if r == 0:
            rows[0, sel] += math.log1p(rel)
        else:
            rows[r, sel] *= 1.0 + rel
    return dataclasses.replace(medium, rows=rows)


def test_shipped_tables_are_current(build_medium):
    """The shipped tables were built by this code with today's cross sections and atomic data,
    within MEDIUM_RTOL = 1e-9 on every one of the 13,371 medium nodes (floating-point noise,
    e.g. numpy's AVX-512 exp, is ~1e-12 at most); if this fails, popsynth.physics, xraydb or
    the transport changed: rebuild with 'python -m popsynth.mc.build --kind all' (about 16 min
    on 2 CPU cores). The stored medium is bit for bit the one the table was built with (it
    reproduces the recorded medium_fingerprint), and the xraydb provenance is recorded."""
    assert MEDIUM_RTOL == 1e-9
    for kind in ("torus", "slab"):
        t = _shipped(kind)
        chk = check_table(t, build_medium)
        assert chk.current, chk.message()
        assert is_current(t, build_medium), f"data/greens/{kind}.h5 is stale"
        # measured noise: 1.0e-12 (AVX-512 vs generic numpy exp); 0 on the build's code path
        assert chk.nodes_compared == chk.nodes_total == 13371 and chk.max_rel_diff < 1e-10, chk.message()
        assert t.meta["format_version"] == "1" and len(t.meta["version_key"]) == 20
        fingerprint = _medium_from_ref(t.medium_ref).fingerprint()
        assert fingerprint == t.meta["medium_fingerprint"] == "94f0522809e9e4ea"
        assert t.meta["xraydb_version"] == "4.5.8" and len(t.meta["xraydb_db_sha256"]) == 64
        int(t.meta["xraydb_db_sha256"], 16)  # hex
        src = t.medium_ref["source"]
        assert src["points_per_decade"] == 4000 and src["abund"] == "angr"
        np.testing.assert_allclose(
            src["line_yields"], [0.306963091, 0.0440220532, 0.359474454, 0.0524627301], rtol=1e-8
        )
        np.testing.assert_allclose(t.medium_ref["line_energies_keV"], t.line_energies_keV, rtol=0)


def test_currency_tolerance(build_medium):
    """is_current / check_table: relative noise of 1e-15 on the whole medium passes; 1e-6 on
    sigma_tot, on one node of one line probability, on a line energy or on a yield fails, and
    the message says what and where (all medium nodes are compared)."""
    t = _shipped("slab")
    ok = check_table(t, _perturbed(build_medium, 1e-15))
    assert ok.current and ok.max_rel_diff < 1e-11 and ok.problems == [], ok.message()

    bad = check_table(t, _perturbed(build_medium, 1e-6, row=0), name="data/greens/slab.h5")
    assert not bad.current and not is_current(t, _perturbed(build_medium, 1e-6, row=0))
    assert bad.max_rel_diff == pytest.approx(1e-6, rel=1e-6) and bad.where.startswith("sigma_tot at ")
    msg = bad.message()
    assert "data/greens/slab.h5" in msg and "max relative difference 1.00e-06 in sigma_tot" in msg
    assert "13371 of 13371 compared nodes differ" in msg and "python -m popsynth.mc.build --kind all" in msg

    # one node of the Fe K alpha probability, just above the Fe K edge
    j = int(np.flatnonzero(build_medium.rows[2].numpy())[0]) + 3
    e_j = math.exp(build_medium.ln_e0 + build_medium.dln * j)
    one = check_table(t, _perturbed(build_medium, 1e-6, row=2, node=j))
    assert not one.current and one.where == f"P_Fe Ka at {e_j:.6g} keV (node {j} of 13371)"
    assert one.max_rel_diff == pytest.approx(1e-6 / (1 + 1e-6), rel=1e-9)  # |a - b| / max(a, b)
    assert "1 of 13371 compared nodes" in one.message()
    assert j in check_nodes(t.medium_ref["rows"])  # the sampled load-time check sees K edges too

    # a line energy (not in the rows at all) and a yield
    le = build_medium.line_energies_keV.clone()
    le[0] *= 1.0 + 1e-6
    e_chk = check_table(t, dataclasses.replace(build_medium, line_energies_keV=le))
    assert not e_chk.current and len(e_chk.problems) == 1 and e_chk.max_rel_diff < 1e-11
    assert e_chk.problems[0].startswith("Fe Ka energy (keV) 6.4")
    assert "relative difference 1.0e-06" in e_chk.problems[0]
    src = dict(build_medium.source, line_yields=list(build_medium.source["line_yields"]))
    src["line_yields"][1] *= 1.0 + 1e-6
    y_med = dataclasses.replace(_perturbed(build_medium, 1e-6, row=3), source=src)
    y_chk = check_table(t, y_med)
    assert not y_chk.current and y_chk.where.startswith("P_Fe Kb")
    expect = "Fe Kb yield 0.0440220532 -> 0.0440220972"
    assert any(p.startswith(expect) for p in y_chk.problems), y_chk.problems

    # exact parts: the transport version and the medium grid
    old = dict(t.meta, transport_version="0")
    tv = check_table(dataclasses.replace(t, meta=old), build_medium)
    assert tv.problems == ["transport version '0', this code is version '1'"]
    coarse = check_table(t, tabulate_medium(points_per_decade=1000))
    assert not coarse.current and any(p.startswith("medium grid differs") for p in coarse.problems)
    assert any("points_per_decade 4000 (table) vs 1000 (today)" in p for p in coarse.problems)


@pytest.fixture
def fresh_checks():
    """Forget the load-time checks and warnings before and after (physics is monkeypatched)."""
    shipped._clear_check_caches()
    yield
    shipped._clear_check_caches()


def _load_twice(kind):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        t1 = load_greens(kind)
        t2 = load_greens(kind)
        chk = check_shipped_tables((kind,))[kind]
    return t1, t2, chk, [w for w in rec if issubclass(w.category, StaleTableWarning)]


def test_load_greens_checks_once(fresh_checks, monkeypatch):
    """load_greens checks each shipped table once per process against today's physics on a
    sample of the medium nodes (~1/14 of them, every absorption edge included), fast, and
    warns once when it is out of date: noise of 1e-15 in the photoabsorption cross sections
    passes, 1e-6 warns (naming the file, the largest difference and the fix); the table is
    still returned and used."""
    import popsynth.physics.crosssections as xs

    real = xs.sigma_photo
    real(np.array([1.0, 10.0]))  # xraydb open, as in a fit (its absorption components use it)
    _, _, chk, warned = _load_twice("slab")
    assert chk.current and warned == [] and chk.max_rel_diff < 1e-11
    assert chk.nodes_compared == 966 and chk.nodes_total == 13371
    assert chk.seconds < 1.0, chk.seconds  # ~0.16 s here; generous for a busy shared machine

    shipped._clear_check_caches()
    monkeypatch.setattr(xs, "sigma_photo", lambda e, **kw: real(e, **kw) * (1.0 + 1e-15))
    _, _, chk, warned = _load_twice("slab")
    assert chk.current and warned == [], chk.message()

    shipped._clear_check_caches()
    monkeypatch.setattr(xs, "sigma_photo", lambda e, **kw: real(e, **kw) * (1.0 + 1e-6))
    t1, t2, chk, warned = _load_twice("slab")
    assert len(warned) == 1, [str(w.message) for w in warned]
    msg = str(warned[0].message)
    path = str(default_table_path("slab"))
    assert msg.startswith(f"Green's function table {path} is out of date") and "slab.h5" in msg
    assert "max relative difference" in msg and "python -m popsynth.mc.build --kind all" in msg
    # photoabsorption dominates at 0.5 keV: sigma_tot moves by (1e-6) x sigma_photo / sigma_tot
    assert 0.95e-6 < chk.max_rel_diff < 1.0e-6 and not chk.current and msg == chk.message()
    assert t1 is t2 and t1.G.shape == (1, 1, 10, 174, 150)  # still served
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        load_greens("slab")
    assert rec == []  # once per process


@pytest.mark.parametrize("field_name, value, expect", [
    ("yield_", 0.30696309105456 * (1 + 1e-6),
     "Fe Ka yield 0.3069630911 -> 0.306963398 (relative difference 1.0e-06 > 1e-09)"),
    ("energy_keV", 6.404, "Fe Ka energy (keV) 6.40"),
])
def test_load_greens_warns_on_line_data(fresh_checks, monkeypatch, field_name, value, expect):
    """A changed fluorescence yield or line energy (popsynth.physics.atomic) makes the
    load-time check warn, naming the line and both values."""
    import popsynth.physics.atomic as atomic

    real = atomic.fluorescence_lines

    def changed(elements=("Fe", "Ni")):
        lines = real(elements)
        return [ln._replace(**{field_name: value}) if ln.name == "Fe Ka" else ln for ln in lines]

    monkeypatch.setattr(atomic, "fluorescence_lines", changed)
    _, _, chk, warned = _load_twice("slab")
    assert len(warned) == 1 and not chk.current
    assert expect in str(warned[0].message), str(warned[0].message)
    if field_name == "energy_keV":
        assert "-> 6.404 " in str(warned[0].message) and chk.max_rel_diff < 1e-11  # rows unchanged


def test_add_medium_reference_and_legacy_tables(tiny_table, medium, tmp_path):
    """Tables without a stored medium fall back to the exact physics_key; add_medium_reference
    adds the medium without touching the Monte Carlo datasets, and only if it is bit for bit
    the build's medium."""
    legacy = dataclasses.replace(tiny_table, medium_ref={}, meta={
        k: v for k, v in tiny_table.meta.items() if k not in ("grids_key",)})
    assert is_current(legacy, medium)
    stale = check_table(legacy, _perturbed(medium, 1e-15))  # exact hash: even noise fails
    assert not stale.current and stale.problems[0].startswith("no medium reference stored")
    path = write_greens(legacy, tmp_path / "torus.h5")
    before = read_greens(path)
    assert before.medium_ref == {}
    with pytest.raises(PopsynthError, match="not bit-identical"):
        add_medium_reference(path, _perturbed(medium, 1e-15))
    add_medium_reference(path, medium, note="test")
    after = read_greens(path)
    for name in ("G", "G_line", "T_mc", "G_rel_err", "absorbed", "photons", "e_out_edges"):
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
    assert after.meta["version_key"] == before.meta["version_key"]
    assert after.meta["medium_reference_note"] == "test"
    assert after.meta["grids_key"] == tiny_table.meta["grids_key"]
    np.testing.assert_array_equal(after.medium_ref["rows"], medium.rows.numpy())
    assert check_table(after, medium).current and not check_table(after, _perturbed(medium, 1e-6)).current

"""popsynth.mock: Poisson mock catalogues of a run's XLF against the engine's analytic observables.

Statistical tests use fixed seeds. Tolerances: counts within 4 sigma of Poisson (sigma = sqrt of
the expectation), CT fractions within 4 sigma of binomial; against the analytic SurveyModel a
further 1 % of the expectation is allowed for its z quadrature (SurveyModel refines the z nodes to
steps dz/z <= 0.1: test_quadrature_error_of_the_analytic_model).
"""

import math

import numpy as np
import pytest
import torch

from popsynth import mock
from popsynth.errors import PopsynthError
from popsynth.mock import (DEFAULT_BANDS, FluxCalculator, MockSpec, band_column, draw_mock, expected_numbers, main,
                           make_mock, mock_cube, read_mock)
from popsynth.observables import band_flux_factor, build_survey_model, z_range_weights
from popsynth.survey import FULL_SKY_DEG2, Survey, get_survey


@pytest.fixture(scope="module")
def ctx(tiny_joint_run, tiny_joint_loaded):  # the session's shared tiny joint-mode run (tests/conftest.py)
    out, r = tiny_joint_run, tiny_joint_loaded
    prob = r.problem()
    table = r.spectral_table()
    phi, w, _ = mock_cube(r)
    return {"dir": out, "r": r, "grid": prob.grid, "phi0": prob.phi0, "table": table, "phi": phi}


def _catalogue(ctx, spec):
    chunks = list(draw_mock(ctx["phi"], ctx["grid"], ctx["table"], spec))
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _within(obs, exp, extra=0.0, nsig=4.0):
    exp = np.asarray(exp, float)
    return np.abs(np.asarray(obs, float) - exp) <= nsig * np.sqrt(np.maximum(exp, 1.0)) + extra * exp


def test_flux_factor_equals_engine_at_the_nodes(ctx):
    """Per-source K at a grid node equals band_flux_factor (same spectrum and integration rule);
    the only difference is d_L from a log-log table (stated < 1e-6)."""
    fc = FluxCalculator(ctx["table"])
    grid = ctx["grid"]
    for band in ((0.5, 2.0), (14.0, 195.0)):
        k_engine = band_flux_factor(ctx["table"], grid, band).numpy()  # [D, nz, nN]
        d, z, n = np.meshgrid(np.arange(k_engine.shape[0]), np.arange(grid.z.size), np.arange(k_engine.shape[2]),
                              indexing="ij")
        k_mock = fc.k_factor(band, d.ravel(), n.ravel(), grid.z[z.ravel()]).reshape(k_engine.shape)
        np.testing.assert_allclose(k_mock, k_engine, rtol=1e-6, atol=0)


def test_mock_agrees_with_survey_model(ctx):
    """N(>S), dN/dz in four bins and the CT fraction of a 0.5-2 keV flux-limited mock against
    SurveyModel (cumulative_cube, dndz_cube, ct_fraction_cube); about 4000 sources, seed 7."""
    area = 20.0
    sel = Survey(name="soft", band_keV=(0.5, 2.0), flux_limit=1e-14)
    cat = _catalogue(ctx, MockSpec(area_deg2=area, z_range=(0.0, 5.0), bands=((0.5, 2.0),), selection=sel, seed=7))
    fluxes = np.array([1e-14, 3e-14, 1e-13])
    m = build_survey_model(sel, ctx["grid"], ctx["phi0"], ctx["table"], fluxes=fluxes)
    phi = torch.as_tensor(ctx["phi"])[None]
    n_exp = m.cumulative_cube(phi)[0].numpy() * area
    n_obs = np.array([(cat["flux_0p5_2"] > s).sum() for s in fluxes])
    assert n_exp[0] > 1000
    assert _within(n_obs, n_exp, 0.01).all(), (n_obs, n_exp)
    dndz = m.dndz_cube(phi)[0].numpy()
    for a, b in ((0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 5.0)):
        e = (z_range_weights(m.z.numpy(), (a, b)) * dndz).sum() * area
        o = ((cat["z"] >= a) & (cat["z"] < b)).sum()
        assert _within(o, e, 0.01), (a, b, o, e)
    f_exp = float(m.ct_fraction_cube(phi)[0])
    n = len(cat["z"])
    f_obs = (cat["log_nh"] >= 24).mean()
    assert abs(f_obs - f_exp) <= 4 * math.sqrt(f_exp * (1 - f_exp) / n) + 0.01 * f_exp
    assert np.array_equal(cat["nh_class"] == 2, cat["log_nh"] >= 24)


def test_mock_agrees_with_its_own_quadrature(ctx):
    """The sampler against the exact expectation of the model it samples (expected_numbers):
    about 60,000 BAT-band sources all-sky, 4 sigma Poisson, no allowance."""
    sel = Survey(name="bat", band_keV=(14.0, 195.0), flux_limit=1e-12)
    spec = MockSpec(area_deg2=FULL_SKY_DEG2, z_range=(0.0, 5.0), bands=((14.0, 195.0),), selection=sel, seed=3)
    fluxes = np.array([1e-12, 4e-12, 2e-11])
    bins = [(0.0, 0.05), (0.05, 0.2), (0.2, 1.0), (1.0, 5.0)]
    e = expected_numbers(ctx["phi"], ctx["grid"], ctx["table"], spec, fluxes=fluxes, z_bins=bins)
    cat = _catalogue(ctx, spec)
    assert e["n_total"] > 20000
    assert _within(len(cat["z"]), e["n_total"])
    assert _within([(cat["flux_14_195"] > s).sum() for s in fluxes], e["n_above"]).all()
    assert _within([((cat["z"] >= a) & (cat["z"] < b)).sum() for a, b in bins], e["n_zbin"]).all()
    assert _within((cat["log_nh"] >= 24).sum(), e["n_ct"])
    np.testing.assert_allclose(e["n_zbin"].sum(), e["n_total"], rtol=1e-6)


def test_quadrature_error_of_the_analytic_model(ctx):
    """Bright BAT-band counts (from z < 0.05): SurveyModel on the grid's z nodes alone is off by
    > 3 % from the converged integral (sub-nodes dz/z <= 0.02); the default refinement
    (dz/z <= 0.1) is within 0.3 % of it, and so is the mock's own expectation (phi linear in z,
    dV/dz and fluxes exact at every z: the same model), computed by Gauss-Legendre quadrature."""
    sel = Survey(name="bat", band_keV=(14.0, 195.0), flux_limit=3e-13)
    spec = MockSpec(area_deg2=1.0, z_range=(0.0, 5.0), bands=((14.0, 195.0),), selection=sel)
    fluxes = np.array([3e-13, 3e-12, 3e-11])
    phi = torch.as_tensor(ctx["phi"])[None]

    def counts(step):
        return build_survey_model(sel, ctx["grid"], ctx["phi0"], ctx["table"], fluxes=fluxes,
                                  z_max_rel_step=step).cumulative_cube(phi)[0].numpy()

    converged, default, coarse = counts(0.02), counts(0.1), counts(None)
    np.testing.assert_allclose(default, converged, rtol=0.003)
    assert np.max(np.abs(coarse / converged - 1)) > 0.03
    e = expected_numbers(ctx["phi"], ctx["grid"], ctx["table"], spec, fluxes=fluxes)
    np.testing.assert_allclose(e["n_above"], converged, rtol=0.003)


def test_area_curve_selection(ctx):
    """XMM-COSMOS area curve: sources kept with probability area(S)/max area; the number and CT
    fraction match SurveyModel (sample_density, ct_fraction_cube) within 4 sigma + 1 %."""
    sel = get_survey("cappelluti09_xmmcosmos_cumulative_2_10keV")
    area = 30 * sel.max_area
    cat = _catalogue(ctx, MockSpec(area_deg2=area, z_range=(0.0, 5.0), bands=((2.0, 10.0),), selection=sel, seed=11))
    m = build_survey_model(sel, ctx["grid"], ctx["phi0"], ctx["table"])
    phi = torch.as_tensor(ctx["phi"])[None]
    n_exp = float((m.dndz_cube(phi)[0] * m.z_weights).sum()) * area
    assert n_exp > 10000 and _within(len(cat["z"]), n_exp, 0.01)
    assert cat["flux_2_10"].min() >= sel.area_flux[0]
    f = float(m.ct_fraction_cube(phi)[0])
    assert abs((cat["log_nh"] >= 24).mean() - f) <= 4 * math.sqrt(f * (1 - f) / len(cat["z"])) + 0.01 * f
    # completeness: the detected share of sources near the faint end is below 1
    faint = (cat["flux_2_10"] < 5e-15).sum()
    assert 0 < faint


def test_columns_ranges_and_spectral_parameters(ctx):
    sel = Survey(name="hard", band_keV=(2.0, 10.0), flux_limit=1e-14)
    cat = _catalogue(ctx, MockSpec(area_deg2=5.0, z_range=(0.5, 2.0), bands=DEFAULT_BANDS, selection=sel, seed=1))
    g = ctx["grid"]
    assert cat["z"].min() >= 0.5 and cat["z"].max() <= 2.0
    assert cat["log_lx"].min() >= g.logl_edges[0] and cat["log_lx"].max() <= g.logl_edges[-1]
    assert (cat["flux_2_10"] > 1e-14).all()
    params = ctx["table"].params
    obsc = (cat["log_nh"] >= 22).astype(int)
    np.testing.assert_array_equal(cat["gamma"], params["gamma"].numpy()[obsc, cat["spec_draw"]])
    np.testing.assert_array_equal(cat["ecut"], params["ecut"].numpy()[obsc, cat["spec_draw"]])
    # flux is linear in L: the 2-10 keV flux over L is the per-source K, independent of L
    fc = FluxCalculator(ctx["table"])
    n = np.searchsorted(g.lognh_edges, cat["log_nh"], side="right") - 1
    k = fc.k_factor((2.0, 10.0), cat["spec_draw"], n, cat["z"])
    np.testing.assert_allclose(cat["flux_2_10"], 10 ** cat["log_lx"] * k, rtol=1e-12)
    # positions inside the 5 deg^2 cap around (0, 0)
    r_cap = math.degrees(math.acos(1 - 5.0 * (math.pi / 180) ** 2 / (2 * math.pi)))
    sep = np.degrees(np.arccos(np.cos(np.radians(cat["dec"])) * np.cos(np.radians(cat["ra"]))))
    assert sep.max() <= r_cap + 1e-9


def test_same_seed_same_catalogue_and_provenance(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr(mock, "CHUNK_ROWS", 300)  # several chunks per file: the streamed FITS header must be right
    kw = dict(area_deg2=3.0, z_range=(0.0, 3.0), bands=((0.5, 2.0), (2.0, 8.0)), flux_limit=1e-15,
              limit_band=(0.5, 2.0), seed=5, log=lambda *a: None)
    meta = make_mock(ctx["dir"], tmp_path / "a.fits", **kw)  # from the folder
    make_mock(ctx["r"], tmp_path / "b.fits", **kw)  # from the loaded run (its set-up is cached)
    make_mock(ctx["r"], tmp_path / "a.ecsv", **kw)
    make_mock(ctx["r"], tmp_path / "c.fits", **{**kw, "seed": 6})
    a, b, e, c = (read_mock(tmp_path / n) for n in ("a.fits", "b.fits", "a.ecsv", "c.fits"))
    assert len(a) == meta["NROWS"] > 900
    for col in a.colnames:
        np.testing.assert_array_equal(a[col], b[col])
        np.testing.assert_allclose(np.asarray(e[col], float), np.asarray(a[col], float), rtol=1e-9)
    assert len(c) != len(a) or not np.array_equal(c["z"], a["z"])
    assert str(a["flux_0p5_2"].unit) == "erg / (s cm2)" and str(e["log_lx"].unit) == "dex(erg / s)"
    r = ctx["r"]
    for t in (a, e):
        assert t.meta["SEED"] == 5 and t.meta["SPECSET"] == 5 and t.meta["CUBE"] == "best"
        assert str(r.folder.resolve()) == t.meta["RUNDIR"]
        assert t.meta["POPSYNV"] and t.meta["RUNMODE"] == "joint"
        w = t.meta["WEIGHTS"]
        w = np.array(__import__("json").loads(w) if isinstance(w, str) else w)
        np.testing.assert_allclose(w, r.best_weights()[0].numpy(), rtol=1e-12)
        assert abs(len(a) - t.meta["NEXPECT"]) <= 4 * math.sqrt(t.meta["NEXPECT"]) + 0.01 * t.meta["NEXPECT"]


def test_sample_cube(ctx, tmp_path):
    r = ctx["r"]
    phi, w, label = mock_cube(r, 1)
    np.testing.assert_allclose(phi, r.cubes(r.weight_samples()[1:2])[0].numpy(), rtol=1e-12)
    np.testing.assert_array_equal(w, r.weight_samples()[1].numpy())
    assert label.startswith("sample 1 of")
    meta = make_mock(r, tmp_path / "s.ecsv", 1.0, (0.0, 2.0), ((0.5, 2.0),), flux_limit=1e-14, sample=1,
                     log=lambda *a: None)
    assert meta["CUBE"].startswith("sample 1")


@pytest.mark.parametrize("argv, what", [
    (["--area", "1", "--flux-limit", "1e-14", "--out", "x.txt"], "must end in .fits or .ecsv"),
    (["--area", "-3", "--flux-limit", "1e-14"], "must be > 0"),
    (["--area", "1", "--zmin", "2", "--zmax", "1", "--flux-limit", "1e-14"], "0 <= zmin < zmax"),
    (["--area", "1", "--zmin", "2"], "go together"),
    (["--survey", "no_such_survey"], "unknown survey"),
    (["--area", "1", "--survey", "bat70", "--flux-limit", "1e-14"], "both --survey and --flux-limit"),
    (["--area", "1", "--flux-limit", "1e-14", "--sample", "99"], "outside the run's"),
    (["--area", "1", "--flux-limit", "1e-14", "--bands", "0.01-2"], "beyond the spectral table"),
    (["--area", "1", "--flux-limit", "1e-14", "--bands", "2-1"], "0 < LO < HI"),
    (["--area", "all"], "more than --max-rows"),
    (["--flux-limit", "1e-14"], "no sky area"),
])
def test_bad_inputs_give_one_line_errors(ctx, tmp_path, capsys, argv, what):
    argv = [str(ctx["dir"])] + argv
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "m.fits")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and what in err, err
    assert not (tmp_path / "m.fits").exists()


def test_missing_run(tmp_path, capsys):
    assert main([str(tmp_path), "--area", "1", "--flux-limit", "1e-14"]) == 2
    assert "not found" in capsys.readouterr().err


def test_band_column_names():
    assert [band_column(b) for b in DEFAULT_BANDS] == ["flux_0p5_2", "flux_2_10", "flux_2_8", "flux_8_24", "flux_14_195"]


def test_read_mock_ecsv_errors(tmp_path):
    """read_mock's ECSV branch reads through io.ecsv: a missing or damaged file is a one-line PopsynthError."""
    with pytest.raises(PopsynthError, match="mock catalogue .*none.ecsv: file not found"):
        read_mock(tmp_path / "none.ecsv")
    (tmp_path / "bad.ecsv").write_text("# %ECSV 1.0\n# ---\n# datatype: [\n")
    with pytest.raises(PopsynthError, match="mock catalogue .*bad.ecsv: not a readable ECSV table") as err:
        read_mock(tmp_path / "bad.ecsv")
    assert "\n" not in str(err.value)

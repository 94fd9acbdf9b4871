"""popsynth.forecast: survey forecasts against the analytic observables and published numbers."""

import math

import numpy as np
import pytest
from astropy.table import Table

from popsynth.errors import PopsynthError
from popsynth.forecast import (_truncate, forecast_survey, list_forecast_surveys, load_survey_index, main,
                               published_numbers, read_area_curve, resolve_survey, write_forecast)
from popsynth.observables import build_survey_model
from popsynth.survey import Survey, get_survey


@pytest.fixture(scope="module")
def ctx(tiny_joint_run, tiny_joint_loaded):
    # the session's shared tiny joint-mode run (tests/conftest.py): one chi^2 of CXB + counts + CT
    # fractions, so the best start is fitted to the surveys
    r = tiny_joint_loaded
    return {"dir": tiny_joint_run, "r": r, "table": r.spectral_table(), "prob": r.problem()}


def test_forecast_equals_survey_model(ctx):
    """n_agn at a single limit = SurveyModel N(>S_lim) x area; the distributions integrate to it;
    n_ct and f_ct = the model's CT response and observed CT fraction (float64 round-off)."""
    r, prob = ctx["r"], ctx["prob"]
    s = Survey(name="t", band_keV=(2.0, 10.0), flux_limit=1e-14, area=3.0, z_range=(0.2, 3.0))
    fc = forecast_survey(r, s, table=ctx["table"])
    m = build_survey_model(s, prob.grid, prob.phi0, ctx["table"], fluxes=fc.flux)
    wb = r.best_weights()
    np.testing.assert_allclose(fc.best["n_agn"], float(m.cumulative(wb)[0, 0]) * 3.0, rtol=1e-10)
    np.testing.assert_allclose(fc.best_curves["n_detected"], m.cumulative(wb)[0].numpy() * 3.0, rtol=1e-10)
    ws = r.weight_samples()
    np.testing.assert_allclose(fc.n_agn, m.sample_density(ws).numpy() * 3.0, rtol=1e-10)
    np.testing.assert_allclose(fc.f_ct, m.ct_fraction(ws).numpy(), rtol=1e-10)
    wz = m.z_weights.numpy()
    np.testing.assert_allclose(fc.dn_dz @ wz, fc.n_agn, rtol=1e-10)
    np.testing.assert_allclose(fc.dn_dz_ct @ wz, fc.n_ct, rtol=1e-10)
    dl = np.asarray(prob.grid.dlogl)
    np.testing.assert_allclose(fc.dn_dlogl @ dl, fc.n_agn, rtol=1e-10)
    np.testing.assert_allclose(fc.dn_dlogl_ct @ dl, fc.n_ct, rtol=1e-10)
    assert (fc.dn_dz[:, fc.z > 3.05] == 0).all()  # outside the z range
    assert np.all(np.diff(fc.n_detected, axis=-1) <= 0)


def test_area_curve_forecast(ctx):
    """XMM-COSMOS area curve: N(>S) of the survey at its faintest flux is n_agn; a truncated curve
    selects a(S) 1[S > S0] exactly."""
    s = resolve_survey("xmmcosmos")
    assert s.has_area_curve and s.max_area == pytest.approx(2.13)
    fl = np.logspace(-15, -12, 61)
    for s0 in (2e-15, 6e-15, 3e-14):
        t = _truncate(s, s0)
        np.testing.assert_allclose(t.completeness(fl) * t.max_area, s.completeness(fl) * s.max_area * (fl > s0),
                                   rtol=1e-9, atol=1e-12)
    fc = forecast_survey(ctx["r"], s, table=ctx["table"])
    np.testing.assert_allclose(fc.best_curves["n_detected"][0], fc.best["n_agn"], rtol=1e-9)
    assert np.all(np.diff(fc.best_curves["n_detected"]) <= 1e-9)


def test_intervals_ordered_and_written(ctx, tmp_path):
    fc = forecast_survey(ctx["r"], resolve_survey("nustar_cosmos"), table=ctx["table"])
    paths = write_forecast(fc, tmp_path)
    assert sorted(p.name for p in paths) == ["nustar_cosmos_dndlogl.ecsv", "nustar_cosmos_dndz.ecsv",
                                             "nustar_cosmos_logn_logs.ecsv", "nustar_cosmos_summary.ecsv"]
    summ = Table.read(tmp_path / "nustar_cosmos_summary.ecsv", format="ascii.ecsv")
    assert list(summ["quantity"]) == ["n_agn", "n_ct", "f_ct"]
    assert np.all(summ["p16"] <= summ["p50"]) and np.all(summ["p50"] <= summ["p84"])
    for name in ("dndz", "dndlogl", "logn_logs"):
        t = Table.read(tmp_path / f"nustar_cosmos_{name}.ecsv", format="ascii.ecsv")
        for c in [c for c in t.colnames if c.endswith("_p16")]:
            base = c[:-4]
            assert np.all(t[c] <= t[base + "_p50"] + 1e-12) and np.all(t[base + "_p50"] <= t[base + "_p84"] + 1e-12)
        assert t.meta["provenance"]["spec_set"] == 5 and t.meta["provenance"]["mode"] == "joint"
    t = Table.read(tmp_path / "nustar_cosmos_logn_logs.ecsv", format="ascii.ecsv")
    assert str(t["flux"].unit) == "erg / (s cm2)" and str(t["n_sky_p50"].unit) == "1 / deg2"


def test_published_numbers(ctx):
    """Two surveys the engine is fitted to:
    * Swift/BAT 105-month (Oh et al. 2018, ApJS 235, 4): 655 non-blazar AGN with S(14-195) >= 1e-11
      at |b| > 10 deg (counted from the catalogue, data/counts) -> forecast within a factor 1.5;
    * NuSTAR COSMOS (Civano et al. 2015, ApJ 808, 185): 32 sources detected in 8-24 keV over
      1.7 deg^2 (limit 6.4e-14 at 20 % completeness, used as a sharp limit) -> within a factor 2.
    The tiny test fit (4 starts, 20 steps) is not converged, hence the factors."""
    pub = published_numbers()
    assert pub["bat105_agn"][0] == 655 and "Oh" in pub["bat105_agn"][2]
    assert pub["nustar_cosmos"][0] == 32 and "Civano" in pub["nustar_cosmos"][2]
    for name, factor in (("bat105_agn", 1.5), ("nustar_cosmos", 2.0)):
        fc = forecast_survey(ctx["r"], resolve_survey(name), table=ctx["table"])
        n = fc.best["n_agn"]
        assert pub[name][0] / factor <= n <= pub[name][0] * factor, (name, n)


def test_shipped_surveys():
    idx = load_survey_index()
    e = idx["erass8_like"]  # Kolodzig et al. 2013, A&A 558, A89: 1e-14 in 0.5-2 keV after 4 years, |b| > 10 deg
    assert e.band_keV == (0.5, 2.0) and e.flux_limit == 1e-14
    assert e.area == pytest.approx(41252.96 * (1 - math.sin(math.radians(10))), rel=1e-6)
    assert "Kolodzig" in e.reference
    n = idx["nustar_cosmos"]  # Civano et al. 2015: 1.7 deg^2, 8-24 keV 6.4e-14
    assert n.band_keV == (8.0, 24.0) and n.flux_limit == 6.4e-14 and n.area == 1.7
    for s in idx.values():
        assert s.reference and s.max_area > 0
    # the registry of the fit's constraints is reachable by name too
    assert resolve_survey("lehmer12_cdfs4ms_agn_cumulative_0p5_2keV") is get_survey("lehmer12_cdfs4ms_agn_cumulative_0p5_2keV")
    names = list_forecast_surveys()
    assert names[:len(idx)] == list(idx) and "ct_nustar_uds" in names
    with pytest.raises(PopsynthError, match="unknown survey"):
        resolve_survey("nope")


def test_read_area_curve_errors(tmp_path):
    p = tmp_path / "c.ecsv"
    Table({"flux": [1e-15, 1e-14], "sky": [0.1, 1.0]}).write(p, format="ascii.ecsv")
    with pytest.raises(PopsynthError, match="lacks a 'flux' or 'area' column"):
        read_area_curve(p)
    with pytest.raises(PopsynthError, match="not found"):
        read_area_curve(tmp_path / "none.ecsv")


def test_read_area_curve_units(tmp_path):
    """ECSV through io.ecsv: units converted (W m^-2 -> erg cm^-2 s^-1, arcmin^2 -> deg^2); columns
    without a unit taken as they are; a non-ECSV astropy table is read too; a wrong unit is one line."""
    import astropy.units as u

    flux, area = np.array([1e-15, 1e-14, 1e-13]), np.array([0.01, 0.5, 2.0])
    p = tmp_path / "c.ecsv"
    Table({"flux": flux * u.Unit("erg cm-2 s-1"), "area": area * u.deg ** 2}).write(p, format="ascii.ecsv")
    f, a = read_area_curve(p)
    assert np.array_equal(f, flux) and np.array_equal(a, area) and f.dtype == np.float64
    Table({"flux": (flux * u.Unit("erg cm-2 s-1")).to("W m-2"), "area": (area * u.deg ** 2).to("arcmin2")}).write(
        p, format="ascii.ecsv", overwrite=True)
    f, a = read_area_curve(p)
    np.testing.assert_allclose(f, flux, rtol=1e-14)
    np.testing.assert_allclose(a, area, rtol=1e-14)
    Table({"flux": flux, "area": area}).write(p, format="ascii.ecsv", overwrite=True)
    f, a = read_area_curve(p)
    assert np.array_equal(f, flux) and np.array_equal(a, area)
    Table({"flux": flux * u.Unit("erg cm-2 s-1"), "area": area * u.deg ** 2}).write(tmp_path / "c.fits")
    f, a = read_area_curve(tmp_path / "c.fits")
    assert np.array_equal(f, flux) and np.array_equal(a, area)
    Table({"flux": flux * u.keV, "area": area * u.deg ** 2}).write(p, format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match="area-curve file .*: column 'flux' has wrong unit 'keV'.*give flux in erg"):
        read_area_curve(p)
    p.write_text("# %ECSV 1.0\n# ---\n# broken: [\n")
    with pytest.raises(PopsynthError, match="not a readable ECSV table"):
        read_area_curve(p)


def test_cli_writes_table_and_figure(ctx, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "fc"
    assert main([str(ctx["dir"]), "--survey", "nustar_uds", "--out", str(out), "--samples", "3"]) == 0
    assert (out / "nustar_uds.png").stat().st_size > 10000
    assert (out / "nustar_uds_summary.ecsv").exists()
    curve = tmp_path / "curve.ecsv"
    t = Table({"flux": [1e-15, 3e-15, 1e-14], "area": [0.1, 0.5, 1.0]})
    t["flux"].unit, t["area"].unit = "erg cm-2 s-1", "deg2"
    t.write(curve, format="ascii.ecsv")
    assert main([str(ctx["dir"]), "--band", "0.5", "2", "--area-curve", str(curve), "--name", "mine", "--out", str(out),
                 "--no-figure"]) == 0
    assert (out / "mine_summary.ecsv").exists() and not (out / "mine.png").exists()
    assert "N(AGN)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, what", [
    (["--survey", "nope"], "unknown survey"),
    ([], "no survey"),
    (["--band", "2", "10", "--flux-limit", "1e-14"], "needs --area"),
    (["--flux-limit", "1e-14", "--area", "1"], "needs --band"),
    (["--band", "2", "10", "--area", "1"], "exactly one of --flux-limit or --area-curve"),
    (["--survey", "bat70", "--band", "2", "10"], "both --survey and custom"),
    (["--survey", "bat70", "--zmin", "1"], "go together"),
    (["--survey", "ct_nustar_uds"], "has no sky area"),
    (["--survey", "bat70", "--samples", "0"], "--samples 0"),
])
def test_bad_inputs_give_one_line_errors(ctx, tmp_path, capsys, argv, what):
    assert main([str(ctx["dir"]), "--out", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and what in err, err

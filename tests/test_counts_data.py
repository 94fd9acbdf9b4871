"""Number-count and Compton-thick-fraction constraint data (data/counts/, popsynth.data.counts).

These tests read only the project's own data/ folder (never ../shared), and tmp_path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from popsynth.data.counts import (
    CountsData,
    CTFraction,
    counts_dir,
    list_counts,
    load_counts,
    load_ct_fractions,
)
from popsynth.errors import PopsynthError

BAT_CUM = "bat105_agn_cumulative_14_195keV"
BAT_DIFF = "bat105_agn_differential_14_195keV"
EXPECTED = {
    BAT_CUM,
    BAT_DIFF,
    "lehmer12_cdfs4ms_agn_cumulative_0p5_2keV",
    "lehmer12_cdfs4ms_agn_cumulative_2_8keV",
    "luo17_cdfs7ms_cumulative_2_7keV",
    "cappelluti09_xmmcosmos_cumulative_2_10keV",
}
PROVENANCE_KEYS = (
    "paper", "survey", "band_keV", "quantity", "flux_definition", "conversion_gamma",
    "area_deg2", "flux_limit", "redshift_range", "ct_threshold_nh", "source_of_numbers",
    "verification", "population",
)


def _table(name):
    from astropy.table import Table

    return Table.read(counts_dir() / f"{name}.ecsv", format="ascii.ecsv")


def _bpl_cumulative(s, K, s_ref, s_b, b1, b2):
    """Reference N(>S) of the Lehmer et al. 2012 broken power law, by numerical quadrature."""
    from scipy.integrate import quad

    def dnds(x):
        if x <= s_b:
            return K * (x / s_ref) ** -b1
        return K * (s_b / s_ref) ** (b2 - b1) * (x / s_ref) ** -b2

    # integrate in ln S for accuracy over many decades
    val, _ = quad(lambda ln_x: dnds(math.exp(ln_x)) * math.exp(ln_x), math.log(s), math.log(1e-8),
                  points=[math.log(s_b)] if s < s_b else None, limit=200)
    return val


# ------------------------------------------------------------------------ catalogue of files
def test_list_counts_names_all_constraints():
    names = list_counts()
    assert set(names) == EXPECTED
    assert "ct_fractions" not in names and "dnds_fit_parameters" not in names


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_table_loads_with_units_and_provenance(name):
    c = load_counts(name)
    assert isinstance(c, CountsData)
    assert c.kind in ("cumulative", "differential")
    assert c.flux.shape == c.value.shape == c.err_lo.shape == c.err_hi.shape
    assert len(c.flux) >= 8
    assert np.all(np.diff(c.flux) > 0)
    assert np.all(c.err_lo > 0) and np.all(c.err_hi > 0)
    assert np.all(c.err_lo < c.value)  # 1-sigma below never reaches zero at these counts
    assert c.band_keV[0] < c.band_keV[1]
    # fluxes are cgs band fluxes of X-ray surveys
    assert 1e-19 < c.flux.min() and c.flux.max() < 1e-8
    t = _table(name)
    missing = [k for k in PROVENANCE_KEYS if k not in t.meta]
    assert not missing, f"{name}: meta lacks {missing}"
    assert str(t["flux"].unit) in ("erg / (s cm2)", "erg / (cm2 s)")
    assert t["value"].unit is not None


@pytest.mark.parametrize("name", sorted(n for n in EXPECTED if "cumulative" in n))
def test_cumulative_counts_decrease_with_flux(name):
    c = load_counts(name)
    assert c.kind == "cumulative"
    assert np.all(np.diff(c.value) < 0), name


# ------------------------------------------------------------------------ Swift/BAT 105-month
def test_bat_selection_numbers():
    """655 non-blazar AGN at |b| > 10 deg with S(14-195) >= 1e-11 (see data/counts/README.md)."""
    c = load_counts(BAT_CUM)
    t = _table(BAT_CUM)
    assert c.flux[0] == pytest.approx(1e-11)
    assert int(t["n_sources"][0]) == 655
    assert int(t["n_beamed_excluded"][0]) == 95
    # area: full sky x (1 - sin 10 deg)
    assert c.area_deg2 == pytest.approx(41252.96 * (1 - math.sin(math.radians(10))), rel=1e-5)
    assert c.value * c.area_deg2 == pytest.approx(np.asarray(t["n_sources"], float), rel=1e-9)
    # Gehrels (1986) 1-sigma for n = 655: upper sqrt(n + 3/4) + 1
    assert c.err_hi[0] * c.area_deg2 == pytest.approx(math.sqrt(655.75) + 1, rel=1e-9)
    assert c.population.startswith("AGN only")
    # differential bins hold the same sources
    d = load_counts(BAT_DIFF)
    td = _table(BAT_DIFF)
    assert int(np.sum(td["n_sources"])) == 655
    width = np.asarray(td["flux_hi"]) - np.asarray(td["flux_lo"])
    assert d.value * d.area_deg2 * width == pytest.approx(np.asarray(td["n_sources"], float), rel=1e-9)
    assert d.kind == "differential"


def test_bat_normalisation_against_ajello2008():
    """Ajello et al. 2008 (ApJ 673, 96, abstract): 9.6 +/- 1.9 e-3 extragalactic sources
    deg^-2 above 2e-11 erg/cm2/s in 14-170 keV, log N - log S slope 1.55 +/- 0.20.

    Converted to 14-195 keV for photon index 2 (x ln(195/14)/ln(170/14) = 1.055) and moved
    along the published slope to the table's 2.0e-11 point. Ajello's sample includes blazars,
    so the table's non-blazar counts plus the excluded beamed AGN are compared (within 2
    sigma); the non-blazar counts alone must lie below that value.
    """
    c = load_counts(BAT_CUM)
    t = _table(BAT_CUM)
    k = int(np.argmin(np.abs(c.flux - 2.0e-11)))
    s_k = c.flux[k]
    band_factor = math.log(195 / 14) / math.log(170 / 14)
    ajello = 9.6e-3 * (s_k / (2e-11 * band_factor)) ** -1.55
    ajello_err = 1.9e-3 * ajello / 9.6e-3
    n_all = (t["n_sources"][k] + t["n_beamed_excluded"][k]) / c.area_deg2
    assert abs(n_all - ajello) < 2 * ajello_err
    assert c.value[k] < ajello


def test_bat_bright_end_is_euclidean():
    c = load_counts(BAT_CUM)
    slope = np.polyfit(np.log(c.flux), np.log(c.value), 1)[0]
    assert -1.8 < slope < -1.2  # d ln N / d ln S = -1.5 +/- 0.3
    d = load_counts(BAT_DIFF)
    slope_d = np.polyfit(np.log(d.flux), np.log(d.value), 1)[0]
    assert -2.8 < slope_d < -2.2  # differential: -2.5 +/- 0.3
    t = _table(BAT_CUM)
    # unbinned ML slope stored in the header; Akylas & Georgantopoulos 2019: 1.51 +/- 0.10
    assert 1.2 < t.meta["ml_slope_alpha"] < 1.8


# ------------------------------------------------------------------------ CDF-S fits
LEHMER_2012 = {  # band: (K [deg^-2 (erg cm^-2 s^-1)^-1], S_b, beta1, beta2); S_ref = 1e-14
    (0.5, 2.0): (1.6956e16, 6.0e-15, 1.49, 2.48),
    (2.0, 8.0): (5.7313e16, 6.4e-15, 1.32, 2.55),
    (0.5, 8.0): (5.622e16, 8.1e-15, 1.34, 2.35),
}


def test_lehmer2012_fit_parameters():
    """Lehmer et al. 2012 Table 1 AGN fits as transcribed (2-8 and 0.5-8 keV by two
    independent sources; see README for the verification status)."""
    from astropy.table import Table

    t = Table.read(counts_dir() / "dnds_fit_parameters.ecsv", format="ascii.ecsv")
    rows = [r for r in t if str(r["paper"]).startswith("Lehmer")]
    assert len(rows) == 3
    for r in rows:
        key = (float(r["band_lo"]), float(r["band_hi"]))
        K, s_b, b1, b2 = LEHMER_2012[key]
        assert float(r["K"]) == pytest.approx(K, rel=1e-12)
        assert float(r["S_ref"]) == pytest.approx(1e-14, rel=1e-12)
        assert float(r["S_b"]) == pytest.approx(s_b, rel=1e-12)
        assert float(r["beta1"]) == b1 and float(r["beta2"]) == b2
    assert str(t["K"].unit) != ""
    luo = [r for r in t if str(r["paper"]).startswith("Luo")]
    assert luo and all("UNVERIFIED" in str(r["verification"]) for r in luo)


@pytest.mark.parametrize("name, band", [
    ("lehmer12_cdfs4ms_agn_cumulative_0p5_2keV", (0.5, 2.0)),
    ("lehmer12_cdfs4ms_agn_cumulative_2_8keV", (2.0, 8.0)),
])
def test_lehmer_counts_are_the_integral_of_the_fit(name, band):
    c = load_counts(name)
    assert c.band_keV == band
    K, s_b, b1, b2 = LEHMER_2012[band]
    for s, n in zip(c.flux[::3], c.value[::3]):
        assert n == pytest.approx(_bpl_cumulative(s, K, 1e-14, s_b, b1, b2), rel=1e-5)


def test_lehmer_soft_fit_reaches_published_agn_density():
    """Lehmer et al. 2012 abstract: AGN reach a limiting soft-band density of ~14,900 deg^-2,
    at fluxes below the 4 Ms on-axis limit (~1e-17). The fit must reach it between 1e-18 and
    1e-17 erg/cm2/s."""
    K, s_b, b1, b2 = LEHMER_2012[(0.5, 2.0)]
    assert _bpl_cumulative(1e-17, K, 1e-14, s_b, b1, b2) < 14900
    assert _bpl_cumulative(1e-18, K, 1e-14, s_b, b1, b2) > 14900


def test_conversion_gammas_follow_a19():
    assert load_counts("cappelluti09_xmmcosmos_cumulative_2_10keV").conversion_gamma == 1.7
    assert load_counts("lehmer12_cdfs4ms_agn_cumulative_2_8keV").conversion_gamma == 1.4
    assert load_counts("luo17_cdfs7ms_cumulative_2_7keV").conversion_gamma is None
    assert load_counts(BAT_CUM).conversion_gamma is None


# ------------------------------------------------------------------------ CT fractions
def _ct_by_survey():
    rows = load_ct_fractions()
    assert all(isinstance(r, CTFraction) for r in rows)
    return {r.survey: r for r in rows}


def test_ct_fractions_ricci2015_exact():
    r = _ct_by_survey()["Swift/BAT 70-month"]
    assert "Ricci" in r.reference and "2015" in r.reference
    assert (r.fraction, r.err_hi, r.err_lo) == (0.076, 0.011, 0.021)  # 7.6 +1.1 -2.1 %
    assert r.band_keV == (14.0, 195.0)
    assert r.nh_threshold == 1e24
    assert r.flux_limit == pytest.approx(1.34e-11)
    assert r.z_range is None


def test_ct_fractions_masini2018_exact():
    r = _ct_by_survey()["NuSTAR UDS"]
    assert "Masini" in r.reference and "2018" in r.reference
    assert (r.fraction, r.err_lo, r.err_hi) == (0.115, 0.020, 0.020)  # 11.5 +/- 2.0 %
    assert r.band_keV == (8.0, 24.0)
    assert r.nh_threshold == 1e24
    assert r.flux_limit == pytest.approx(2.7e-14)


def test_ct_fractions_civano_lansbury():
    rows = _ct_by_survey()
    c = rows["NuSTAR COSMOS"]
    assert c.fraction - c.err_lo == pytest.approx(0.13) and c.fraction + c.err_hi == pytest.approx(0.20)
    assert c.z_range == (0.04, 2.5)
    lans = rows["NuSTAR serendipitous (40-month)"]
    assert lans.nh_threshold == 1.5e24
    assert lans.fraction == pytest.approx(0.30)
    assert lans.z_range == (0.0, 0.07)
    assert len(rows) == 4


# ------------------------------------------------------------------------ loader errors
def _write_counts(tmp_path, name="good", n=5, **over):
    """A small valid cumulative table in tmp_path/counts/, with optional overrides."""
    import astropy.units as u
    from astropy.table import Table

    d = tmp_path / "counts"
    d.mkdir(exist_ok=True)
    t = Table()
    flux = over.pop("flux", np.logspace(-14, -12, n))
    value = over.pop("value", 100.0 * (flux / 1e-14) ** -1.5)
    t["flux"] = flux * over.pop("flux_unit", u.Unit("erg cm-2 s-1"))
    t["value"] = value * over.pop("value_unit", u.Unit("deg-2"))
    t["err_lo"] = 0.1 * value * u.Unit("deg-2")
    t["err_hi"] = 0.1 * value * u.Unit("deg-2")
    for col in over.pop("drop", ()):
        del t[col]
    t.meta.update(dict(quantity="N(>S)", band_keV=[2.0, 10.0], paper="Test et al.",
                       population="AGN only", area_deg2=1.0, conversion_gamma=None))
    t.meta.update(over.pop("meta", {}))
    assert not over
    path = d / f"{name}.ecsv"
    t.write(path, format="ascii.ecsv", overwrite=True)
    return path


def test_loader_reads_a_valid_tmp_table(tmp_path):
    _write_counts(tmp_path)
    assert list_counts(data_dir=tmp_path) == ["good"]
    c = load_counts("good", data_dir=tmp_path)
    assert c.kind == "cumulative" and c.band_keV == (2.0, 10.0) and c.area_deg2 == 1.0
    assert c.conversion_gamma is None


def test_loader_converts_compatible_units(tmp_path):
    import astropy.units as u

    _write_counts(tmp_path, flux_unit=u.Unit("W m-2"), value_unit=u.Unit("sr-1"))
    c = load_counts("good", data_dir=tmp_path)
    assert c.flux[0] == pytest.approx(1e-14 * 1e3)  # 1 W m^-2 = 1e3 erg cm^-2 s^-1
    assert c.value[0] == pytest.approx(100.0 * (math.pi / 180) ** 2)


def test_unknown_name_raises(tmp_path):
    _write_counts(tmp_path)
    with pytest.raises(PopsynthError, match="unknown counts constraint 'nope'.*good"):
        load_counts("nope", data_dir=tmp_path)


def test_missing_ct_file_raises(tmp_path):
    (tmp_path / "counts").mkdir()
    with pytest.raises(PopsynthError, match="ct_fractions.ecsv: file not found"):
        load_ct_fractions(data_dir=tmp_path)


def test_malformed_file_raises(tmp_path):
    d = tmp_path / "counts"
    d.mkdir()
    (d / "broken.ecsv").write_text("# %ECSV 1.0\n# ---\n# datatype: [oops\nflux value\n1 2\n")
    with pytest.raises(PopsynthError, match="broken.ecsv: not a readable ECSV table"):
        load_counts("broken", data_dir=tmp_path)


def test_missing_column_raises(tmp_path):
    _write_counts(tmp_path, drop=("err_hi",))
    with pytest.raises(PopsynthError, match="missing column.*err_hi"):
        load_counts("good", data_dir=tmp_path)


def test_missing_unit_raises(tmp_path):
    _write_counts(tmp_path, flux_unit=1)
    with pytest.raises(PopsynthError, match="column 'flux' has no unit"):
        load_counts("good", data_dir=tmp_path)


def test_wrong_unit_raises(tmp_path):
    import astropy.units as u

    _write_counts(tmp_path, value_unit=u.Unit("deg-2 erg-1 cm2 s"))  # differential unit, cumulative quantity
    with pytest.raises(PopsynthError, match="column 'value' has wrong unit"):
        load_counts("good", data_dir=tmp_path)


@pytest.mark.parametrize("bad", [0.0, -3.0, np.nan, np.inf])
def test_non_positive_or_non_finite_values_raise(tmp_path, bad):
    value = np.array([500.0, 200.0, 100.0, 50.0, 20.0])
    value[2] = bad
    _write_counts(tmp_path, value=value)
    with pytest.raises(PopsynthError, match="column 'value' has non-finite or non-positive"):
        load_counts("good", data_dir=tmp_path)


def test_missing_metadata_and_bad_quantity_raise(tmp_path):
    _write_counts(tmp_path, meta={"quantity": "flux"})
    with pytest.raises(PopsynthError, match="meta 'quantity'"):
        load_counts("good", data_dir=tmp_path)
    _write_counts(tmp_path, meta={"band_keV": "soft"})
    with pytest.raises(PopsynthError, match="band_keV"):
        load_counts("good", data_dir=tmp_path)


def test_increasing_cumulative_counts_raise(tmp_path):
    _write_counts(tmp_path, value=np.array([10.0, 20.0, 30.0, 40.0, 50.0]))
    with pytest.raises(PopsynthError, match="non-increasing"):
        load_counts("good", data_dir=tmp_path)


def test_bad_ct_fraction_raises(tmp_path):
    import astropy.units as u
    from astropy.table import Table

    d = tmp_path / "counts"
    d.mkdir()
    t = Table()
    t["survey"] = ["X"]
    t["paper"] = ["Test et al."]
    t["band_lo"] = [8.0] * u.keV
    t["band_hi"] = [24.0] * u.keV
    t["flux_limit"] = [1e-14] * u.Unit("erg cm-2 s-1")
    t["z_lo"] = [np.nan]
    t["z_hi"] = [np.nan]
    t["nh_threshold"] = [1e24] * u.Unit("cm-2")
    t["fraction"] = [0.1]
    t["err_lo"] = [0.02]
    t["err_hi"] = [0.02]
    t["notes"] = [""]
    t.write(d / "ct_fractions.ecsv", format="ascii.ecsv")
    (r,) = load_ct_fractions(data_dir=tmp_path)
    assert r.z_range is None and r.fraction == 0.1
    t["fraction"] = [1.2]
    t.write(d / "ct_fractions.ecsv", format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match="fraction"):
        load_ct_fractions(data_dir=tmp_path)
    t["fraction"] = [0.1]
    t["err_lo"] = [0.0]
    t.write(d / "ct_fractions.ecsv", format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match="err_lo"):
        load_ct_fractions(data_dir=tmp_path)
    t["err_lo"] = [0.02]
    t["nh_threshold"] = [1e24]  # unit lost
    t.write(d / "ct_fractions.ecsv", format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match="nh_threshold.*no unit"):
        load_ct_fractions(data_dir=tmp_path)


def test_declared_row_count_is_checked(tmp_path):
    """Where a counts table declares n_points (the shipped ones do not yet), a table cut at a
    row boundary is an error naming the file and both numbers."""
    path = _write_counts(tmp_path, n=5, meta={"n_points": 5})
    assert len(load_counts("good", data_dir=tmp_path).flux) == 5
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-2]))
    with pytest.raises(PopsynthError) as ei:
        load_counts("good", data_dir=tmp_path)
    assert str(ei.value).startswith(f"counts file {path}: the header declares n_points: 5 but the file has 3 rows "
                                    "(truncated or rows deleted)")
    _write_counts(tmp_path, n=5, meta={"n_points": 5.5})
    with pytest.raises(PopsynthError, match="header field 'n_points' must be a count"):
        load_counts("good", data_dir=tmp_path)


def test_shipped_tables_declare_their_row_counts():
    """Every shipped counts table and the CT-fraction table declares n_points = its row count,
    so a file truncated at a row boundary is refused by the loader."""
    from astropy.table import Table

    from popsynth.data.counts import counts_dir

    files = sorted(counts_dir().glob("*.ecsv"))
    assert len(files) >= 8
    for f in files:
        t = Table.read(f, format="ascii.ecsv")
        assert t.meta.get("n_points") == len(t), f.name

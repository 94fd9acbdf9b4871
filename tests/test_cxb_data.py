"""CXB training data (data/cxb/*.ecsv) and its validating loader (popsynth.data.cxb).

Reads only the project's data/ folder (never ../shared), plus small files in tmp_path.
"""

from __future__ import annotations

import numpy as np
import pytest
import astropy.units as u
from astropy.table import Table

from popsynth.errors import PopsynthError
from popsynth.paths import data_dir
from popsynth.data.cxb import (
    ALL_SETS,
    CXB_FILES,
    TRAINING_SETS,
    CXBDataset,
    load_cxb,
    load_cxb_dataset,
)

META_KEYS = (
    "paper", "instrument", "source_of_numbers", "selection", "n_used_in_fit", "quantity", "units",
)
INTENSITY = u.Unit("keV2 cm-2 s-1 keV-1 sr-1")


def _table(name):
    return Table.read(data_dir() / "cxb" / CXB_FILES[name], format="ascii.ecsv")


# --------------------------------------------------------------------------- the data files


def test_counts_used_in_fit_match_ananna2019_table5():
    # Ananna et al. 2019, ApJ 871, 240, Table 5: 25 Chandra COSMOS, 34 RXTE, 15 Swift-BAT points
    expected = {"chandra_cosmos": 25, "rxte": 34, "swift_bat": 15}
    got = {d.name: len(d.energy) for d in load_cxb()}
    assert got == expected
    assert sum(got.values()) == 74  # Table 5 "Total 74"


def test_all_points_kept_in_files():
    # source files hold 31 / 45 / 20 / 45 points; none is dropped, only flagged
    n = {d.name: len(d.energy) for d in load_cxb(ALL_SETS, selected=False)}
    assert n == {"chandra_cosmos": 31, "rxte": 45, "swift_bat": 20, "asca": 45}
    asca = load_cxb_dataset("asca", selected=False)
    assert not asca.used_in_fit.any()  # ASCA: plots / validation only


@pytest.mark.parametrize("name", ALL_SETS)
def test_provenance_meta_and_units(name):
    t = _table(name)
    for k in META_KEYS:
        assert k in t.meta and str(t.meta[k]).strip(), f"{name}: meta {k!r} missing"
    assert t.meta["quantity"] == "E^2 dN/dE"
    assert t.meta["n_used_in_fit"] == int(np.sum(t["used_in_fit"]))
    for c in ("energy", "e_lo", "e_hi"):
        assert t[c].unit == u.keV
    for c in ("intensity", "err_lo", "err_hi"):
        assert t[c].unit == INTENSITY
    assert t["used_in_fit"].dtype == bool
    assert str(t.meta["selection"]).strip()


def test_spot_values_against_references():
    # Swift/BAT, Ajello et al. 2008 (ApJ 689, 666): 24 keV bin (22-26 keV): 50.958 +/- 5.284
    bat = load_cxb_dataset("swift_bat")
    i = int(np.argmin(np.abs(bat.energy - 24.0)))
    assert bat.energy[i] == pytest.approx(24.0)
    assert bat.intensity[i] == pytest.approx(50.958, abs=1e-3)
    assert bat.err_lo[i] == pytest.approx(5.284, abs=1e-3)
    assert bat.err_hi[i] == pytest.approx(5.284, abs=1e-3)
    assert (bat.e_lo[i], bat.e_hi[i]) == pytest.approx((22.0, 26.0))

    # RXTE/PCA, Revnivtsev et al. 2003 (A&A 411, 329): first point 3.207 keV, 19.15 +/- 0.4544
    rxte = load_cxb_dataset("rxte")
    assert rxte.energy[0] == pytest.approx(3.207)
    assert rxte.intensity[0] == pytest.approx(19.15)
    assert rxte.err_lo[0] == pytest.approx(0.4544)
    assert rxte.err_hi[0] == pytest.approx(0.4544)
    assert rxte.e_lo[0] == pytest.approx(3.207 - 0.1792)

    # Chandra COSMOS, Cappelluti et al. 2017 (ApJ 837, 19), digitized: 2.55064 keV point,
    # value 19.78405, upper 20.66860, lower 18.93735 -> asymmetric errors, no bin edges
    cos = load_cxb_dataset("chandra_cosmos")
    i = int(np.argmin(np.abs(cos.energy - 2.55064)))
    assert cos.intensity[i] == pytest.approx(19.78405)
    assert cos.err_hi[i] == pytest.approx(20.66860 - 19.78405)
    assert cos.err_lo[i] == pytest.approx(19.78405 - 18.93735)
    assert np.all(np.isnan(cos.e_lo)) and np.all(np.isnan(cos.e_hi))

    # ASCA SIS, Gendreau et al. 1995 (PASJ 47, L5): first point 0.77095 keV, 10.87 +/- 0.66
    asca = load_cxb_dataset("asca", selected=False)
    assert asca.energy[0] == pytest.approx(0.77095)
    assert asca.intensity[0] == pytest.approx(10.87)
    assert asca.err_lo[0] == pytest.approx(0.66)


def test_selection_choices():
    # COSMOS: the A19 1.5 keV outlier (nearest Al K-alpha 1.486 keV) is out; 0.6-6 keV kept
    cos_all = load_cxb_dataset("chandra_cosmos", selected=False)
    out = cos_all.energy[~cos_all.used_in_fit]
    assert np.any(np.isclose(out, 1.46205))
    cos = load_cxb_dataset("chandra_cosmos")
    assert cos.energy.min() >= 0.6 and cos.energy.max() <= 6.0
    # RXTE: bins starting below 15 keV; BAT: E <= 100 keV
    rxte = load_cxb_dataset("rxte")
    assert np.all(rxte.e_lo < 15.0) and rxte.energy.max() == pytest.approx(15.18)
    bat = load_cxb_dataset("swift_bat")
    assert bat.energy.max() <= 100.0 and bat.energy.min() == pytest.approx(15.0)


def test_physical_sanity():
    for d in load_cxb():
        assert isinstance(d, CXBDataset)
        assert np.all((d.intensity > 5) & (d.intensity < 60)), d.name
        assert np.all(d.err_lo > 0) and np.all(d.err_hi > 0)
        assert np.all(d.err_lo < d.intensity)
        assert np.all(np.diff(d.energy) > 0)
        assert d.reference and d.label and d.path.endswith(".ecsv")
    bat = load_cxb_dataset("swift_bat")
    e_peak = bat.energy[np.argmax(bat.intensity)]
    assert 20 < e_peak < 40  # the CXB peaks at ~30 keV
    # the CXB rises from ~1 keV to the peak: RXTE at 10 keV above COSMOS at 1 keV
    rxte = load_cxb_dataset("rxte")
    cos = load_cxb_dataset("chandra_cosmos")
    assert np.interp(10, rxte.energy, rxte.intensity) > 2 * np.interp(1, cos.energy, cos.intensity)
    # instruments agree within ~20 % where they overlap (cross-calibration, README)
    asca = load_cxb_dataset("asca", selected=False)
    m = (asca.energy > 1) & (asca.energy < 5)
    ratio = asca.intensity[m] / np.interp(asca.energy[m], cos.energy, cos.intensity)
    assert 0.8 < np.median(ratio) < 1.2


def test_load_cxb_accepts_single_name_and_order():
    assert [d.name for d in load_cxb("rxte")] == ["rxte"]
    assert [d.name for d in load_cxb(ALL_SETS, selected=False)] == list(ALL_SETS)
    assert TRAINING_SETS == ("chandra_cosmos", "rxte", "swift_bat")


# --------------------------------------------------------------------------- validation errors


def _write_good(tmp_path, name="rxte", **override):
    """Write a small valid table for ``name`` under tmp_path/cxb; override columns/units."""
    (tmp_path / "cxb").mkdir(exist_ok=True)
    cols = dict(
        energy=np.array([3.0, 5.0, 10.0]),
        e_lo=np.array([2.5, 4.5, 9.0]),
        e_hi=np.array([3.5, 5.5, 11.0]),
        intensity=np.array([20.0, 25.0, 38.0]),
        err_lo=np.array([0.5, 0.6, 1.5]),
        err_hi=np.array([0.5, 0.6, 1.5]),
        used_in_fit=np.array([True, True, False]),
    )
    units = dict(energy=u.keV, e_lo=u.keV, e_hi=u.keV, intensity=INTENSITY,
                 err_lo=INTENSITY, err_hi=INTENSITY, used_in_fit=None)
    drop = override.pop("drop", ())
    units.update(override.pop("units", {}))
    cols.update(override)
    t = Table()
    for k, v in cols.items():
        if k in drop:
            continue
        t[k] = v
        if units[k] is not None:
            t[k].unit = units[k]
    t.meta.update(paper="test", label="test set")
    path = tmp_path / "cxb" / CXB_FILES[name]
    t.write(path, format="ascii.ecsv", overwrite=True)
    return path


def test_small_valid_file_loads(tmp_path):
    _write_good(tmp_path)
    d = load_cxb_dataset("rxte", data_dir=tmp_path)
    assert len(d.energy) == 2 and d.label == "test set"
    assert len(load_cxb_dataset("rxte", selected=False, data_dir=tmp_path).energy) == 3


def test_units_are_converted(tmp_path):
    erg = u.erg / (u.cm**2 * u.s * u.sr)
    f = (1 * INTENSITY).to_value(erg)
    _write_good(tmp_path, intensity=np.array([20.0, 25.0, 38.0]) * f, units={"intensity": erg})
    d = load_cxb_dataset("rxte", data_dir=tmp_path)
    assert d.intensity == pytest.approx([20.0, 25.0])


def test_error_unknown_name(tmp_path):
    with pytest.raises(PopsynthError, match="unknown CXB dataset 'heao1'") as ei:
        load_cxb_dataset("heao1", data_dir=tmp_path)
    assert "chandra_cosmos" in str(ei.value) and "asca" in str(ei.value)
    with pytest.raises(PopsynthError, match="unknown CXB dataset"):
        load_cxb(("rxte", "nope"), data_dir=tmp_path)


def test_error_missing_file(tmp_path):
    (tmp_path / "cxb").mkdir()
    with pytest.raises(PopsynthError, match="file not found") as ei:
        load_cxb_dataset("swift_bat", data_dir=tmp_path)
    assert "swift_bat_ajello2008.ecsv" in str(ei.value)
    assert "\n" not in str(ei.value)


def test_error_not_ecsv(tmp_path):
    (tmp_path / "cxb").mkdir()
    p = tmp_path / "cxb" / CXB_FILES["rxte"]
    p.write_text("READ SERR 1 2\n3.2 0.18 0.18 19.15 0.45 0.45 0\n")
    with pytest.raises(PopsynthError, match="not a readable ECSV table") as ei:
        load_cxb_dataset("rxte", data_dir=tmp_path)
    assert str(p) in str(ei.value) and "\n" not in str(ei.value)


def test_error_missing_column(tmp_path):
    _write_good(tmp_path, drop=("err_hi",))
    with pytest.raises(PopsynthError, match="missing column.*err_hi"):
        load_cxb_dataset("rxte", data_dir=tmp_path)


def test_error_wrong_unit(tmp_path):
    _write_good(tmp_path, units={"energy": u.s})
    with pytest.raises(PopsynthError, match="column 'energy' has wrong unit"):
        load_cxb_dataset("rxte", data_dir=tmp_path)


def test_error_missing_unit(tmp_path):
    _write_good(tmp_path, units={"intensity": None})
    with pytest.raises(PopsynthError, match="column 'intensity' has no unit"):
        load_cxb_dataset("rxte", data_dir=tmp_path)


@pytest.mark.parametrize(
    "col, values",
    [
        ("energy", [3.0, np.nan, 10.0]),
        ("energy", [-3.0, 5.0, 10.0]),
        ("intensity", [20.0, np.inf, 38.0]),
        ("intensity", [20.0, 0.0, 38.0]),
        ("err_lo", [0.5, -0.6, 1.5]),
        ("err_hi", [0.5, 0.0, 1.5]),
    ],
)
def test_error_non_finite_or_non_positive(tmp_path, col, values):
    _write_good(tmp_path, **{col: np.array(values)})
    with pytest.raises(PopsynthError, match=f"column '{col}' has 1 non-finite or non-positive"):
        load_cxb_dataset("rxte", data_dir=tmp_path)


def test_error_energies_not_increasing(tmp_path):
    _write_good(tmp_path, energy=np.array([3.0, 10.0, 5.0]),
                e_lo=np.full(3, np.nan), e_hi=np.full(3, np.nan))
    with pytest.raises(PopsynthError, match="energies not strictly increasing"):
        load_cxb_dataset("rxte", data_dir=tmp_path)


def test_error_zero_points_selected(tmp_path):
    _write_good(tmp_path, used_in_fit=np.zeros(3, bool))
    with pytest.raises(PopsynthError, match="zero points selected") as ei:
        load_cxb_dataset("rxte", data_dir=tmp_path)
    assert "selected=False" in str(ei.value)
    assert len(load_cxb_dataset("rxte", selected=False, data_dir=tmp_path).energy) == 3


def test_error_bad_bin_edges(tmp_path):
    _write_good(tmp_path, e_lo=np.array([2.5, 6.0, 9.0]))
    with pytest.raises(PopsynthError, match="bin edges do not bracket the energy"):
        load_cxb_dataset("rxte", data_dir=tmp_path)


@pytest.mark.parametrize("name", ALL_SETS)
def test_shipped_files_declare_their_counts(name):
    """Every shipped table states n_points and n_used_in_fit, which the loader checks."""
    t = _table(name)
    assert t.meta["n_points"] == len(t) and t.meta["n_used_in_fit"] == int(np.sum(t["used_in_fit"]))


def test_error_file_truncated_at_a_row_boundary(tmp_path):
    """A file cut after a whole row still parses; the header's n_points reveals it."""
    src = data_dir() / "cxb" / CXB_FILES["swift_bat"]
    (tmp_path / "cxb").mkdir()
    path = tmp_path / "cxb" / CXB_FILES["swift_bat"]
    lines = src.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]))
    with pytest.raises(PopsynthError) as ei:
        load_cxb_dataset("swift_bat", data_dir=tmp_path)
    msg = str(ei.value)
    assert msg.startswith(f"CXB file {path}: the header declares n_points: 20 but the file has 18 rows "
                          "(truncated or rows deleted)")
    assert "restore the file" in msg and "make_cxb_tables.py" in msg


def test_error_selected_points_differ_from_header(tmp_path):
    path = _write_good(tmp_path)
    t = Table.read(path, format="ascii.ecsv")
    t.meta.update(n_points=3, n_used_in_fit=3)
    t.write(path, format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match="declares n_used_in_fit: 3 but the file has 2 points with used_in_fit True"):
        load_cxb_dataset("rxte", data_dir=tmp_path)
    t.meta.update(n_points="three")
    t.write(path, format="ascii.ecsv", overwrite=True)
    with pytest.raises(PopsynthError, match="header field 'n_points' must be a count"):
        load_cxb_dataset("rxte", data_dir=tmp_path)
    t.meta.update(n_points=3, n_used_in_fit=2)
    t.write(path, format="ascii.ecsv", overwrite=True)
    assert len(load_cxb_dataset("rxte", data_dir=tmp_path).energy) == 2

"""The io package: one ECSV reader/writer, one atomic writer, one cache-key builder and the
cache wrapper, and the complete records of the data loaders (issue 11, "IO at the edge")."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from popsynth.errors import PopsynthError
from popsynth.io import cache_key, cached, read_ecsv, write_ecsv
from popsynth.io.files import atomic_write


# ----------------------------------------------------------------------------- package surface
def test_every_name_imported_from_popsynth_io_is_still_there():
    import popsynth.io as pio

    names = ("a19_resample", "CHECKPOINT_FORMAT", "LOCK_NAME", "RUN_FILES", "RunLock", "XLFCube", "XLF_CUBES",
             "atomic_write", "check_output_folder", "checkpoint_file", "current_umask", "export_xlf_hdf5",
             "load_checkpoint", "load_xlf", "run_files", "save_checkpoint", "write_a19_layout", "write_cxb_table",
             "write_json", "read_ecsv", "write_ecsv", "cache_key", "cached", "file_sha256", "arrays_sha256")
    assert [n for n in names if not hasattr(pio, n)] == []
    from popsynth.io import checkpoint, files, xlf

    assert pio.atomic_write is files.atomic_write and pio.load_xlf is xlf.load_xlf
    assert pio.save_checkpoint is checkpoint.save_checkpoint


# ----------------------------------------------------------------------------- ECSV
def test_ecsv_round_trip_with_unit_conversion(tmp_path):
    p = tmp_path / "t.ecsv"
    write_ecsv(p, columns={"energy": [1.0, 2.0], "flux": [1e-14, 3e-14], "n": np.array([3, 4])},
               units={"energy": "keV", "flux": "erg cm-2 s-1"}, meta={"paper": "X et al."})
    t = read_ecsv(p, label="test file")
    assert t.meta["paper"] == "X et al." and len(t) == 2 and "flux" in t and "e_lo" not in t
    assert t.column("energy", "eV").tolist() == [1000.0, 2000.0]
    assert t.column("flux", "W m-2").tolist() == pytest.approx([1e-17, 3e-17], rel=1e-15)
    same = t.column("flux", "erg cm-2 s-1")  # factor exactly 1: values bit for bit
    assert same.dtype == np.float64 and same.tolist() == [1e-14, 3e-14]
    assert t.column("n").tolist() == [3.0, 4.0]  # unit None: the values as stored
    assert sorted(os.listdir(tmp_path)) == ["t.ecsv"]  # no temporary file left


def test_ecsv_reads_are_memoised_per_file_version(tmp_path):
    """A table read twice in one process is parsed once (by path, mtime and size); each caller
    gets its own copy, and a rewritten file is read again."""
    import popsynth.io.ecsv as ec

    p = tmp_path / "t.ecsv"
    write_ecsv(p, columns={"x": np.arange(3.0)}, units={"x": "keV"})
    a = read_ecsv(p)
    n = len(ec._READ)
    b = read_ecsv(p)
    assert len(ec._READ) == n and a.table is not b.table
    a.table["x"][0] = 99.0  # a caller's change does not reach the next reader
    assert read_ecsv(p).column("x", "keV")[0] == 0.0
    write_ecsv(p, columns={"x": np.arange(4.0) + 1}, units={"x": "keV"})
    os.utime(p, ns=(1, 1))  # a new version even on a coarse clock
    np.testing.assert_array_equal(read_ecsv(p).column("x", "keV"), [1.0, 2.0, 3.0, 4.0])


def test_ecsv_errors_name_the_file_and_the_problem(tmp_path):
    p = tmp_path / "t.ecsv"
    with pytest.raises(PopsynthError, match=r"counts file .*t\.ecsv: file not found"):
        read_ecsv(p, label="counts file")
    write_ecsv(p, columns={"flux": [1.0], "bare": [2.0]}, units={"flux": "s"})
    t = read_ecsv(p, label="counts file", fix="regenerate it")
    with pytest.raises(PopsynthError, match=r"column 'flux' has wrong unit 's' \(expected keV\)") as ei:
        t.column("flux", "keV")
    assert "regenerate it" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(PopsynthError, match="column 'bare' has no unit"):
        t.column("bare", "keV", fixes={"no_unit": "write the unit"})
    with pytest.raises(PopsynthError, match=r"missing column\(s\) energy \(required: flux, energy\)"):
        t.require_columns(("flux", "energy"))
    p.write_text("# %ECSV 1.0\n# ---\n# datatype: [oops\nflux\n1\n")
    with pytest.raises(PopsynthError, match=r"counts file .*t\.ecsv: not a readable ECSV table \(\w+: "):
        read_ecsv(p, label="counts file")


# ----------------------------------------------------------------------------- atomic writer
def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write(p, lambda tmp: open(tmp, "w").write("old"))
    assert p.read_text() == "old"

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(p, broken)
    assert p.read_text() == "old" and sorted(os.listdir(p.parent)) == ["a.txt"]


# ----------------------------------------------------------------------------- cache keys
def test_cache_key_is_sha256_of_sorted_json():
    payload = {"b": [1.5, 2], "a": "x"}
    full = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    assert cache_key(payload) == full[:32]
    assert cache_key(payload, n_hex=20) == full[:20] and cache_key(payload, n_hex=64) == full
    assert cache_key({"a": "x", "b": [1.5, 2]}) == cache_key(payload)  # key order does not matter
    assert cache_key({"a": "x", "b": [1.5, 2.5]}) != cache_key(payload)
    with pytest.raises(PopsynthError, match="`n_hex`"):
        cache_key(payload, n_hex=0)


def test_cache_key_hashes_arrays_and_tensors_by_float64_values():
    import torch

    a = np.array([1.0, 2.0, 3.0])
    digest = hashlib.sha256(a.tobytes()).hexdigest()
    expected = hashlib.sha256(json.dumps({"g": digest}, sort_keys=True).encode()).hexdigest()[:20]
    assert cache_key({"g": a}, n_hex=20) == expected
    assert cache_key({"g": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)}, n_hex=20) == expected
    assert cache_key({"g": np.array([1, 2, 3])}, n_hex=20) == expected  # as float64
    with pytest.raises(TypeError):
        cache_key({"g": object()})


# ----------------------------------------------------------------------------- cached()
def _load_text(path, key):
    text = path.read_text()
    head, _, body = text.partition("\n")
    return body if head == key else None


def _save_text(key):
    return lambda tmp, value: open(tmp, "w").write(f"{key}\n{value}")


def test_cached_builds_once_then_loads(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return "table"

    p = tmp_path / "c" / "x.txt"
    assert cached(build, "k1", path=p, load=_load_text, save=_save_text("k1")) == "table"
    assert cached(build, "k1", path=p, load=_load_text, save=_save_text("k1")) == "table"
    assert len(calls) == 1 and p.read_text() == "k1\ntable"
    # a file for another key (or a damaged one) is rebuilt and replaced
    assert cached(build, "k2", path=p, load=_load_text, save=_save_text("k2")) == "table"
    assert len(calls) == 2 and p.read_text() == "k2\ntable"
    # no path: no caching
    assert cached(build, "k2", path=None, load=_load_text, save=_save_text("k2")) == "table"
    assert len(calls) == 3


def test_cached_warns_when_the_cache_cannot_be_written(tmp_path):
    def save(tmp, value):
        raise PermissionError(13, "Permission denied")

    with pytest.warns(RuntimeWarning, match=r"could not write the spectral cache file .*Permission denied.*POPSYNTH_CACHE"):
        v = cached(lambda: 7, "k", path=tmp_path / "x.pt", load=_load_text, save=save, what="spectral cache file")
    assert v == 7 and not (tmp_path / "x.pt").exists()


# ----------------------------------------------------------------------------- complete records
def test_counts_record_keeps_edges_area_curve_and_header():
    from popsynth.data.counts import load_counts

    d = load_counts("bat105_agn_differential_14_195keV")
    assert d.flux_lo.shape == d.flux.shape == d.flux_hi.shape
    assert np.all(d.flux_lo < d.flux) and np.all(d.flux < d.flux_hi)
    assert d.survey == "Swift/BAT 105-month all-sky survey" and d.flux_limit == 1e-11
    assert d.redshift_range is None and d.area_curve is None
    assert d.columns["n_sources"].dtype == np.float64 and d.units["n_sources"] is None
    assert d.meta["quantity"] == "dN/dS" and d.units["flux_lo"] == "erg / (s cm2)"

    c = load_counts("cappelluti09_xmmcosmos_cumulative_2_10keV")
    assert c.flux_lo is None and c.survey == "XMM-COSMOS" and c.flux_limit == 3.313e-15
    f, a = c.area_curve
    assert f.tolist() == c.flux.tolist() and a[0] == 0.0362878666465471 and a[-1] == 2.13
    assert "n_eff" in c.columns and c.meta["n_points"] == 22


def test_survey_is_built_from_the_record_without_reading_the_file(tmp_path):
    import shutil

    from popsynth.data.counts import load_counts
    from popsynth.survey import counts_flux_bins, survey_for_counts

    d = tmp_path / "counts"
    d.mkdir()
    from popsynth.data.counts import counts_dir

    for name in ("bat105_agn_differential_14_195keV", "cappelluti09_xmmcosmos_cumulative_2_10keV"):
        shutil.copy(counts_dir() / f"{name}.ecsv", d)
    bat = load_counts("bat105_agn_differential_14_195keV", data_dir=tmp_path)
    cos = load_counts("cappelluti09_xmmcosmos_cumulative_2_10keV", data_dir=tmp_path)
    shutil.rmtree(d)  # the records are complete: nothing reads the files again
    lo, hi = counts_flux_bins(bat)
    assert lo.tolist() == bat.flux_lo.tolist() and hi.tolist() == bat.flux_hi.tolist()
    s = survey_for_counts(cos)
    assert s.has_area_curve and s.label == "XMM-COSMOS" and s.area_deg2[-1] == 2.13
    b = survey_for_counts(bat)
    assert b.flux_limit == 1e-11 and b.label == "Swift/BAT 105-month all-sky survey"


def test_cxb_record_keeps_header_and_units():
    from popsynth.data.cxb import load_cxb_dataset

    d = load_cxb_dataset("swift_bat")
    assert d.meta["n_used_in_fit"] == 15 and d.energy.size == 15
    assert d.units["energy"] == "keV" and "used_in_fit" in d.units

"""Spectral-table cache: location, content-addressed keys, and safe loading of cache files.

Tables here are tiny (scattered + transmitted components, 40 energies, 6 log N_H cells,
4 draws) so every build takes milliseconds.
"""

import builtins
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import popsynth
from popsynth.errors import PopsynthError
from popsynth.io.cache import file_sha256
from popsynth.paths import cache_dir, data_dir, default_cache_dir
from popsynth.spectra import cache as sc
from popsynth.spectra.cache import build_spectral_table, spectral_table_key
from popsynth.spectra.component import Scattered, Transmitted
from popsynth.spectra.registry import make_components

REPO = Path(__file__).resolve().parent.parent
ENERGY = torch.logspace(0.0, 2.0, 40, dtype=torch.float64)  # 1-100 keV
EDGES = np.linspace(20.0, 26.0, 7)
SMALL = dict(energy=ENERGY, n_draws=4, seed=3)


def _comps():
    return [Scattered(), Transmitted()]


def _build(**kw):
    return build_spectral_table(2, EDGES, components=_comps(), **{**SMALL, **kw})


def _cache_file():
    key, _ = spectral_table_key(2, EDGES, components=_comps(), **SMALL)
    return cache_dir() / "spectra" / f"set2-{key}.pt", key


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache folder of this test's own (the session cache stays untouched)."""
    d = tmp_path / "cache"
    monkeypatch.setenv("POPSYNTH_CACHE", str(d))
    return d


def _same_table(a, b):
    for name in ("energy", "lognh_edges", "lognh", "mean", "per_draw"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.components.keys() == b.components.keys() and a.params.keys() == b.params.keys()
    assert all(torch.equal(a.components[k], b.components[k]) for k in a.components)
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    assert a.meta == b.meta


# ------------------------------------------------------------------------------------------
# Location
# ------------------------------------------------------------------------------------------
def test_cache_dir_honours_popsynth_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POPSYNTH_CACHE", str(tmp_path / "a" / "b"))
    assert cache_dir() == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()


def test_default_cache_dir_is_the_users_not_the_repository(tmp_path, monkeypatch):
    import platformdirs

    default = default_cache_dir()
    assert default == Path(platformdirs.user_cache_dir("popsynth", appauthor=False))
    assert not default.resolve().is_relative_to(REPO) and default.name == "popsynth"
    if sys.platform.startswith("linux"):  # XDG: the folder follows XDG_CACHE_HOME
        monkeypatch.delenv("POPSYNTH_CACHE", raising=False)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert cache_dir() == tmp_path / "xdg" / "popsynth" and cache_dir().is_dir()


def test_unusable_cache_dir_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("POPSYNTH_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(PopsynthError, match="cannot create the cache folder") as ei:
        cache_dir()
    assert "set POPSYNTH_CACHE to a writable folder" in str(ei.value)


def test_data_dir_override_must_be_a_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("POPSYNTH_DATA", str(tmp_path / "nope"))
    with pytest.raises(PopsynthError, match="POPSYNTH_DATA=.*nope is not a folder"):
        data_dir()
    monkeypatch.delenv("POPSYNTH_DATA")
    pkg = Path(popsynth.__file__).resolve().parent
    assert data_dir() in (pkg / "_data", pkg.parent / "data") and (data_dir() / "greens" / "torus.h5").is_file()


# ------------------------------------------------------------------------------------------
# Round trip and safe loading
# ------------------------------------------------------------------------------------------
def test_cache_round_trip_is_exact_and_weights_only(own_cache):
    fresh = _build(cache=False)
    first = _build()
    path, key = _cache_file()
    assert path.is_file() and first.meta["key"] == key == fresh.meta["key"] and len(key) == 32
    d = torch.load(path, weights_only=True)  # plain tensors and containers only
    assert d["format"] == "popsynth-spectral-table" and '"key": "%s"' % key in d["meta_json"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good file loads without a warning
        cached = _build()
    _same_table(fresh, first)
    _same_table(first, cached)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


class _Payload:
    """Unpickling this creates the marker file: stands for any code a crafted pickle names."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def test_crafted_pickle_is_refused_not_executed_and_rebuilt(own_cache, tmp_path):
    fresh = _build(cache=False)
    path, key = _cache_file()
    marker = tmp_path / "pwned"
    path.parent.mkdir(parents=True)
    torch.save({"format": "popsynth-spectral-table", "meta_json": '{"key": "%s"}' % key,
                "energy": _Payload(marker)}, path)
    # the file really is hostile: a full unpickler would run the payload
    probe = tmp_path / "probe.pt"
    shutil.copy(path, probe)
    torch.load(probe, weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.warns(RuntimeWarning, match=r"unreadable or not a plain tensor file \(UnpicklingError\); rebuilding"):
        table = _build()
    assert not marker.exists()
    _same_table(fresh, table)
    d = torch.load(path, weights_only=True)  # replaced by a good file
    assert torch.equal(d["mean"], fresh.mean)


def _truncated(path, key):
    path.write_bytes(path.read_bytes()[:1000])


def _garbage(path, key):
    path.write_bytes(b"\x80\x02 not a torch file at all")


def _other_key(path, key):
    d = torch.load(path, weights_only=True)
    torch.save({**d, "meta_json": d["meta_json"].replace(key, "0" * 32)}, path)


def _wrong_shape(path, key):
    d = torch.load(path, weights_only=True)
    torch.save({**d, "per_draw": d["per_draw"][:2]}, path)


def _negative(path, key):
    d = torch.load(path, weights_only=True)
    torch.save({**d, "mean": -d["mean"]}, path)


def _not_a_table(path, key):
    torch.save({"hello": torch.zeros(3)}, path)


@pytest.mark.parametrize("damage, reason", [
    (_truncated, "unreadable or not a plain tensor file"),
    (_garbage, "unreadable or not a plain tensor file"),
    (_other_key, "ignored (header for another key)"),
    (_wrong_shape, "ignored ('per_draw' missing or not float64 [4, 6, 40])"),
    (_negative, "ignored (non-finite or negative 'mean')"),
    (_not_a_table, "ignored (not a popsynth spectral table)"),
])
def test_damaged_cache_file_is_rebuilt(own_cache, damage, reason):
    fresh = _build()
    path, key = _cache_file()
    damage(path, key)
    with pytest.warns(RuntimeWarning, match=r"spectral cache file .*set2-.*\.pt") as rec:
        table = _build()
    assert any(reason in str(r.message) for r in rec), [str(r.message) for r in rec]
    _same_table(fresh, table)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _same_table(fresh, _build())  # the rebuilt file is good


# ------------------------------------------------------------------------------------------
# Content-addressed keys
# ------------------------------------------------------------------------------------------
def _write_torus(path, scale):
    """A BNTorus-like atable (nH [1e22], PhoIndex, Theta_tor, Theta_inc), spectra E^-Gamma x scale."""
    from popsynth.io.ogip import write_table_model

    edges = np.geomspace(0.5, 200.0, 31)
    mid = np.sqrt(edges[1:] * edges[:-1])
    nh22, gammas = np.array([0.01, 1.0, 100.0]), np.array([1.5, 2.5])
    spectra = np.empty((3, 2, 2, 2, 30))
    for j, g in enumerate(gammas):
        spectra[:, j] = scale * mid ** -g * (edges[1:] - edges[:-1])
    return write_table_model(path, "torus_like", ["nH", "PhoIndex", "Theta_tor", "Theta_inc"],
                             [nh22, gammas, [55.0, 61.0], [0.0, 90.0]], [True, False, False, False],
                             edges[:-1], edges[1:], spectra, precision="double")


def _torus_key(path):
    return spectral_table_key(5, EDGES, components=make_components("a19", torus_table=str(path)), **SMALL)


def test_torus_table_contents_change_the_key(tmp_path):
    """Same file name, table name and grid shape, other spectra: another key (the old key hashed
    only the table's name and grid)."""
    a, b = tmp_path / "a" / "torus.fits", tmp_path / "b" / "torus.fits"
    a.parent.mkdir(), b.parent.mkdir()
    _write_torus(a, 1.0), _write_torus(b, 1.5)
    (ka, pa), (kb, pb) = _torus_key(a), _torus_key(b)
    da, db = pa["components"][2], pb["components"][2]
    assert da["table"] == db["table"]  # the descriptions alone do not tell them apart
    assert da["table_sha256"] == file_sha256(a) != db["table_sha256"] == file_sha256(b)
    assert ka != kb
    # the same bytes under another folder: the same key (content, not place)
    c = tmp_path / "c.fits"
    shutil.copy(a, c)
    assert _torus_key(c)[0] == ka
    # rewritten in place: read again (the digest is kept per file version only)
    _write_torus(a, 2.0)
    assert _torus_key(a)[0] not in (ka, kb)
    # the built-in torus fills the energies beyond the table: its file is in the key too
    assert da["fill_greens_sha256"] == file_sha256(data_dir() / "greens" / "torus.h5")


def test_key_hashes_the_greens_files_without_reading_them(monkeypatch):
    from popsynth.mc import shipped as greens  # the shipped tables: read once per process

    monkeypatch.setattr(greens, "_LOADED", {})  # nothing read in this process as far as the key knows
    reads = []
    real_read = greens.read_greens
    monkeypatch.setattr(greens, "read_greens", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    comps = make_components("a19")
    key, payload = spectral_table_key(5, EDGES, components=comps, **SMALL)
    assert reads == [] and greens._LOADED == {}
    by_name = {c["name"]: c for c in payload["components"]}
    assert by_name["reflection"]["greens"] == "sha256:" + file_sha256(data_dir() / "greens" / "slab.h5")
    assert by_name["torus"]["greens"] == "sha256:" + file_sha256(data_dir() / "greens" / "torus.h5")
    # the components received the shipped tables by name (not read) and still hold the names
    assert comps[2].greens == greens.ShippedTable("slab") and comps[3].greens == greens.ShippedTable("torus")
    # once the components hold the loaded tables, the key is unchanged
    comps[2].table, comps[3].table
    assert len(reads) == 2 and spectral_table_key(5, EDGES, components=comps, **SMALL)[0] == key
    assert comps[2].table.loaded_arrays() == comps[3].table.loaded_arrays() == ()  # no array read either


def test_greens_tables_are_read_on_a_cache_miss_only(own_cache, monkeypatch):
    """The builder reads the Green's tables the components name when the table is computed (a
    cache miss), and not at all on a cache hit."""
    from popsynth.mc import shipped
    from popsynth.spectra.registry import load_tables

    monkeypatch.setattr(shipped, "_LOADED", {})
    reads = []
    real_read = shipped.read_greens
    monkeypatch.setattr(shipped, "read_greens", lambda *a, **k: reads.append(a[0].name) or real_read(*a, **k))
    edges, kw = np.array([21.0, 22.0, 23.5]), dict(n_draws=2, seed=3)
    comps = make_components("a19")
    first = build_spectral_table(5, edges, components=comps, **kw)  # miss: computed
    assert sorted(reads) == ["slab.h5", "torus.h5"]
    assert comps[2].greens is shipped.load_greens("slab") and comps[3].greens is shipped.load_greens("torus")
    assert set(comps[2].greens.loaded_arrays()) == {"G", "G_line"}  # what the spectra use
    again = make_components("a19")
    second = build_spectral_table(5, edges, components=again, **kw)  # hit: nothing read
    assert len(reads) == 2 and again[2].greens == shipped.ShippedTable("slab")
    _same_table(first, second)
    # reading the tables by hand gives the same table (and key)
    _same_table(first, build_spectral_table(5, edges, components=load_tables(make_components("a19")), **kw))


def test_greens_file_contents_change_the_key(tmp_path, monkeypatch):
    d = tmp_path / "data"
    (d / "greens").mkdir(parents=True)
    shutil.copy(data_dir() / "greens" / "slab.h5", d / "greens" / "slab.h5")
    (d / "greens" / "torus.h5").symlink_to(data_dir() / "greens" / "torus.h5")
    key0 = spectral_table_key(5, EDGES, components=make_components("a19"), **SMALL)[0]
    monkeypatch.setenv("POPSYNTH_DATA", str(d))
    assert spectral_table_key(5, EDGES, components=make_components("a19"), **SMALL)[0] == key0  # same bytes
    with open(d / "greens" / "slab.h5", "ab") as fh:
        fh.write(b"\0")
    assert spectral_table_key(5, EDGES, components=make_components("a19"), **SMALL)[0] != key0
    # a table that exists only in memory is named by its arrays
    from popsynth.io.greens import read_greens
    from popsynth.spectra.reprocessed import Reflection

    t = read_greens(data_dir() / "greens" / "slab.h5")
    d0 = sc._describe_for_key(Reflection(table=t))
    assert d0["greens"].startswith("sha256:arrays:") and len(d0["greens"]) == len("sha256:arrays:") + 64
    t.G[0, 0, 0, 0, 0] += 1.0
    assert sc._describe_for_key(Reflection(table=t))["greens"] != d0["greens"]


def test_key_covers_every_argument():
    base = spectral_table_key(2, EDGES, components=_comps(), **SMALL)[0]
    others = [
        spectral_table_key(3, EDGES, components=_comps(), **SMALL)[0],
        spectral_table_key(2, EDGES[:-1], components=_comps(), **SMALL)[0],
        spectral_table_key(2, EDGES, components=_comps(), **{**SMALL, "n_draws": 5})[0],
        spectral_table_key(2, EDGES, components=_comps(), **{**SMALL, "seed": 4})[0],
        spectral_table_key(2, EDGES, components=_comps(), **{**SMALL, "energy": ENERGY * 1.001})[0],
        spectral_table_key(2, EDGES, components=_comps(), n_sub=3, **SMALL)[0],
        spectral_table_key(2, EDGES, components=[Scattered(), Transmitted(compton=False)], **SMALL)[0],
    ]
    assert len({base, *others}) == len(others) + 1


def test_file_sha256_is_cached_per_file_version(tmp_path, monkeypatch):
    import hashlib

    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == hashlib.sha256(b"abc").hexdigest()
    opened = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k))
    assert file_sha256(p) == hashlib.sha256(b"abc").hexdigest() and opened == []  # not read again
    monkeypatch.setattr(builtins, "open", real_open)
    os.replace(tmp_path / "f.bin", tmp_path / "g.bin")
    (tmp_path / "f.bin").write_bytes(b"abd")  # same path and size, new file
    assert file_sha256(p) == hashlib.sha256(b"abd").hexdigest()
    with pytest.raises(PopsynthError, match=r"cannot read .*nope\.bin"):
        file_sha256(tmp_path / "nope.bin")

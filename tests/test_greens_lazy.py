"""Lazily read Green's tables (read_greens(lazy=True), load_greens): the big arrays stay on disk
until used, are the same arrays as an eager read, and a changed file is refused."""

import shutil

import numpy as np
import pytest
import torch

from popsynth.errors import PopsynthError
from popsynth.io.greens import read_greens
from popsynth.mc import shipped as greens  # load_greens, its per-process tables
from popsynth.mc.shipped import default_table_path
from popsynth.mc.table import _ARRAYS
from popsynth.spectra import cache as sc
from popsynth.spectra.table import default_energy_grid
from popsynth.spectra.reprocessed import Reflection


def test_lazy_arrays_equal_eager_ones():
    path = default_table_path("slab")
    eager, lazy = read_greens(path), read_greens(path, lazy=True)
    assert lazy.loaded_arrays() == () and eager.loaded_arrays() == _ARRAYS
    assert lazy.version_key == eager.version_key and lazy.medium_ref.keys() == eager.medium_ref.keys()
    for name in _ARRAYS:
        a, b = getattr(eager, name), getattr(lazy, name)
        assert a.dtype == b.dtype == np.float32 and np.array_equal(a, b), name
    assert lazy.loaded_arrays() == _ARRAYS
    with pytest.raises(AttributeError):
        lazy.no_such_array


def test_load_greens_is_lazy_and_the_check_reads_no_big_array(monkeypatch):
    monkeypatch.setattr(greens, "_LOADED", {})
    chk = greens.check_shipped_tables()
    assert set(chk) == {"torus", "slab"}
    assert all(greens.load_greens(k).loaded_arrays() == () for k in ("torus", "slab"))


def test_spectra_read_only_g_and_g_line():
    table = read_greens(default_table_path("slab"), lazy=True)
    energy = default_energy_grid("cpu")
    Reflection(table=table).matrix(energy)
    assert set(table.loaded_arrays()) == {"G", "G_line"}
    ref = Reflection(table=read_greens(default_table_path("slab"))).matrix(energy)
    assert torch.equal(Reflection(table=table).matrix(energy), ref)


def test_changed_file_is_refused(tmp_path):
    path = tmp_path / "slab.h5"
    shutil.copy(default_table_path("slab"), path)
    table = read_greens(path, lazy=True)
    table.G_line  # noqa: B018 - read while the file is unchanged
    with open(path, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(PopsynthError, match="changed"):
        table.G
    assert table.G_line.shape[3] == len(table.line_names)  # what was read stays


def test_lazy_table_in_memory_is_keyed_by_its_arrays():
    path = default_table_path("slab")
    assert sc._greens_sha256("slab", read_greens(path, lazy=True)) == sc._greens_sha256("slab", read_greens(path))


def test_pickled_lazy_table_still_reads():
    import pickle

    table = pickle.loads(pickle.dumps(read_greens(default_table_path("slab"), lazy=True)))
    assert table.loaded_arrays() == () and np.array_equal(table.T_mc, read_greens(default_table_path("slab")).T_mc)

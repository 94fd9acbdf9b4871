"""The run set-up's disk caches: survey models, distance tables and the shipped tables' physics check.

Each cached value must equal, bit for bit, what the code computes without the cache; the cache
files hold tensors and arrays only (no pickled code is run when they are read); a damaged file is
rebuilt with a warning.
"""

from dataclasses import fields

import numpy as np
import pytest
import torch

from popsynth.constraints import Constraints, _inputs_key
from popsynth.grid import Grid
from popsynth.io.cache import cache_file
from popsynth.observables import SurveyModel
from popsynth.spectra.cache import build_spectral_table
from popsynth.xlf import build_phi0


@pytest.fixture(scope="module")
def setup():
    grid = Grid()
    return grid, build_phi0(grid), build_spectral_table(5, grid.lognh_edges, n_draws=4)


def _tensors(m: SurveyModel) -> dict:
    return {f.name: getattr(m, f.name) for f in fields(m) if isinstance(getattr(m, f.name), torch.Tensor)}


def _same(a: Constraints, b: Constraints):
    assert a.names == b.names
    for n in a.names:
        ma, mb = a.models[n], b.models[n]
        ta, tb = _tensors(ma), _tensors(mb)  # the lazy sample fields are computed here, on both sides
        assert set(ta) == set(tb) and len(ta) >= 20, n
        for k in ta:
            assert torch.equal(ta[k], tb[k]), (n, k)
        assert (ma.target, ma.nh_threshold, repr(ma.survey), ma.data[0]) == (mb.target, mb.nh_threshold, repr(mb.survey), mb.data[0])
    w = torch.rand(3, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    assert torch.equal(a.total(w), b.total(w))


def test_survey_models_from_the_cache_equal_the_built_ones(setup, tmp_path, monkeypatch):
    grid, phi0, table = setup
    monkeypatch.setenv("POPSYNTH_CACHE", str(tmp_path))  # an empty cache: other tests may have filled the session's
    folder = cache_file("surveys", "x").parent
    before = set(folder.glob("*.pt")) if folder.exists() else set()
    plain = Constraints(grid, phi0, table)  # no cache
    cold = Constraints(grid, phi0, table, cache=True)  # builds and writes
    written = set(folder.glob("*.pt")) - before
    assert len(written) == len(plain.names) == 8
    warm = Constraints(grid, phi0, table, cache=True)  # reads
    _same(plain, cold)
    _same(plain, warm)
    # the files hold tensors and plain values only
    blob = torch.load(sorted(written)[0], weights_only=True)
    assert set(blob) == {"key", "state"} and set(blob["state"]["tensors"]) >= {"cum_response", "log_k", "z_interp"}


def test_damaged_survey_cache_file_is_rebuilt(setup):
    grid, phi0, table = setup
    Constraints(grid, phi0, table, counts=["lehmer12_cdfs4ms_agn_cumulative_2_8keV"], use_ct=False, cache=True)
    inputs = _inputs_key(grid, phi0, table)
    from popsynth.constraints import _model_cache_path
    from popsynth.data.counts import load_counts

    path, _ = _model_cache_path("counts", load_counts("lehmer12_cdfs4ms_agn_cumulative_2_8keV"), inputs)
    path.write_bytes(b"not a torch file")
    with pytest.warns(RuntimeWarning, match="ignoring the survey-model cache file"):
        again = Constraints(grid, phi0, table, counts=["lehmer12_cdfs4ms_agn_cumulative_2_8keV"], use_ct=False,
                            cache=True)
    _same(Constraints(grid, phi0, table, counts=["lehmer12_cdfs4ms_agn_cumulative_2_8keV"], use_ct=False), again)
    assert torch.load(path, weights_only=True)["key"]  # rewritten


def test_survey_cache_key_follows_inputs_and_threads(setup):
    grid, phi0, table = setup
    k = _inputs_key(grid, phi0, table)
    assert _inputs_key(grid, phi0 * 1.000001, table) != k
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(n + 1)  # reductions give other last bits with another thread count
        assert _inputs_key(grid, phi0, table) != k
    finally:
        torch.set_num_threads(n)
    assert _inputs_key(grid, phi0, table) == k


def test_distance_tables_from_the_cache_are_astropys(monkeypatch):
    from astropy.cosmology import FlatLambdaCDM

    from popsynth import cosmology
    from popsynth.constants import MPC_CM

    z = np.linspace(0.011, 4.9, 57)
    cosmology._distances.cache_clear()
    first = cosmology.distance_tables(z)
    assert list(cache_file("cosmology", "x").parent.glob("distances-*.npz"))
    cosmology._distances.cache_clear()
    monkeypatch.setattr(cosmology, "_astropy_cosmology", lambda *a: pytest.fail("astropy called on a warm cache"))
    second = cosmology.distance_tables(z)
    cosmo = FlatLambdaCDM(H0=70.0, Om0=0.3, Tcmb0=0.0)
    assert cosmology.CosmologyParams().H0 == 70.0 and cosmology.CosmologyParams().Om0 == 0.3
    want = cosmo.luminosity_distance(z).to_value("Mpc") * MPC_CM
    assert np.array_equal(second["d_l_cm"].numpy(), want) and torch.equal(first["d_l_cm"], second["d_l_cm"])
    assert np.array_equal(second["dvc_dz_dsr_mpc3"].numpy(), cosmo.differential_comoving_volume(z).to_value("Mpc3 / sr"))
    cosmology._distances.cache_clear()


def test_shipped_table_check_reads_todays_physics_from_the_cache(monkeypatch):
    from popsynth.mc import currency, shipped, transport

    shipped._clear_check_caches()
    first = shipped.check_shipped_tables(("slab",))["slab"]
    assert list(cache_file("physics", "x").parent.glob("medium-*.pkl"))
    shipped._CHECKS.clear()
    currency._TODAY.clear()
    calls = []
    monkeypatch.setattr(currency, "medium_physics", lambda *a, **k: calls.append(1) or transport.medium_physics(*a, **k))
    second = shipped.check_shipped_tables(("slab",))["slab"]
    assert calls == [] and second.current == first.current and second.max_rel_diff == first.max_rel_diff
    shipped._clear_check_caches()  # forgets the disk copy too: the next check computes
    shipped.check_shipped_tables(("slab",))
    assert calls == [1]
    shipped._clear_check_caches()


def test_starting_cubes_cached_bit_for_bit(tmp_path, monkeypatch):
    """run.starting_cube: the first call builds and writes the cube, the second reads it; both equal
    build_phi0 / build_phi0_a15 bit for bit; l_moment and the XLF are in the key; a damaged file is
    rebuilt."""
    from popsynth.run import starting_cube
    from popsynth.xlf_a15 import build_phi0_a15

    monkeypatch.setenv("POPSYNTH_CACHE", str(tmp_path))
    grid = Grid()
    want = {("u14", 0): build_phi0(grid, "a19"), ("u14", 1): build_phi0(grid, "a19", l_moment=1),
            ("a15", 1): build_phi0_a15(grid, "a19", l_moment=1)}
    for (xlf, lm), ref in want.items():
        assert torch.equal(starting_cube(xlf, grid, "a19", lm, "cpu"), ref)  # built and written
    files = sorted((tmp_path / "cubes").glob("*.pt"))
    assert len(files) == 3
    for (xlf, lm), ref in want.items():
        assert torch.equal(starting_cube(xlf, grid, "a19", lm, "cpu"), ref)  # read back
    files[0].write_bytes(b"damaged")
    for (xlf, lm), ref in want.items():
        assert torch.equal(starting_cube(xlf, grid, "a19", lm, "cpu"), ref)

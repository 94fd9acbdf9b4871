"""popsynth.results: a finished run read back with its weights and set-up."""

import h5py
import numpy as np
import pytest

from popsynth.errors import PopsynthError
from popsynth.results import load_run


@pytest.fixture(scope="module")
def a19_run(tiny_a19_run):  # the session's shared tiny A19-mode run (tests/conftest.py)
    return tiny_a19_run


def test_a19_run_reads_back(a19_run):
    r = load_run(a19_run)
    assert r.mode == "a19" and r.spec_set == 5 and r.uncertainty == "converged_starts"
    with h5py.File(a19_run / "xlf_best.h5") as f:
        w_all, conv = f["weights_all_starts"][()], f["converged"][()]
    samples = r.weight_samples().numpy()
    expected = w_all[conv] if conv.any() else w_all
    np.testing.assert_array_equal(samples, expected)
    best = r.best_weights()
    assert best.shape == (1, 15)
    # the stored best cube is the starting cube re-weighted by the best weights
    cube = r.cubes(best)[0].numpy()
    with h5py.File(a19_run / "xlf_best.h5") as f:
        np.testing.assert_allclose(cube, f["phi"][()], rtol=1e-12, atol=0)
    thin = r.weight_samples(max_samples=2, seed=1)
    assert thin.shape == (min(2, len(expected)), 15)
    assert r.summary["spec_set"] == 5


def test_load_run_errors(tmp_path, a19_run):
    with pytest.raises(PopsynthError, match="not found"):
        load_run(tmp_path)
    bad = tmp_path / "xlf_best.h5"
    bad.write_text("not hdf5")
    with pytest.raises(PopsynthError, match="not a readable HDF5"):
        load_run(bad)
    r = load_run(a19_run)
    with pytest.raises(PopsynthError, match="max_samples"):
        r.weight_samples(max_samples=0)

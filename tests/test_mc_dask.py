"""The Monte Carlo table build with a map function: configurations run on a 2-worker Dask
LocalCluster (or in any order) give the serial build's table bit for bit."""

import numpy as np
import pytest
import torch

from popsynth.io.greens import read_greens
from popsynth.mc.simulate import build_table
from popsynth.mc.table import _ARRAYS
from popsynth.mc.transport import tabulate_medium

COARSE = np.geomspace(1.0, 200.0, 13)
KW = dict(photons=1500, seed=1, log_nh=(23.0, 24.0), theta_tor_deg=(55.0, 61.0), e_in_edges=COARSE,
          e_out_edges=COARSE, n_inc=(2, 2), n_batches=2, max_active=4096)
FIELDS = _ARRAYS + ("photons", "absorbed", "dropped", "roulette", "log_nh", "theta_tor_deg", "cos_edges")


@pytest.fixture(scope="module")
def medium():
    return tabulate_medium(points_per_decade=1000)


@pytest.fixture(scope="module")
def serial(medium):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return build_table("torus", medium, **KW)
    finally:
        torch.set_num_threads(old)


def _same(a, b):
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert a.version_key == b.version_key


def test_any_execution_order_gives_the_same_table(medium, serial):
    seen = []

    def backwards(fn, jobs):  # runs the last configuration first, returns results in job order
        jobs = list(jobs)
        seen.extend(j.seed for j in jobs)
        return [fn(j) for j in reversed(jobs)][::-1]

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = build_table("torus", medium, map_fn=backwards, **KW)
    finally:
        torch.set_num_threads(old)
    assert len(seen) == 4 and len(set(seen)) == 4  # one seed per configuration
    _same(table, serial)


def test_two_dask_workers_give_the_serial_table(medium, serial):
    pytest.importorskip("distributed")
    from popsynth.mc.simulate import dask_map
    from popsynth.sweep import _client

    client, cluster = _client(None, 2)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = build_table("torus", medium, map_fn=dask_map(client), **KW)
        assert len(client.scheduler_info()["workers"]) == 2
    finally:
        torch.set_num_threads(old)
        client.close()
        cluster.close()
    _same(table, serial)


def test_build_cli_workers(tmp_path, capsys):
    pytest.importorskip("distributed")
    from popsynth.mc.build import main

    args = ["--kind", "slab", "--photons", "3000", "--batches", "2", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "serial")]) == 0
    assert main(args + ["--out", str(tmp_path / "dask"), "--workers", "2"]) == 0
    assert "LocalCluster of 2 workers" in capsys.readouterr().out
    _same(read_greens(tmp_path / "dask" / "slab.h5"), read_greens(tmp_path / "serial" / "slab.h5"))
    assert main(args + ["--out", str(tmp_path / "x"), "--workers", "-1"]) == 2

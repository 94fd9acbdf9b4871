"""write_a19_layout resamples in chunks of redshift nodes: the same array as XLFCube.a19_layout()."""

import numpy as np

from popsynth.grid import Grid
from popsynth.io import XLFCube, write_a19_layout


def test_chunked_a19_export_equals_the_one_shot_resampling(tmp_path):
    g = Grid()
    rng = np.random.default_rng(3)
    cube = rng.random((g.z.size, g.logl.size, g.lognh.size)) * 10.0 ** rng.uniform(-9, -3, (1, g.logl.size, 1))
    write_a19_layout(tmp_path / "a19.npy", cube, g)
    ref = XLFCube(cube, g.z, g.logl, g.logl_edges, g.lognh, g.lognh_edges, {}).a19_layout()
    out = np.load(tmp_path / "a19.npy")
    assert out.shape == (119, 150, 80) and out.dtype == np.float64
    assert np.array_equal(out, ref)

"""The A19-layout export: the cube on A19's published array nodes, resampled axis by axis, equals
the XLF cube's interpolant (scipy's RegularGridInterpolator in XLFCube.phi) at those nodes."""

import numpy as np

from popsynth.grid import Grid, a19_logl_nodes, a19_lognh_nodes, a19_z_nodes
from popsynth.io import XLFCube, write_a19_layout


def test_a19_export_is_the_cubes_interpolant_at_the_a19_nodes(tmp_path):
    g = Grid()
    rng = np.random.default_rng(3)
    cube = rng.random((g.z.size, g.logl.size, g.lognh.size)) * 10.0 ** rng.uniform(-9, -3, (1, g.logl.size, 1))
    write_a19_layout(tmp_path / "a19.npy", cube, g)
    xc = XLFCube(cube, g.z, g.logl, g.logl_edges, g.lognh, g.lognh_edges, {})
    out = np.load(tmp_path / "a19.npy")
    assert out.shape == (119, 150, 80) and out.dtype == np.float64
    assert np.array_equal(out, xc.a19_layout())
    zg, lg, ng = np.meshgrid(a19_z_nodes(), a19_logl_nodes(), a19_lognh_nodes(), indexing="ij")
    ref = xc.phi(np.clip(zg, g.z[0], g.z[-1]), lg, ng)  # scipy's trilinear interpolant, point by point
    assert np.max(np.abs(out - ref) / ref) < 1e-13
    # at a grid node the cell value itself: z node 30, log L at a cell centre, N_H inside its cell
    iz = int(np.argmin(np.abs(a19_z_nodes() - g.z[30])))
    if abs(a19_z_nodes()[iz] - g.z[30]) < 1e-12:
        il = int(np.argmin(np.abs(a19_logl_nodes() - g.logl[50])))
        assert abs(a19_logl_nodes()[il] - g.logl[50]) > 1e-12 or out[iz, il, 40] == cube[30, 50, int(
            np.searchsorted(g.lognh_edges, a19_lognh_nodes()[40], side="right") - 1)]

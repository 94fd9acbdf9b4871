"""XLF cubes: HDF5 export with axes, units and metadata, A19 .npy layout, and the loader.

IO lives here, at the edge; physics modules never import h5py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import PopsynthError
from ..blocks import BLOCKS
from ..grid import Grid, a19_logl_nodes, a19_lognh_nodes, a19_z_nodes
from .files import atomic_write

__all__ = ["export_xlf_hdf5", "XLFCube", "XLF_CUBES", "load_xlf", "a19_resample", "write_a19_layout"]


def export_xlf_hdf5(path: Path, cube: np.ndarray, grid: Grid, attrs: dict, extra: dict | None = None) -> None:
    """Write an XLF cube phi[z, log L, log N_H] (Mpc^-3 dex^-2) with axes, units and metadata.

    Layout: datasets ``phi`` [nz, nL, nN], ``z``, ``logl`` (cell centres), ``logl_edges``,
    ``lognh``, ``lognh_edges``, ``block_index`` [nL, nN], plus any ``extra`` arrays; file
    attributes from ``attrs`` (non-scalars stored as JSON strings).
    """
    import h5py

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            d = f.create_dataset("phi", data=np.asarray(cube, dtype=np.float64), compression="gzip", compression_opts=4)
            d.attrs["units"] = "Mpc^-3 dex^-2"
            d.attrs["definition"] = "dN / (dV_c dlog10 L dlog10 N_H); L intrinsic rest-frame 2-10 keV (erg/s); cell averages in log L and log N_H"
            d.attrs["axes"] = "z, logl, lognh"
            for name, arr, unit in (("z", grid.z, "redshift"), ("logl", grid.logl, "log10 erg/s"),
                                    ("logl_edges", grid.logl_edges, "log10 erg/s"), ("lognh", grid.lognh, "log10 cm^-2"),
                                    ("lognh_edges", grid.lognh_edges, "log10 cm^-2")):
                ds = f.create_dataset(name, data=np.asarray(arr, dtype=np.float64))
                ds.attrs["units"] = unit
            f.create_dataset("block_index", data=grid.block_index.numpy())
            f["block_index"].attrs["block_names"] = json.dumps(BLOCKS.names())
            for k, v in (extra or {}).items():
                f.create_dataset(k, data=np.asarray(v))
            for k, v in attrs.items():
                f.attrs[k] = v if isinstance(v, (int, float, str, np.integer, np.floating)) else json.dumps(v)
            f.attrs["popsynth_version"] = __version__
    atomic_write(path, write)


class XLFCube:
    """An exported XLF cube with a grid interpolator.

    ``phi(z, logl, lognh)`` returns dN/(dV_c dlogL dlogN_H) in Mpc^-3 dex^-2: linear in z and
    log L between cell centres (held constant beyond the outermost centres, inside the grid),
    and constant inside each log N_H cell (the absorption function is piecewise constant per
    dex, so this is exact). Arguments broadcast.

    Points outside the grid (z beyond the first/last node, log L or log N_H beyond the outer
    cell edges) are handled by ``outside``:
      - "raise" (default): PopsynthError naming how many points are outside and the ranges;
      - "zero": phi = 0 there (no sources outside the modelled range);
      - "clamp": each coordinate is clamped into the grid first, so a point outside gets the
        value at the nearest grid edge (constant extrapolation; no physical meaning beyond the
        grid, useful for plots whose axes reach slightly past it).
    Attributes: cube [nz, nL, nN] (numpy), z, logl, logl_edges, lognh, lognh_edges, attrs (dict).
    """

    def __init__(self, cube, z, logl, logl_edges, lognh, lognh_edges, attrs):
        from scipy.interpolate import RegularGridInterpolator

        self.cube, self.z, self.logl, self.logl_edges = cube, z, logl, logl_edges
        self.lognh, self.lognh_edges, self.attrs = lognh, lognh_edges, attrs
        self._rgi = RegularGridInterpolator((z, logl, lognh), cube, method="linear", bounds_error=False, fill_value=None)

    OUTSIDE = ("raise", "zero", "clamp")

    def phi(self, z, logl, lognh, outside: str = "raise") -> np.ndarray:
        """phi at broadcast points (z, log10 L [erg/s], log10 N_H [cm^-2]) in Mpc^-3 dex^-2."""
        if outside not in self.OUTSIDE:
            raise PopsynthError(f"outside={outside!r} is not a known choice",
                                f"pass outside= one of {', '.join(repr(o) for o in self.OUTSIDE)}")
        z, logl, lognh = np.broadcast_arrays(np.asarray(z, float), np.asarray(logl, float), np.asarray(lognh, float))
        if outside == "clamp":
            z = np.clip(z, self.z[0], self.z[-1])
            logl = np.clip(logl, self.logl_edges[0], self.logl_edges[-1])
            lognh = np.clip(lognh, self.lognh_edges[0], self.lognh_edges[-1])
        inside = ((z >= self.z[0] - 1e-12) & (z <= self.z[-1] + 1e-12) & (logl >= self.logl_edges[0]) &
                  (logl <= self.logl_edges[-1]) & (lognh >= self.lognh_edges[0]) & (lognh <= self.lognh_edges[-1]))
        if outside == "raise" and not inside.all():
            raise PopsynthError(
                f"{int((~inside).sum())} point(s) outside the cube (z {self.z[0]:g}-{self.z[-1]:g}, log L "
                f"{self.logl_edges[0]:g}-{self.logl_edges[-1]:g}, log N_H {self.lognh_edges[0]:g}-{self.lognh_edges[-1]:g})",
                "restrict the points, or pass outside='zero' or 'clamp'")
        cell = np.clip(np.searchsorted(self.lognh_edges, lognh, side="right") - 1, 0, self.lognh.size - 1)
        zz = np.clip(z, self.z[0], self.z[-1])
        ll = np.clip(logl, self.logl[0], self.logl[-1])
        pts = np.stack([zz, ll, self.lognh[cell]], axis=-1)
        out = self._rgi(pts.reshape(-1, 3)).reshape(z.shape)
        return np.where(inside, out, 0.0)

    __call__ = phi

    def a19_layout(self) -> np.ndarray:
        """The cube on the published A19 array nodes: [119 z, 150 log L, 80 log N_H], Mpc^-3 dex^-2
        (:meth:`phi` there, z clamped to the grid's nodes; see :func:`a19_resample`)."""
        return a19_resample(self.cube, self.z, self.logl, self.logl_edges, self.lognh_edges)


def _linear_weights(nodes: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lower node index, fraction) of x clamped to [nodes[0], nodes[-1]]: linear interpolation."""
    from .._tensor import bracket_np

    b = bracket_np(nodes, np.clip(x, nodes[0], nodes[-1]))
    return b.lo, b.frac


def a19_resample(cube: np.ndarray, z: np.ndarray, logl: np.ndarray, logl_edges: np.ndarray,
                 lognh_edges: np.ndarray) -> np.ndarray:
    """A cube phi[z, log L, log N_H] (Mpc^-3 dex^-2; nodes z, cell centres logl, cells lognh_edges)
    on A19's published array nodes [119 z, 150 log L, 80 log N_H].

    The interpolant of :meth:`XLFCube.phi`: linear in z (clamped to the nodes) and in log L
    between cell centres (held beyond the outer centres), constant in each log N_H cell. It is
    separable, so it is applied one axis at a time (log L, then the N_H cells, then z): about
    30 ms, against ~1 s for scipy's RegularGridInterpolator at the 1.4 million points, with
    which it agrees to rounding (~1e-16 relative; tested)."""
    ln, nn, zn = a19_logl_nodes(), a19_lognh_nodes(), a19_z_nodes()
    if ln.min() < logl_edges[0] or ln.max() > logl_edges[-1] or nn.min() < lognh_edges[0] or nn.max() > lognh_edges[-1]:
        raise PopsynthError("the A19 log L / log N_H nodes reach beyond this cube's cells",
                            "export a cube on a grid that covers log L 41-46 and log N_H 20-26")
    il, tl = _linear_weights(logl, ln)
    c = cube[:, il] * (1.0 - tl)[None, :, None] + cube[:, np.minimum(il + 1, logl.size - 1)] * tl[None, :, None]
    cell = np.clip(np.searchsorted(lognh_edges, nn, side="right") - 1, 0, lognh_edges.size - 2)
    c = c[:, :, cell]  # [nz, 150, 80]
    iz, tz = _linear_weights(z, zn)
    return c[iz] * (1.0 - tz)[:, None, None] + c[np.minimum(iz + 1, z.size - 1)] * tz[:, None, None]


XLF_CUBES = {"best": "phi", "p16": "phi_p16", "p50": "phi_p50", "p84": "phi_p84"}
"""Cubes an xlf_best.h5 may hold: the best cube (every run) and, from a posterior run, the 16th,
50th and 84th percentile cubes over the posterior samples."""


def load_xlf(path, which: str = "best") -> XLFCube:
    """Load an XLF cube written by :func:`export_xlf_hdf5`; PopsynthError for bad files.

    which: "best" (the cube ``phi``: best start, or the posterior mode) or "p16" / "p50" / "p84"
    (percentile cubes, written by ``--mode posterior`` runs)."""
    import h5py

    if which not in XLF_CUBES:
        raise PopsynthError(f"unknown cube {which!r}", f"use which = one of {', '.join(XLF_CUBES)}")
    p = Path(path)
    if not p.exists():
        raise PopsynthError(f"XLF file {p} not found", "pass the xlf_best.h5 written by train.py")
    try:
        with h5py.File(p, "r") as f:
            if XLF_CUBES[which] not in f:
                raise PopsynthError(f"{p} has no {which} cube ({XLF_CUBES[which]})",
                                    "percentile cubes come from runs with `mode` posterior; use which='best'")
            arrs = {k: f[k][()] for k in ("z", "logl", "logl_edges", "lognh", "lognh_edges")}
            arrs["phi"] = f[XLF_CUBES[which]][()]
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as exc:
        raise PopsynthError(f"{p} is not a popsynth XLF file ({exc})", "re-export it with train.py") from None
    return XLFCube(arrs["phi"], arrs["z"], arrs["logl"], arrs["logl_edges"], arrs["lognh"], arrs["lognh_edges"], attrs)


def write_a19_layout(path: Path, cube: np.ndarray, grid: Grid) -> None:
    """Write a cube phi[z, log L, log N_H] (Mpc^-3 dex^-2) resampled on A19's published array nodes
    [119 z, 150 log L, 80 log N_H] as a .npy file (atomically): :func:`a19_resample`."""
    a19 = a19_resample(np.asarray(cube, dtype=np.float64), grid.z, grid.logl, grid.logl_edges, grid.lognh_edges)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, a19)
    atomic_write(path, write)

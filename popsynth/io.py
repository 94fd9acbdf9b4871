"""Files: atomic checkpoints, XLF cube export (HDF5 + A19 .npy layout) and its loader.

IO lives here, at the edge; physics modules never import h5py.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import PopsynthError
from .grid import Grid, a19_logl_nodes, a19_lognh_nodes, a19_z_nodes, block_names

CHECKPOINT_FORMAT = "popsynth-checkpoint-1"


def atomic_write(path: Path, write) -> None:
    """Write a file atomically: ``write(tmp_path)`` then fsync and rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: Path, payload: dict) -> None:
    """Save a checkpoint dict (tensors on CPU) atomically with the format tag and version."""
    payload = {**payload, "format": CHECKPOINT_FORMAT, "version": __version__}
    cpu = _to_cpu(payload)
    atomic_write(path, lambda tmp: torch.save(cpu, tmp))


def load_checkpoint(path) -> dict:
    """Load a checkpoint; PopsynthError if it is missing, unreadable or not a popsynth checkpoint."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoint.pt"
    if not p.exists():
        raise PopsynthError(f"checkpoint {p} not found", "pass --resume the run folder or its checkpoint.pt")
    try:
        d = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files
        raise PopsynthError(f"checkpoint {p} is corrupt or unreadable ({type(exc).__name__})",
                            "delete it and start a new run, or resume from another copy") from None
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise PopsynthError(f"{p} is not a popsynth checkpoint (format tag missing or different)",
                            "resume from a checkpoint.pt written by this version of train.py")
    for key in ("config", "step", "opt_state"):
        if key not in d:
            raise PopsynthError(f"checkpoint {p} lacks '{key}'", "start a new run")
    return d


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def write_json(path: Path, obj) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


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
            f["block_index"].attrs["block_names"] = json.dumps(block_names())
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
    dex, so this is exact). Arguments broadcast. Points outside the grid raise PopsynthError,
    or give 0 with ``outside="zero"``.
    Attributes: cube [nz, nL, nN] (numpy), z, logl, logl_edges, lognh, lognh_edges, attrs (dict).
    """

    def __init__(self, cube, z, logl, logl_edges, lognh, lognh_edges, attrs):
        from scipy.interpolate import RegularGridInterpolator

        self.cube, self.z, self.logl, self.logl_edges = cube, z, logl, logl_edges
        self.lognh, self.lognh_edges, self.attrs = lognh, lognh_edges, attrs
        self._rgi = RegularGridInterpolator((z, logl, lognh), cube, method="linear", bounds_error=False, fill_value=None)

    def phi(self, z, logl, lognh, outside: str = "raise") -> np.ndarray:
        z, logl, lognh = np.broadcast_arrays(np.asarray(z, float), np.asarray(logl, float), np.asarray(lognh, float))
        inside = ((z >= self.z[0] - 1e-12) & (z <= self.z[-1] + 1e-12) & (logl >= self.logl_edges[0]) &
                  (logl <= self.logl_edges[-1]) & (lognh >= self.lognh_edges[0]) & (lognh <= self.lognh_edges[-1]))
        if outside == "raise" and not inside.all():
            raise PopsynthError(
                f"{int((~inside).sum())} point(s) outside the cube (z {self.z[0]:g}-{self.z[-1]:g}, log L "
                f"{self.logl_edges[0]:g}-{self.logl_edges[-1]:g}, log N_H {self.lognh_edges[0]:g}-{self.lognh_edges[-1]:g})",
                "restrict the points, or pass outside='zero'")
        cell = np.clip(np.searchsorted(self.lognh_edges, lognh, side="right") - 1, 0, self.lognh.size - 1)
        zz = np.clip(z, self.z[0], self.z[-1])
        ll = np.clip(logl, self.logl[0], self.logl[-1])
        pts = np.stack([zz, ll, self.lognh[cell]], axis=-1)
        out = self._rgi(pts.reshape(-1, 3)).reshape(z.shape)
        return np.where(inside, out, 0.0)

    __call__ = phi

    def a19_layout(self) -> np.ndarray:
        """The cube on the published A19 array nodes: [119 z, 150 log L, 80 log N_H], Mpc^-3 dex^-2."""
        zg, lg, ng = np.meshgrid(a19_z_nodes(), a19_logl_nodes(), a19_lognh_nodes(), indexing="ij")
        zg = np.clip(zg, self.z[0], self.z[-1])
        return self.phi(zg, lg, ng)


def load_xlf(path) -> XLFCube:
    """Load an XLF cube written by :func:`export_xlf_hdf5`; PopsynthError for bad files."""
    import h5py

    p = Path(path)
    if not p.exists():
        raise PopsynthError(f"XLF file {p} not found", "pass the xlf_best.h5 written by train.py")
    try:
        with h5py.File(p, "r") as f:
            arrs = {k: f[k][()] for k in ("phi", "z", "logl", "logl_edges", "lognh", "lognh_edges")}
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except (OSError, KeyError) as exc:
        raise PopsynthError(f"{p} is not a popsynth XLF file ({exc})", "re-export it with train.py") from None
    return XLFCube(arrs["phi"], arrs["z"], arrs["logl"], arrs["logl_edges"], arrs["lognh"], arrs["lognh_edges"], attrs)


def write_cxb_table(path: Path, columns: dict[str, np.ndarray], meta: dict) -> None:
    """Model CXB table as ECSV: energy (keV) and intensity columns (keV2 cm-2 s-1 keV-1 sr-1)."""
    from astropy.table import Table

    t = Table()
    for name, arr in columns.items():
        t[name] = np.asarray(arr, dtype=np.float64)
        t[name].unit = "keV" if name == "energy" else "keV2 / (cm2 s keV sr)"
    t.meta.update(meta)
    atomic_write(path, lambda tmp: t.write(tmp, format="ascii.ecsv", overwrite=True))

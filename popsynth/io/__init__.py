"""Files: atomic checkpoints, XLF cube export (HDF5 + A19 .npy layout) and its loader.

IO lives here, at the edge; physics modules never import h5py.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import PopsynthError
from ..grid import Grid, a19_logl_nodes, a19_lognh_nodes, a19_z_nodes, block_names

CHECKPOINT_FORMAT = "popsynth-checkpoint-1"


def current_umask() -> int:
    """The process umask (permission bits removed from new files), read without changing it
    where the OS allows (Linux: /proc/self/status); else set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write a file atomically: ``write(tmp_path)`` then fsync and rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn file.
    The file gets the permissions a plain ``open(path, "w")`` would give: 0o666 less the
    umask (mkstemp's temporary file is 0o600, which would otherwise be kept).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
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


_CHECKPOINT_TENSOR_DICTS = ("opt_state", "conv_state")


def checkpoint_file(path) -> Path:
    """``path/checkpoint.pt`` for a run folder, else ``path`` itself."""
    p = Path(path)
    return p / "checkpoint.pt" if p.is_dir() else p


def load_checkpoint(path) -> dict:
    """Load and structurally check a checkpoint (a run folder or its checkpoint.pt).

    Loaded with ``torch.load(weights_only=True)``: only tensors and plain containers and
    numbers are unpickled, so a crafted file cannot run code. Returns the payload dict with
    keys config (dict), step (int >= 0), opt_state and conv_state (dicts of tensors), w0
    (tensor), history (list), finished (bool), wall_seconds (float). Shapes and dtypes of the
    tensors depend on the run's settings and are checked by :func:`popsynth.run.load_resume`.
    Raises PopsynthError naming the file and the problem.
    """
    p = checkpoint_file(path)
    if not p.exists():
        raise PopsynthError(f"checkpoint {p} not found", "pass --resume the run folder or its checkpoint.pt")
    if not p.is_file():
        raise PopsynthError(f"checkpoint {p} is not a file", "pass --resume the run folder or its checkpoint.pt")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            d = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        text = str(exc)
        if "Weights only load failed" in text:
            import re

            m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f"the object {m.group(1)}" if m else "a pickle instruction"
            raise PopsynthError(f"checkpoint {p} holds {what}, which a popsynth checkpoint never contains; "
                                "refused to load it (unpickling it could run code)",
                                "resume only from a checkpoint.pt written by train.py, or start a new run") from None
        raise PopsynthError(f"checkpoint {p} is corrupt or unreadable ({type(exc).__name__})",
                            "delete it and start a new run, or resume from another copy") from None
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise PopsynthError(f"{p} is not a popsynth checkpoint (format tag missing or different)",
                            "resume from a checkpoint.pt written by this version of train.py")
    _check_checkpoint_structure(d, p)
    return d


def _check_checkpoint_structure(d: dict, p: Path) -> None:
    def bad(what: str):
        return PopsynthError(f"checkpoint {p}: {what}", "it was damaged or edited; start a new run, or resume from another copy")

    for key in ("config", "step", "opt_state", "conv_state", "w0"):
        if key not in d:
            raise bad(f"lacks '{key}'")
    if not isinstance(d["config"], dict) or not all(isinstance(k, str) for k in d["config"]):
        raise bad(f"'config' must be a dict of settings, got {type(d['config']).__name__}")
    step = d["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"'step' must be an integer >= 0, got {step!r}")
    for key in _CHECKPOINT_TENSOR_DICTS:
        v = d[key]
        if not isinstance(v, dict) or not v:
            raise bad(f"'{key}' must be a non-empty dict of tensors, got {type(v).__name__}")
        for k, t in v.items():
            if not isinstance(t, torch.Tensor):
                raise bad(f"'{key}[{k!r}]' must be a tensor, got {type(t).__name__}")
    if not isinstance(d["w0"], torch.Tensor):
        raise bad(f"'w0' must be a tensor, got {type(d['w0']).__name__}")
    hist = d.setdefault("history", [])
    if not isinstance(hist, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                  for x in h) for h in hist):
        raise bad("'history' must be a list of [step, best loss, median loss] entries")
    if not isinstance(d.setdefault("finished", False), bool):
        raise bad(f"'finished' must be true or false, got {d['finished']!r}")
    wall = d.setdefault("wall_seconds", 0.0)
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not (wall >= 0):
        raise bad(f"'wall_seconds' must be a number >= 0, got {wall!r}")


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def check_output_folder(path) -> None:
    """Check before any work that ``path`` is, or can be created as, a writable folder.

    Writability is tested by creating (and removing) a temporary file: permission bits alone
    do not tell (root ignores them; ACLs, read-only mounts and quotas are not in them).
    Raises PopsynthError: ``path`` is an existing file, lies below a file, or the folder (or
    the nearest existing folder above it, where it would be created) cannot be written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise PopsynthError(f"output folder {p} is an existing file, not a folder",
                            "pass --out a folder (new or existing), not a file")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise PopsynthError(f"output folder {p} cannot be created: {probe} is a file",
                            "pass --out a path whose parents are folders")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".popsynth-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        where = "is not writable" if probe == p else f"cannot be created: {probe} is not writable"
        reason = exc.strerror or type(exc).__name__
        raise PopsynthError(f"output folder {p} {where} ({reason})",
                            "pass --out a folder you can write to, or fix its permissions") from None


LOCK_NAME = ".popsynth.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, OSError):
        return True  # exists but is not ours, or cannot be checked: assume alive
    return True


class RunLock:
    """An exclusive lock on an output folder, so two runs never write the same files.

    The lock file ``<folder>/.popsynth.lock`` holds JSON {pid, host, started}. On POSIX it is
    held with ``fcntl.flock``, which the kernel releases when the process dies, so a lock file
    left by a killed run is stale by construction and is taken over (with a note through
    ``log``). A lock naming another host is never taken over (flock may not reach across a
    network file system); elsewhere (no fcntl) the file is created with O_EXCL and a lock
    whose PID no longer runs on this host is taken over. :meth:`release` removes the file.
    Use as a context manager or call acquire()/release().
    """

    def __init__(self, folder, log=print):
        self.folder, self.path, self.log = Path(folder), Path(folder) / LOCK_NAME, log
        self._fd: int | None = None

    def _owner(self) -> dict:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _busy(self, info: dict) -> PopsynthError:
        who = (f"PID {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
               if info else "an unknown process")
        return PopsynthError(f"another run ({who}) is using the output folder {self.folder} (lock file {self.path})",
                             "wait for it to finish or pass a different --out; if no such run exists any more, "
                             f"delete {self.path}")

    def _stale_note(self, info: dict) -> None:
        if info:
            pid, host = info.get("pid"), info.get("host")
            state = "has ended" if isinstance(pid, int) and not _pid_alive(pid) else "no longer holds it"
            self.log(f"note: took over the stale lock {self.path} of PID {pid} on {host} "
                     f"(started {info.get('started', '?')}; that process {state})")

    def _write_owner(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.fsync(fd)

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX
            return self._acquire_excl()
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy(self._owner()) from None
            try:  # the holder may have removed the file between our open and flock: retry on a fresh file
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = self._owner()
            if info and info.get("host") not in (None, socket.gethostname()):
                os.close(fd)
                raise self._busy(info)
            self._stale_note(info)
            self._write_owner(fd)
            self._fd = fd
            return self
        raise PopsynthError(f"could not lock the output folder {self.folder}", "retry, or pass a different --out")

    def _acquire_excl(self) -> "RunLock":
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                info = self._owner()
                pid = info.get("pid")
                if info.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
                    self._stale_note(info)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._busy(info) from None
            self._write_owner(fd)
            self._fd = fd
            return self
        raise PopsynthError(f"could not lock the output folder {self.folder}", "retry, or pass a different --out")

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


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
        """The cube on the published A19 array nodes: [119 z, 150 log L, 80 log N_H], Mpc^-3 dex^-2."""
        zg, lg, ng = np.meshgrid(a19_z_nodes(), a19_logl_nodes(), a19_lognh_nodes(), indexing="ij")
        zg = np.clip(zg, self.z[0], self.z[-1])
        return self.phi(zg, lg, ng)


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
                                    "percentile cubes come from runs with --mode posterior; use which='best'")
            arrs = {k: f[k][()] for k in ("z", "logl", "logl_edges", "lognh", "lognh_edges")}
            arrs["phi"] = f[XLF_CUBES[which]][()]
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


#: A19 redshift nodes resampled per chunk by :func:`write_a19_layout` (8 x 150 x 80 points).
A19_LAYOUT_Z_CHUNK = 8


def write_a19_layout(path: Path, cube: np.ndarray, grid: Grid) -> None:
    """Write a cube phi[z, log L, log N_H] (Mpc^-3 dex^-2) resampled on A19's published array nodes
    [119 z, 150 log L, 80 log N_H] as a .npy file (atomically).

    The array is :meth:`XLFCube.a19_layout`, evaluated a few redshift nodes at a time: the
    interpolation is point by point, so the chunks give the same array bit for bit while the
    interpolator's temporaries stay ~20 MB instead of ~300 MB for all 1.4 million points."""
    xc = XLFCube(cube, grid.z, grid.logl, grid.logl_edges, grid.lognh, grid.lognh_edges, {})
    zn, ln, nn = a19_z_nodes(), a19_logl_nodes(), a19_lognh_nodes()
    a19 = np.empty((zn.size, ln.size, nn.size))
    for i in range(0, zn.size, A19_LAYOUT_Z_CHUNK):  # as a19_layout(), a slab of z nodes at a time
        zg, lg, ng = np.meshgrid(zn[i:i + A19_LAYOUT_Z_CHUNK], ln, nn, indexing="ij")
        a19[i:i + A19_LAYOUT_Z_CHUNK] = xc.phi(np.clip(zg, xc.z[0], xc.z[-1]), lg, ng)

    def write(tmp):
        with open(tmp, "wb") as fh:
            np.save(fh, a19)
    atomic_write(path, write)


#: The files a run writes in its output folder: {summary key: file name}.
RUN_FILES = {"checkpoint": "checkpoint.pt", "xlf_hdf5": "xlf_best.h5", "xlf_a19_npy": "xlf_best_a19.npy",
             "cxb_table": "cxb_model.ecsv", "summary": "summary.json"}


def run_files(out) -> dict:
    """Paths of a run's output files (see :data:`RUN_FILES`) in the folder ``out``, as strings."""
    return {k: str(Path(out) / v) for k, v in RUN_FILES.items()}

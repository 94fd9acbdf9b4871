"""HDF5 files of the Green's function tables: write, read (optionally lazily) and add the
medium reference to an existing file.

IO lives here, at the edge; :mod:`popsynth.mc` computes, checks and applies the tables.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np

from ..errors import PopsynthError
from ..mc.currency import MEDIUM_REFERENCE_VERSION, REBUILD_COMMAND, medium_reference, xraydb_provenance
from ..mc.table import _ARRAY_DTYPES, _ARRAYS, GREENS_FORMAT_VERSION, GreensTable, grids_key
from ..mc.transport import Medium

MEDIUM_DATASET = "medium_rows"
"""HDF5 dataset holding the tabulated medium a table was built with (attributes: scalars)."""


def _write_medium_reference(f, ref: dict) -> None:
    """Write ``ref`` (:func:`medium_reference`) into the open h5py file ``f`` as dataset
    :data:`MEDIUM_DATASET` (gzip 9 + shuffle, one chunk per row) with attributes."""
    if MEDIUM_DATASET in f:
        del f[MEDIUM_DATASET]
    rows = np.ascontiguousarray(ref["rows"], dtype=np.float64)
    d = f.create_dataset(
        MEDIUM_DATASET, data=rows, chunks=(1, rows.shape[1]), compression="gzip",
        compression_opts=9, shuffle=True,
    )
    names = ["sigma_tot (stored as ln sigma_tot, cm^2 per H atom)", "P_compton"]
    d.attrs["row_names"] = json.dumps(names + [f"P_{n}" for n in ref["line_names"]])
    d.attrs["energy_grid"] = "E_j = exp(ln_e0 + j * dln) keV, j = 0 .. n - 1"
    d.attrs["ln_e0"] = float(ref["ln_e0"])
    d.attrs["dln"] = float(ref["dln"])
    d.attrs["scattering"] = str(ref["scattering"])
    d.attrs["line_names"] = json.dumps(list(ref["line_names"]))
    d.attrs["line_energies_keV"] = json.dumps([float(x) for x in ref["line_energies_keV"]])
    d.attrs["source"] = json.dumps(ref["source"], sort_keys=True)
    d.attrs["reference_version"] = MEDIUM_REFERENCE_VERSION


def _read_medium_reference(f) -> dict:
    """Inverse of :func:`_write_medium_reference` ({} when the file has no reference)."""
    if MEDIUM_DATASET not in f:
        return {}
    d = f[MEDIUM_DATASET]
    a = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in d.attrs.items()}
    return {
        "rows": np.asarray(d[()], dtype=np.float64),
        "ln_e0": float(a["ln_e0"]), "dln": float(a["dln"]), "scattering": str(a["scattering"]),
        "line_names": tuple(json.loads(a["line_names"])),
        "line_energies_keV": np.asarray(json.loads(a["line_energies_keV"]), dtype=np.float64),
        "source": json.loads(a["source"]),
    }


def add_medium_reference(
    path: str | os.PathLike, medium: Medium, *, force: bool = False, note: str = ""
) -> Path:
    """Store ``medium`` as the medium reference of an existing table file, without touching
    its Monte Carlo datasets (they stay byte-identical; only the dataset ``medium_rows`` and
    the attributes grids_key, medium_reference_version, xraydb_version, xraydb_db_version,
    xraydb_db_sha256, numpy_version, medium_reference_added_utc and medium_reference_note are
    added or replaced). Written to a copy, then moved over the file (atomic).

    Refuses (PopsynthError) unless ``medium.fingerprint()`` equals the table's recorded
    ``medium_fingerprint``, i.e. the medium is bit for bit the one the table was built with
    (``force=True`` skips this). On CPUs whose numpy SIMD ``exp`` differs from the build
    machine's, tabulate with the generic code path, e.g.
    ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL"`` (``python -m popsynth.mc.build
    --add-reference``). Returns the path.
    """
    import shutil

    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        fp = f.attrs.get("medium_fingerprint", b"")
        fp = fp.decode() if isinstance(fp, bytes) else str(fp)
    if medium.fingerprint() != fp and not force:
        raise PopsynthError(
            f"the medium (fingerprint {medium.fingerprint()}) is not bit-identical to the one "
            f"{path} was built with ({fp})",
            "tabulate it as the build did (on AVX-512 CPUs: NPY_DISABLE_CPU_FEATURES='X86_V4 "
            f"AVX512_ICL'), or rebuild the table with '{REBUILD_COMMAND}'",
        )
    table = read_greens(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "r+") as f:
            _write_medium_reference(f, medium_reference(medium))
            f.attrs["grids_key"] = grids_key(table.kind, table.e_in_edges, table.e_out_edges,
                                             table.log_nh, table.theta_tor_deg, table.cos_edges)
            f.attrs["medium_reference_version"] = MEDIUM_REFERENCE_VERSION
            for k, v in xraydb_provenance().items():
                f.attrs[k] = v
            f.attrs["numpy_version"] = str(np.__version__)
            f.attrs["medium_reference_added_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if note:
                f.attrs["medium_reference_note"] = str(note)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _round_mantissa(a: np.ndarray, keep_bits: int = 10, dtype=np.float32) -> np.ndarray:
    """Copy of ``a`` as ``dtype`` (float32 or float16) rounded to ``keep_bits`` explicit
    mantissa bits: relative rounding error <= 2^-(keep_bits+1) (4.9e-4 for 10 bits, far below
    the Monte Carlo errors; 3 % for the 4 bits used for the error arrays). The zeroed low bits
    make the data compress well."""
    x = np.ascontiguousarray(a, dtype=dtype)
    if dtype == np.float32:
        ui, wide, n_mant = np.uint32, np.uint64, 23
    else:
        ui, wide, n_mant = np.uint16, np.uint32, 10
    drop = n_mant - keep_bits
    i = x.view(ui).astype(wide)
    i = (i + wide(1 << (drop - 1))) & ~wide((1 << drop) - 1)
    out = i.astype(ui).view(dtype)
    return np.where(np.isfinite(x), out, x)


def write_greens(table: GreensTable, path: str | os.PathLike) -> Path:
    """Write ``table`` to HDF5 at ``path`` atomically (temporary file, then os.replace).

    Datasets: energy edges, nodes, cos edges, line data; G, G_line, T_mc as float32 rounded to
    10 mantissa bits (relative rounding < 5e-4), relative errors as float16 rounded to 4
    mantissa bits (3 %), all gzip + shuffle, chunked per
    configuration; bookkeeping arrays. Attributes: ``meta`` (provenance, version_key) plus kind,
    n_torus_bins, units. The medium reference (``table.medium_ref``), if any, goes to the
    dataset ``medium_rows`` (float64, gzip + shuffle) with its scalars as attributes
    (:func:`_write_medium_reference`). Returns the final path.
    """
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    comp = dict(compression="gzip", compression_opts=6, shuffle=True)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["kind"] = table.kind
            f.attrs["n_torus_bins"] = int(table.n_torus_bins)
            f.attrs["units"] = (
                "energies keV; log_nh log10(cm^-2); theta_tor deg; G dimensionless photons per "
                "photon (see normalisation); rel_err dimensionless"
            )
            for k, v in table.meta.items():
                if isinstance(v, bool) or not isinstance(v, (str, int, float)):
                    v = json.dumps(v)
                f.attrs[k] = str(v) if isinstance(v, str) else v
            f["e_in_edges"] = table.e_in_edges
            f["e_out_edges"] = table.e_out_edges
            f["log_nh"] = table.log_nh
            f["theta_tor_deg"] = table.theta_tor_deg
            f["cos_edges"] = table.cos_edges
            f["line_energies_keV"] = table.line_energies_keV
            f["line_names"] = np.array([s.encode() for s in table.line_names])
            for name in _ARRAYS:
                a = getattr(table, name)
                chunks = (1, 1) + a.shape[2:]
                if name.endswith("rel_err"):
                    data = _round_mantissa(np.minimum(a, 6.0e4), keep_bits=4, dtype=np.float16)
                else:
                    data = _round_mantissa(a, keep_bits=10)
                f.create_dataset(name, data=data, chunks=chunks, **comp)
            f["photons"] = table.photons
            for name in ("absorbed", "dropped", "roulette"):
                f.create_dataset(name, data=np.asarray(getattr(table, name), dtype=np.float32), **comp)
            if table.medium_ref:
                _write_medium_reference(f, table.medium_ref)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _file_stamp(path: Path):
    """(size, mtime_ns, ctime_ns, inode) of a file, None if it cannot be stat'ed: a rewritten or
    replaced file gets another stamp."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _LazyArrays:
    """The big arrays of a table read with ``read_greens(lazy=True)``: each is read from the
    file on first use (:meth:`GreensTable.__getattr__`), if the file is still the one the
    table was read from (same stamp before and after the read), else PopsynthError."""

    def __init__(self, path: Path, stamp, names):
        self.path, self.stamp, self.names = Path(path), stamp, frozenset(names)
        self._lock = threading.Lock()

    def __getstate__(self):
        return {"path": self.path, "stamp": self.stamp, "names": self.names}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def read(self, name: str) -> np.ndarray:
        import h5py

        fix = "read the table again (read_greens, or load_greens in a new process)"
        with self._lock:
            if _file_stamp(self.path) != self.stamp:
                raise PopsynthError(f"Green's function table {self.path} changed or vanished since it was "
                                    f"read, so its {name} array can no longer be loaded", fix)
            with h5py.File(self.path, "r") as f:
                a = np.asarray(f[name][()], dtype=_ARRAY_DTYPES[name])
            if _file_stamp(self.path) != self.stamp:
                raise PopsynthError(f"Green's function table {self.path} changed while its {name} array "
                                    "was read", fix)
        return a


def read_greens(path: str | os.PathLike, expect_version_key: str | None = None, lazy: bool = False) -> GreensTable:
    """Read a table written by :func:`write_greens`.

    lazy: read the grids, metadata and bookkeeping arrays now, and each of the big arrays
    (``G``, ``G_line``, ``T_mc`` and their relative errors; 270 MB in memory for the shipped
    torus) only when it is first used, from the same file (a PopsynthError if the file has
    changed since). The spectra use ``G`` and ``G_line`` only, the load-time check none of them.

    Raises PopsynthError if the file is missing, has another format version, or (when
    ``expect_version_key`` is given) another version key: then rebuild it with
    ``python -m popsynth.mc.build``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise PopsynthError(
            f"Green's function table {path} not found",
            "rebuild it with 'python -m popsynth.mc.build --kind all --out data/greens/'",
        )
    stamp = _file_stamp(path) if lazy else None
    with h5py.File(path, "r") as f:
        meta = {}
        for k, v in f.attrs.items():
            if k in ("kind", "n_torus_bins", "units"):
                continue
            v = v.decode() if isinstance(v, bytes) else v
            meta[k] = v.item() if isinstance(v, np.generic) else v
        fmt = str(meta.get("format_version", ""))
        if fmt != GREENS_FORMAT_VERSION:
            raise PopsynthError(
                f"{path} has format version '{fmt}', this code reads '{GREENS_FORMAT_VERSION}'",
                "rebuild it with 'python -m popsynth.mc.build'",
            )
        if expect_version_key is not None and meta.get("version_key") != expect_version_key:
            raise PopsynthError(
                f"{path} has version key {meta.get('version_key')}, expected {expect_version_key}",
                "rebuild it with 'python -m popsynth.mc.build'",
            )
        arr = {k: f[k][()] for k in f.keys()
               if isinstance(f[k], h5py.Dataset) and k != MEDIUM_DATASET and not (lazy and k in _ARRAYS)}
        medium_ref = _read_medium_reference(f)
        kind = str(f.attrs["kind"])
        n_torus = int(f.attrs["n_torus_bins"])
    big = {k: (None if lazy else np.asarray(arr[k], dtype=_ARRAY_DTYPES[k])) for k in _ARRAYS}
    table = GreensTable(
        kind=kind,
        e_in_edges=arr["e_in_edges"].astype(np.float64),
        e_out_edges=arr["e_out_edges"].astype(np.float64),
        log_nh=arr["log_nh"].astype(np.float64),
        theta_tor_deg=arr["theta_tor_deg"].astype(np.float64),
        cos_edges=arr["cos_edges"].astype(np.float64),
        n_torus_bins=n_torus,
        line_names=tuple(s.decode() if isinstance(s, bytes) else str(s) for s in arr["line_names"]),
        line_energies_keV=arr["line_energies_keV"].astype(np.float64),
        **big,
        photons=arr["photons"].astype(np.int64),
        absorbed=arr["absorbed"].astype(np.float64), dropped=arr["dropped"].astype(np.float64),
        roulette=arr["roulette"].astype(np.float64), meta=meta, medium_ref=medium_ref,
    )
    if lazy:
        for k in _ARRAYS:  # not in the instance: the first access goes to __getattr__, which reads it
            del table.__dict__[k]
        table._lazy = _LazyArrays(path, stamp, _ARRAYS)
    return table

"""The shipped Green's function tables (data/greens/): named without reading them
(:class:`ShippedTable`), read once per process and checked once per file (:func:`load_greens`,
:func:`check_shipped_tables`)."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import PopsynthError
from ..io.greens import read_greens
from ..paths import data_dir
from .currency import _TODAY, StaleTableWarning, TableCheck, check_table
from .table import GreensTable


def default_table_path(kind: str) -> Path:
    """Path of the shipped table of ``kind`` ("torus" or "slab"): data/greens/<kind>.h5."""
    return data_dir() / "greens" / f"{kind}.h5"


@dataclass(frozen=True)
class ShippedTable:
    """The shipped Green's table of ``kind`` ("torus" or "slab"), named but not read.

    Spectral components take it in place of a :class:`GreensTable` (the default of
    :class:`~popsynth.spectra.reprocessed.Reflection` and
    :class:`~popsynth.spectra.reprocessed.TorusReprocessed`): a cache key names the table by the
    sha256 of its file (:attr:`path`) without opening it, and :meth:`load` reads it when a
    spectrum must actually be computed (the spectral-table builder does so on a cache miss)."""

    kind: str

    def __post_init__(self):
        if self.kind not in ("torus", "slab"):
            raise PopsynthError(f"unknown Green's function kind '{self.kind}'", "use 'torus' or 'slab'")

    @property
    def path(self) -> Path:
        """data/greens/<kind>.h5 (under ``POPSYNTH_DATA`` when set), looked up when asked."""
        return default_table_path(self.kind)

    def load(self) -> GreensTable:
        """The table, read by :func:`load_greens` (once per process, lazily, checked)."""
        return load_greens(self.kind)


_LOADED: dict = {}
_CHECKS: dict = {}  # (path, size, mtime) -> TableCheck of the load-time check
_WARNED: set = set()  # files already warned about in this process


def _check_loaded(path: Path, key, table: GreensTable) -> TableCheck:
    """Load-time currency check of a shipped table (sampled :func:`check_table`), cached per
    file version; warns with :class:`StaleTableWarning` the first time a file is stale in this
    process. Never raises: a failing check is reported as a warning."""
    ck = key if key is not None else (str(path),)
    chk = _CHECKS.get(ck)
    if chk is None:
        t0 = time.perf_counter()
        try:
            chk = check_table(table, sample=True, name=str(path))
        except Exception as err:  # noqa: BLE001 - the check must not stop a fit
            chk = TableCheck(
                name=str(path), current=False,
                problems=[f"the currency check itself failed ({type(err).__name__}: {err})"],
                seconds=time.perf_counter() - t0,
            )
        _CHECKS[ck] = chk
    if not chk.current and str(path) not in _WARNED:
        _WARNED.add(str(path))
        warnings.warn(chk.message(), StaleTableWarning, stacklevel=4)
    return chk


def _load(kind: str) -> tuple[GreensTable, TableCheck]:
    if kind not in ("torus", "slab"):
        raise PopsynthError(f"unknown Green's function kind '{kind}'", "use 'torus' or 'slab'")
    path = default_table_path(kind)
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _LOADED:
        table = _LOADED[key]
    else:
        table = read_greens(path, lazy=True)  # the big arrays are read when first used
        if key is not None:
            _LOADED[key] = table
    return table, _check_loaded(path, key, table)


def load_greens(kind: str) -> GreensTable:
    """Read the shipped table of ``kind`` ("torus" or "slab") from data/greens/.

    Tables are read once per process (keyed by path, size and modification time) and shared;
    treat the returned table as read-only. They are read lazily (``read_greens(lazy=True)``):
    the grids and metadata now, each big array when first used (the spectra use ``G`` and
    ``G_line``; the error arrays and ``T_mc`` stay on disk unless something asks for them). Each file is checked once per process against
    today's code and physics data (:func:`check_table` on a sample of the medium nodes,
    ~0.15 s; :func:`check_shipped_tables`); a stale table is still returned, with one
    :class:`StaleTableWarning` per file and process naming what differs and the fix."""
    return _load(kind)[0]


def check_shipped_tables(kinds: tuple[str, ...] = ("torus", "slab")) -> dict[str, TableCheck]:
    """Load-time currency check of the shipped tables: {kind: :class:`TableCheck`}.

    Loads each table with :func:`load_greens` (so a stale one warns, once per process, with
    :class:`StaleTableWarning`) and returns the cached check results. For the full
    comparison over every medium node use ``check_table(read_greens(path))``.
    """
    return {k: _load(k)[1] for k in kinds}


def _clear_check_caches() -> None:
    """Forget cached check results, today's physics samples (in memory and in the cache folder)
    and issued warnings (tests that change the physics)."""
    from ..io.cache import cache_file

    _TODAY.clear()
    _CHECKS.clear()
    _WARNED.clear()
    for f in cache_file("physics", "x").parent.glob("medium-*.pkl"):
        f.unlink(missing_ok=True)

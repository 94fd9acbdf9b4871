"""ECSV tables: the one reader (with unit checks and conversion) and the one writer.

:func:`read_ecsv` reads a file into an :class:`EcsvTable`: the astropy table, its path, and
how to report a problem with it (``label``: "counts file", "CXB file", ...; ``fix``: what the
user does about a bad file). Its methods give columns as float64 arrays in a requested unit
(:meth:`EcsvTable.column`), check required columns and raise one-line
:class:`~popsynth.errors.PopsynthError` messages that name the file and the problem.
:func:`write_ecsv` writes a table atomically (:func:`popsynth.io.files.atomic_write`).

Example::

    t = read_ecsv(path, label="counts file", fix="regenerate the tables")
    t.require_columns(("flux", "value"))
    flux = t.column("flux", "erg cm-2 s-1")     # float64 [n], converted to erg cm^-2 s^-1
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PopsynthError
from .files import atomic_write

__all__ = ["EcsvTable", "read_ecsv", "write_ecsv"]


@dataclass
class EcsvTable:
    """A read ECSV table with the context to report problems in it.

    Attributes: table (astropy Table), path (Path), label (what the file is, e.g. "counts
    file"; messages read "<label> <path>: <problem>"), fix (default remedy for a bad file).
    """

    table: object
    path: Path
    label: str = "table"
    fix: str = "check the file"

    @property
    def meta(self) -> dict:
        """The header metadata (an empty dict where the file has none)."""
        return self.table.meta or {}

    @property
    def colnames(self) -> list[str]:
        return list(self.table.colnames)

    def __len__(self) -> int:
        return len(self.table)

    def __contains__(self, name: str) -> bool:
        return name in self.table.colnames

    def __getitem__(self, name: str):
        """The astropy column ``name`` as stored (no unit check; see :meth:`column`)."""
        return self.table[name]

    def fail(self, problem: str, fix: str | None = None) -> PopsynthError:
        """The error for ``problem`` in this file: "<label> <path>: <problem>" (one line)."""
        return PopsynthError(f"{self.label} {self.path}: {problem}", self.fix if fix is None else fix)

    def require_columns(self, cols, fix: str | None = None) -> None:
        """Raise unless every column of ``cols`` is present (the message lists the missing ones)."""
        missing = [c for c in cols if c not in self.table.colnames]
        if missing:
            raise self.fail(f"missing column(s) {', '.join(missing)} (required: {', '.join(cols)})", fix)

    def column(self, name: str, unit: str | None = None, fixes: dict | None = None) -> np.ndarray:
        """Column ``name`` as a contiguous float64 array [n]; masked entries become NaN.

        ``unit`` (an astropy unit string, e.g. "erg cm-2 s-1"): the column must carry a unit
        equivalent to it and is converted to it (values times the conversion factor; a factor
        of exactly 1 leaves the values bit for bit). ``unit`` None: the values as stored,
        whatever the column's unit. ``fixes`` optionally maps the problems "no_unit",
        "wrong_unit" and "not_numeric" to their remedies (default: :attr:`fix`). Raises
        PopsynthError for a missing or wrong unit or a non-numeric column.
        """
        import astropy.units as u

        fixes = fixes or {}
        c = self.table[name]
        factor = 1.0
        if unit is not None:
            if c.unit is None:
                raise self.fail(f"column '{name}' has no unit (expected {unit})", fixes.get("no_unit"))
            target = u.Unit(unit)
            if isinstance(c.unit, u.UnrecognizedUnit) or not c.unit.is_equivalent(target):
                raise self.fail(f"column '{name}' has wrong unit '{c.unit}' (expected {unit})", fixes.get("wrong_unit"))
            factor = c.unit.to(target)
        try:
            vals = np.ma.filled(np.ma.asarray(c, dtype=float), np.nan)
        except (TypeError, ValueError):
            raise self.fail(f"column '{name}' is not numeric (dtype {c.dtype})", fixes.get("not_numeric")) from None
        return np.ascontiguousarray(np.asarray(vals, dtype=np.float64) * factor)


def read_ecsv(path, label: str = "table", fix: str = "check the file", missing_fix: str | None = None) -> EcsvTable:
    """Read the ECSV file ``path`` into an :class:`EcsvTable` (units of unknown name are kept
    as astropy UnrecognizedUnit without a warning; :meth:`EcsvTable.column` rejects them).

    Raises PopsynthError "<label> <path>: file not found" (remedy ``missing_fix``, default
    ``fix``) or "<label> <path>: not a readable ECSV table (<error type>: <detail>)".
    """
    from astropy.table import Table
    from astropy.units import UnitsWarning

    path = Path(path)
    if not path.is_file():
        raise PopsynthError(f"{label} {path}: file not found", fix if missing_fix is None else missing_fix)
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    table = _READ.get(key)
    if table is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnitsWarning)
                table = Table.read(path, format="ascii.ecsv")
        except Exception as exc:  # astropy raises many types; the user gets one message
            detail = " ".join(str(exc).split())[:200].rstrip(". ") or "no detail"
            raise PopsynthError(f"{label} {path}: not a readable ECSV table ({type(exc).__name__}: {detail})", fix) from None
        if len(_READ) >= _READ_MAX:
            _READ.pop(next(iter(_READ)))
        _READ[key] = table
    return EcsvTable(table.copy(), path, label, fix)


#: Tables read in this process, by (path, modification time, size): a run reads each data table
#: twice (the early check of every input, then the set-up), and astropy's ECSV parser takes
#: ~10 ms per file. A changed file (new mtime or size) is read again; callers get a copy.
_READ: dict = {}
_READ_MAX = 64


def write_ecsv(path, table=None, *, columns: dict | None = None, units: dict | None = None,
               meta: dict | None = None) -> None:
    """Write an ECSV table atomically.

    ``table``: an astropy Table written as it is; or None, and the table is built from
    ``columns`` ({name: array}, stored as float64 unless the array is not numeric) with
    ``units`` ({name: unit string}) and header ``meta``.
    """
    if table is None:
        from astropy.table import Table

        table = Table()
        for name, arr in (columns or {}).items():
            a = np.asarray(arr)
            table[name] = a.astype(np.float64) if a.dtype.kind in "fiu" else a
            if units and units.get(name) is not None:
                table[name].unit = units[name]
        table.meta.update(meta or {})
    atomic_write(Path(path), lambda tmp: table.write(tmp, format="ascii.ecsv", overwrite=True))

"""Cosmic X-ray background (CXB) spectra: the training data of the fit, loaded and validated.

The tables live in ``<data_dir>/cxb/*.ecsv`` (written by ``data/cxb/make_cxb_tables.py``; the
selection, provenance and known issues are in ``data/cxb/README.md`` and in each file's
header). Every table holds all points of its source with a boolean column ``used_in_fit``;
by default the loader returns only those points, which reproduce the point counts of Ananna
et al. 2019, Table 5: Chandra COSMOS 25, RXTE 34, Swift/BAT 15. ASCA is kept for plots and
validation only (no point used in the fit; load it with ``selected=False``).

Quantity: E^2 dN/dE in keV^2 cm^-2 s^-1 keV^-1 sr^-1 (= keV cm^-2 s^-1 sr^-1); energies in keV.

Every problem with a file (missing, not ECSV, a missing column, a wrong unit, bad values, no
point selected, fewer or more rows or selected points than the header declares in its
``n_points`` / ``n_used_in_fit`` metadata, e.g. a truncated file) raises
:class:`popsynth.errors.PopsynthError` naming the file, the problem and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, NamedTuple

import numpy as np

from ..errors import PopsynthError
from ..io.ecsv import EcsvTable, read_ecsv

__all__ = [
    "CXBDataset",
    "TRAINING_SETS",
    "ALL_SETS",
    "CXB_FILES",
    "INTENSITY_UNIT",
    "cxb_path",
    "load_cxb_dataset",
    "load_cxb",
]


class CXBDataset(NamedTuple):
    """One CXB spectrum (all points, or only those used in the fit)."""

    name: str  # "chandra_cosmos" | "rxte" | "swift_bat" | "asca"
    label: str  # e.g. "Chandra COSMOS (Cappelluti et al. 2017)"
    energy: np.ndarray  # keV, [n], strictly increasing
    intensity: np.ndarray  # E^2 dN/dE, keV^2 cm^-2 s^-1 keV^-1 sr^-1, [n]
    err_lo: np.ndarray  # 1-sigma below, same units, [n], > 0
    err_hi: np.ndarray  # 1-sigma above, same units, [n], > 0
    e_lo: np.ndarray  # keV, bin lower edge or NaN where the source gives none
    e_hi: np.ndarray  # keV, bin upper edge or NaN
    reference: str  # the paper the numbers come from
    path: str  # the file read
    used_in_fit: np.ndarray | None = None  # bool [n]: the file's selection flag for these points
    meta: dict | None = None  # the file's header metadata (provenance, instrument, notes, n_points, ...)
    units: dict | None = None  # {column name: unit string as stored, or None} for every column of the file


TRAINING_SETS = ("chandra_cosmos", "rxte", "swift_bat")
ALL_SETS = TRAINING_SETS + ("asca",)

CXB_FILES = {
    "chandra_cosmos": "chandra_cosmos_cappelluti2017.ecsv",
    "rxte": "rxte_revnivtsev2003.ecsv",
    "swift_bat": "swift_bat_ajello2008.ecsv",
    "asca": "asca_gendreau1995.ecsv",
}

_DEFAULT_LABELS = {
    "chandra_cosmos": "Chandra COSMOS (Cappelluti et al. 2017)",
    "rxte": "RXTE/PCA (Revnivtsev et al. 2003)",
    "swift_bat": "Swift/BAT (Ajello et al. 2008)",
    "asca": "ASCA SIS (Gendreau et al. 1995)",
}
_DEFAULT_REFERENCES = {
    "chandra_cosmos": "Cappelluti et al. 2017, ApJ, 837, 19",
    "rxte": "Revnivtsev et al. 2003, A&A, 411, 329",
    "swift_bat": "Ajello et al. 2008, ApJ, 689, 666",
    "asca": "Gendreau et al. 1995, PASJ, 47, L5",
}

INTENSITY_UNIT = "keV2 cm-2 s-1 keV-1 sr-1"
_ENERGY_COLS = ("energy", "e_lo", "e_hi")
_INTENSITY_COLS = ("intensity", "err_lo", "err_hi")
_REQUIRED = _ENERGY_COLS + _INTENSITY_COLS + ("used_in_fit",)

_REGEN = "regenerate the CXB tables with 'python data/cxb/make_cxb_tables.py'"


def _fail(path: Path, problem: str, fix: str) -> PopsynthError:
    return PopsynthError(f"CXB file {path}: {problem}", fix)


def _resolve_dir(data_dir) -> Path:
    if data_dir is None:
        from ..paths import data_dir as _default_data_dir

        data_dir = _default_data_dir()
    return Path(data_dir) / "cxb"


def cxb_path(name: str, data_dir=None) -> Path:
    """Path of the ECSV file of data set ``name`` (not checked for existence)."""
    if name not in CXB_FILES:
        raise PopsynthError(
            f"unknown CXB dataset {name!r}", f"use one of: {', '.join(ALL_SETS)}"
        )
    return _resolve_dir(data_dir) / CXB_FILES[name]


def _read_table(path: Path) -> EcsvTable:
    return read_ecsv(path, label="CXB file", fix=f"check the file or {_REGEN}",
                     missing_fix=f"{_REGEN}, or pass data_dir= the folder that holds cxb/")


def _column_values(table: EcsvTable, col: str, target, path: Path) -> np.ndarray:
    """Column ``col`` as float64 in unit ``target``; masked entries become NaN."""
    return table.column(col, target, fixes={
        "no_unit": f"write the unit into the ECSV header or {_REGEN}",
        "wrong_unit": f"convert the column to {target} or {_REGEN}",
        "not_numeric": f"fix the column or {_REGEN}"})


def _used_flags(table, path: Path) -> np.ndarray:
    c = table["used_in_fit"]
    raw = np.ma.asarray(c)
    if np.ma.is_masked(raw):
        raise _fail(
            path,
            "column 'used_in_fit' has empty entries",
            "give every row True or False",
        )
    raw = np.asarray(raw)
    if raw.dtype == bool:
        return raw.copy()
    if np.issubdtype(raw.dtype, np.integer) and np.all(np.isin(raw, (0, 1))):
        return raw.astype(bool)
    raise _fail(
        path,
        f"column 'used_in_fit' must be boolean (found dtype {raw.dtype})",
        f"write it as True/False with datatype bool or {_REGEN}",
    )


def _declared(meta, key: str, path: Path) -> int | None:
    v = meta.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _fail(path, f"header field '{key}' must be a count (integer >= 0), found {v!r}",
                    f"fix the header or {_REGEN}")
    return v


def _check_declared_counts(meta, n_rows: int, n_used: int, path: Path) -> None:
    """Rows and selected points against the header's ``n_points`` and ``n_used_in_fit``
    (each checked where declared): a file cut at a row boundary still parses, so only the
    declared numbers reveal it."""
    for key, found, what in (("n_points", n_rows, "rows"), ("n_used_in_fit", n_used, "points with used_in_fit True")):
        expected = _declared(meta, key, path)
        if expected is not None and expected != found:
            raise _fail(
                path,
                f"the header declares {key}: {expected} but the file has {found} {what} "
                f"({'truncated or rows deleted' if found < expected else 'rows added or changed'})",
                f"restore the file (e.g. 'git checkout -- {path.parent.name}/{path.name}' in data/) or {_REGEN}",
            )


def load_cxb_dataset(name: str, selected: bool = True, data_dir=None) -> CXBDataset:
    """Load and validate one CXB data set.

    Parameters
    ----------
    name : one of :data:`ALL_SETS` ("chandra_cosmos", "rxte", "swift_bat", "asca").
    selected : if True (default) return only the points with ``used_in_fit``; else all.
    data_dir : the project's data folder (default :func:`popsynth.paths.data_dir`); the file
        is read from ``data_dir/"cxb"``.
    """
    path = cxb_path(name, data_dir)
    table = _read_table(path)
    table.require_columns(_REQUIRED, f"add the columns or {_REGEN}")
    if len(table) == 0:
        raise _fail(path, "the table has no rows", _REGEN)

    cols = {c: _column_values(table, c, "keV", path) for c in _ENERGY_COLS}
    cols.update({c: _column_values(table, c, INTENSITY_UNIT, path) for c in _INTENSITY_COLS})
    used = _used_flags(table, path)
    _check_declared_counts(table.meta, len(table), int(used.sum()), path)

    for c in ("energy", "intensity", "err_lo", "err_hi"):
        v = cols[c]
        bad = ~(np.isfinite(v) & (v > 0))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            kind = "non-finite" if not np.isfinite(v[i]) else "non-positive"
            raise _fail(
                path,
                f"column '{c}' has {int(bad.sum())} non-finite or non-positive value(s) "
                f"(first: row {i}, {kind} value {v[i]!r})",
                f"every {c} must be finite and > 0; fix the row or {_REGEN}",
            )
    e = cols["energy"]
    if e.size > 1 and not np.all(np.diff(e) > 0):
        i = int(np.flatnonzero(np.diff(e) <= 0)[0])
        raise _fail(
            path,
            f"energies not strictly increasing (row {i + 1}: {e[i + 1]!r} keV after {e[i]!r} keV)",
            f"sort the rows by energy and remove duplicates, or {_REGEN}",
        )
    for c in ("e_lo", "e_hi"):
        v = cols[c]
        if np.any(np.isinf(v)) or np.any(v[np.isfinite(v)] <= 0):
            raise _fail(
                path,
                f"column '{c}' has infinite or non-positive bin edges",
                f"bin edges must be > 0, or NaN where unknown; {_REGEN}",
            )
    lo_bad = np.isfinite(cols["e_lo"]) & (cols["e_lo"] > e)
    hi_bad = np.isfinite(cols["e_hi"]) & (cols["e_hi"] < e)
    if lo_bad.any() or hi_bad.any():
        i = int(np.flatnonzero(lo_bad | hi_bad)[0])
        raise _fail(
            path,
            f"bin edges do not bracket the energy (row {i}: {cols['e_lo'][i]!r} <= "
            f"{e[i]!r} <= {cols['e_hi'][i]!r} keV fails)",
            f"fix e_lo/e_hi (NaN where unknown) or {_REGEN}",
        )

    mask = used if selected else np.ones_like(used)
    if not mask.any():
        raise _fail(
            path,
            "zero points selected (column 'used_in_fit' is False everywhere)",
            "load it with selected=False (ASCA is kept for plots/validation only) "
            "or set used_in_fit True for the points to fit",
        )

    meta = table.meta
    label = str(meta.get("label") or _DEFAULT_LABELS[name])
    reference = str(meta.get("paper") or _DEFAULT_REFERENCES[name])
    return CXBDataset(
        name=name,
        label=label,
        energy=e[mask].copy(),
        intensity=cols["intensity"][mask].copy(),
        err_lo=cols["err_lo"][mask].copy(),
        err_hi=cols["err_hi"][mask].copy(),
        e_lo=cols["e_lo"][mask].copy(),
        e_hi=cols["e_hi"][mask].copy(),
        reference=reference,
        path=str(path),
        used_in_fit=used[mask].copy(),
        meta=dict(meta),
        units={c: (None if table[c].unit is None else str(table[c].unit)) for c in table.colnames},
    )


def load_cxb(
    names: Iterable[str] | str = TRAINING_SETS, selected: bool = True, data_dir=None
) -> list[CXBDataset]:
    """Load several CXB data sets (default: the three training sets of A19), in order."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    unknown = [n for n in names if n not in CXB_FILES]
    if unknown:
        raise PopsynthError(
            f"unknown CXB dataset(s) {', '.join(map(repr, unknown))}",
            f"use one of: {', '.join(ALL_SETS)}",
        )
    return [load_cxb_dataset(n, selected=selected, data_dir=data_dir) for n in names]

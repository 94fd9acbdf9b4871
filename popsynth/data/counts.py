"""Observed source number counts and Compton-thick (CT) fractions, loaded and validated.

The tables live in ``<data_dir>/counts/*.ecsv`` (written by
``data/counts/make_counts_tables.py``; provenance, selections, adopted errors and the
constraints of Ananna et al. 2019 Table 2 that could not be obtained are in
``data/counts/README.md`` and in each file's header).

* Number counts: one file per constraint, with columns ``flux`` (observed-frame band flux,
  erg cm^-2 s^-1), ``value``, ``err_lo``, ``err_hi`` and the metadata ``quantity`` =
  ``"N(>S)"`` (cumulative, deg^-2) or ``"dN/dS"`` (differential, deg^-2 (erg cm^-2 s^-1)^-1),
  ``band_keV``, ``paper``, ``population`` ... :func:`list_counts` names them,
  :func:`load_counts` returns a :class:`CountsData`: the complete record of the file (also its
  bin edges ``flux_lo``/``flux_hi``, area curve ``area_at_flux``, every other column, the
  units and the header metadata), so nothing downstream reads the file again.
* CT fractions: ``ct_fractions.ecsv``, one row per survey; :func:`load_ct_fractions` returns a
  list of :class:`CTFraction`.

Every problem with a file (missing, not ECSV, a missing column or unit, wrong units,
non-finite or non-positive values, an unknown name, a row count that differs from the
``n_points`` the header declares where it declares one) raises
:class:`popsynth.errors.PopsynthError` naming the file and the problem.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import PopsynthError
from ..io.ecsv import EcsvTable, read_ecsv

__all__ = [
    "CountsData",
    "CTFraction",
    "FLUX_UNIT",
    "CUMULATIVE_UNIT",
    "DIFFERENTIAL_UNIT",
    "CT_FRACTIONS_FILE",
    "counts_dir",
    "list_counts",
    "load_counts",
    "load_ct_fractions",
]

FLUX_UNIT = "erg cm-2 s-1"
CUMULATIVE_UNIT = "deg-2"
DIFFERENTIAL_UNIT = "deg-2 erg-1 cm2 s"  # deg^-2 (erg cm^-2 s^-1)^-1
CT_FRACTIONS_FILE = "ct_fractions.ecsv"

_KINDS = {"N(>S)": "cumulative", "dN/dS": "differential"}
_VALUE_UNITS = {"cumulative": CUMULATIVE_UNIT, "differential": DIFFERENTIAL_UNIT}
_COUNT_COLS = ("flux", "value", "err_lo", "err_hi")
_COUNT_META = ("quantity", "band_keV", "paper", "population")
_CT_COLS = (
    "survey", "paper", "band_lo", "band_hi", "flux_limit", "z_lo", "z_hi",
    "nh_threshold", "fraction", "err_lo", "err_hi", "notes",
)
_REGEN = "regenerate the tables with 'python data/counts/make_counts_tables.py'"


class CountsData(NamedTuple):
    """One number-count constraint (cumulative N(>S) or differential dN/dS)."""

    name: str  # file stem, e.g. "bat105_agn_cumulative_14_195keV"
    label: str  # human-readable, with the paper
    band_keV: tuple[float, float]  # observed-frame band of the fluxes
    kind: str  # "cumulative" | "differential"
    flux: np.ndarray  # erg cm^-2 s^-1, observed-frame band flux, [n], strictly increasing
    value: np.ndarray  # deg^-2 (cumulative) or deg^-2 (erg cm^-2 s^-1)^-1 (differential), [n]
    err_lo: np.ndarray  # 1-sigma below, same units as value, > 0
    err_hi: np.ndarray  # 1-sigma above, same units as value, > 0
    conversion_gamma: float | None  # photon index the survey used to convert bands, if any
    area_deg2: float | None  # survey area (largest sky coverage) in deg^2
    reference: str  # the paper the numbers come from
    population: str  # "AGN only", "all X-ray point sources", ...
    path: str  # the file read (for messages and provenance; never read again downstream)
    flux_lo: np.ndarray | None = None  # erg cm^-2 s^-1, [n], bin lower edges (columns flux_lo/flux_hi), or None
    flux_hi: np.ndarray | None = None  # erg cm^-2 s^-1, [n], bin upper edges (> flux_lo), or None
    survey: str | None = None  # the survey's name (meta ``survey``), or None
    flux_limit: float | None = None  # erg cm^-2 s^-1 in band_keV (meta ``flux_limit``), or None
    redshift_range: tuple[float, float] | None = None  # meta ``redshift_range``, or None
    area_curve: tuple[np.ndarray, np.ndarray] | None = None  # (flux erg cm^-2 s^-1, area deg^2) [m]: the
    #   rows of column ``area_at_flux`` with finite area > 0, or None
    columns: dict | None = None  # every column not above: {name: float64 [n] as stored, in ``units[name]``}
    units: dict | None = None  # {column name: unit string or None} for every column of the file
    meta: dict | None = None  # the file's header metadata (provenance, notes, ...)


class CTFraction(NamedTuple):
    """An observed Compton-thick fraction of one survey."""

    survey: str
    reference: str
    band_keV: tuple[float, float]
    flux_limit: float  # erg cm^-2 s^-1 in band_keV
    z_range: tuple[float, float] | None  # None when the paper gives no redshift cut
    nh_threshold: float  # cm^-2, e.g. 1e24 or 1.5e24
    fraction: float  # 0-1
    err_lo: float  # > 0
    err_hi: float  # > 0
    notes: str


# ----------------------------------------------------------------------------- helpers
def counts_dir(data_dir=None) -> Path:
    """Folder of the counts tables: ``data_dir/"counts"`` (default data_dir: the repo's data/)."""
    if data_dir is None:
        from ..paths import data_dir as _default_data_dir

        data_dir = _default_data_dir()
    return Path(data_dir) / "counts"


def _fail(path: Path, problem: str, fix: str = _REGEN) -> PopsynthError:
    return PopsynthError(f"counts file {path}: {problem}", fix)


def _read_table(path: Path) -> EcsvTable:
    return read_ecsv(path, label="counts file", fix=_REGEN,
                     missing_fix=f"{_REGEN}, or pass data_dir= the folder that holds counts/")


def _require_columns(table: EcsvTable, cols, path: Path) -> None:
    table.require_columns(cols)


def _numeric(table: EcsvTable, col: str, path: Path, unit: str | None) -> np.ndarray:
    """Column as float64 (in ``unit`` if given; the column must then carry a compatible unit)."""
    return table.column(col, unit)


def _check_positive(arr: np.ndarray, col: str, path: Path) -> None:
    bad = ~np.isfinite(arr) | (arr <= 0)
    if np.any(bad):
        rows = np.nonzero(bad)[0]
        raise _fail(
            path,
            f"column '{col}' has non-finite or non-positive values in row(s) "
            f"{', '.join(str(int(r)) for r in rows[:5])}{' ...' if len(rows) > 5 else ''}",
        )


def _band(meta_value, path: Path) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in meta_value)
    except (TypeError, ValueError):
        raise _fail(path, f"meta 'band_keV' must be [lo, hi] in keV (found {meta_value!r})") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise _fail(path, f"meta 'band_keV' must satisfy 0 < lo < hi (found {meta_value!r})")
    return lo, hi


def _optional_float(meta, key: str, path: Path) -> float | None:
    v = meta.get(key)
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise _fail(path, f"meta '{key}' must be a number or null (found {v!r})") from None
    if not math.isfinite(f) or f <= 0:
        raise _fail(path, f"meta '{key}' must be finite and > 0 (found {v!r})")
    return f


def _check_declared_rows(meta, n_rows: int, path: Path) -> None:
    """Rows against the header's ``n_points`` where declared (a table cut at a row boundary
    still parses; only the declared number reveals it)."""
    v = meta.get("n_points")
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _fail(path, f"header field 'n_points' must be a count (integer >= 0), found {v!r}")
    if v != n_rows:
        raise _fail(
            path,
            f"the header declares n_points: {v} but the file has {n_rows} rows "
            f"({'truncated or rows deleted' if n_rows < v else 'rows added'})",
            f"restore the file (e.g. 'git checkout -- counts/{path.name}' in data/) or {_REGEN}",
        )


def _is_counts_file(path: Path) -> bool:
    """True when the ECSV header declares a number-count quantity (cheap header scan)."""
    try:
        with path.open() as fh:
            for line in fh:
                if not line.startswith("#"):
                    break
                s = line.replace(" ", "")
                if s.startswith("#-{quantity:"):
                    q = s[len("#-{quantity:"):].strip().rstrip("}").strip("'\"")
                    return q in _KINDS
    except OSError:
        return False
    return False


# ----------------------------------------------------------------------------- public API
def list_counts(data_dir=None) -> list[str]:
    """Names (file stems) of the number-count tables in ``data_dir/"counts"``, sorted."""
    d = counts_dir(data_dir)
    if not d.is_dir():
        raise PopsynthError(
            f"counts folder {d} not found",
            f"{_REGEN}, or pass data_dir= the folder that holds counts/",
        )
    return sorted(p.stem for p in d.glob("*.ecsv") if _is_counts_file(p))


def load_counts(name: str, data_dir=None) -> CountsData:
    """Load and validate one number-count constraint by name (see :func:`list_counts`)."""
    d = counts_dir(data_dir)
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise PopsynthError(f"invalid counts name {name!r}", "give a file stem from list_counts()")
    stem = name[:-5] if name.endswith(".ecsv") else name
    path = d / f"{stem}.ecsv"
    if not path.is_file():
        available = list_counts(data_dir) if d.is_dir() else []
        raise PopsynthError(
            f"unknown counts constraint {name!r} (no file {path})",
            f"use one of: {', '.join(available)}" if available else _REGEN,
        )
    table = _read_table(path)
    meta = table.meta

    missing_meta = [k for k in _COUNT_META if k not in meta]
    if missing_meta:
        raise _fail(path, f"missing metadata {', '.join(missing_meta)}")
    quantity = meta["quantity"]
    if quantity not in _KINDS:
        raise _fail(path, f"meta 'quantity' is {quantity!r}, expected one of {sorted(_KINDS)}")
    kind = _KINDS[quantity]
    band = _band(meta["band_keV"], path)

    _require_columns(table, _COUNT_COLS, path)
    if len(table) == 0:
        raise _fail(path, "table has no rows")
    _check_declared_rows(meta, len(table), path)
    flux = _numeric(table, "flux", path, FLUX_UNIT)
    value = _numeric(table, "value", path, _VALUE_UNITS[kind])
    err_lo = _numeric(table, "err_lo", path, _VALUE_UNITS[kind])
    err_hi = _numeric(table, "err_hi", path, _VALUE_UNITS[kind])
    for col, arr in (("flux", flux), ("value", value), ("err_lo", err_lo), ("err_hi", err_hi)):
        _check_positive(arr, col, path)
    if np.any(np.diff(flux) <= 0):
        raise _fail(path, "column 'flux' is not strictly increasing")
    if kind == "cumulative" and np.any(np.diff(value) > 0):
        raise _fail(path, "cumulative counts N(>S) increase with S (must be non-increasing)")
    flux_lo = flux_hi = area_curve = None
    if "flux_lo" in table and "flux_hi" in table:
        flux_lo = _numeric(table, "flux_lo", path, FLUX_UNIT)
        flux_hi = _numeric(table, "flux_hi", path, FLUX_UNIT)
        if not (np.all(flux_lo > 0) and np.all(flux_hi > flux_lo)):
            raise _fail(path, "flux_lo/flux_hi are not valid bin edges")
    if "area_at_flux" in table:
        area = _numeric(table, "area_at_flux", path, "deg2")
        keep = np.isfinite(area) & (area > 0)
        area_curve = (flux[keep], area[keep])
    zr = meta.get("redshift_range")
    core = set(_COUNT_COLS) | {"flux_lo", "flux_hi", "area_at_flux"}
    columns = {}
    for c in table.colnames:
        if c not in core and table[c].dtype.kind in "fiub":
            columns[c] = _numeric(table, c, path, None)

    return CountsData(
        name=stem,
        label=str(meta.get("label", stem)),
        band_keV=band,
        kind=kind,
        flux=flux,
        value=value,
        err_lo=err_lo,
        err_hi=err_hi,
        conversion_gamma=_optional_float(meta, "conversion_gamma", path),
        area_deg2=_optional_float(meta, "area_deg2", path),
        reference=str(meta["paper"]),
        population=str(meta["population"]),
        path=str(path),
        flux_lo=flux_lo,
        flux_hi=flux_hi,
        survey=str(meta["survey"]) if "survey" in meta else None,
        flux_limit=_optional_float(meta, "flux_limit", path),
        redshift_range=tuple(float(x) for x in zr) if zr else None,
        area_curve=area_curve,
        columns=columns,
        units={c: (None if table[c].unit is None else str(table[c].unit)) for c in table.colnames},
        meta=dict(meta),
    )


def load_ct_fractions(data_dir=None) -> list[CTFraction]:
    """Load and validate the observed Compton-thick fractions (``counts/ct_fractions.ecsv``)."""
    path = counts_dir(data_dir) / CT_FRACTIONS_FILE
    table = _read_table(path)
    _require_columns(table, _CT_COLS, path)
    if len(table) == 0:
        raise _fail(path, "table has no rows")
    _check_declared_rows(table.meta or {}, len(table), path)
    band_lo = _numeric(table, "band_lo", path, "keV")
    band_hi = _numeric(table, "band_hi", path, "keV")
    flux_limit = _numeric(table, "flux_limit", path, FLUX_UNIT)
    nh = _numeric(table, "nh_threshold", path, "cm-2")
    z_lo = _numeric(table, "z_lo", path, None)
    z_hi = _numeric(table, "z_hi", path, None)
    frac = _numeric(table, "fraction", path, None)
    err_lo = _numeric(table, "err_lo", path, None)
    err_hi = _numeric(table, "err_hi", path, None)
    for col, arr in (("band_lo", band_lo), ("band_hi", band_hi), ("flux_limit", flux_limit),
                     ("nh_threshold", nh), ("fraction", frac), ("err_lo", err_lo),
                     ("err_hi", err_hi)):
        _check_positive(arr, col, path)
    if np.any(band_hi <= band_lo):
        raise _fail(path, "band_hi must exceed band_lo in every row")
    if np.any(frac >= 1):
        raise _fail(path, "column 'fraction' must lie in (0, 1)")

    out = []
    for i in range(len(table)):
        zl, zh = z_lo[i], z_hi[i]
        if math.isnan(zl) and math.isnan(zh):
            zr = None
        else:
            zl = 0.0 if math.isnan(zl) else zl
            if math.isnan(zh) or zh <= zl or zl < 0:
                raise _fail(path, f"row {i}: redshift range ({z_lo[i]}, {z_hi[i]}) is invalid")
            zr = (float(zl), float(zh))
        out.append(
            CTFraction(
                survey=str(table["survey"][i]),
                reference=str(table["paper"][i]),
                band_keV=(float(band_lo[i]), float(band_hi[i])),
                flux_limit=float(flux_limit[i]),
                z_range=zr,
                nh_threshold=float(nh[i]),
                fraction=float(frac[i]),
                err_lo=float(err_lo[i]),
                err_hi=float(err_hi[i]),
                notes=str(table["notes"][i]),
            )
        )
    return out

"""XSPEC table model files (OGIP/92-009 FITS): read into and write from
:class:`~popsynth.spectra.xspec_table.TableModel`.

The layout (OGIP memo OGIP/92-009, "The File Format for XSPEC Table Models") and the
conventions of the evaluation are described in :mod:`popsynth.spectra.xspec_table`. Reading
checks the file against the memo (extensions, columns, NUMBVALS, PARAMVAL row order) and
raises :class:`~popsynth.errors.PopsynthError` for malformed content; writing produces files
XSPEC loads with atable/mtable/etable (used by the tests to build tables).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .._tensor import DTYPE
from ..errors import PopsynthError
from ..spectra.xspec_table import _KINDS, TableModel, _f64

__all__ = ["read_table_model", "write_table_model"]

_REQUIRED_PARAM_COLUMNS = (
    "NAME",
    "METHOD",
    "INITIAL",
    "DELTA",
    "MINIMUM",
    "BOTTOM",
    "TOP",
    "MAXIMUM",
    "NUMBVALS",
    "VALUE",
)
# relative fuzz for comparing a parameter value with the (often float32) grid edges
_ENERGY_UNITS = {"": 1.0, "kev": 1.0, "ev": 1e-3, "mev": 1e3}

# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


def _bool_key(header, key: str, default: bool) -> bool:
    v = header.get(key, default)
    if isinstance(v, str):
        return v.strip().upper() in ("T", "TRUE", "Y", "YES", "1")
    return bool(v)


def read_table_model(path, kind: str | None = None, check_paramval: bool = True) -> TableModel:
    """Read an OGIP/92-009 XSPEC table model FITS file.

    ``kind``: None takes ``"add"`` when ADDMODEL=T, else ``"mul"`` (or the ``POPSKIND``
    keyword written by :func:`write_table_model`); pass ``"exp"`` to use a multiplicative
    file as an XSPEC etable (the file format does not record mtable vs etable).
    ``check_paramval``: check that each SPECTRA row's PARAMVAL equals the grid point the
    memo's ordering (last parameter fastest) assigns it; rows that are a permutation of the
    grid are reordered with a warning, anything else raises. False trusts the ordering
    without looking at PARAMVAL (what XSPEC does).

    Raises PopsynthError for a missing file, a file that is not FITS, a missing extension or
    column, NUMBVALS inconsistent with the number of spectra, and other malformed content.
    """
    from astropy.io import fits

    p = Path(path)
    if not p.is_file():
        raise PopsynthError(
            f"table model file {p} not found",
            "check the path (XSPEC table models are FITS files such as torus1006.fits)",
        )
    try:
        hdul = fits.open(p, memmap=False)
    except Exception as exc:  # astropy raises OSError / ValueError for non-FITS content
        raise PopsynthError(
            f"{p} is not a readable FITS file ({type(exc).__name__}: {exc})",
            "pass an OGIP/92-009 XSPEC table model (FITS) file",
        ) from None
    with hdul:
        present = [h.name for h in hdul]

        def ext(name):
            try:
                h = hdul[name]
            except KeyError:
                raise PopsynthError(
                    f"{p} has no {name} extension (extensions: {present})",
                    "an XSPEC table model needs PARAMETERS, ENERGIES and SPECTRA extensions "
                    "(OGIP/92-009)",
                ) from None
            if not isinstance(h, fits.BinTableHDU):
                raise PopsynthError(f"{p}: extension {name} is not a binary table", "fix the file")
            return h

        def col(h, name):
            names = [c.upper() for c in h.columns.names]
            if name not in names:
                raise PopsynthError(
                    f"{p}: extension {h.name} has no column {name} (columns: {h.columns.names})",
                    "the file does not follow OGIP/92-009; rewrite it with the required columns",
                )
            return h.data[h.columns.names[names.index(name)]]

        prim = hdul[0].header
        hp, he, hs = ext("PARAMETERS"), ext("ENERGIES"), ext("SPECTRA")
        modname = str(prim.get("MODLNAME", p.stem)).strip()
        units = str(prim.get("MODLUNIT", "")).strip()
        additive = _bool_key(prim, "ADDMODEL", True)
        has_z = _bool_key(prim, "REDSHIFT", False)
        if _bool_key(prim, "ESCALE", False):
            raise PopsynthError(
                f"{p} sets ESCALE=T (an energy-scale parameter), which popsynth does not support",
                "use a table without ESCALE",
            )
        nxflt = int(prim.get("NXFLTEXP", 1) or 1)
        if nxflt != 1:
            raise PopsynthError(
                f"{p} holds {nxflt} spectra per grid point (NXFLTEXP), which popsynth does not "
                "support",
                "use a table with one spectrum per grid point",
            )
        lo_el = prim.get("LOELIMIT")
        hi_el = prim.get("HIELIMIT")
        file_kind = str(prim.get("POPSKIND", "")).strip().lower() or None
        if kind is None:
            kind = "add" if additive else (file_kind if file_kind in ("mul", "exp") else "mul")
        if kind not in _KINDS:
            raise PopsynthError(f"unknown table kind '{kind}'", "use 'add', 'mul' or 'exp'")
        if (kind == "add") != additive:
            raise PopsynthError(
                f"{p} has ADDMODEL={'T' if additive else 'F'} but kind='{kind}' was requested",
                "read additive files with kind='add' (atable) and multiplicative ones with "
                "'mul' (mtable) or 'exp' (etable)",
            )
        if additive and "/kev" in units.lower().replace(" ", ""):
            warnings.warn(
                f"{p}: MODLUNIT='{units}' looks like a per-keV unit; popsynth (like OGIP/92-009) "
                "treats additive spectra as photons/cm^2/s per bin and does not convert",
                stacklevel=2,
            )

        # ---- PARAMETERS
        nrows = len(hp.data) if hp.data is not None else 0
        nadd = int(hp.header.get("NADDPARM", 0) or 0)
        if "NINTPARM" in hp.header:
            nint = int(hp.header["NINTPARM"])
        else:
            nint = nrows - nadd
            warnings.warn(f"{p}: PARAMETERS has no NINTPARM keyword; using {nint}", stacklevel=2)
        if nint < 1 or nadd < 0 or nint + nadd != nrows:
            raise PopsynthError(
                f"{p}: NINTPARM={nint} + NADDPARM={nadd} does not match the {nrows} rows of "
                "PARAMETERS",
                "fix the NINTPARM/NADDPARM keywords or the parameter rows",
            )
        cols = {c: col(hp, c) for c in _REQUIRED_PARAM_COLUMNS}
        names = [str(s).strip() for s in cols["NAME"]]
        grids, logs = [], []
        for i in range(nint):
            method = int(cols["METHOD"][i])
            if method not in (0, 1):
                raise PopsynthError(
                    f"{p}: parameter '{names[i]}' has METHOD={method}",
                    "METHOD must be 0 (linear) or 1 (logarithmic)",
                )
            nv = int(cols["NUMBVALS"][i])
            vals = np.atleast_1d(np.asarray(cols["VALUE"][i], dtype=np.float64)).reshape(-1)
            if nv < 1 or nv > vals.size:
                raise PopsynthError(
                    f"{p}: parameter '{names[i]}' has NUMBVALS={nv} but VALUE holds {vals.size} "
                    "numbers",
                    "make NUMBVALS the number of tabulated values",
                )
            grids.append(torch.as_tensor(vals[:nv].copy(), dtype=DTYPE))
            logs.append(method == 1)

        def fl(c, sl):
            return [float(x) for x in np.asarray(cols[c], dtype=np.float64)[sl]]

        si, sa = slice(0, nint), slice(nint, nint + nadd)

        # ---- ENERGIES
        unit_lo = (he.columns[[c.upper() for c in he.columns.names].index("ENERG_LO")].unit
                   if "ENERG_LO" in [c.upper() for c in he.columns.names] else "")
        e_lo = np.asarray(col(he, "ENERG_LO"), dtype=np.float64).reshape(-1)
        e_hi = np.asarray(col(he, "ENERG_HI"), dtype=np.float64).reshape(-1)
        ukey = (unit_lo or "").strip().lower()
        if ukey not in _ENERGY_UNITS:
            raise PopsynthError(
                f"{p}: ENERGIES are in unit '{unit_lo}', which popsynth does not convert",
                "use keV, eV or MeV energies",
            )
        e_lo, e_hi = e_lo * _ENERGY_UNITS[ukey], e_hi * _ENERGY_UNITS[ukey]
        n_e = e_lo.size

        # ---- SPECTRA
        shape = tuple(int(g.numel()) for g in grids)
        nspec = len(hs.data) if hs.data is not None else 0
        if nspec != math.prod(shape):
            raise PopsynthError(
                f"{p}: SPECTRA has {nspec} rows but NUMBVALS {dict(zip(names[:nint], shape))} "
                f"give a grid of {math.prod(shape)} points",
                "the file is inconsistent: NUMBVALS must multiply to the number of spectra",
            )
        intp = np.asarray(col(hs, "INTPSPEC"), dtype=np.float64).reshape(nspec, -1)
        if intp.shape[1] != n_e:
            raise PopsynthError(
                f"{p}: INTPSPEC has {intp.shape[1]} values per row but ENERGIES has {n_e} bins",
                "the spectra and energy bins must match",
            )
        addsp = None
        if nadd:
            addsp = np.empty((nspec, nadd, n_e))
            for j in range(nadd):
                a = np.asarray(col(hs, f"ADDSP{j + 1:03d}"), dtype=np.float64).reshape(nspec, -1)
                if a.shape[1] != n_e:
                    raise PopsynthError(
                        f"{p}: ADDSP{j + 1:03d} has {a.shape[1]} values per row, not {n_e}",
                        "the spectra and energy bins must match",
                    )
                addsp[:, j, :] = a
        pv = np.asarray(col(hs, "PARAMVAL"), dtype=np.float64).reshape(nspec, -1)
        if pv.shape[1] != nint:
            raise PopsynthError(
                f"{p}: PARAMVAL has {pv.shape[1]} values per row but NINTPARM={nint}",
                "PARAMVAL must hold one value per interpolation parameter",
            )
        if check_paramval:
            order = _paramval_order(p, pv, [g.numpy() for g in grids], names[:nint])
            if order is not None:
                intp = intp[order]
                if addsp is not None:
                    addsp = addsp[order]
        nbad = int((~np.isfinite(intp)).sum())
        if nbad:
            warnings.warn(f"{p}: {nbad} non-finite values in INTPSPEC", stacklevel=2)

    return TableModel(
        name=modname,
        kind=kind,
        units=units,
        param_names=names[:nint],
        param_grids=grids,
        param_log=logs,
        param_initial=fl("INITIAL", si),
        param_delta=fl("DELTA", si),
        param_min=fl("MINIMUM", si),
        param_max=fl("MAXIMUM", si),
        param_bottom=fl("BOTTOM", si),
        param_top=fl("TOP", si),
        add_param_names=names[nint:],
        add_param_initial=fl("INITIAL", sa),
        add_param_min=fl("MINIMUM", sa),
        add_param_max=fl("MAXIMUM", sa),
        energy_lo=torch.as_tensor(e_lo, dtype=DTYPE),
        energy_hi=torch.as_tensor(e_hi, dtype=DTYPE),
        spectra=torch.as_tensor(intp, dtype=DTYPE).reshape(*shape, n_e),
        add_spectra=None if addsp is None else torch.as_tensor(addsp).reshape(*shape, nadd, n_e),
        has_redshift=has_z,
        lo_elimit=None if lo_el is None else float(lo_el),
        hi_elimit=None if hi_el is None else float(hi_el),
        path=str(p),
    )


def _paramval_order(p, pv: np.ndarray, grids: list[np.ndarray], names: list[str]):
    """None if PARAMVAL follows the memo ordering; else the row permutation (with warning)."""
    mesh = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(-1, len(grids))
    scale = np.array([max(np.abs(g).max(), 1e-300) for g in grids])
    tol = 1e-5 * scale
    if np.all(np.abs(pv - mesh) <= tol):
        return None
    # map every row onto its grid indices
    flat = np.zeros(pv.shape[0], dtype=np.int64)
    stride = 1
    for j in reversed(range(len(grids))):
        g = grids[j]
        d = np.abs(pv[:, j][:, None] - g[None, :])
        ij = d.argmin(axis=1)
        if np.any(d[np.arange(pv.shape[0]), ij] > tol[j]):
            r = int(np.argmax(d[np.arange(pv.shape[0]), ij] > tol[j]))
            raise PopsynthError(
                f"{p}: SPECTRA row {r} has PARAMVAL {names[j]}={pv[r, j]:.6g}, which is not one "
                f"of the tabulated values of {names[j]}",
                "fix PARAMVAL, or read with check_paramval=False to trust the OGIP row order "
                "(last parameter fastest) as XSPEC does",
            )
        flat += ij * stride
        stride *= g.size
    if np.unique(flat).size != flat.size:
        raise PopsynthError(
            f"{p}: PARAMVAL lists some grid points twice and misses others",
            "fix PARAMVAL, or read with check_paramval=False to trust the OGIP row order "
            "(last parameter fastest) as XSPEC does",
        )
    warnings.warn(
        f"{p}: SPECTRA rows are not in OGIP order (last parameter fastest); reordered them by "
        "PARAMVAL. XSPEC ignores PARAMVAL and would read this file differently",
        stacklevel=3,
    )
    order = np.empty_like(flat)
    order[flat] = np.arange(flat.size)
    return order


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def write_table_model(
    path,
    name: str,
    param_names: Sequence[str],
    param_grids: Sequence[Sequence[float] | torch.Tensor | np.ndarray],
    param_log: Sequence[bool],
    energy_lo,
    energy_hi,
    spectra,
    kind: str = "add",
    redshift: bool = False,
    units: str = "photons/cm^2/s",
    *,
    param_initial: Sequence[float] | None = None,
    param_frozen: Sequence[bool] | None = None,
    add_param_names: Sequence[str] = (),
    add_spectra=None,
    add_param_initial: Sequence[float] | None = None,
    lo_elimit: float | None = None,
    hi_elimit: float | None = None,
    precision: str = "single",
    overwrite: bool = True,
) -> Path:
    """Write an OGIP/92-009 table model that XSPEC loads with atable/mtable/etable.

    ``spectra``: [n_1, ..., n_k, n_e] (or [prod n_i, n_e] already flattened) with parameter
    1 varying slowest, i.e. ``spectra[i1, ..., ik]`` is the spectrum at
    ``(grid_1[i1], ..., grid_k[ik])``; written in the memo's row order (last parameter
    fastest). Additive: photons cm^-2 s^-1 per bin for unit normalisation; multiplicative:
    factors; exponential (kind="exp"): the exponent x of exp(-x) (written as ADDMODEL=F;
    load it in XSPEC with etable).
    ``energy_lo``/``energy_hi``: [n_e] keV. ``add_spectra``: [n_1, ..., n_k, n_add, n_e].
    ``precision``: "single" (E columns, as the memo specifies) or "double" (D columns, exact
    float64 round trip). Hard and soft limits are the grid ends; DELTA is 1% of the range
    (negative, i.e. frozen, where ``param_frozen``). Returns the path.
    """
    from astropy.io import fits

    if kind not in _KINDS:
        raise PopsynthError(f"unknown table kind '{kind}'", "use 'add', 'mul' or 'exp'")
    if precision not in ("single", "double"):
        raise PopsynthError(f"unknown precision '{precision}'", "use 'single' or 'double'")
    ftype, npdt = ("E", np.float32) if precision == "single" else ("D", np.float64)
    k = len(param_names)
    grids = [_f64(g).detach().cpu().numpy().reshape(-1) for g in param_grids]
    elo = _f64(energy_lo).detach().cpu().numpy().reshape(-1)
    ehi = _f64(energy_hi).detach().cpu().numpy().reshape(-1)
    spec = _f64(spectra).detach().cpu().numpy()
    add_names = [str(n) for n in add_param_names]
    na = len(add_names)
    add = None
    if na:
        if add_spectra is None:
            raise PopsynthError("add_param_names given without add_spectra", "pass add_spectra")
        add = _f64(add_spectra).detach().cpu().numpy()
    # validate through the model class (grids, energies, sizes, names)
    model = TableModel(
        name=name,
        kind=kind,
        param_names=param_names,
        param_grids=[torch.as_tensor(g) for g in grids],
        param_log=param_log,
        energy_lo=torch.as_tensor(elo),
        energy_hi=torch.as_tensor(ehi),
        spectra=torch.as_tensor(spec),
        param_initial=param_initial,
        add_param_names=add_names,
        add_spectra=None if add is None else torch.as_tensor(add),
        add_param_initial=add_param_initial,
    )
    for n in model.param_names + add_names:
        if len(n) > 12 or not n.strip():
            raise PopsynthError(
                f"parameter name '{n}' is empty or longer than the 12 characters "
                "OGIP/92-009 allows",
                "use a shorter name",
            )
    if len(str(name)) > 12:
        warnings.warn(
            f"model name '{name}' is longer than the 12 characters of OGIP/92-009", stacklevel=2
        )
    n_e = model.n_energy
    nspec = math.prod(model.shape)

    prim = fits.PrimaryHDU()
    h = prim.header
    h["HDUCLASS"] = ("OGIP", "format conforms to OGIP standard")
    h["HDUCLAS1"] = ("XSPEC TABLE MODEL", "model spectra for XSPEC")
    h["HDUVERS"] = ("1.0.0", "version of format")
    h["MODLNAME"] = (str(name), "model name")
    h["MODLUNIT"] = (str(units) if kind == "add" else "", "model units")
    h["REDSHIFT"] = (bool(redshift), "if true then redshift will be a parameter")
    h["ADDMODEL"] = (kind == "add", "if true then this is an additive model")
    h["POPSKIND"] = (kind, "popsynth: add=atable, mul=mtable, exp=etable")
    if lo_elimit is not None:
        h["LOELIMIT"] = (float(lo_elimit), "model value below the tabulated energies")
    if hi_elimit is not None:
        h["HIELIMIT"] = (float(hi_elimit), "model value above the tabulated energies")
    if kind == "exp":
        h["COMMENT"] = "Exponential table: load in XSPEC with etable{file} (value = exp(-x))."

    nmax = max(g.size for g in grids)
    value = np.zeros((k + na, nmax), dtype=npdt)
    for i, g in enumerate(grids):
        value[i, : g.size] = g
    frozen = list(param_frozen) if param_frozen is not None else [False] * k
    delta = [
        (-1.0 if fr else 1.0)
        * (0.01 * (g[-1] - g[0]) if g.size > 1 else 0.01 * max(abs(g[0]), 1.0))
        for g, fr in zip(grids, frozen)
    ] + [0.01] * na
    lo_lim = [float(g[0]) for g in grids] + [float(x) for x in model.add_param_min]
    hi_lim = [float(g[-1]) for g in grids] + [float(x) for x in model.add_param_max]
    pcols = [
        fits.Column("NAME", "12A", array=np.array(model.param_names + add_names)),
        fits.Column("METHOD", "J", array=np.array([int(b) for b in model.param_log] + [0] * na)),
        fits.Column(
            "INITIAL", ftype, array=np.array(model.param_initial + model.add_param_initial)
        ),
        fits.Column("DELTA", ftype, array=np.array(delta)),
        fits.Column("MINIMUM", ftype, array=np.array(lo_lim)),
        fits.Column("BOTTOM", ftype, array=np.array(lo_lim)),
        fits.Column("TOP", ftype, array=np.array(hi_lim)),
        fits.Column("MAXIMUM", ftype, array=np.array(hi_lim)),
        fits.Column("NUMBVALS", "J", array=np.array([g.size for g in grids] + [0] * na)),
        fits.Column("VALUE", f"{nmax}{ftype}", array=value),
    ]
    hp = fits.BinTableHDU.from_columns(pcols, name="PARAMETERS")
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "PARAMETERS"),
        ("HDUVERS", "1.0.0"),
    ):
        hp.header[key] = val
    hp.header["NINTPARM"] = (k, "number of interpolation parameters")
    hp.header["NADDPARM"] = (na, "number of additional parameters")

    he = fits.BinTableHDU.from_columns(
        [
            fits.Column("ENERG_LO", ftype, unit="keV", array=elo),
            fits.Column("ENERG_HI", ftype, unit="keV", array=ehi),
        ],
        name="ENERGIES",
    )
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "ENERGIES"),
        ("HDUVERS", "1.0.0"),
    ):
        he.header[key] = val

    mesh = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(nspec, k)
    scols = [
        fits.Column("PARAMVAL", f"{k}{ftype}", array=mesh.astype(npdt)),
        fits.Column(
            "INTPSPEC",
            f"{n_e}{ftype}",
            unit=str(units) if kind == "add" else "",
            array=model.spectra.reshape(nspec, n_e).numpy().astype(npdt),
        ),
    ]
    if na:
        addf = model.add_spectra.reshape(nspec, na, n_e).numpy().astype(npdt)
        for j in range(na):
            scols.append(fits.Column(f"ADDSP{j + 1:03d}", f"{n_e}{ftype}", array=addf[:, j, :]))
    hs = fits.BinTableHDU.from_columns(scols, name="SPECTRA")
    for key, val in (
        ("HDUCLASS", "OGIP"),
        ("HDUCLAS1", "XSPEC TABLE MODEL"),
        ("HDUCLAS2", "MODEL SPECTRA"),
        ("HDUVERS", "1.0.0"),
    ):
        hs.header[key] = val

    out = Path(path)
    if out.exists() and not overwrite:
        raise PopsynthError(f"{out} exists", "pass overwrite=True or choose another path")
    fits.HDUList([prim, hp, he, hs]).writeto(out, overwrite=overwrite)
    return out

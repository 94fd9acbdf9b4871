"""The on-disk cache of spectral tables: cache keys and cache files around the table builder.

:func:`build_spectral_table` is :func:`~popsynth.spectra.table.compute_spectral_table` with a
cache (:func:`popsynth.io.cache.cached` around the builder; the components' input tables are
read only on a cache miss, :func:`~popsynth.spectra.registry.load_tables`): the key
(:func:`spectral_table_key`, built by :func:`popsynth.io.cache.cache_key`) hashes everything the
table depends on, input tables by the sha256 of their contents; cache files hold tensors and a
JSON header, read with ``torch.load(weights_only=True)`` and checked before use.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._tensor import DTYPE, as_tensor
from ..io.cache import arrays_sha256, cache_file, cache_key, cached, file_sha256
from ..mc import shipped
from .component import Component
from .external_torus import ExternalTorus
from .registry import default_components, load_tables
from .reprocessed import Reflection, TorusReprocessed
from .sets import PARAM_NAMES, SpectralSet, get_spectral_set
from .table import TABLE_FORMAT, SpectralTable, compute_spectral_table, default_energy_grid


# ------------------------------------------------------------------------------------------
# Cache keys: everything a table depends on, input files by content
# ------------------------------------------------------------------------------------------
def _greens_sha256(kind: str, table) -> str:
    """sha256 naming the Green's table ("slab" or "torus") a component uses, by content.

    ``table`` a :class:`~popsynth.mc.shipped.ShippedTable` (or None: the shipped table, not
    read) or the table ``load_greens`` read from a file unchanged since: the file's sha256 (its
    datasets are not read). Any other table: the sha256 of its arrays."""
    if table is None or isinstance(table, shipped.ShippedTable):
        path = shipped.default_table_path(kind)
        # a missing file gets a placeholder here; loading it then fails with read_greens's message
        return file_sha256(path) if path.is_file() else f"missing:{path}"
    # load_greens keeps the tables it read by (path, size, mtime_ns) of their file
    for k, loaded in list(shipped._LOADED.items()):
        if loaded is table and isinstance(k, tuple) and len(k) == 3:
            try:
                st = os.stat(k[0])
            except OSError:
                break
            if (st.st_size, st.st_mtime_ns) == tuple(k[1:]):
                return file_sha256(k[0])
            break
    # every array field (getattr: a lazily read table reads the arrays it has not used yet)
    fields = [f.name for f in dataclasses.fields(table)] if dataclasses.is_dataclass(table) else list(vars(table))
    names = sorted(k for k in fields if isinstance(getattr(table, k), np.ndarray))
    return "arrays:" + arrays_sha256(*(getattr(table, k) for k in names))


def _describe_for_key(c: Component) -> dict:
    """``c.describe()`` with every input table named by the sha256 of its contents (a shipped
    Green's table by its file: not read, the torus file is 21 MB of compressed datasets)."""
    d = c.describe()
    if isinstance(c, (Reflection, TorusReprocessed)):
        d["greens"] = "sha256:" + _greens_sha256("slab" if isinstance(c, Reflection) else "torus", c.greens)
    if isinstance(c, ExternalTorus):
        t = c.table
        if t.path is not None and Path(t.path).is_file():
            d["table_sha256"] = file_sha256(t.path)
        else:  # built in memory
            d["table_sha256"] = "arrays:" + arrays_sha256(
                t.energy_lo, t.energy_hi, t.spectra, *t.param_grids,
                *([t.add_spectra] if t.add_spectra is not None else []))
        if c.fill == "builtin":  # the built-in torus fills energies beyond the table's
            d["fill_greens_sha256"] = _greens_sha256("torus", c._builtin[1].greens)
    return d


def spectral_table_key(spec: SpectralSet | int, lognh_edges, energy=None, n_draws: int = 64, seed: int = 0,
                       n_sub: int = 4, components: list[Component] | None = None) -> tuple[str, dict]:
    """The cache key of :func:`build_spectral_table` for these arguments, and what it hashes.

    The payload holds the spectral-set definition, the grids (energy in keV, log N_H edges), the
    draws, seed and sub-nodes, each component's description with every input table named by
    the sha256 of its contents (the shipped Green's tables ``data/greens/*.h5``, an external
    XSPEC torus table), the package, table-format and xraydb versions. The shipped tables are
    hashed as files (once per process), never read: components name them
    (:class:`~popsynth.mc.shipped.ShippedTable`) until a table is computed. Returns (key: 32 hex
    characters, payload).
    """
    spec = spec if isinstance(spec, SpectralSet) else get_spectral_set(spec)
    energy = default_energy_grid("cpu") if energy is None else as_tensor(energy, "cpu")
    edges = as_tensor(lognh_edges, "cpu")
    comps = components if components is not None else default_components()
    payload = {"spec": spec.describe(), "energy": [float(energy[0]), float(energy[-1]), energy.numel()],
               "energy_hash": hashlib.sha256(energy.numpy().tobytes()).hexdigest(),
               "lognh_edges": edges.tolist(), "n_draws": n_draws, "seed": seed, "n_sub": n_sub,
               "components": [_describe_for_key(c) for c in comps], "version": __version__,
               "table_format": TABLE_FORMAT, "xraydb": _xraydb_version()}
    return cache_key(payload, 32), payload


def _xraydb_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xraydb")  # the photoelectric cross sections come from its database
    except PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------------------------------
# The cache file: tensors and a JSON header, read with torch.load(weights_only=True)
# ------------------------------------------------------------------------------------------
_CACHE_FORMAT = "popsynth-spectral-table"


def _cached_table(path: Path, key: str, energy: torch.Tensor, edges: torch.Tensor, comp_names: list[str],
                  n_draws: int) -> "SpectralTable | None":
    """The table in cache file ``path`` if it is a well-formed table for ``key``, else None.

    The file is read with ``torch.load(weights_only=True)``, which builds only tensors and
    plain containers (never runs code a crafted pickle names); anything unreadable, malformed
    or for another key is reported with a warning and rebuilt by the caller."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged or crafted file: torch raises many types
        warnings.warn(f"spectral cache file {path} is unreadable or not a plain tensor file "
                      f"({type(exc).__name__}); rebuilding it", RuntimeWarning, stacklevel=5)
        return None
    problem = _cache_problem(d, key, energy, edges, comp_names, n_draws)
    if problem:
        warnings.warn(f"spectral cache file {path} ignored ({problem}); rebuilding it", RuntimeWarning, stacklevel=5)
        return None
    meta = json.loads(d["meta_json"])
    return SpectralTable(d["energy"], d["lognh_edges"], d["lognh"], d["mean"], dict(d["components"]),
                         d["per_draw"], dict(d["params"]), meta)


def _cache_problem(d, key, energy, edges, comp_names, n_draws) -> str:
    """What is wrong with a loaded cache dict ('' if nothing): format, key, fields, shapes, values."""
    if not isinstance(d, dict) or d.get("format") != _CACHE_FORMAT:
        return "not a popsynth spectral table"
    try:
        meta = json.loads(d["meta_json"])
    except (KeyError, TypeError, ValueError):
        return "no readable header"
    if not isinstance(meta, dict) or meta.get("key") != key:
        return "header for another key"
    n_cells, n_e = edges.numel() - 1, energy.numel()
    shapes = {"energy": (n_e,), "lognh_edges": (n_cells + 1,), "lognh": (n_cells,), "mean": (n_cells, n_e),
              "per_draw": (n_draws, n_cells, n_e)}
    groups = {"components": (list(comp_names), (n_cells, n_e)), "params": (list(PARAM_NAMES), (2, n_draws))}
    tensors = {}
    for name, shape in shapes.items():
        tensors[name] = (d.get(name), shape)
    for name, (keys, shape) in groups.items():
        g = d.get(name)
        if not isinstance(g, dict) or sorted(g) != sorted(keys):
            return f"'{name}' missing or with other entries"
        tensors.update({f"{name}[{k}]": (g[k], shape) for k in keys})
    for name, (t, shape) in tensors.items():
        if not isinstance(t, torch.Tensor) or t.dtype != DTYPE or tuple(t.shape) != shape:
            return f"'{name}' missing or not float64 {list(shape)}"
    if not (torch.equal(d["energy"], energy) and torch.equal(d["lognh_edges"], edges)):
        return "other energy or log N_H grid"
    for name in ("mean", "per_draw"):
        if not bool(torch.isfinite(d[name]).all()) or bool((d[name] < 0).any()):
            return f"non-finite or negative '{name}'"
    return ""


def _write_table(path, table: SpectralTable) -> None:
    """Write ``table`` as a cache file at ``path`` (tensors and a JSON header; no pickled code)."""
    payload = {"format": _CACHE_FORMAT, "meta_json": json.dumps(table.meta, sort_keys=True),
               "energy": table.energy, "lognh_edges": table.lognh_edges, "lognh": table.lognh,
               "mean": table.mean, "components": dict(table.components), "per_draw": table.per_draw,
               "params": dict(table.params)}
    torch.save(payload, path)


def build_spectral_table(spec: SpectralSet | int, lognh_edges, energy=None, n_draws: int = 64, seed: int = 0,
                         n_sub: int = 4, components: list[Component] | None = None, device=None,
                         cache: bool = True) -> SpectralTable:
    """Mean spectra per log N_H cell for a spectral set, cached on disk.

    For every cell the spectrum is averaged over ``n_draws`` stratified parameter draws and
    over ``n_sub`` Gauss-Legendre nodes in log N_H inside the cell (transmission changes by
    orders of magnitude across a 0.1-dex cell at low energies, so cell centres alone would bias
    the cell integral). Cached under ``popsynth.paths.cache_dir()/spectra/set<N>-<key>.pt``, the
    key (:func:`spectral_table_key`) hashing everything the table depends on, input tables by
    the sha256 of their contents. Cache files are read without unpickling code
    (``torch.load(weights_only=True)``) and checked (format, key, shapes, finite values); a
    damaged or crafted file is rebuilt, with a warning, and replaced atomically.
    Returns a :class:`SpectralTable` on ``device``.
    """
    spec = spec if isinstance(spec, SpectralSet) else get_spectral_set(spec)
    energy = default_energy_grid("cpu") if energy is None else as_tensor(energy, "cpu")
    edges = as_tensor(lognh_edges, "cpu")
    comps = components if components is not None else default_components()
    key, payload = spectral_table_key(spec, edges, energy, n_draws, seed, n_sub, comps)
    meta = json.loads(json.dumps({**payload, "key": key, "spec_set": spec.number}))  # as a cache file holds it

    def compute() -> SpectralTable:  # a cache miss: read the input tables the components name, then build
        return compute_spectral_table(spec, edges, energy, n_draws, seed, n_sub, load_tables(comps), meta)

    table = cached(compute, key,
                   path=cache_file("spectra", f"set{spec.number}-{key}.pt") if cache else None,
                   load=lambda path, k: _cached_table(path, k, energy, edges, [c.name for c in comps], n_draws),
                   save=_write_table, what="spectral cache file")
    return table.to(device)

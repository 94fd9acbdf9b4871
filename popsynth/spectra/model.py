"""AGN X-ray spectra as sums of components, tabulated per log N_H cell.

A component maps the primary continuum of each draw to an emitted spectrum at a set of
line-of-sight columns. All components are linear in the primary, so any primary can be
reprocessed by the same code (and, for Monte Carlo components, by a matrix product).

Components of this module:
  - :class:`Transmitted`: the primary seen through the line-of-sight column: photoelectric
    absorption with real cross sections (xraydb elemental cross sections, Anders & Grevesse
    1989 abundances) times Compton (Klein-Nishina) attenuation, exp(-N_H [sigma_ph + 1.21 sigma_KN]).
    This is the transmitted beam of the torus; the photons scattered out of it are returned
    by the torus reprocessing.
  - :class:`Scattered`: f_scatt times the primary, unabsorbed (A19: f_scatt = 0.01).
The reprocessed components (disk reflection with fluorescence lines, the pexmon equivalent,
and the torus's scattered light and lines, the BNTorus equivalent) are in
:mod:`popsynth.spectra.reprocessed`; :func:`make_components` assembles the named models.

Units: spectra are photons s^-1 keV^-1 per (erg/s of intrinsic 2-10 keV luminosity of the
primary), on a rest-frame energy grid in keV.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from .._tensor import DTYPE, as_tensor
from ..errors import PopsynthError
from ..physics.crosssections import sigma_compton, sigma_photo
from .primary import primary_spectrum
from .sets import PARAM_NAMES, SpectralSet, draw_parameters, get_spectral_set

TABLE_FORMAT = 4  # bumped when SpectralTable's fields, their computation or the cache file change
# (2: per_draw; 3: K-edge unbinning; 4: weights-only cache file, input tables keyed by content)
OBSCURED_LOGNH = 22.0  # A19: "obscured means log N_H >= 22"


def default_energy_grid(device=None) -> torch.Tensor:
    """Rest-frame energy grid, keV: 1201 log-spaced points over 0.1-2000 keV (0.0036 dex steps).

    Wide enough that E_obs (1 + z) stays inside for E_obs in 0.1-300 keV and z <= 5.
    """
    return torch.logspace(np.log10(0.1), np.log10(2000.0), 1201, dtype=DTYPE, device=device)


class Component:
    """One additive spectral component.

    Subclasses implement :meth:`spectrum`. ``name`` labels the component in tables.
    """

    name = "component"

    def spectrum(self, energy: torch.Tensor, primary: torch.Tensor, params: dict[str, torch.Tensor],
                 log_nh: torch.Tensor) -> torch.Tensor:
        """Emitted spectrum [D, M, nE] for primaries [D, nE], params {name: [D]} and columns log_nh [M]."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "class": type(self).__name__}


class Transmitted(Component):
    """Line-of-sight transmission: primary * exp(-N_H sigma_ph(E)) * exp(-N_H 1.21 sigma_KN(E))."""

    name = "transmitted"

    def __init__(self, abund: str = "angr", compton: bool = True):
        self.abund = abund
        self.compton = compton
        self._cache = None

    def _sigma(self, energy: torch.Tensor) -> torch.Tensor:
        if self._cache is None or self._cache[0].shape != energy.shape or not torch.equal(self._cache[0], energy):
            sig = sigma_photo(energy, abund=self.abund).to(energy.device)
            if self.compton:
                sig = sig + sigma_compton(energy).to(energy.device)
            self._cache = (energy.clone(), sig)
        return self._cache[1]

    def spectrum(self, energy, primary, params, log_nh):
        sig = self._sigma(energy)  # [nE], cm^2 per H
        nh = 10.0 ** log_nh  # [M]
        trans = torch.exp(-nh[:, None] * sig[None, :])  # [M, nE]
        return primary[:, None, :] * trans[None]

    def describe(self):
        return {**super().describe(), "abund": self.abund, "compton": self.compton}


class Scattered(Component):
    """Scattered light: f_scatt * primary, not absorbed (A19 section 5.2)."""

    name = "scattered"

    def spectrum(self, energy, primary, params, log_nh):
        out = params["fscatt"][:, None] * primary  # [D, nE]
        return out[:, None, :].expand(-1, log_nh.numel(), -1)


SPECTRAL_MODELS = ("a19", "a19-incident-cutoff", "a19-full-absorber", "transmitted")


def make_components(model: str = "a19", torus_table=None) -> list[Component]:
    """The components of a named spectral model.

    ``torus_table``: path of an XSPEC torus atable (or an
    :class:`~popsynth.spectra.xspec_table.ExternalTorus`) that replaces the built-in torus
    (transmitted beam and reprocessing) in the a19 models; see
    :class:`~popsynth.spectra.reprocessed.ExternalTorusComponent`.

    - "a19" (default): A19 section 5.2, f_scatt * cutoffpl + wabs * pexmon + bntorus * highecut:
      :class:`Scattered`, :class:`Transmitted` (the torus's line-of-sight beam), the slab
      :class:`~popsynth.spectra.reprocessed.Reflection` at 30 deg with wabs absorption, and the
      :class:`~popsynth.spectra.reprocessed.TorusReprocessed` scattered light and lines with
      A19's inclinations and highecut;
    - "a19-incident-cutoff": as a19, the torus reprocessing the cutoff power law itself;
    - "a19-full-absorber": as a19, the reflection also Compton-attenuated by the line-of-sight
      column (A19's wabs lets the reflection of Compton-thick sources pass above 10 keV);
    - "transmitted": transmitted + scattered only (no reflection, no torus reprocessing).
    """
    from .reprocessed import ExternalTorusComponent, Reflection, TorusReprocessed

    if torus_table is not None:
        if model == "transmitted":
            raise PopsynthError("an external torus table needs a model with a torus",
                                "use --spectral-model a19 (or drop --torus-table)")
        refl = Reflection(absorber="full" if model == "a19-full-absorber" else "wabs")
        return [Scattered(), refl, ExternalTorusComponent(torus_table)]
    if model == "a19":
        return [Scattered(), Transmitted(), Reflection(), TorusReprocessed()]
    if model == "a19-incident-cutoff":
        return [Scattered(), Transmitted(), Reflection(), TorusReprocessed(cutoff="incident")]
    if model == "a19-full-absorber":
        return [Scattered(), Transmitted(), Reflection(absorber="full"), TorusReprocessed()]
    if model == "transmitted":
        return [Scattered(), Transmitted()]
    raise PopsynthError(f"unknown spectral model '{model}'", f"use one of {', '.join(SPECTRAL_MODELS)}")


def default_components() -> list[Component]:
    """Components of the default (A19) spectrum: see :func:`make_components`."""
    return make_components("a19")


@dataclass
class SpectralTable:
    """Mean spectra per log N_H cell.

    Attributes:
      energy: rest-frame keV [nE];
      lognh_edges [nN+1], lognh [nN]: cell edges and centres (log10 cm^-2);
      mean: [nN, nE], photons s^-1 keV^-1 per erg/s of intrinsic L(2-10), averaged over the
        draws and over log N_H inside each cell;
      components: {name: [nN, nE]} the same per component (they sum to ``mean``);
      per_draw: [D, nN, nE] the total spectrum of each parameter draw, averaged over log N_H
        inside each cell (``mean`` is its average over draws). Cells with log N_H < 22 use the
        unobscured draws (row 0 of ``params``), the others the obscured draws (row 1). Number
        counts use it so that the spread of spectral parameters spreads the band fluxes;
      params: {name: [2, D]} the draws (row 0 unobscured, row 1 obscured);
      meta: description (spectral set, draws, seed, components, key, version).
    """

    energy: torch.Tensor
    lognh_edges: torch.Tensor
    lognh: torch.Tensor
    mean: torch.Tensor
    components: dict[str, torch.Tensor]
    per_draw: torch.Tensor
    params: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    def to(self, device) -> "SpectralTable":
        mv = lambda t: t.to(device)  # noqa: E731
        return SpectralTable(mv(self.energy), mv(self.lognh_edges), mv(self.lognh), mv(self.mean),
                             {k: mv(v) for k, v in self.components.items()}, mv(self.per_draw),
                             {k: mv(v) for k, v in self.params.items()}, dict(self.meta))

    @property
    def n_draws(self) -> int:
        return int(self.per_draw.shape[0])


def spectra_per_draw(spec: SpectralSet | int, log_nh, energy=None, n_draws: int = 64, seed: int = 0,
                     components: list[Component] | None = None, device=None) -> torch.Tensor:
    """The spectral table S[draw, log N_H, E_rest] at given columns (no cell averaging).

    Each spectrum is normalised to intrinsic L(2-10 keV) = 1 erg/s of its primary. Draws of
    the obscured class (log N_H >= 22) use the obscured distributions.
    Args: log_nh [M] (log10 cm^-2); energy [nE] keV (default :func:`default_energy_grid`).
    Returns float64 [n_draws, M, nE] in photons s^-1 keV^-1 per erg/s.
    """
    spec = spec if isinstance(spec, SpectralSet) else get_spectral_set(spec)
    energy = default_energy_grid(device) if energy is None else as_tensor(energy, device)
    log_nh = as_tensor(log_nh, device).reshape(-1)
    comps = components if components is not None else default_components()
    params = {k: v.to(energy.device) for k, v in draw_parameters(spec, n_draws, seed).items()}
    out = torch.zeros(n_draws, log_nh.numel(), energy.numel(), dtype=DTYPE, device=energy.device)
    for cls in (0, 1):
        sel = (log_nh >= OBSCURED_LOGNH) if cls else (log_nh < OBSCURED_LOGNH)
        if not bool(sel.any()):
            continue
        p = {k: v[cls] for k, v in params.items()}
        prim = primary_spectrum(energy, p["gamma"], p["ecut"])
        out[:, sel] = sum(c.spectrum(energy, prim, p, log_nh[sel]) for c in comps)
    return out


# ------------------------------------------------------------------------------------------
# Cache keys: everything a table depends on, input files by content
# ------------------------------------------------------------------------------------------
_DIGESTS: dict[tuple, str] = {}


def file_sha256(path) -> str:
    """sha256 (hex) of a file's bytes, read once per process per file version (path, size,
    modification and change times, inode: a rewritten or replaced file is read again).

    Raises :class:`PopsynthError` when the file cannot be read."""
    p = Path(path).resolve()
    try:
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if key not in _DIGESTS:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            _DIGESTS[key] = h.hexdigest()
    except OSError as exc:
        raise PopsynthError(f"cannot read {p} ({exc.strerror or type(exc).__name__})",
                            "check that the file exists and is readable") from None
    return _DIGESTS[key]


def _arrays_sha256(*arrays) -> str:
    """sha256 (hex) of arrays / tensors (dtype, shape and bytes), for tables held in memory only."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _greens_sha256(kind: str, table) -> str:
    """sha256 naming the Green's table ("slab" or "torus") a component uses, by content.

    ``table`` None (the shipped table, not loaded yet) or the table ``load_greens`` read from a
    file unchanged since: the file's sha256 (its datasets are not read). Any other table: the
    sha256 of its arrays."""
    from ..mc import greens

    if table is None:
        path = greens.default_table_path(kind)
        # a missing file gets a placeholder here; loading it then fails with read_greens's message
        return file_sha256(path) if path.is_file() else f"missing:{path}"
    # load_greens keeps the tables it read by (path, size, mtime_ns) of their file
    for k, loaded in list(getattr(greens, "_LOADED", {}).items()):
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
    return "arrays:" + _arrays_sha256(*(getattr(table, k) for k in names))


class _TableStandIn:
    """Takes a Green's table's place while a component describes itself for the cache key: the
    description then names the table by its sha256, and a shipped table is not read (the torus
    file is 21 MB of compressed datasets)."""

    def __init__(self, kind: str, digest: str):
        self.kind = kind
        self.version_key = f"sha256:{digest}"


def _describe_for_key(c: Component) -> dict:
    """``c.describe()`` with every input table named by the sha256 of its contents."""
    from .reprocessed import ExternalTorusComponent, Reflection, TorusReprocessed

    if isinstance(c, (Reflection, TorusReprocessed)):
        kind = "slab" if isinstance(c, Reflection) else "torus"
        held = c._table
        c._table = _TableStandIn(held.kind if held is not None else kind, _greens_sha256(kind, held))
        try:
            return c.describe()
        finally:
            c._table = held
    d = c.describe()
    if isinstance(c, ExternalTorusComponent):
        t = c.torus.table
        if t.path is not None and Path(t.path).is_file():
            d["table_sha256"] = file_sha256(t.path)
        else:  # built in memory
            d["table_sha256"] = "arrays:" + _arrays_sha256(
                t.energy_lo, t.energy_hi, t.spectra, *t.param_grids,
                *([t.add_spectra] if t.add_spectra is not None else []))
        if c.fill == "builtin":  # the built-in torus fills energies beyond the table's
            builtin = c._builtin[1]._table if c._builtin is not None else None
            d["fill_greens_sha256"] = _greens_sha256("torus", builtin)
    return d


def _table_key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def spectral_table_key(spec: SpectralSet | int, lognh_edges, energy=None, n_draws: int = 64, seed: int = 0,
                       n_sub: int = 4, components: list[Component] | None = None) -> tuple[str, dict]:
    """The cache key of :func:`build_spectral_table` for these arguments, and what it hashes.

    The payload holds the spectral-set definition, the grids (energy in keV, log N_H edges), the
    draws, seed and sub-nodes, each component's description with every input table named by
    the sha256 of its contents (the shipped Green's tables ``data/greens/*.h5``, an external
    XSPEC torus table), the package, table-format and xraydb versions. The shipped tables are
    hashed as files (once per process), never read. Returns (key: 32 hex characters, payload).
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
    return _table_key(payload), payload


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
                      f"({type(exc).__name__}); rebuilding it", RuntimeWarning, stacklevel=3)
        return None
    problem = _cache_problem(d, key, energy, edges, comp_names, n_draws)
    if problem:
        warnings.warn(f"spectral cache file {path} ignored ({problem}); rebuilding it", RuntimeWarning, stacklevel=3)
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


def _save_table(path: Path, table: "SpectralTable") -> None:
    """Write ``table`` to the cache atomically (a reader sees the old file or the new one)."""
    from ..io import atomic_write

    payload = {"format": _CACHE_FORMAT, "meta_json": json.dumps(table.meta, sort_keys=True),
               "energy": table.energy, "lognh_edges": table.lognh_edges, "lognh": table.lognh,
               "mean": table.mean, "components": dict(table.components), "per_draw": table.per_draw,
               "params": dict(table.params)}
    try:
        atomic_write(path, lambda tmp: torch.save(payload, tmp))
    except OSError as exc:  # the table is still good; only the cache copy is lost
        warnings.warn(f"could not write the spectral cache file {path} ({exc.strerror or type(exc).__name__}); "
                      "set POPSYNTH_CACHE to a writable folder", RuntimeWarning, stacklevel=3)


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
    path = None
    if cache:
        from ..paths import cache_dir

        path = cache_dir() / "spectra" / f"set{spec.number}-{key}.pt"
        if path.exists():
            table = _cached_table(path, key, energy, edges, [c.name for c in comps], n_draws)
            if table is not None:
                return table.to(device)
    x, w = np.polynomial.legendre.leggauss(n_sub)
    lo, hi = edges[:-1].numpy(), edges[1:].numpy()
    sub = 0.5 * (hi - lo)[:, None] * x[None, :] + 0.5 * (hi + lo)[:, None]  # [nN, n_sub]
    wsub = torch.as_tensor(w / 2.0, dtype=DTYPE)
    params = draw_parameters(spec, n_draws, seed)
    n_cells = edges.numel() - 1
    comp_tab = {c.name: torch.zeros(n_cells, energy.numel(), dtype=DTYPE) for c in comps}
    per_draw = torch.zeros(n_draws, n_cells, energy.numel(), dtype=DTYPE)
    for cls in (0, 1):
        cells = np.nonzero((lo >= OBSCURED_LOGNH) if cls else (lo < OBSCURED_LOGNH))[0]
        if cells.size == 0:
            continue
        p = {k: v[cls] for k, v in params.items()}
        prim = primary_spectrum(energy, p["gamma"], p["ecut"])  # [D, nE]
        for start in range(0, cells.size, 8):  # chunks keep memory at D * 8 * n_sub * nE doubles
            cc = cells[start:start + 8]
            lnh = torch.as_tensor(sub[cc].reshape(-1), dtype=DTYPE)
            for c in comps:
                s = c.spectrum(energy, prim, p, lnh)  # [D, len(cc)*n_sub, nE]
                s = (s.reshape(n_draws, cc.size, n_sub, -1) * wsub[None, None, :, None]).sum(2)
                per_draw[:, cc] += s
                comp_tab[c.name][cc] = s.mean(0)
    mean = per_draw.mean(0)
    if not torch.isfinite(mean).all() or (mean < 0).any():
        raise PopsynthError("the spectral table has non-finite or negative values",
                            "check the spectral-set parameters and the energy grid")
    meta = json.loads(json.dumps({**payload, "key": key, "spec_set": spec.number}))  # as a cache file holds it
    table = SpectralTable(energy, edges, 0.5 * (edges[1:] + edges[:-1]), mean, comp_tab, per_draw,
                          {k: v.clone() for k, v in params.items()}, meta)
    if path is not None:
        _save_table(path, table)
    return table.to(device)

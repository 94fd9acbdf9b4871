"""Currency of a Green's function table: was it built with today's code and physics data?

Each table stores the tabulated interaction physics it was built with (``medium_rows``: the
:class:`~popsynth.mc.transport.Medium` rows, ln sigma_tot, P_C and P_line on every node of
the medium's energy grid; the line energies, yields, K edges and jump ratios; the tabulation
arguments) and the xraydb version and database sha256. :func:`check_table` compares these
with today's code and data: the format and transport versions, the kind, the table's grids
(``grids_key``) and the medium's tabulation arguments must match exactly; the tabulated
arrays and line data must agree within the relative tolerance :data:`MEDIUM_RTOL` (1e-9), so
floating-point noise (numpy's AVX-512 ``exp`` differs by 1 ulp on some nodes) passes while a
real change of a cross section, yield or line energy (1e-6 and up) does not.
:func:`~popsynth.mc.shipped.load_greens` runs a sampled version of the check once per process per file and warns
with :class:`StaleTableWarning` (the table is still used); :func:`~popsynth.mc.shipped.check_shipped_tables` returns
the results. Rebuild stale tables with ``python -m popsynth.mc.build --kind all``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .table import GREENS_FORMAT_VERSION, GreensTable, _physics_spec, grids_key, version_key
from .transport import MC_TRANSPORT_VERSION, Medium, line_source, medium_grid, medium_physics, tabulate_medium

MEDIUM_RTOL = 1.0e-9
"""Relative tolerance of :func:`check_table` on the tabulated medium and the line data.

Floating-point noise between CPUs and library builds: numpy's AVX-512 ``exp`` differs from
the generic path by 1 ulp on ~600 of the 13,371 node energies, which moves the tabulated
medium by <= 1.0e-12 relative (the Klein-Nishina formula's cancellation near 10 keV amplifies
the 1-ulp energy difference ~5000 times; elsewhere ~1e-15). A real change of physics data (a
cross section, yield or line energy) is >= 1e-6. 1e-9 is a factor 1000 from both, and far
below anything the Monte Carlo resolves (its errors are >= 1e-3)."""

MEDIUM_REFERENCE_VERSION = "1"
"""Layout version of the medium reference stored in the tables (dataset ``medium_rows``)."""

CHECK_STRIDE = 16
"""Load-time check (:func:`load_greens`): every CHECK_STRIDE-th medium node (0.9 % apart in E)
plus :data:`CHECK_EDGE_HALF_WIDTH` nodes either side of every absorption edge is re-evaluated."""

CHECK_EDGE_HALF_WIDTH = 4

REBUILD_COMMAND = "python -m popsynth.mc.build --kind all"


class StaleTableWarning(UserWarning):
    """A Green's function table was built with other code or physics data than today's.

    Issued once per process and file by :func:`load_greens` (and :func:`check_shipped_tables`);
    the table is still used as it is. Fix: rebuild with ``python -m popsynth.mc.build --kind
    all`` (about 16 min on 2 CPU cores)."""


_XRAYDB: dict = {}


def xraydb_provenance() -> dict:
    """Version of the xraydb package and of its sqlite database, and the database's sha256.

    Returns {"xraydb_version": "4.5.8", "xraydb_db_version": "XrayDB Version: 9.2, ...",
    "xraydb_db_sha256": 64 hex digits} (cached per process; hashing the 10 MB file takes
    ~20 ms). Recorded in every table built (and in the shipped tables' metadata)."""
    if not _XRAYDB:
        import xraydb

        db = xraydb.get_xraydb()
        h = hashlib.sha256()
        with open(db.dbname, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        try:
            db_version = str(db.get_version())
        except Exception:  # noqa: BLE001 - provenance only
            db_version = ""
        _XRAYDB.update(
            xraydb_version=str(xraydb.__version__), xraydb_db_version=db_version,
            xraydb_db_sha256=h.hexdigest(),
        )
    return dict(_XRAYDB)


def medium_reference(medium: Medium) -> dict:
    """The physics a table is built with, as stored in it (``GreensTable.medium_ref``).

    Keys: rows float64 [2 + L, n] (the medium's rows: ln sigma_tot with sigma in cm^2 per H
    atom, P_C, P_l, on the nodes E_j = exp(ln_e0 + j dln) keV); ln_e0, dln (float);
    scattering (str); line_names (tuple, L); line_energies_keV float64 [L]; source (dict:
    ``Medium.source``, the tabulation arguments and per-line yields, K edges and jump ratios;
    empty for test media)."""
    return {
        "rows": np.array(medium.rows.detach().cpu().numpy(), dtype=np.float64),
        "ln_e0": float(medium.ln_e0), "dln": float(medium.dln), "scattering": str(medium.scattering),
        "line_names": tuple(medium.line_names),
        "line_energies_keV": np.array(medium.line_energies_keV.detach().cpu().numpy(), dtype=np.float64),
        "source": json.loads(json.dumps(medium.source)),
    }


def build_tabulation() -> dict:
    """The medium tabulation arguments the build command uses today: the defaults of
    :func:`~popsynth.mc.transport.tabulate_medium` (e_min_keV, e_max_keV, points_per_decade,
    abund, elements as a list)."""
    out = {k: p.default for k, p in inspect.signature(tabulate_medium).parameters.items() if k != "device"}
    out["elements"] = [str(e) for e in out["elements"]]
    return out


def check_nodes(
    rows: np.ndarray, stride: int = CHECK_STRIDE, half_width: int = CHECK_EDGE_HALF_WIDTH
) -> np.ndarray:
    """Medium nodes the load-time check re-evaluates: every ``stride``-th node, the last one,
    and ``half_width`` nodes either side of every absorption edge found in ``rows`` [2 + L, n]
    (ln sigma_tot rises between two nodes, or a line probability switches on). Sorted int64.

    Physics data change smoothly between edges (the Elam tables have ~15 nodes per decade,
    their spline couples each to its neighbours, so a change spans >= 20 % in E, i.e. hundreds
    of medium nodes, 0.06 % apart), and at edges, which are all sampled: so the sample catches
    what a full comparison catches, at 1/10 of the cost."""
    n = rows.shape[1]
    parts = [np.arange(0, n, max(1, int(stride))), np.array([n - 1])]
    jumps = np.flatnonzero(np.diff(rows[0]) > 0.0)
    if rows.shape[0] > 2:
        on = rows[2:] != 0.0
        jumps = np.union1d(jumps, np.flatnonzero(np.any(on[:, 1:] != on[:, :-1], axis=0)))
    offs = np.arange(-int(half_width) + 1, int(half_width) + 1)
    if jumps.size:
        parts.append((jumps[:, None] + offs[None, :]).ravel())
    idx = np.unique(np.concatenate(parts).astype(np.int64))
    return idx[(idx >= 0) & (idx < n)]


_TODAY: dict = {}


def _today_physics(
    abund: str, elements, ln_e0: float, dln: float, nodes: np.ndarray
) -> tuple[np.ndarray, dict]:
    """Today's medium physics at nodes E_j = exp(ln_e0 + j dln) keV, j in ``nodes``, cached per
    process: (rows [2 + L, len(nodes)], line data dict with line_names, line_energies_keV,
    line_yields, line_edges_keV, line_jump_ratios)."""
    nodes = np.ascontiguousarray(nodes, dtype=np.int64)
    key = (str(abund), tuple(elements), float(ln_e0), float(dln), nodes.size,
           hashlib.blake2b(nodes.tobytes(), digest_size=16).hexdigest())
    if key not in _TODAY:
        def compute():
            rows, lines = medium_physics(np.exp(ln_e0 + dln * nodes), abund=str(abund), elements=tuple(elements))
            info = line_source(lines)
            info["line_names"] = [ln.name for ln in lines]
            info["line_energies_keV"] = [float(ln.energy_keV) for ln in lines]
            return rows, info

        _TODAY[key] = _disk_cached_physics(key, compute)
    return _TODAY[key]


def _xraydb_files() -> dict | None:
    """xraydb's version and its database's sha256, found without importing xraydb (an import
    takes ~1 s); None when the package or its database cannot be located."""
    import importlib.metadata
    import importlib.util

    from ..io.cache import file_sha256

    try:
        spec = importlib.util.find_spec("xraydb")
        db = Path(spec.origin).parent / "xraydb.sqlite"
        return {"version": importlib.metadata.version("xraydb"), "db_sha256": file_sha256(db)}
    except Exception:  # noqa: BLE001 - then no disk cache, the physics is computed
        return None


def _disk_cached_physics(key: tuple, compute):
    """``compute()`` (today's medium physics at a table's sampled nodes), kept in the cache folder
    under a key of the arguments, xraydb's version and database sha256 and the package sources:
    the load-time currency check then costs a file read instead of importing xraydb and
    evaluating its cross sections (~1.6 s). Without a locatable database, computed every time."""
    import pickle

    from ..io.cache import cache_file, cache_key, cached, source_digest

    xdb = _xraydb_files()
    if xdb is None:
        return compute()
    ck = cache_key({"args": list(key[:2]) + [repr(key[2]), repr(key[3])] + list(key[4:]), "xraydb": xdb,
                    "code": source_digest()})

    def load(path, k):
        try:
            blob = pickle.loads(Path(path).read_bytes())
        except Exception:  # noqa: BLE001 - damaged: recompute
            return None
        return blob["value"] if isinstance(blob, dict) and blob.get("key") == k else None

    return cached(compute, ck, path=cache_file("physics", f"medium-{ck}.pkl"), load=load,
                  save=lambda tmp, v: Path(tmp).write_bytes(pickle.dumps({"key": ck, "value": v})),
                  what="medium-physics cache file")


@dataclass
class TableCheck:
    """Result of :func:`check_table`.

    name: the table's file (or kind). current: True when nothing differs beyond tolerance.
    problems: one sentence per difference (empty when current). max_rel_diff: largest relative
    difference of the tabulated medium (sigma_tot, P_C, P_l) from today's (nan when not
    compared); where: row, energy (keV) and node of that maximum. nodes_compared /
    nodes_total: medium energy nodes compared / stored. rtol: the tolerance used.
    built_with / now: xraydb version and database sha256 of the table / of this process
    (filled in for stale tables). seconds: wall time of the check.
    """

    name: str
    current: bool
    problems: list = field(default_factory=list)
    max_rel_diff: float = math.nan
    where: str = ""
    nodes_compared: int = 0
    nodes_total: int = 0
    rtol: float = MEDIUM_RTOL
    built_with: str = ""
    now: str = ""
    seconds: float = 0.0

    def message(self) -> str:
        """One paragraph for a person: what differs, and the fix."""
        if self.current:
            return (
                f"{self.name} is current (medium within rtol {self.rtol:.0e}: max relative "
                f"difference {self.max_rel_diff:.1e} over {self.nodes_compared} of "
                f"{self.nodes_total} energy nodes)"
            )
        prov = f" Built with {self.built_with}; this process has {self.now}." if self.built_with else ""
        return (
            f"Green's function table {self.name} is out of date with today's code and physics "
            f"data: {'; '.join(self.problems)}.{prov} The table is still used as it is; rebuild "
            f"it with '{REBUILD_COMMAND}' (about 16 min on 2 CPU cores; data/greens/README.md)."
        )


def _xraydb_text(meta: dict) -> str:
    v = meta.get("xraydb_version")
    if not v:
        return "an unrecorded xraydb version"
    return f"xraydb {v} (database sha256 {str(meta.get('xraydb_db_sha256', ''))[:12]})"


def _row_label(i: int, line_names) -> str:
    return ("sigma_tot", "P_compton")[i] if i < 2 else f"P_{line_names[i - 2]}"


def _compare_rows(ref: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Relative differences [2 + L, m]: |d ln sigma_tot| for row 0 (= relative difference of
    sigma_tot), |a - b| / max(|a|, |b|) for the probabilities (0 where both are 0); inf where
    today's value is not finite."""
    d = np.empty(ref.shape)
    d[0] = np.abs(new[0] - ref[0])
    den = np.maximum(np.abs(ref[1:]), np.abs(new[1:]))
    d[1:] = np.where(den > 0.0, np.abs(new[1:] - ref[1:]) / np.where(den > 0.0, den, 1.0), 0.0)
    d[~np.isfinite(new)] = np.inf
    return np.nan_to_num(d, nan=np.inf)


def _compare_lines(ref: dict, now: dict, rtol: float, problems: list) -> None:
    """Append a problem for every line datum (energy, yield, K edge, jump ratio) of ``now``
    that differs from ``ref`` by more than ``rtol`` (relative). Both: dicts of lists of length
    L with keys line_names and any of line_energies_keV, line_yields, line_edges_keV,
    line_jump_ratios (missing keys are not compared)."""
    names = list(ref.get("line_names", []))
    labels = {"line_energies_keV": "energy (keV)", "line_yields": "yield",
              "line_edges_keV": "K edge (keV)", "line_jump_ratios": "K jump ratio"}
    for key, label in labels.items():
        if key not in ref or key not in now:
            continue
        a = np.asarray(ref[key], dtype=np.float64)
        b = np.asarray(now[key], dtype=np.float64)
        if a.shape != b.shape:
            problems.append(f"line {label}s: {a.size} stored, {b.size} today")
            continue
        rel = np.abs(b - a) / np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300)
        for i in np.flatnonzero(~(rel <= rtol)):
            problems.append(
                f"{names[i] if i < len(names) else f'line {i}'} {label} {a[i]:.10g} -> {b[i]:.10g} "
                f"(relative difference {rel[i]:.1e} > {rtol:.0e})"
            )


def _exact_problems(table: GreensTable) -> list[str]:
    """Exact-match part of :func:`check_table`: format and transport versions, kind, grids."""
    meta, out = table.meta, []
    fmt = str(meta.get("format_version", ""))
    if fmt != GREENS_FORMAT_VERSION:
        out.append(f"format version '{fmt}', this code writes '{GREENS_FORMAT_VERSION}'")
    tv = str(meta.get("transport_version", ""))
    if tv != MC_TRANSPORT_VERSION:
        out.append(f"transport version '{tv}', this code is version '{MC_TRANSPORT_VERSION}'")
    if table.kind not in ("torus", "slab"):
        out.append(f"unknown kind '{table.kind}'")
    gk = meta.get("grids_key")
    if gk is not None:
        now = grids_key(table.kind, table.e_in_edges, table.e_out_edges, table.log_nh,
                        table.theta_tor_deg, table.cos_edges)
        if str(gk) != now:
            out.append(f"grids differ from those recorded at build (grids_key {gk} vs {now})")
    return out


def _legacy_problems(table: GreensTable, medium: Medium | None) -> tuple[list[str], int]:
    """Tables without a stored medium: the exact ``physics_key`` hash. Returns (problems,
    number of medium nodes)."""
    if medium is None:
        medium = tabulate_medium()
    spec = _physics_spec(table.kind, medium.fingerprint(), table.e_in_edges, table.e_out_edges,
                         table.log_nh, table.theta_tor_deg, table.cos_edges)
    if version_key(spec) == table.meta.get("physics_key"):
        return [], int(medium.rows.shape[1])
    return [
        "no medium reference stored (older table) and its exact physics_key differs from today's "
        "(possibly floating-point noise only: if the medium is bit-identical, "
        "'python -m popsynth.mc.build --add-reference' stores the reference)"
    ], int(medium.rows.shape[1])


def _same_grid(ln_e0: float, dln: float, n: int, ref: dict) -> bool:
    return (n == ref["rows"].shape[1] and math.isclose(ln_e0, ref["ln_e0"], rel_tol=1e-12, abs_tol=1e-12)
            and math.isclose(dln, ref["dln"], rel_tol=1e-12))


def _today_for(ref: dict, medium: Medium | None, sample: bool, problems: list) -> tuple:
    """Today's side of a comparison with the stored ``ref``: (nodes, rows [2 + L, len(nodes)]
    or None when not comparable, line data dict). Appends exact-match problems (tabulation
    arguments, medium grid, scattering)."""
    src = ref.get("source", {})
    n = int(ref["rows"].shape[1])
    if medium is not None:
        rows = np.asarray(medium.rows.detach().cpu().numpy(), dtype=np.float64)
        lines = {"line_names": list(medium.line_names),
                 "line_energies_keV": medium.line_energies_keV.detach().cpu().numpy().tolist()}
        lines.update({k: medium.source[k] for k in ("line_yields", "line_edges_keV", "line_jump_ratios")
                      if k in medium.source})
        tab_now = {k: medium.source[k] for k in build_tabulation() if k in medium.source}
        scattering = medium.scattering
        nodes = np.arange(n)
        if not _same_grid(medium.ln_e0, medium.dln, rows.shape[1], ref):
            problems.append(
                f"medium grid differs: stored {n} nodes from {math.exp(ref['ln_e0']):.6g} keV "
                f"(dln {ref['dln']:.6g}), given {rows.shape[1]} from {math.exp(medium.ln_e0):.6g} keV "
                f"(dln {medium.dln:.6g})"
            )
            rows = None
    else:
        tab_now = build_tabulation()
        scattering = "klein-nishina"
        if all(k in src for k in tab_now) and not _same_grid(
            *medium_grid(src["e_min_keV"], src["e_max_keV"], src["points_per_decade"]), ref
        ):
            problems.append("the stored medium grid does not follow from its tabulation arguments")
        nodes = check_nodes(ref["rows"]) if sample else np.arange(n)
        rows, lines = _today_physics(src.get("abund", "angr"), src.get("elements", ("Fe", "Ni")),
                                     ref["ln_e0"], ref["dln"], nodes)
    diff = {k: (src.get(k), v) for k, v in tab_now.items() if src.get(k) != v}
    if diff:
        problems.append("medium tabulation differs: " + ", ".join(
            f"{k} {a!r} (table) vs {b!r} (today)" for k, (a, b) in diff.items()))
    if scattering != ref["scattering"]:
        problems.append(f"scattering '{ref['scattering']}' (table) vs '{scattering}' (today)")
    if list(lines["line_names"]) != list(ref["line_names"]):
        problems.append(
            f"fluorescence lines {list(ref['line_names'])} (table) vs {list(lines['line_names'])} (today)"
        )
        rows = None
    return nodes, rows, lines


def check_table(
    table: GreensTable,
    medium: Medium | None = None,
    *,
    sample: bool = False,
    rtol: float = MEDIUM_RTOL,
    name: str | None = None,
) -> TableCheck:
    """Compare the code and physics a table was built with to today's.

    Exact: format version (:data:`GREENS_FORMAT_VERSION`), transport version
    (:data:`~popsynth.mc.transport.MC_TRANSPORT_VERSION`), kind, grids (``grids_key`` of the
    energy edges, log N_H / theta_tor nodes and inclination edges, recorded at build), the
    medium's tabulation arguments (energy range, points per decade, abundances, elements),
    scattering law and line names. Within ``rtol`` (relative): the tabulated medium rows
    (sigma_tot, P_C, P_line on every medium node; :func:`_compare_rows`) and the line
    energies, yields, K edges and jump ratios.

    medium: today's physics to compare with (all nodes; e.g. a
    :func:`~popsynth.mc.transport.tabulate_medium` result); default: re-evaluate today's
    physics (:func:`~popsynth.mc.transport.medium_physics`) at the table's own medium nodes
    and compare the tabulation arguments with the build command's defaults
    (:func:`build_tabulation`). sample: with ``medium=None``, evaluate only the
    :func:`check_nodes` sample (966 of 13,371 nodes: ~0.16 s instead of ~1.3 s with xraydb
    open). Tables without a stored medium (older files) fall back to the exact ``physics_key``
    hash. name: label for messages (default the kind). Returns a :class:`TableCheck`.
    """
    t0 = time.perf_counter()
    chk = TableCheck(name=name or table.kind, current=True, rtol=float(rtol))
    chk.problems.extend(_exact_problems(table))
    ref = table.medium_ref
    if not ref:
        problems, chk.nodes_total = _legacy_problems(table, medium)
        chk.problems.extend(problems)
    else:
        n = chk.nodes_total = int(ref["rows"].shape[1])
        nodes, rows, lines = _today_for(ref, medium, sample, chk.problems)
        if rows is not None:
            d = _compare_rows(ref["rows"][:, nodes], rows)
            r, c = np.unravel_index(int(np.argmax(d)), d.shape)
            j = int(nodes[c])
            chk.max_rel_diff = float(d[r, c])
            chk.where = (f"{_row_label(r, ref['line_names'])} at "
                         f"{math.exp(ref['ln_e0'] + ref['dln'] * j):.6g} keV (node {j} of {n})")
            chk.nodes_compared = int(nodes.size)
            if not chk.max_rel_diff <= rtol:
                n_bad = int(np.count_nonzero(np.any(~(d <= rtol), axis=0)))
                chk.problems.append(
                    f"tabulated medium differs beyond rtol {rtol:.0e}: max relative difference "
                    f"{chk.max_rel_diff:.2e} in {chk.where}; {n_bad} of {nodes.size} compared nodes differ"
                )
        if list(lines["line_names"]) == list(ref["line_names"]):
            stored = {"line_names": list(ref["line_names"]),
                      "line_energies_keV": [float(x) for x in ref["line_energies_keV"]]}
            stored.update({k: ref["source"][k] for k in ("line_yields", "line_edges_keV", "line_jump_ratios")
                           if k in ref.get("source", {})})
            _compare_lines(stored, lines, rtol, chk.problems)
    chk.current = not chk.problems
    if not chk.current:
        chk.built_with = _xraydb_text(table.meta)
        try:
            chk.now = _xraydb_text(xraydb_provenance())
        except Exception:  # noqa: BLE001 - provenance only
            chk.now = "no readable xraydb"
    chk.seconds = time.perf_counter() - t0
    return chk


def is_current(table: GreensTable, medium: Medium | None = None) -> bool:
    """True when ``table`` was built by this code with today's physics data, within
    :data:`MEDIUM_RTOL`: ``check_table(table, medium).current`` (all medium nodes).

    medium: the tabulated physics to compare with (default: today's physics at the table's
    medium nodes, with the build command's tabulation arguments). When False,
    ``check_table(...).message()`` says what differs; rebuild with
    ``python -m popsynth.mc.build --kind all``.
    """
    return check_table(table, medium).current

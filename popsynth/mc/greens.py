"""Green's function tables of the photon Monte Carlo: grids, computation, HDF5 IO, application.

Normalisation convention
------------------------
For an observer at inclination i (angle from the slab normal / torus symmetry axis),

    N_out[i, o] = sum_j G[i, o, j] * N_in[j]

where N_in[j] is the photon spectrum per input bin j that the SAME observer would receive
directly from the bare isotropic source (photons per bin, any flux unit), and N_out[i, o] is
the reprocessed photon spectrum per output bin o in the same unit. Equivalently

    G[i, o, j] = (photons escaping into inclination bin i and output bin o, per unit solid
                  angle) x 4 pi / (photons injected in input bin j by the isotropic source),

which a run estimates as W / (N_j * dmu_i): W the escaped weight in the bin, N_j the photons
injected in input bin j, dmu_i the width of inclination bin i in cos i. (The torus source is
isotropic over 4 pi and escapes are folded onto cos i = |d_z|, solid angle 4 pi dmu; the slab
source sends the downward half of an isotropic source, N_j = half of the isotropic total, into
the slab, and reflection leaves into 2 pi dmu. Both reduce to W / (N_j dmu).)

Components are kept apart:

* ``G``       [n_nh, n_th, n_inc, n_out, n_in]: scattered continuum, including fluorescence
  photons that were Compton scattered after emission (the Compton shoulder);
* ``G_line``  [n_nh, n_th, n_inc, L, n_in]: fluorescence line photons (Fe Ka, Fe Kb, Ni Ka,
  Ni Kb) escaping unscattered, as delta functions at the line energies (photons, not per bin);
* ``T_mc``    [n_nh, n_th, n_inc, n_in]: the Monte Carlo's own zeroth-order (never interacted)
  beam, in the same normalisation. It is NOT part of G: the transmitted beam is applied
  analytically (:func:`transmitted_fraction`: exp(-N_H sigma_tot(E)) for lines of sight through
  the torus, 1 in the opening); T_mc is kept so tests can compare the two.

For the slab (pexrav / pexmon set-up, Magdziarz & Zdziarski 1995; Nandra et al. 2007) the
isotropic point source sits on the surface of a semi-infinite slab covering 2 pi sr, so G is the
reflection spectrum for reflection factor R = 1: scale by R for other values.

Interpolation and grid limits
-----------------------------
:func:`response_matrix` and :func:`apply_greens` interpolate linearly in log N_H and theta_tor
between table nodes and linearly in cos i between the centres of the inclination bins that lie
on the same side of the torus opening as the requested line of sight (so an observer in the
opening never mixes with bins seen through the torus); beyond the outermost bin centre of that
side the end bin is used (nearest). log N_H or theta_tor outside the node range raise
:class:`~popsynth.errors.PopsynthError`, or, with ``out_of_grid="clamp"``, are clamped to the
nearest node with a ``UserWarning``: never silently.

Currency (is a table built with today's physics?)
------------------------------------------------
Each table stores the tabulated interaction physics it was built with (``medium_rows``: the
:class:`~popsynth.mc.transport.Medium` rows, ln sigma_tot, P_C and P_line on every node of
the medium's energy grid; the line energies, yields, K edges and jump ratios; the tabulation
arguments) and the xraydb version and database sha256. :func:`check_table` compares these
with today's code and data: the format and transport versions, the kind, the table's grids
(``grids_key``) and the medium's tabulation arguments must match exactly; the tabulated
arrays and line data must agree within the relative tolerance :data:`MEDIUM_RTOL` (1e-9), so
floating-point noise (numpy's AVX-512 ``exp`` differs by 1 ulp on some nodes) passes while a
real change of a cross section, yield or line energy (1e-6 and up) does not.
:func:`load_greens` runs a sampled version of the check once per process per file and warns
with :class:`StaleTableWarning` (the table is still used); :func:`check_shipped_tables` returns
the results. Rebuild stale tables with ``python -m popsynth.mc.build --kind all``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..errors import PopsynthError
from .transport import (
    MC_TRANSPORT_VERSION,
    Medium,
    TallyGrid,
    line_source,
    medium_grid,
    medium_physics,
    run_photons,
)

GREENS_FORMAT_VERSION = "1"
"""Layout version of the HDF5 files (bumped when datasets or attributes change meaning)."""

FE_K_EDGE_KEV = 7.112  # xraydb / Elam et al. 2002 K edges, used as bin edges
NI_K_EDGE_KEV = 8.333

NORMALISATION = (
    "N_out[i,o] = sum_j G[i,o,j] N_in[j]; N_in = photons per input bin the same observer receives "
    "directly from the bare isotropic source; G = escaping photons per unit solid angle x 4 pi / "
    "injected photons (per energy pair); slab: R = 1 (2 pi sr); transmitted beam not included"
)


# ------------------------------------------------------------------------------------------
# Grids
# ------------------------------------------------------------------------------------------
def input_energy_edges(
    e_min_keV: float = 1.0, e_max_keV: float = 1000.0, per_decade: int = 50,
    snap_keV: tuple[float, ...] = (FE_K_EDGE_KEV, NI_K_EDGE_KEV),
) -> np.ndarray:
    """Input energy bin edges (keV): log-spaced, ``per_decade`` bins per decade (50: 4.7 %
    bins), with the edge nearest each K-edge energy in ``snap_keV`` moved onto it so that no
    input bin straddles the Fe or Ni K edge. Returns float64 [n + 1]."""
    n = int(round(math.log10(e_max_keV / e_min_keV) * per_decade))
    edges = np.logspace(math.log10(e_min_keV), math.log10(e_max_keV), n + 1)
    for e in snap_keV:
        k = int(np.argmin(np.abs(np.log(edges[1:-1] / e)))) + 1
        edges[k] = e
    return edges


def output_energy_edges(
    e_min_keV: float = 1.0, e_max_keV: float = 1000.0, per_decade: int = 50,
    fine_keV: tuple[float, float] = (6.0, FE_K_EDGE_KEV), fine_width_keV: float = 0.04,
    snap_keV: tuple[float, ...] = (FE_K_EDGE_KEV, NI_K_EDGE_KEV),
) -> np.ndarray:
    """Output energy bin edges (keV): the input grid, with linear bins of ~``fine_width_keV``
    between ``fine_keV`` (default 6.0 keV to the Fe K edge) to resolve the Fe K alpha and
    K beta Compton shoulders (the lines themselves are stored as delta functions).
    Returns float64 [n + 1]."""
    base = input_energy_edges(e_min_keV, e_max_keV, per_decade, snap_keV)
    lo, hi = fine_keV
    n_fine = max(1, int(round((hi - lo) / fine_width_keV)))
    fine = np.linspace(lo, hi, n_fine + 1)
    keep = base[(base < lo * 0.98) | (base > hi * 1.001)]
    return np.unique(np.concatenate((keep, fine)))


def torus_cos_edges(theta_tor_deg: float, n_torus: int = 6, n_open: int = 4) -> np.ndarray:
    """Inclination bin edges in cos i for a torus of half-opening angle theta_tor (deg).

    ``n_torus`` equal bins in [0, cos theta_tor] (lines of sight through the torus) and
    ``n_open`` equal bins in [cos theta_tor, 1] (through the opening), so no bin straddles the
    edge of the torus. Returns float64 [n_torus + n_open + 1], increasing."""
    c = math.cos(math.radians(theta_tor_deg))
    return np.concatenate((np.linspace(0.0, c, n_torus + 1), np.linspace(c, 1.0, n_open + 1)[1:]))


def slab_cos_edges(n: int = 10) -> np.ndarray:
    """Equal bins in cos i over [0, 1] for the slab (float64 [n + 1])."""
    return np.linspace(0.0, 1.0, n + 1)


# ------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------
class Reprocessed(NamedTuple):
    """Reprocessed photon spectrum returned by :func:`apply_greens`.

    continuum: [..., n_out] photons per output bin (scattered continuum incl. Compton
    shoulders); lines: [..., L] photons in each fluorescence line (delta functions at
    ``GreensTable.line_energies_keV``). Same units as the input spectrum.
    """

    continuum: torch.Tensor
    lines: torch.Tensor


@dataclass
class GreensTable:
    """Green's functions of one geometry kind on a (log N_H, theta_tor, inclination) grid.

    kind: "torus" or "slab". e_in_edges [n_in + 1], e_out_edges [n_out + 1]: keV.
    log_nh [n_nh]: log10 N_H nodes (cm^-2; the slab has one node, +inf for semi-infinite).
    theta_tor_deg [n_th]: torus half-opening angles (slab: one node, NaN).
    cos_edges [n_th, n_inc + 1]: inclination bin edges in cos i for each theta node.
    n_torus_bins: the first ``n_torus_bins`` inclination bins look through the torus (0: slab).
    line_names (L), line_energies_keV [L].
    G [n_nh, n_th, n_inc, n_out, n_in], G_line [n_nh, n_th, n_inc, L, n_in],
    T_mc [n_nh, n_th, n_inc, n_in]: see the module docstring (float32 on disk).
    G_rel_err, G_line_rel_err, T_mc_rel_err: Monte Carlo relative standard errors of the same
    shapes (from the scatter between independent photon batches; 0 where the entry is 0).
    photons [n_nh, n_th]: photons injected per configuration.
    absorbed, dropped, roulette [n_nh, n_th, n_in]: fractions of injected photons absorbed,
    scattered below the energy floor, and removed net by Russian roulette.
    meta: provenance (version_key, seed, device, timings, code versions, xraydb version and
    database sha256, ...).
    medium_ref: the tabulated physics the table was built with (:func:`medium_reference`:
    rows [2 + L, n_medium] float64, ln_e0, dln, scattering, line_names, line_energies_keV,
    source), compared with today's by :func:`check_table`; empty for tables that predate it.
    """

    kind: str
    e_in_edges: np.ndarray
    e_out_edges: np.ndarray
    log_nh: np.ndarray
    theta_tor_deg: np.ndarray
    cos_edges: np.ndarray
    n_torus_bins: int
    line_names: tuple[str, ...]
    line_energies_keV: np.ndarray
    G: np.ndarray
    G_line: np.ndarray
    T_mc: np.ndarray
    G_rel_err: np.ndarray
    G_line_rel_err: np.ndarray
    T_mc_rel_err: np.ndarray
    photons: np.ndarray
    absorbed: np.ndarray
    dropped: np.ndarray
    roulette: np.ndarray
    meta: dict = field(default_factory=dict)
    medium_ref: dict = field(default_factory=dict, repr=False, compare=False)
    _torch_cache: dict = field(default_factory=dict, repr=False, compare=False)
    _lazy: "_LazyArrays | None" = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str):
        # Only reached when ordinary lookup fails: a big array of a table read lazily
        # (read_greens(lazy=True), load_greens) that has not been used yet is read now.
        lazy = self.__dict__.get("_lazy")
        if lazy is not None and name in lazy.names:
            value = lazy.read(name)
            self.__dict__[name] = value
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def loaded_arrays(self) -> tuple[str, ...]:
        """Names of the big arrays (``G``, ``G_line``, ``T_mc`` and their errors) held in memory;
        those of a lazily read table that were never used are still on disk."""
        return tuple(n for n in _ARRAYS if n in self.__dict__)

    @property
    def n_in(self) -> int:
        return len(self.e_in_edges) - 1

    @property
    def n_out(self) -> int:
        return len(self.e_out_edges) - 1

    @property
    def n_inc(self) -> int:
        return self.cos_edges.shape[1] - 1

    @property
    def version_key(self) -> str:
        return str(self.meta.get("version_key", ""))

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Tensors on ``device`` (cached per device): G and G_line as stored (float32, to halve
        the memory of the big arrays; gathered slices are promoted to float64), cos_edges and
        the nodes as float64."""
        key = str(torch.device(device))
        if key not in self._torch_cache:
            t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), device=device)  # noqa: E731
            t32 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32), device=device)  # noqa: E731
            self._torch_cache[key] = {
                "G": t32(self.G), "G_line": t32(self.G_line), "cos_edges": t(self.cos_edges),
                "log_nh": t(self.log_nh), "theta": t(self.theta_tor_deg),
            }
        return self._torch_cache[key]

    def line_bin_matrix(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """[n_out, L] float64 0/1 matrix putting each line into the output bin holding it."""
        m = np.zeros((self.n_out, len(self.line_names)))
        for l, e in enumerate(self.line_energies_keV):
            o = int(np.searchsorted(self.e_out_edges, e, side="right")) - 1
            if 0 <= o < self.n_out:
                m[o, l] = 1.0
        return torch.as_tensor(m, device=device)


# ------------------------------------------------------------------------------------------
# Computing one configuration
# ------------------------------------------------------------------------------------------
@dataclass
class ConfigResult:
    """Normalised Monte Carlo output of one geometry configuration (numpy float64).

    G [n_inc, n_out, n_in], G_line [n_inc, L, n_in], T_mc [n_inc, n_in] and their relative
    errors; photons injected; absorbed / dropped / roulette fractions [n_in]; balance = max
    |injected - (escaped + absorbed + dropped + lost + roulette)| / injected (rounding only);
    wall_s, n_interactions.
    """

    G: np.ndarray
    G_line: np.ndarray
    T_mc: np.ndarray
    G_rel_err: np.ndarray
    G_line_rel_err: np.ndarray
    T_mc_rel_err: np.ndarray
    photons: int
    absorbed: np.ndarray
    dropped: np.ndarray
    roulette: np.ndarray
    lost: np.ndarray
    balance: float
    wall_s: float
    n_interactions: int


def simulate_config(
    geometry,
    medium: Medium,
    grid: TallyGrid,
    photons: int,
    generator: torch.Generator,
    n_batches: int = 8,
    forced: bool = True,
    **transport_kw,
) -> ConfigResult:
    """Run ``photons`` photons (split into ``n_batches`` independent batches) through one
    geometry and return normalised Green's functions with batch-to-batch Monte Carlo errors.

    ceil(photons / n_in) photons (rounded up to a multiple of n_batches) are injected per input
    bin. The relative error of an entry is std(batch estimates) / sqrt(n_batches) / mean (0
    where the mean is 0). ``transport_kw`` go to :func:`~popsynth.mc.transport.run_photons`.
    """
    n_batches = max(2, int(n_batches))
    per_bin = max(1, int(math.ceil(photons / grid.n_in)))
    r = run_photons(geometry, medium, grid, per_bin, generator, forced=forced, n_batches=n_batches, **transport_kw)
    per_batch = r.injected[0].item() / n_batches  # photons per input bin and batch
    dmu = (grid.cos_edges[1:] - grid.cos_edges[:-1]).double().cpu()
    est = r.escaped.double().cpu() / (per_batch * dmu[None, :, None, None])  # [B, inc, ch, in]
    mean = est.mean(dim=0)
    var = est.var(dim=0, unbiased=True)
    rel = torch.where(mean > 0, torch.sqrt(var / n_batches) / mean.clamp_min(1e-300), torch.zeros_like(mean))
    n_out, n_l = grid.n_out, medium.n_lines
    mean, rel = mean.numpy(), rel.numpy()
    inj = r.injected.cpu().numpy()
    return ConfigResult(
        G=mean[:, :n_out], G_line=mean[:, n_out:n_out + n_l], T_mc=mean[:, n_out + n_l],
        G_rel_err=rel[:, :n_out], G_line_rel_err=rel[:, n_out:n_out + n_l], T_mc_rel_err=rel[:, n_out + n_l],
        photons=int(inj.sum()),
        absorbed=r.absorbed.cpu().numpy() / inj, dropped=r.dropped.cpu().numpy() / inj,
        roulette=r.roulette.cpu().numpy() / inj, lost=r.lost.cpu().numpy() / inj,
        balance=float((r.balance().abs() / r.injected).max()), wall_s=r.wall_s,
        n_interactions=r.n_interactions,
    )


class _ConfigJob(NamedTuple):
    """One configuration of :func:`build_table`, self-contained (picklable) for ``map_fn``."""

    kind: str
    column: float  # torus: 10 ** log N_H of the node (cm^-2)
    theta_tor_deg: float
    slab_column_cm2: float | None
    e_in: np.ndarray
    e_out: np.ndarray
    cos_edges: np.ndarray
    seed: int
    device: str
    medium: Medium
    photons: int
    n_batches: int
    forced: bool
    transport_kw: dict
    threads: int


def run_config_job(job: _ConfigJob) -> ConfigResult:
    """Run one configuration of :func:`build_table` (in this process or on a worker): its
    geometry, tally grid and seeded generator, with the building process's torch thread count."""
    from .geometry import SlabGeometry, SphereBiconeGeometry

    if torch.get_num_threads() != job.threads:
        torch.set_num_threads(job.threads)
    dev = torch.device(job.device)
    if job.kind == "torus":
        geom = SphereBiconeGeometry(job.column, job.theta_tor_deg)
    else:
        geom = SlabGeometry(job.slab_column_cm2)
    grid = TallyGrid(torch.as_tensor(job.e_in), torch.as_tensor(job.e_out), torch.as_tensor(job.cos_edges))
    gen = torch.Generator(device=dev).manual_seed(job.seed)
    return simulate_config(geom, job.medium, grid, job.photons, gen, n_batches=job.n_batches, forced=job.forced,
                           **job.transport_kw)


def dask_map(client) -> Callable:
    """A ``map_fn`` for :func:`build_table` running each configuration as a task on the Dask
    ``client`` (a ``distributed.Client``): results come back in job order, each as soon as it
    and those before it are done (so progress lines keep coming)."""
    def map_fn(fn, jobs):
        futures = client.map(fn, list(jobs), pure=False)
        try:
            for f in futures:
                yield f.result()
        finally:
            client.cancel(futures)
    return map_fn


def config_seed(seed: int, kind: str, index: int) -> int:
    """Independent, reproducible 63-bit seed for configuration ``index`` of a ``kind`` build."""
    h = hashlib.sha256(f"popsynth.mc:{seed}:{kind}:{index}".encode()).hexdigest()
    return int(h[:15], 16)


def version_key(spec: dict) -> str:
    """sha256 (first 20 hex digits) of a JSON-serialisable build specification."""
    def enc(o):
        if isinstance(o, np.ndarray):
            return hashlib.sha256(np.ascontiguousarray(o, dtype=np.float64).tobytes()).hexdigest()
        raise TypeError(type(o))

    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=enc).encode()).hexdigest()[:20]


def build_table(
    kind: str,
    medium: Medium,
    photons: int,
    seed: int,
    device: torch.device | str = "cpu",
    log_nh: tuple[float, ...] | None = None,
    theta_tor_deg: tuple[float, ...] | None = None,
    slab_column_cm2: float | None = None,
    e_in_edges: np.ndarray | None = None,
    e_out_edges: np.ndarray | None = None,
    n_inc: tuple[int, int] | int | None = None,
    n_batches: int = 8,
    forced: bool = True,
    progress: Callable[[str], None] | None = None,
    map_fn: Callable = map,
    **transport_kw,
) -> GreensTable:
    """Run the Monte Carlo over a whole grid and return a :class:`GreensTable`.

    kind: "torus" (nodes ``log_nh`` x ``theta_tor_deg``; inclination bins
    :func:`torus_cos_edges` with ``n_inc = (n_torus, n_open)``) or "slab" (one semi-infinite
    slab unless ``slab_column_cm2``; ``n_inc`` equal cos i bins). photons: photons per
    configuration. seed: base seed (each configuration gets :func:`config_seed`). device: where
    the photons run. progress: callable receiving one line of text per configuration.
    map_fn: ``map_fn(function, jobs)`` -> the results in the order of the jobs (default the
    builtin ``map``, one configuration after the other in this process); e.g.
    :func:`dask_map` runs the configurations as tasks on a Dask cluster. Each job carries its
    configuration's seed and this process's torch thread count, so the table is the same
    whatever runs the jobs.
    """
    dev = torch.device(device)
    e_in = input_energy_edges() if e_in_edges is None else np.asarray(e_in_edges, dtype=np.float64)
    e_out = output_energy_edges() if e_out_edges is None else np.asarray(e_out_edges, dtype=np.float64)
    if kind == "torus":
        nh_nodes = np.asarray(log_nh if log_nh is not None else default_torus_log_nh(), dtype=np.float64)
        th_nodes = np.asarray(theta_tor_deg if theta_tor_deg is not None else DEFAULT_THETA_TOR, dtype=np.float64)
        n_torus, n_open = (6, 4) if n_inc is None else tuple(n_inc)
        cos_edges = np.stack([torus_cos_edges(t, n_torus, n_open) for t in th_nodes])
        split = n_torus
    elif kind == "slab":
        nh_nodes = np.array([math.inf if slab_column_cm2 is None else math.log10(slab_column_cm2)])
        th_nodes = np.array([math.nan])
        cos_edges = slab_cos_edges(10 if n_inc is None else int(n_inc))[None, :]
        split = 0
    else:
        raise PopsynthError(f"unknown Green's function kind '{kind}'", "use 'torus' or 'slab'")
    if np.any(np.diff(nh_nodes[np.isfinite(nh_nodes)]) <= 0) or (kind == "torus" and np.any(np.diff(th_nodes) <= 0)):
        raise PopsynthError("table nodes must be strictly increasing", "sort log_nh and theta_tor")

    n_nh, n_th, n_inc_tot, n_l = len(nh_nodes), len(th_nodes), cos_edges.shape[1] - 1, medium.n_lines
    n_in_b, n_out_b = len(e_in) - 1, len(e_out) - 1
    G = np.zeros((n_nh, n_th, n_inc_tot, n_out_b, n_in_b))
    G_line = np.zeros((n_nh, n_th, n_inc_tot, n_l, n_in_b))
    T = np.zeros((n_nh, n_th, n_inc_tot, n_in_b))
    G_rel, G_line_rel, T_rel = np.zeros_like(G), np.zeros_like(G_line), np.zeros_like(T)
    n_ph = np.zeros((n_nh, n_th), dtype=np.int64)
    absorbed, dropped, roul = (np.zeros((n_nh, n_th, n_in_b)) for _ in range(3))
    wall = np.zeros((n_nh, n_th))
    worst_balance = 0.0
    t_start = time.perf_counter()
    total = n_nh * n_th
    threads = int(torch.get_num_threads())
    jobs = [
        _ConfigJob(kind, 10.0 ** nh_nodes[a], float(th_nodes[b]), slab_column_cm2, e_in, e_out, cos_edges[b],
                   config_seed(seed, kind, a * n_th + b), str(dev), medium, int(photons), int(n_batches),
                   bool(forced), dict(transport_kw), threads)
        for a in range(n_nh) for b in range(n_th)
    ]
    results = iter(map_fn(run_config_job, jobs))
    for a in range(n_nh):
        for b in range(n_th):
            idx = a * n_th + b
            res = next(results)
            G[a, b], G_line[a, b], T[a, b] = res.G, res.G_line, res.T_mc
            G_rel[a, b], G_line_rel[a, b], T_rel[a, b] = res.G_rel_err, res.G_line_rel_err, res.T_mc_rel_err
            n_ph[a, b] = res.photons
            absorbed[a, b], dropped[a, b], roul[a, b] = res.absorbed, res.dropped, res.roulette
            wall[a, b] = res.wall_s
            worst_balance = max(worst_balance, res.balance)
            if progress is not None:
                el = time.perf_counter() - t_start
                eta = el / (idx + 1) * (total - idx - 1)
                label = (f"log NH {nh_nodes[a]:5.2f} theta {th_nodes[b]:4.1f}" if kind == "torus" else "slab")
                progress(
                    f"[{kind} {idx + 1:3d}/{total}] {label}: {res.photons:,} photons in {res.wall_s:6.1f} s "
                    f"({res.photons / max(res.wall_s, 1e-9):,.0f} ph/s), elapsed {el:6.0f} s, eta {eta:6.0f} s"
                )
    build_s = time.perf_counter() - t_start
    spec = {
        "format": GREENS_FORMAT_VERSION, "transport": MC_TRANSPORT_VERSION, "kind": kind,
        "medium": medium.fingerprint(), "e_in": e_in, "e_out": e_out, "log_nh": nh_nodes.tolist(),
        "theta": [None if math.isnan(t) else t for t in th_nodes], "cos_edges": cos_edges,
        "photons": int(photons), "seed": int(seed), "forced": bool(forced), "n_batches": int(n_batches),
        "transport_kw": {k: float(v) for k, v in sorted(transport_kw.items())},
    }
    physics = _physics_spec(kind, medium.fingerprint(), e_in, e_out, nh_nodes, th_nodes, cos_edges)
    import popsynth

    meta = {
        "version_key": version_key(spec),
        "physics_key": version_key(physics),
        "grids_key": grids_key(kind, e_in, e_out, nh_nodes, th_nodes, cos_edges),
        "format_version": GREENS_FORMAT_VERSION,
        "transport_version": MC_TRANSPORT_VERSION,
        "medium_reference_version": MEDIUM_REFERENCE_VERSION,
        "popsynth_version": popsynth.__version__,
        "torch_version": str(torch.__version__),
        "numpy_version": str(np.__version__),
        **xraydb_provenance(),
        "medium": medium.description,
        "medium_fingerprint": medium.fingerprint(),
        "estimator": "weighted (forced collisions + implicit capture + roulette)" if forced else "analog",
        "seed": int(seed),
        "photons_per_config": int(n_ph.max()),
        "n_batches": int(n_batches),
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "build_seconds": float(build_s),
        "config_seconds": wall.tolist(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "max_balance_error": float(worst_balance),
        "normalisation": NORMALISATION,
        "slab_column_cm2": "semi-infinite" if slab_column_cm2 is None else float(slab_column_cm2),
        "transport_kw": json.dumps({k: float(v) for k, v in transport_kw.items()}),
    }
    return GreensTable(
        kind=kind, e_in_edges=e_in, e_out_edges=e_out, log_nh=nh_nodes, theta_tor_deg=th_nodes,
        cos_edges=cos_edges, n_torus_bins=split, line_names=tuple(medium.line_names),
        line_energies_keV=medium.line_energies_keV.cpu().numpy().astype(np.float64),
        G=G, G_line=G_line, T_mc=T, G_rel_err=G_rel, G_line_rel_err=G_line_rel, T_mc_rel_err=T_rel,
        photons=n_ph, absorbed=absorbed, dropped=dropped, roulette=roul, meta=meta,
        medium_ref=medium_reference(medium),
    )


def _physics_spec(kind, medium_fingerprint, e_in, e_out, nh_nodes, th_nodes, cos_edges) -> dict:
    """What a table's values depend on apart from photon numbers and seeds (physics_key)."""
    return {
        "format": GREENS_FORMAT_VERSION, "transport": MC_TRANSPORT_VERSION, "kind": kind,
        "medium": medium_fingerprint, "e_in": np.asarray(e_in, dtype=np.float64),
        "e_out": np.asarray(e_out, dtype=np.float64),
        "log_nh": [float(x) for x in nh_nodes],
        "theta": [None if math.isnan(t) else float(t) for t in th_nodes],
        "cos_edges": np.asarray(cos_edges, dtype=np.float64),
    }


# ------------------------------------------------------------------------------------------
# Currency: was a table built with today's code and physics data?
# ------------------------------------------------------------------------------------------
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

MEDIUM_DATASET = "medium_rows"
"""HDF5 dataset holding the tabulated medium a table was built with (attributes: scalars)."""

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


def grids_key(kind, e_in, e_out, nh_nodes, th_nodes, cos_edges) -> str:
    """sha256 (20 hex digits) of a table's kind and grids (energy edges, log N_H and theta_tor
    nodes, inclination edges): the exact-match part of :func:`check_table`."""
    return version_key({
        "kind": str(kind), "e_in": np.asarray(e_in, dtype=np.float64),
        "e_out": np.asarray(e_out, dtype=np.float64),
        "log_nh": [float(x) for x in nh_nodes],
        "theta": [None if math.isnan(t) else float(t) for t in th_nodes],
        "cos_edges": np.asarray(cos_edges, dtype=np.float64),
    })


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


def build_tabulation() -> dict:
    """The medium tabulation arguments the build command uses today: the defaults of
    :func:`~popsynth.mc.transport.tabulate_medium` (e_min_keV, e_max_keV, points_per_decade,
    abund, elements as a list)."""
    import inspect

    from .transport import tabulate_medium

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
        rows, lines = medium_physics(np.exp(ln_e0 + dln * nodes), abund=str(abund), elements=tuple(elements))
        info = line_source(lines)
        info["line_names"] = [ln.name for ln in lines]
        info["line_energies_keV"] = [float(ln.energy_keV) for ln in lines]
        _TODAY[key] = (rows, info)
    return _TODAY[key]


def _clear_check_caches() -> None:
    """Forget cached check results, today's physics samples and issued warnings (tests)."""
    _TODAY.clear()
    _CHECKS.clear()
    _WARNED.clear()


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
        from .transport import tabulate_medium

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


def default_torus_log_nh() -> np.ndarray:
    """Default log N_H nodes of the torus table: 20-22 in steps of 0.5, 22-26 in steps of 0.25."""
    return np.concatenate((np.arange(20.0, 22.0, 0.5), np.arange(22.0, 26.0001, 0.25)))


DEFAULT_THETA_TOR: tuple[float, ...] = (25.8, 45.0, 55.0, 58.0, 61.0, 84.3)
"""Default torus half-opening angle nodes (deg): 55, 58, 61 cover the A19 range (uniform in
55-61 deg); 25.8 and 84.3 are the limits of the BNTorus tables (covering factors 0.9 and 0.1),
45 fills the gap."""


# ------------------------------------------------------------------------------------------
# HDF5 IO
# ------------------------------------------------------------------------------------------
_ARRAYS = ("G", "G_line", "T_mc", "G_rel_err", "G_line_rel_err", "T_mc_rel_err")


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


#: dtype in memory of each big array (float16 error arrays are widened as before).
_ARRAY_DTYPES = {"G": np.float32, "G_line": np.float32, "T_mc": np.float32, "G_rel_err": np.float32,
                 "G_line_rel_err": np.float32, "T_mc_rel_err": np.float32}


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


def default_table_path(kind: str) -> Path:
    """Path of the shipped table of ``kind`` ("torus" or "slab"): data/greens/<kind>.h5."""
    from ..paths import data_dir

    return data_dir() / "greens" / f"{kind}.h5"


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


# ------------------------------------------------------------------------------------------
# Application
# ------------------------------------------------------------------------------------------
def _bracket(nodes: torch.Tensor, x: torch.Tensor, name: str, out_of_grid: str):
    """Indices (i0, i1) and weight w1 for linear interpolation of ``x`` [B] on ``nodes`` [n]."""
    lo, hi = float(nodes[0]), float(nodes[-1])
    bad = (x < lo - 1e-9) | (x > hi + 1e-9) | ~torch.isfinite(x)
    if bool(bad.any()):
        vals = x[bad].detach().cpu().numpy()
        if out_of_grid == "raise":
            raise PopsynthError(
                f"{name} = {vals[:5]} outside the Green's function table range [{lo:g}, {hi:g}]",
                "stay inside the table, pass out_of_grid='clamp' to use the nearest node, or "
                "rebuild the table with wider nodes (python -m popsynth.mc.build)",
            )
        if out_of_grid != "clamp":
            raise PopsynthError(f"out_of_grid='{out_of_grid}'", "use 'raise' or 'clamp'")
        warnings.warn(
            f"{name} = {vals[:5]} outside the table range [{lo:g}, {hi:g}]: clamped to the nearest node",
            UserWarning, stacklevel=3,
        )
    x = torch.nan_to_num(x, nan=lo).clamp(lo, hi)
    n = nodes.numel()
    if n == 1:
        z = torch.zeros_like(x, dtype=torch.long)
        return z, z, torch.zeros_like(x)
    i0 = (torch.searchsorted(nodes, x.contiguous(), right=True) - 1).clamp(0, n - 2)
    w1 = ((x - nodes[i0]) / (nodes[i0 + 1] - nodes[i0])).clamp(0.0, 1.0)
    return i0, i0 + 1, w1


def _inclination_weights(cos_edges: torch.Tensor, split: int, ci: torch.Tensor):
    """Bins (j0, j1) and weight w1 interpolating linearly in cos i between bin centres on the
    same side of the torus opening (bins < split: through the torus; >= split: opening).

    cos_edges [B, n_inc + 1] (per requested point), ci [B] in [0, 1]."""
    n_inc = cos_edges.shape[1] - 1
    centres = 0.5 * (cos_edges[:, 1:] + cos_edges[:, :-1])
    if split > 0:
        open_side = ci >= cos_edges[:, split]
        one = torch.ones_like(ci, dtype=torch.long)
        lo_bin = torch.where(open_side, split * one, 0 * one)
        hi_bin = torch.where(open_side, (n_inc - 1) * one, (split - 1) * one)
    else:
        lo_bin = torch.zeros_like(ci, dtype=torch.long)
        hi_bin = torch.full_like(lo_bin, n_inc - 1)
    j = torch.searchsorted(centres.contiguous(), ci.unsqueeze(1).contiguous(), right=True).squeeze(1) - 1
    j0 = torch.maximum(torch.minimum(j, hi_bin), lo_bin)
    j1 = torch.minimum(j0 + 1, hi_bin)
    c0 = centres.gather(1, j0.unsqueeze(1)).squeeze(1)
    c1 = centres.gather(1, j1.unsqueeze(1)).squeeze(1)
    w1 = torch.where(j1 > j0, ((ci - c0) / (c1 - c0)).clamp(0.0, 1.0), torch.zeros_like(ci))
    return j0, j1, w1


def interpolation_corners(
    table: GreensTable,
    inclination_deg,
    log_nh=None,
    theta_tor_deg=None,
    *,
    out_of_grid: str = "raise",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, bool]:
    """Table nodes and weights that interpolate the Green's functions at the requested points.

    Arguments as :func:`response_matrix`. Returns (a, b, j, w, scalar): long tensors a (log N_H
    node), b (theta_tor node), j (inclination bin), each [B, 8], and float64 weights w [B, 8]
    summing to 1, such that the interpolated matrix of point p is
    sum_c w[p, c] * G[a[p, c], b[p, c], j[p, c]]; ``scalar`` says all inputs were scalars.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    t = table.tensors(dev)
    f64 = torch.float64
    inc = torch.as_tensor(inclination_deg, dtype=f64, device=dev)
    scalar = inc.dim() == 0
    if table.kind == "torus":
        if log_nh is None or theta_tor_deg is None:
            raise PopsynthError("the torus table needs log_nh and theta_tor_deg", "pass both")
        nh = torch.as_tensor(log_nh, dtype=f64, device=dev)
        th = torch.as_tensor(theta_tor_deg, dtype=f64, device=dev)
        scalar = scalar and nh.dim() == 0 and th.dim() == 0
        inc, nh, th = torch.broadcast_tensors(inc.reshape(-1), nh.reshape(-1), th.reshape(-1))
        if bool(((inc < 0) | (inc > 180)).any()):
            raise PopsynthError(f"inclination {inc.tolist()[:5]} deg outside 0-180", "pass degrees")
        ci = torch.cos(torch.deg2rad(inc)).abs()
        a0, a1, wa = _bracket(t["log_nh"], nh, "log_nh", out_of_grid)
        b0, b1, wb = _bracket(t["theta"], th, "theta_tor_deg", out_of_grid)
    else:
        inc = inc.reshape(-1)
        if bool(((inc < 0) | (inc > 90)).any()):
            raise PopsynthError(
                f"slab inclination {inc.tolist()[:5]} deg outside 0-90", "pass the angle from the normal in degrees"
            )
        ci = torch.cos(torch.deg2rad(inc)).clamp(0.0, 1.0)
        a0 = a1 = b0 = b1 = torch.zeros_like(ci, dtype=torch.long)
        wa = wb = torch.zeros_like(ci)
    ce = t["cos_edges"]
    aa, bb, jj, ww = [], [], [], []
    for a, w_a in ((a0, 1.0 - wa), (a1, wa)):
        for b, w_b in ((b0, 1.0 - wb), (b1, wb)):
            j0, j1, wj = _inclination_weights(ce[b], table.n_torus_bins, ci)
            for j, w_j in ((j0, 1.0 - wj), (j1, wj)):
                aa.append(a)
                bb.append(b)
                jj.append(j)
                ww.append(w_a * w_b * w_j)
    return torch.stack(aa, 1), torch.stack(bb, 1), torch.stack(jj, 1), torch.stack(ww, 1), scalar


def response_matrix(
    table: GreensTable,
    inclination_deg,
    log_nh=None,
    theta_tor_deg=None,
    *,
    out_of_grid: str = "raise",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolated Green's matrices for the requested configurations.

    inclination_deg: angle(s) from the slab normal / torus axis in degrees (torus: 0-180,
    folded about the equator; slab: 0-90). log_nh: log10 N_H (cm^-2), torus only.
    theta_tor_deg: torus half-opening angle(s) in deg, torus only. Scalars or 1-D tensors /
    arrays of a common length B (broadcast). device: default CPU.
    Returns (M [..., n_out, n_in], M_line [..., L, n_in]) float64, with leading shape () for
    scalar inputs or (B,), such that continuum = M @ N_in and lines = M_line @ N_in.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    a, b, j, w, scalar = interpolation_corners(
        table, inclination_deg, log_nh, theta_tor_deg, out_of_grid=out_of_grid, device=dev
    )
    t = table.tensors(dev)
    G, GL = t["G"], t["G_line"]
    M = 0.0
    ML = 0.0
    for c in range(w.shape[1]):
        wc = w[:, c, None, None]
        M = M + wc * G[a[:, c], b[:, c], j[:, c]].to(torch.float64)
        ML = ML + wc * GL[a[:, c], b[:, c], j[:, c]].to(torch.float64)
    if scalar:
        return M[0], ML[0]
    return M, ML


def apply_greens(
    table: GreensTable,
    n_in: torch.Tensor,
    inclination_deg,
    log_nh=None,
    theta_tor_deg=None,
    *,
    out_of_grid: str = "raise",
) -> Reprocessed:
    """Reprocessed photon spectrum for an input photon spectrum ``n_in``.

    n_in: [..., n_in] photons per input bin (``table.e_in_edges``) that the observer would
    receive directly from the bare source, float64 tensor on any device (differentiable).
    inclination_deg, log_nh, theta_tor_deg, out_of_grid: as :func:`response_matrix` (scalars,
    or 1-D of length B that broadcast against the leading axes of ``n_in``).
    Returns :class:`Reprocessed` (continuum [..., n_out] per output bin of
    ``table.e_out_edges``; lines [..., L]), same units as ``n_in``. The transmitted beam is
    not included (see :func:`transmitted_fraction`).
    """
    n_in = torch.as_tensor(n_in, dtype=torch.float64)
    if n_in.shape[-1] != table.n_in:
        raise PopsynthError(
            f"input spectrum has {n_in.shape[-1]} bins, the table has {table.n_in}",
            "bin the input spectrum on table.e_in_edges",
        )
    M, ML = response_matrix(
        table, inclination_deg, log_nh, theta_tor_deg, out_of_grid=out_of_grid, device=n_in.device
    )
    cont = (M @ n_in.unsqueeze(-1)).squeeze(-1)
    lines = (ML @ n_in.unsqueeze(-1)).squeeze(-1)
    return Reprocessed(cont, lines)


def transmitted_fraction(energy_keV, log_nh, theta_tor_deg=None, inclination_deg=None, abund: str = "angr") -> torch.Tensor:
    """Zeroth-order (unscattered) transmission along the line of sight, exp(-N_H sigma_tot(E)).

    sigma_tot = sigma_photo + 1.21 sigma_KN per H atom (the same physics as the Monte Carlo).
    For the torus, lines of sight with inclination < theta_tor (or > 180 - theta_tor) pass
    through the opening: transmission 1. energy_keV: [..., n_E] keV; log_nh, theta_tor_deg,
    inclination_deg: floats. Returns float64 [..., n_E] on the energies' device (CPU for
    non-tensors).
    """
    from ..physics import crosssections as xs

    e = torch.as_tensor(energy_keV, dtype=torch.float64)
    sig = xs.sigma_photo(e, abund=abund) + xs.ELECTRONS_PER_H * xs.sigma_kn(e)
    tr = torch.exp(-(10.0 ** float(log_nh)) * sig)
    if theta_tor_deg is not None and inclination_deg is not None:
        inc = float(inclination_deg) % 180.0
        inc = min(inc, 180.0 - inc)
        if inc < float(theta_tor_deg):
            return torch.ones_like(tr)
    return tr

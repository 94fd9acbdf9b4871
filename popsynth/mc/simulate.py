"""The Monte Carlo driver: one configuration (:func:`simulate_config`), self-contained jobs
(:func:`run_config_job`, :func:`dask_map`) and a whole table (:func:`build_table`)."""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, TextIO

import numpy as np
import torch
from tqdm import tqdm

from .. import __version__
from ..errors import PopsynthError
from .currency import MEDIUM_REFERENCE_VERSION, medium_reference, xraydb_provenance
from .geometry import SlabGeometry, SphereBiconeGeometry
from .grids import (
    DEFAULT_THETA_TOR,
    default_torus_log_nh,
    input_energy_edges,
    output_energy_edges,
    slab_cos_edges,
    torus_cos_edges,
)
from .table import GREENS_FORMAT_VERSION, NORMALISATION, GreensTable, _physics_spec, grids_key, version_key
from .transport import MC_TRANSPORT_VERSION, Medium, TallyGrid, run_photons

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


def build_progress(kind: str, total: int, progress: bool | TextIO | None) -> tqdm:
    """The progress bar of a table build (tqdm): ``update(1)`` per configuration, the last
    configuration's label, photons, seconds and photons/s in the postfix; elapsed time and the
    remaining time at the mean rate so far (``smoothing=0``). On stderr for ``progress=True``,
    on ``progress`` if it is a stream; disabled for None or False. On a terminal it redraws in
    place; on a pipe or log file it writes the status without the bar at every configuration
    (tqdm separates the updates by carriage returns)."""
    stream = sys.stderr if progress is True else (progress or None)
    tty = stream is not None and hasattr(stream, "isatty") and stream.isatty()
    fmt = "{desc} {n}/{total} " + ("|{bar}| " if tty else "") + "elapsed {elapsed}, eta {remaining}{postfix}"
    return tqdm(total=total, desc=f"[{kind}]", file=stream, disable=not progress, leave=True, smoothing=0,
                mininterval=0, miniters=1, dynamic_ncols=tty, bar_format=fmt)


def config_seed(seed: int, kind: str, index: int) -> int:
    """Independent, reproducible 63-bit seed for configuration ``index`` of a ``kind`` build."""
    h = hashlib.sha256(f"popsynth.mc:{seed}:{kind}:{index}".encode()).hexdigest()
    return int(h[:15], 16)


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
    progress: bool | TextIO | None = None,
    map_fn: Callable = map,
    **transport_kw,
) -> GreensTable:
    """Run the Monte Carlo over a whole grid and return a :class:`GreensTable`.

    kind: "torus" (nodes ``log_nh`` x ``theta_tor_deg``; inclination bins
    :func:`torus_cos_edges` with ``n_inc = (n_torus, n_open)``) or "slab" (one semi-infinite
    slab unless ``slab_column_cm2``; ``n_inc`` equal cos i bins). photons: photons per
    configuration. seed: base seed (each configuration gets :func:`config_seed`). device: where
    the photons run. progress: a tqdm bar (:func:`build_progress`) on stderr (True) or on the
    given stream, updated per configuration (its label, photons, seconds and photons/s, the
    elapsed time and the remaining time at the mean rate so far); None or False: none.
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
    with build_progress(kind, total, progress) as bar:
        for a in range(n_nh):
            for b in range(n_th):
                res = next(results)
                G[a, b], G_line[a, b], T[a, b] = res.G, res.G_line, res.T_mc
                G_rel[a, b], G_line_rel[a, b], T_rel[a, b] = res.G_rel_err, res.G_line_rel_err, res.T_mc_rel_err
                n_ph[a, b] = res.photons
                absorbed[a, b], dropped[a, b], roul[a, b] = res.absorbed, res.dropped, res.roulette
                wall[a, b] = res.wall_s
                worst_balance = max(worst_balance, res.balance)
                label = f"log NH {nh_nodes[a]:5.2f} theta {th_nodes[b]:4.1f}" if kind == "torus" else "slab"
                bar.set_postfix_str(f"{label}: {res.photons:,} photons in {res.wall_s:.1f} s "
                                    f"({res.photons / max(res.wall_s, 1e-9):,.0f} ph/s)", refresh=False)
                bar.update(1)
    build_s = time.perf_counter() - t_start
    spec = {
        "format": GREENS_FORMAT_VERSION, "transport": MC_TRANSPORT_VERSION, "kind": kind,
        "medium": medium.fingerprint(), "e_in": e_in, "e_out": e_out, "log_nh": nh_nodes.tolist(),
        "theta": [None if math.isnan(t) else t for t in th_nodes], "cos_edges": cos_edges,
        "photons": int(photons), "seed": int(seed), "forced": bool(forced), "n_batches": int(n_batches),
        "transport_kw": {k: float(v) for k, v in sorted(transport_kw.items())},
    }
    physics = _physics_spec(kind, medium.fingerprint(), e_in, e_out, nh_nodes, th_nodes, cos_edges)
    meta = {
        "version_key": version_key(spec),
        "physics_key": version_key(physics),
        "grids_key": grids_key(kind, e_in, e_out, nh_nodes, th_nodes, cos_edges),
        "format_version": GREENS_FORMAT_VERSION,
        "transport_version": MC_TRANSPORT_VERSION,
        "medium_reference_version": MEDIUM_REFERENCE_VERSION,
        "popsynth_version": __version__,
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

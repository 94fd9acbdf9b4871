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
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from ..errors import PopsynthError
from .transport import MC_TRANSPORT_VERSION, Medium, TallyGrid, run_photons

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
    meta: provenance (version_key, seed, device, timings, code versions, ...).
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
    _torch_cache: dict = field(default_factory=dict, repr=False, compare=False)

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
    **transport_kw,
) -> GreensTable:
    """Run the Monte Carlo over a whole grid and return a :class:`GreensTable`.

    kind: "torus" (nodes ``log_nh`` x ``theta_tor_deg``; inclination bins
    :func:`torus_cos_edges` with ``n_inc = (n_torus, n_open)``) or "slab" (one semi-infinite
    slab unless ``slab_column_cm2``; ``n_inc`` equal cos i bins). photons: photons per
    configuration. seed: base seed (each configuration gets :func:`config_seed`). device: where
    the photons run. progress: callable receiving one line of text per configuration.
    """
    from .geometry import SlabGeometry, SphereBiconeGeometry

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
    for a in range(n_nh):
        for b in range(n_th):
            idx = a * n_th + b
            if kind == "torus":
                geom = SphereBiconeGeometry(10.0 ** nh_nodes[a], float(th_nodes[b]))
            else:
                geom = SlabGeometry(slab_column_cm2)
            grid = TallyGrid(
                torch.as_tensor(e_in), torch.as_tensor(e_out), torch.as_tensor(cos_edges[b])
            )
            gen = torch.Generator(device=dev).manual_seed(config_seed(seed, kind, idx))
            res = simulate_config(geom, medium, grid, photons, gen, n_batches=n_batches, forced=forced, **transport_kw)
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
        "format_version": GREENS_FORMAT_VERSION,
        "transport_version": MC_TRANSPORT_VERSION,
        "popsynth_version": popsynth.__version__,
        "torch_version": str(torch.__version__),
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


def is_current(table: GreensTable, medium: Medium | None = None) -> bool:
    """True when ``table`` was built by this code (format and transport versions) with the
    cross sections and atomic data now in :mod:`popsynth.physics` (``physics_key`` check).

    medium: the tabulated physics to compare with (default: :func:`tabulate_medium` with its
    defaults, as the build command uses). When False, rebuild the table with
    ``python -m popsynth.mc.build``.
    """
    if medium is None:
        from .transport import tabulate_medium

        medium = tabulate_medium()
    spec = _physics_spec(
        table.kind, medium.fingerprint(), table.e_in_edges, table.e_out_edges, table.log_nh,
        table.theta_tor_deg, table.cos_edges,
    )
    return version_key(spec) == table.meta.get("physics_key")


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
    n_torus_bins, units. Returns the final path.
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
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_greens(path: str | os.PathLike, expect_version_key: str | None = None) -> GreensTable:
    """Read a table written by :func:`write_greens`.

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
        arr = {k: f[k][()] for k in f.keys()}
        kind = str(f.attrs["kind"])
        n_torus = int(f.attrs["n_torus_bins"])
    return GreensTable(
        kind=kind,
        e_in_edges=arr["e_in_edges"].astype(np.float64),
        e_out_edges=arr["e_out_edges"].astype(np.float64),
        log_nh=arr["log_nh"].astype(np.float64),
        theta_tor_deg=arr["theta_tor_deg"].astype(np.float64),
        cos_edges=arr["cos_edges"].astype(np.float64),
        n_torus_bins=n_torus,
        line_names=tuple(s.decode() if isinstance(s, bytes) else str(s) for s in arr["line_names"]),
        line_energies_keV=arr["line_energies_keV"].astype(np.float64),
        G=arr["G"].astype(np.float32), G_line=arr["G_line"].astype(np.float32),
        T_mc=arr["T_mc"].astype(np.float32),
        G_rel_err=arr["G_rel_err"].astype(np.float32),
        G_line_rel_err=arr["G_line_rel_err"].astype(np.float32),
        T_mc_rel_err=arr["T_mc_rel_err"].astype(np.float32),
        photons=arr["photons"].astype(np.int64),
        absorbed=arr["absorbed"].astype(np.float64), dropped=arr["dropped"].astype(np.float64),
        roulette=arr["roulette"].astype(np.float64), meta=meta,
    )


def default_table_path(kind: str) -> Path:
    """Path of the shipped table of ``kind`` ("torus" or "slab"): data/greens/<kind>.h5."""
    from ..paths import data_dir

    return data_dir() / "greens" / f"{kind}.h5"


_LOADED: dict = {}


def load_greens(kind: str) -> GreensTable:
    """Read the shipped table of ``kind`` ("torus" or "slab") from data/greens/.

    Tables are read once per process (keyed by path, size and modification time) and shared;
    treat the returned table as read-only."""
    if kind not in ("torus", "slab"):
        raise PopsynthError(f"unknown Green's function kind '{kind}'", "use 'torus' or 'slab'")
    path = default_table_path(kind)
    try:
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        key = None
    if key is not None and key in _LOADED:
        return _LOADED[key]
    table = read_greens(path)
    if key is not None:
        _LOADED[key] = table
    return table


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

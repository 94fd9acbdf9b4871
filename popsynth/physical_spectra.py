"""Spectral-population hyperparameters of the physical model: an interpolating emulator of the kernels.

The hyperparameters (:data:`SPECTRAL_NAMES`):

* ``gamma``: mean photon index of unobscured AGN (the obscured mean moves with it: the set's
  obscured - unobscured difference is kept; 0 for set 5);
* ``refl``: mean reflection strength R of unobscured AGN (the obscured mean is scaled with it:
  the set's ratio R_obs / R_unobs is kept, 0.37 / 0.83 for sets 1, 2, 4, 5), i.e. one R;
* ``ecut``: the E_cut distribution's location (normal mean, or log-normal median for set 1), keV,
  both classes.

The source-to-source scatters (sigma of Gamma, R, E_cut), f_scatt and the torus opening angle keep
the spectral set's distributions. Each hyperparameter value defines a spectral set
(:func:`spectral_set_at`); its draws are the set's fixed stratified uniforms mapped through the
moved distributions (:func:`popsynth.spectra.sets.draw_parameters`, same seed), so the spectral table
(primary, reflection and torus through the Green's functions, scattered light), the CXB kernel and
the counts / CT-fraction survey responses are all functions of the hyperparameters.

Why an emulator and not an exact differentiable rebuild (measured, spectral set 5, 64 draws, one
thread, load 3.7): one rebuild of the table takes 1.4 s, of the eight survey models 9.5 s and of the
kernels 2 s, i.e. ~13 s without a gradient, against a budget of well under a second for -ln p and
its gradient. So the kernels are tabulated once on a tensor grid of nodes in the free
hyperparameters (default 3 per hyperparameter: lower bound, the set's value, upper bound) and
interpolated with tensor-product Lagrange polynomials (quadratic for 3 nodes) in the
logarithm of every feature, in the coordinates gamma, ln R and 1/E_cut (:data:`_COORD`):
x_f = exp(sum_c w_c(eta) ln x_{c,f}(phi)) with x_{c,f} the contraction of node c's kernel with the
cube (interpolating x itself was 10 times less accurate: 3.5 % against
0.3 % at the highest CXB energies, where the kernels vary as E^-Gamma). The
weights are smooth in eta, so NUTS gets exact gradients of the emulator, and at a node the emulator
is that node's kernels exactly (the set's own value is a node: with the hyperparameters at the set's
values the model equals the fixed-spectra physical model, tested to 1e-10). The interpolation error
against direct builds is measured in ``tests/test_physical.py`` (and :func:`emulator_error`) and
stated in docs/physical.md.

Why the full tensor grid (3^k nodes) and not a first-order one (1 + 2k nodes, additive in ln x):
measured with all three free (64 draws), the first-order emulator misses the cross terms by up to
11 % of a counts feature and 4 % of a CXB point at the corners of the box (-2 ln L off by 14-330,
median over cubes), against 5e-3 and 3e-3 for the tensor grid midway between its nodes in every
hyperparameter (-2 ln L off by 0.1-7.5).

Cost: the contraction with 27 nodes' kernels is what an evaluation pays for. The cumulative kernels
are held differenced along log L (:class:`NodeContraction`): 11.6M nonzeros for the 27 nodes
instead of 58M (139M dense), and the sparse products carry reverse-mode, forward-mode and vmapped
derivatives (:class:`_SparseLinear`).

The kernels are cached on disk (``cache_dir()/physical/emulator-<key>.pt``, float64): the CXB
kernels dense and the others as the sparse matrices of :class:`NodeContraction` (format 2, 0.3 GB
for the 27-node default; a format-1 file with dense kernels, 1.2 GB, is converted on first read).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time

import numpy as np
import torch

from ._tensor import DTYPE
from .errors import PopsynthError
from .physical_sparse import NodeContraction
from .spectra.sets import SpectralSet, get_spectral_set

SPECTRAL_NAMES = ("gamma", "refl", "ecut")
_FIELD = {"gamma": "gamma", "refl": "refl", "ecut": "ecut"}
_MODE = {"gamma": "shift", "refl": "scale", "ecut": "scale"}
#: Interpolation coordinate of each hyperparameter, chosen by measuring quadratic interpolation in
#: ln x midway between nodes against direct builds (64 draws, 16 cubes; max relative error of the
#: CXB points / counts features, max |delta(-2 ln L)|): gamma linear (1e-4 / 3e-3 / 0.7; ln gamma
#: 1e-3 / 3e-3 / 2.0); refl in ln R (2e-3 / 4e-3 / 3.7; linear 4e-3 / 1e-2 / 6.5); ecut in 1/E_cut
#: (2e-3 / 2e-3 / 1.5; ln E_cut 8e-3 / 6e-3 / 12.7, linear 7e-2 / 4e-2 / 81): a spectrum's
#: exp(-E / E_cut) is linear in 1/E_cut.
_COORD = {"gamma": "lin", "refl": "log", "ecut": "inv"}


def _coord(name: str, x):
    """The interpolation coordinate of hyperparameter ``name`` at x (tensor or float)."""
    kind = _COORD[name]
    if kind == "lin":
        return x
    if kind == "log":
        return torch.log(x) if isinstance(x, torch.Tensor) else math.log(x)
    return 1.0 / x


def _from_coord(name: str, c):
    """Inverse of :func:`_coord`."""
    kind = _COORD[name]
    if kind == "lin":
        return c
    if kind == "log":
        return torch.exp(c) if isinstance(c, torch.Tensor) else math.exp(c)
    return 1.0 / c


def set_value(spec: SpectralSet | int, name: str) -> float:
    """The spectral set's value of a hyperparameter (its unobscured distribution's location)."""
    spec = spec if isinstance(spec, SpectralSet) else get_spectral_set(spec)
    return float(getattr(spec, _FIELD[name])[0].a)


def spectral_set_at(base: SpectralSet | int, values: dict) -> SpectralSet:
    """The spectral set ``base`` with its hyperparameters moved to ``values`` ({name: value}).

    gamma: both classes' Gamma location shifted by (value - set value); refl, ecut: both classes'
    location scaled by value / set value. Returns ``base`` itself when every value equals the set's.
    """
    base = base if isinstance(base, SpectralSet) else get_spectral_set(base)
    changes = {}
    for name, v in values.items():
        if name not in _FIELD:
            raise PopsynthError(f"unknown spectral hyperparameter '{name}'", f"choose from {', '.join(SPECTRAL_NAMES)}")
        du, do = getattr(base, _FIELD[name])
        v = float(v)
        if v == du.a:
            continue
        if du.kind in ("uniform",) or do.kind in ("uniform",):
            raise PopsynthError(f"the {name} distribution of set {base.number} is uniform", "fix it at the set's value")
        if _MODE[name] == "shift":
            new = (du._replace(a=v), do._replace(a=do.a + (v - du.a)))
        else:
            if du.a == 0:
                raise PopsynthError(f"cannot scale the {name} location 0 of set {base.number}", "fix it")
            new = (du._replace(a=v), do._replace(a=do.a * v / du.a))
        changes[_FIELD[name]] = new
    if not changes:
        return base
    desc = base.description + " | hyperparameters " + ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(values.items()))
    return dataclasses.replace(base, description=desc, **changes)


def lagrange_weights(c: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
    """Lagrange basis polynomials of ``nodes`` [n] at c [B]: [B, n] (sum to 1; exact at the nodes)."""
    n = nodes.numel()
    cols = []
    for j in range(n):
        w = torch.ones_like(c)
        for m in range(n):
            if m != j:
                w = w * (c - nodes[m]) / (nodes[j] - nodes[m])
        cols.append(w)
    return torch.stack(cols, -1)


def _log_interp(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """exp(sum_c w[b, c] ln x[b, c, ...]): interpolation of positive node values in ln x (a feature
    that varies as exp(a + b Gamma), like the CXB at high energies, is then interpolated almost exactly)."""
    lx = torch.log(x.clamp_min(1e-300))
    return torch.exp(torch.einsum("bc,bc...->b...", w, lx))


class SpectralEmulator:
    """Kernels of the physical model on a tensor grid of hyperparameter nodes, Lagrange-interpolated.

    Attributes: names (free hyperparameters, in sampling order), nodes [list of [n_i] values],
    k_cxb [C, nz, 6, n_cxb], k_fine [C, nz, 6, nE_fine], with C = prod n_i nodes in C order of
    ``itertools.product``, and ``contraction`` (a :class:`NodeContraction` of the other kernels,
    k_phi [C * F, nz * nL * 6], which is not kept dense).
    """

    def __init__(self, names, nodes, k_cxb, k_phi, k_fine, dlogl, seconds: float = 0.0,
                 contraction: "NodeContraction | None" = None):
        """``k_phi`` [C * F, nz * nL * 6] dense, or None with a prebuilt ``contraction`` (from the cache)."""
        self.names = tuple(names)
        self.nodes = [torch.as_tensor(np.asarray(n, dtype=np.float64), dtype=DTYPE) for n in nodes]
        self.coord_nodes = [_coord(name, n) for name, n in zip(self.names, self.nodes)]
        self.k_cxb, self.k_fine = k_cxb, k_fine
        self._k_cxb_mat = None
        self.n_nodes = int(k_cxb.shape[0])
        if contraction is None:
            contraction = NodeContraction(k_phi, int(k_cxb.shape[1]), torch.as_tensor(dlogl, dtype=DTYPE))
        self.contraction = contraction
        self.n_phi = contraction.n_rows // self.n_nodes
        self.seconds = seconds

    def cache_state(self) -> dict:
        """What the disk cache holds (format 2): the CXB kernels and the sparse contraction."""
        return {"format": 2, "k_cxb": self.k_cxb, "k_fine": self.k_fine,
                **{f"contraction.{k}": v for k, v in self.contraction.state().items()}}

    @classmethod
    def from_cache_state(cls, names, nodes, d: dict) -> "SpectralEmulator":
        c = NodeContraction.from_state({k.split(".", 1)[1]: v for k, v in d.items() if k.startswith("contraction.")})
        return cls(names, nodes, d["k_cxb"], None, d["k_fine"], c.dlogl, contraction=c)

    def weights(self, eta: torch.Tensor) -> torch.Tensor:
        """Interpolation weights [B, C] at hyperparameters eta [B, k] (order of ``names``)."""
        w = None
        for i, name in enumerate(self.names):
            c = _coord(name, eta[:, i])
            wi = lagrange_weights(c, self.coord_nodes[i])  # [B, n_i]
            w = wi if w is None else (w[:, :, None] * wi[:, None, :]).reshape(w.shape[0], -1)
        return w

    def additive_weights(self, eta: torch.Tensor) -> torch.Tensor:
        """Weights [B, C] on the same nodes of the first-order (additive in ln x) alternative,
        ln x = ln x_0 + sum_i [sum_j w_ij(eta_i) ln x_(i, j) - ln x_0], which needs only the centre
        and the 2 k axis nodes (1 + 2k builds instead of 3^k). Not used by the model: measured, it
        misses the cross terms by up to 11 % at the corners of the box (docs/physical.md)."""
        shape = [len(n) for n in self.nodes]
        centre = [n // 2 for n in shape]
        flat = lambda idx: int(np.ravel_multi_index(idx, shape))  # noqa: E731
        w = torch.zeros(eta.shape[0], self.n_nodes, dtype=eta.dtype, device=eta.device)
        w[:, flat(centre)] = 1.0
        for i, name in enumerate(self.names):
            c = _coord(name, eta[:, i])
            wi = lagrange_weights(c, self.coord_nodes[i])
            for j in range(shape[i]):
                idx = list(centre)
                idx[i] = j
                w[:, flat(idx)] = w[:, flat(idx)] + wi[:, j] - (1.0 if j == centre[i] else 0.0)
        return w

    def node_features(self, phi_red, phi1_red, lw) -> torch.Tensor:
        """Every node's feature vector [B, C, F] (CXB points, then the other kernels)."""
        b = phi_red.shape[0]
        m = torch.einsum("bzlk,l->bzk", phi1_red, lw)
        if self._k_cxb_mat is None:  # [nz * 6, C * n_cxb]: one matrix product for every node
            self._k_cxb_mat = self.k_cxb.permute(1, 2, 0, 3).reshape(-1, self.n_nodes * self.k_cxb.shape[-1]).contiguous()
        xc = (m.reshape(b, -1) @ self._k_cxb_mat).reshape(b, self.n_nodes, -1)
        xp = self.contraction(phi_red).reshape(b, self.n_nodes, self.n_phi)
        return torch.cat([xc, xp], -1)

    def features(self, phi_red, phi1_red, lw, eta) -> torch.Tensor:
        """Feature vector [B, F] (CXB points, then the other kernels) at reduced cubes and eta [B, k]."""
        return _log_interp(self.weights(eta), self.node_features(phi_red, phi1_red, lw))

    def cxb_fine(self, phi1_red, lw, eta) -> torch.Tensor:
        """AGN CXB per N_H class on the output energies [B, 3, nE_fine]."""
        m = torch.einsum("bzlk,l->bzk", phi1_red, lw)
        per_node = torch.einsum("bzk,czke->bcke", m, self.k_fine)
        per_dex = _log_interp(self.weights(eta), per_node)
        return per_dex.reshape(per_dex.shape[0], 3, 2, -1).sum(2)


class EmulatedKernels:
    """A :class:`popsynth.physical_kernels.PhysicalKernels` (the set's own, at the centre) whose
    features and CXB also depend on the spectral hyperparameters through a :class:`SpectralEmulator`.

    Every attribute of the centre kernels is available (likelihood, builder, k_counts, ...);
    :meth:`features` and :meth:`cxb_fine` take ``eta`` [B, k] (None: the centre kernels)."""

    def __init__(self, center, emulator: SpectralEmulator):
        self.center = center
        self.emulator = emulator

    def __getattr__(self, name):
        if name in ("center", "emulator"):
            raise AttributeError(name)
        return getattr(self.center, name)

    @property
    def hyper_names(self) -> tuple:
        return self.emulator.names

    def features(self, phi_red, phi1_red, sparse: bool = False, eta=None):
        if eta is None:
            return self.center.features(phi_red, phi1_red, sparse=sparse)
        return self.emulator.features(phi_red, phi1_red, self.center.lw, eta)

    def cxb_fine(self, phi1_red, eta=None):
        if eta is None:
            return self.center.cxb_fine(phi1_red)
        return self.emulator.cxb_fine(phi1_red, self.center.lw, eta)


# ---------------------------------------------------------------------------- building
def node_values(model, spec: SpectralSet, names) -> list[list[float]]:
    """Nodes of each free hyperparameter: (lower bound, value, upper bound) of the configuration,
    more when ``model.spectral_nodes`` > 3 (evenly in the interpolation coordinate on each side)."""
    count = int(getattr(model, "spectral_nodes", 3))
    out = []
    for name in names:
        lo, hi = model.bound(name)
        v = model.value(name)
        a, c, b = _coord(name, lo), _coord(name, v), _coord(name, hi)
        k = max(1, (count - 1) // 2)
        left = [lo] + [_from_coord(name, a + (c - a) * i / k) for i in range(1, k)]
        right = [_from_coord(name, c + (b - c) * i / k) for i in range(1, k)] + [hi]
        out.append(left + [v] + right)
    return out


def _problem_with_table(prob, cfg, table, device):
    """The block run's problem with the constraints (counts and CT survey models) of another table."""
    from .constraints import Constraints

    cons = Constraints(prob.grid, prob.phi0, table, cfg.counts, cfg.use_ct, cfg.counts_weight, cfg.ct_weight,
                       device=device)
    return dataclasses.replace(prob, constraints=cons)


def build_node(prob, cfg, model, spec: SpectralSet, device=None):
    """(table, kernels) of one spectral set (a hyperparameter node); builds the survey models anew."""
    from .physical_kernels import build_kernels
    from .spectra.cache import build_spectral_table
    from .spectra.registry import make_components

    table = build_spectral_table(spec, prob.grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed,
                                 components=make_components(cfg.spectral_model, cfg.torus_table), device=device)
    return table, build_kernels(_problem_with_table(prob, cfg, table, device), table, cfg, model, device=device)


def _cache_key(cfg, model, spec, names, nodes) -> str:
    from . import __version__

    payload = {"spec": spec.describe(), "names": list(names),
               "nodes": [[float(f"{float(x):.12g}") for x in n] for n in nodes],  # robust to round trips
               "draws": cfg.draws, "seed": cfg.spectra_seed, "spectral_model": cfg.spectral_model,
               "torus_table": str(cfg.torus_table), "counts": list(cfg.counts), "use_ct": cfg.use_ct,
               "binned_xlf": list(model.binned_xlf), "version": __version__, "format": 1}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def build_emulator(prob, cfg, model, spec: SpectralSet, center_kernels, names, device=None, cache: bool = True,
                   log=print) -> SpectralEmulator:
    """The kernels at every node of the free hyperparameters ``names`` (see :func:`node_values`).

    ``spec``: the spectral set with every hyperparameter at its configured value (the centre);
    ``center_kernels``: its kernels (reused at the centre node). Cached on disk when ``cache``."""
    t0 = time.time()
    nodes = node_values(model, spec, names)
    dlogl = torch.as_tensor(prob.grid.dlogl, dtype=DTYPE)
    path = None
    if cache:
        from .paths import cache_dir

        path = cache_dir() / "physical" / f"emulator-{_cache_key(cfg, model, spec, names, nodes)}.pt"
        em = None
        if path.is_file():
            try:
                d = torch.load(path, map_location="cpu", weights_only=True)
                if d.get("format") == 2:
                    em = SpectralEmulator.from_cache_state(names, nodes, d)
                else:  # format 1 (dense kernels, 4x larger): converted, and the file rewritten in format 2
                    em = SpectralEmulator(names, nodes, d["k_cxb"], d["k_phi"], d["k_fine"], dlogl)
                    del d
                    _save_emulator(path, em)
                    log(f"spectral emulator: {path} rewritten in the sparse format")
            except Exception:  # damaged: rebuild
                em = None
        if em is not None:
            em.seconds = time.time() - t0
            log(f"spectral emulator: {em.n_nodes} nodes read from {path} in {em.seconds:.1f} s")
            return em
    centre = [model.value(n) for n in names]
    k_cxb, k_phi, k_fine = [], [], []
    combos = list(itertools.product(*nodes))
    for i, combo in enumerate(combos):
        if all(v == c for v, c in zip(combo, centre)):
            ks = center_kernels
        else:
            _, ks = build_node(prob, cfg, model, spectral_set_at(spec, dict(zip(names, combo))), device)
        k_cxb.append(ks.k_cxb)
        k_phi.append(ks.k_phi)
        k_fine.append(ks.k_fine)
        log(f"spectral emulator: node {i + 1}/{len(combos)} {dict(zip(names, map(float, combo)))} "
            f"({time.time() - t0:.0f} s)")
    k_cxb, k_phi, k_fine = torch.stack(k_cxb), torch.cat(k_phi, 0), torch.stack(k_fine)
    em = SpectralEmulator(names, nodes, k_cxb, k_phi, k_fine, dlogl)
    del k_phi
    if path is not None:
        _save_emulator(path, em)
    em.seconds = time.time() - t0
    return em


def _save_emulator(path, em: SpectralEmulator) -> None:
    """Atomic write of the emulator's cache file; a failure to write (disk full, read-only cache)
    only costs a rebuild next time."""
    from .io import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write(path, lambda tmp: torch.save(em.cache_state(), tmp))
    except OSError:
        pass


def emulator_error(pp, n_cubes: int = 16, seed: int = 0) -> dict:
    """The emulator of ``pp`` (a :class:`popsynth.physical_run.PhysicalProblem` with the three
    hyperparameters free on 3 nodes each) against direct builds, over ``n_cubes`` cubes (the
    configured values and prior draws within 2 sigma of the other free parameters).

    ``tensor``: the model's tensor grid at the 8 octant centres (midway between nodes in every
    hyperparameter, direct builds of those spectral sets); ``first_order``: the additive alternative
    (:meth:`SpectralEmulator.additive_weights`) at the 8 corners of the box, where the tensor grid
    has nodes (i.e. direct builds). Each entry: at (the hyperparameters), cxb and counts_ct (max
    relative error of the 74 CXB points and of the other features), dlnl_median / dlnl_max
    (|delta(-2 ln L)| over the cubes)."""
    from .spectra.sets import get_spectral_set

    pm, ks = pp.pmap, pp.kernels
    em = ks.emulator
    if len(em.names) != 3 or any(len(n) != 3 for n in em.nodes):
        raise PopsynthError("the emulator error is measured with gamma, refl and ecut free on 3 nodes each",
                            "free all three with `spectral_nodes` = 3")
    g = torch.Generator().manual_seed(seed)
    th = pm.default_theta(n_cubes)
    z = torch.randn(n_cubes - 1, pm.n_free, generator=g, dtype=DTYPE).clamp(-2, 2)
    th[1:, :pm.n_phys] = pm.mean + pm.sigma * z[:, :pm.n_phys]
    th = torch.minimum(torch.maximum(th, pm.lo + 0.02 * (pm.hi - pm.lo)), pm.hi - 0.02 * (pm.hi - pm.lo))
    lik = ks.likelihood
    n_cxb = ks.center.k_cxb.shape[-1]

    def compare(at, x, direct):
        rel = ((x - direct) / direct).abs()
        dl = (lik.neg2_loglike(x) - lik.neg2_loglike(direct)).abs()
        return {"at": at, "cxb": float(rel[:, :n_cxb].max()), "counts_ct": float(rel[:, n_cxb:].max()),
                "dlnl_median": float(dl.median()), "dlnl_max": float(dl.max())}

    out = {"n_cubes": n_cubes, "tensor": [], "first_order": []}
    spec = get_spectral_set(pp.cfg.spec_set)
    with torch.no_grad():
        phi, phi1 = ks.builder(pm.full(th))
        nodes = em.node_features(phi, phi1, ks.lw)  # [B, 27, F]
        for side in itertools.product((0, 2), repeat=3):
            c = [0.5 * (em.coord_nodes[i][s] + em.coord_nodes[i][1]) for i, s in enumerate(side)]
            vals = {n: float(_from_coord(n, v)) for n, v in zip(em.names, c)}
            eta = torch.tensor([[vals[n] for n in em.names]], dtype=DTYPE).expand(n_cubes, -1)
            _, kd = build_node(pp.prob, pp.cfg, pp.model, spectral_set_at(spec, vals))
            out["tensor"].append(compare(vals, _log_interp(em.weights(eta), nodes), kd.features(phi, phi1)))
        for corner in itertools.product((0, 2), repeat=3):
            vals = {n: float(em.nodes[i][corner[i]]) for i, n in enumerate(em.names)}
            eta = torch.tensor([list(vals.values())], dtype=DTYPE).expand(n_cubes, -1)
            c = int(np.ravel_multi_index(corner, (3, 3, 3)))
            out["first_order"].append(compare(vals, _log_interp(em.additive_weights(eta), nodes), nodes[:, c]))
    return out

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
hyperparameters (default 3 per hyperparameter: lower bound, the set's value, upper bound; E_cut in
ln E_cut) and interpolated with tensor-product Lagrange polynomials (quadratic for 3 nodes) in the
logarithm of every feature: x_f = exp(sum_c w_c(eta) ln x_{c,f}(phi)) with x_{c,f} the contraction of
node c's kernel with the cube (interpolating x itself was 10 times less accurate: 3.5 % against
0.3 % at the highest CXB energies, where the kernels vary as E^-Gamma). The
weights are smooth in eta, so NUTS gets exact gradients of the emulator, and at a node the emulator
is that node's kernels exactly (the set's own value is a node: with the hyperparameters at the set's
values the model equals the fixed-spectra physical model, tested to 1e-10). The interpolation error
against direct builds is measured in ``tests/test_physical.py`` and stated in docs/physical.md.

The stacked kernels are cached on disk (``cache_dir()/physical/emulator-<key>.pt``, float64).
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
from .spectra.sets import SpectralSet, get_spectral_set

SPECTRAL_NAMES = ("gamma", "refl", "ecut")
_FIELD = {"gamma": "gamma", "refl": "refl", "ecut": "ecut"}
_MODE = {"gamma": "shift", "refl": "scale", "ecut": "scale"}
_COORD = {"gamma": "lin", "refl": "lin", "ecut": "log"}


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
    k_cxb [C, nz, 6, n_cxb], k_phi [C * F, nz * nL * 6], k_fine [C, nz, 6, nE_fine], with C = prod n_i
    nodes in C order of ``itertools.product``.
    """

    def __init__(self, names, nodes, k_cxb, k_phi, k_fine, seconds: float = 0.0):
        self.names = tuple(names)
        self.nodes = [torch.as_tensor(np.asarray(n, dtype=np.float64), dtype=DTYPE) for n in nodes]
        self.coord_nodes = [torch.log(n) if _COORD[name] == "log" else n for name, n in zip(self.names, self.nodes)]
        self.k_cxb, self.k_phi, self.k_fine = k_cxb, k_phi, k_fine
        self.n_nodes = int(k_cxb.shape[0])
        self.n_phi = int(k_phi.shape[0] // self.n_nodes)
        self.seconds = seconds

    def weights(self, eta: torch.Tensor) -> torch.Tensor:
        """Interpolation weights [B, C] at hyperparameters eta [B, k] (order of ``names``)."""
        w = None
        for i, name in enumerate(self.names):
            c = torch.log(eta[:, i]) if _COORD[name] == "log" else eta[:, i]
            wi = lagrange_weights(c, self.coord_nodes[i])  # [B, n_i]
            w = wi if w is None else (w[:, :, None] * wi[:, None, :]).reshape(w.shape[0], -1)
        return w

    def features(self, phi_red, phi1_red, lw, eta) -> torch.Tensor:
        """Feature vector [B, F] (CXB points, then the other kernels) at reduced cubes and eta [B, k]."""
        b = phi_red.shape[0]
        m = torch.einsum("bzlk,l->bzk", phi1_red, lw)
        xc = torch.einsum("bzk,czke->bce", m, self.k_cxb)
        xp = (phi_red.reshape(b, -1) @ self.k_phi.T).reshape(b, self.n_nodes, self.n_phi)
        return _log_interp(self.weights(eta), torch.cat([xc, xp], -1))

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
    n = int(getattr(model, "spectral_nodes", 3))
    out = []
    for name in names:
        lo, hi = model.bound(name)
        v = model.value(name)
        f = (math.log, math.exp) if _COORD[name] == "log" else (lambda x: x, lambda x: x)
        a, c, b = f[0](lo), f[0](v), f[0](hi)
        k = max(1, (n - 1) // 2)
        left = [a + (c - a) * i / k for i in range(k)]
        right = [c + (b - c) * i / k for i in range(1, k + 1)]
        out.append([f[1](x) for x in left] + [v] + [f[1](x) for x in right])
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
    from .spectra.model import build_spectral_table, make_components

    table = build_spectral_table(spec, prob.grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed,
                                 components=make_components(cfg.spectral_model, cfg.torus_table), device=device)
    return table, build_kernels(_problem_with_table(prob, cfg, table, device), table, cfg, model, device=device)


def _cache_key(cfg, model, spec, names, nodes) -> str:
    from . import __version__

    payload = {"spec": spec.describe(), "names": list(names), "nodes": [list(map(float, n)) for n in nodes],
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
    path = None
    if cache:
        from .paths import cache_dir

        path = cache_dir() / "physical" / f"emulator-{_cache_key(cfg, model, spec, names, nodes)}.pt"
        if path.is_file():
            try:
                d = torch.load(path, map_location="cpu", weights_only=True)
                em = SpectralEmulator(names, nodes, d["k_cxb"], d["k_phi"], d["k_fine"], time.time() - t0)
                log(f"spectral emulator: {em.n_nodes} nodes read from {path} in {em.seconds:.1f} s")
                return em
            except Exception:  # damaged: rebuild
                pass
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
    em = SpectralEmulator(names, nodes, torch.stack(k_cxb), torch.cat(k_phi, 0), torch.stack(k_fine), time.time() - t0)
    if path is not None:
        from .io import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(path, lambda tmp: torch.save({"k_cxb": em.k_cxb, "k_phi": em.k_phi, "k_fine": em.k_fine}, tmp))
        except OSError:
            pass
    return em

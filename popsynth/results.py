"""Read a finished run back: its configuration, its weights (best, posterior samples or all
converged starts) and, on demand, the engine's set-up (grid, spectra, survey model) that made it.

Every product computed from a run (comparison figures, mock catalogues, forecasts, accretion
history, unresolved CXB) starts from :func:`load_run`, so that it uses the run's own cosmology,
spectral set, absorption function and starting XLF, and carries the run's uncertainty::

    from popsynth.results import load_run
    r = load_run("checkpoints/spec-set-5")     # a run folder, or its xlf_best.h5
    w = r.weight_samples()                     # [N, 15]: posterior samples, or converged starts
    phi = r.cubes(w)                           # [N, nz, nL, nN] Mpc^-3 dex^-2
    prob = r.problem()                         # grid, phi0, spectral CXB model, constraints

Which weights a run has:

* ``--mode posterior``: ``weight_samples()`` are the NUTS samples (``posterior_weights``);
  ``best_weights()`` the posterior mode.
* ``--mode a19 / joint / cxb``: ``weight_samples()`` are the weights of the converged starts
  (A19's spread, which is an optimiser spread, not a posterior); ``best_weights()`` the selected
  start.
* a bare ``xlf_best.h5`` without weights (written by another tool): only the cube ``phi`` is
  available (``cube()``); ``weight_samples`` raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._tensor import DTYPE
from .errors import PopsynthError
from .io import XLF_CUBES, RUN_FILES, load_xlf

UNCERTAINTY_KINDS = ("posterior", "converged_starts", "none")


@dataclass
class RunOutputs:
    """A finished run, read from its folder. Construct with :func:`load_run`.

    Attributes: ``folder`` (Path), ``xlf_path`` (Path of xlf_best.h5), ``attrs`` (the HDF5 file
    attributes, JSON values decoded), ``summary`` (summary.json as a dict, {} if absent),
    ``config`` (the RunConfig that made the run), ``mode`` ("posterior", "a19", "joint", "cxb").
    """

    folder: Path
    xlf_path: Path
    attrs: dict
    summary: dict
    config: object  # RunConfig (imported lazily: run.py is heavy)
    _arrays: dict = field(default_factory=dict, repr=False)
    _problem: object = field(default=None, repr=False)

    @property
    def mode(self) -> str:
        return str(self.attrs.get("mode") or self.config.mode)

    @property
    def spec_set(self) -> int:
        return int(self.config.spec_set)

    @property
    def uncertainty(self) -> str:
        """Where :meth:`weight_samples` comes from: "posterior" (NUTS samples), "converged_starts"
        (optimiser spread over CXB-converged starts, A19's convention) or "none"."""
        if "posterior_weights" in self._arrays:
            return "posterior"
        if "weights_all_starts" in self._arrays:
            return "converged_starts"
        return "none"

    def best_weights(self) -> torch.Tensor:
        """Block weights of the run's answer (posterior mode or selected start): [1, 15] float64."""
        w = self.attrs.get("weights")
        if w is None:
            raise PopsynthError(f"{self.xlf_path} holds no block weights", "use a run folder written by train.py")
        return torch.as_tensor(np.asarray(w, dtype=np.float64)).reshape(1, -1)

    def weight_samples(self, max_samples: int | None = None, seed: int = 0) -> torch.Tensor:
        """Weights that carry the run's uncertainty: [N, 15] float64 (see the module docstring).

        max_samples: thin to at most this many (a seeded random subset without replacement), to
        bound the cost of downstream products. A run with no spread returns its best weights."""
        if "posterior_weights" in self._arrays:
            w = np.asarray(self._arrays["posterior_weights"], dtype=np.float64).reshape(-1, 15)  # [chains, samples, 15]
        elif "weights_all_starts" in self._arrays:
            w = np.asarray(self._arrays["weights_all_starts"], dtype=np.float64)
            conv = np.asarray(self._arrays.get("converged", np.ones(len(w), bool)), dtype=bool)
            w = w[conv] if conv.any() else w
        else:
            return self.best_weights()
        if max_samples is not None:
            if int(max_samples) < 1:
                raise PopsynthError(f"max_samples must be >= 1, got {max_samples}", "pass a positive number")
            if len(w) > max_samples:
                idx = np.random.default_rng(seed).choice(len(w), size=int(max_samples), replace=False)
                w = w[np.sort(idx)]
        return torch.as_tensor(w)

    def cube(self, which: str = "best"):
        """An :class:`~popsynth.io.XLFCube` of the stored cube ``which`` ("best", "p16", "p50", "p84")."""
        return load_xlf(self.xlf_path, which)

    def problem(self, device: str | torch.device = "cpu", log=None):
        """The run's set-up rebuilt from its configuration (:class:`~popsynth.run.Problem`: grid,
        phi0, CXB models, constraints); cached on this object. Spectral tables come from the
        cache, so this takes a few seconds."""
        if self._problem is None:
            from .run import build_problem

            self._problem = build_problem(self.config, torch.device(device), log=log or (lambda *a, **k: None))
        return self._problem

    def spectral_table(self, device: str | torch.device = "cpu"):
        """The spectral table the run used (from the cache; rebuilt if absent): a
        :class:`~popsynth.spectra.table.SpectralTable` with ``per_draw`` [D, nN, nE]. Same spectral set,
        draws, seed, spectral model and torus table as the run, on the grid's log N_H cells."""
        from .spectra.cache import build_spectral_table
        from .spectra.registry import make_components

        cfg = self.config
        grid = self.problem(device).grid
        return build_spectral_table(cfg.spectral_set, grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed,
                                    components=make_components(cfg.spectral_model, cfg.torus_table), device=device)

    def cubes(self, weights: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """XLF cubes for a batch of weights [N, 15]: [N, nz, nL, nN] Mpc^-3 dex^-2 (float64)."""
        from .xlf import apply_block_weights

        prob = self.problem(device)
        return apply_block_weights(prob.phi0, torch.as_tensor(weights, dtype=DTYPE, device=prob.phi0.device), prob.grid)


def _decode(v):
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, str) and v[:1] in "[{":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    return v


def load_run(path) -> RunOutputs:
    """Read a run folder (or its ``xlf_best.h5``) written by ``train.py``.

    Raises PopsynthError naming the missing or damaged file and what to do."""
    import h5py

    from .run import RunConfig

    p = Path(path)
    if p.is_dir():
        folder, xlf = p, p / RUN_FILES["xlf_hdf5"]
    else:
        folder, xlf = p.parent, p
    if not xlf.exists():
        raise PopsynthError(f"{xlf} not found", "pass a run folder written by train.py (it holds xlf_best.h5) "
                                                 "or the path of an xlf_best.h5")
    try:
        with h5py.File(xlf, "r") as f:
            attrs = {k: _decode(v) for k, v in f.attrs.items()}
            arrays = {k: f[k][()] for k in ("posterior_weights", "weights_all_starts", "converged") if k in f}
            if "phi" not in f:
                raise PopsynthError(f"{xlf} has no XLF cube 'phi'", "re-run train.py to rewrite it")
    except OSError as exc:
        raise PopsynthError(f"{xlf} is not a readable HDF5 file ({exc})", "re-run train.py to rewrite it") from None
    if "config" not in attrs or not isinstance(attrs["config"], dict):
        raise PopsynthError(f"{xlf} lacks the run configuration", "use an xlf_best.h5 written by train.py")
    cfg = RunConfig.from_dict(attrs["config"], source=f"{xlf} config")
    summary_path = folder / RUN_FILES["summary"]
    summary = {}
    if summary_path.exists():
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as exc:
            raise PopsynthError(f"{summary_path} is not valid JSON ({exc})", "re-run train.py to rewrite it") from None
    return RunOutputs(folder, xlf, attrs, summary, cfg, arrays)


__all__ = ["RunOutputs", "load_run", "UNCERTAINTY_KINDS", "XLF_CUBES"]

"""A fitting run: the set-up (:func:`build_problem`) and the batched fit loop with checkpoints and resume.

``run(RunConfig(...))`` is what ``python train.py`` does. Files written to ``config.out``:
checkpoint.pt, xlf_best.h5, xlf_best_a19.npy, cxb_model.ecsv, summary.json. The settings are
:mod:`popsynth.config`'s, the memory check :mod:`popsynth.resources`', the selection and the
outputs of modes a19 / joint / cxb :mod:`popsynth.outputs`' and of the posterior mode
:mod:`popsynth.posterior_run`'s; their names stay importable from here.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__
from ._tensor import DTYPE, as_tensor, resolve_device
from .config import (FINE_ENERGY, MAX_DRAWS, MAX_STARTS, MAX_STEPS, MODES, REQUIRED_FIELDS, RESUME_SAFE,
                     STARTING_XLFS, RunConfig, _field_kinds, _is_kind)
from .constraints import Constraints
from .cxb import CXBModel, block_response, cxb_kernel
from .data.cxb import load_cxb
from .errors import PopsynthError, RunInterrupted
from .fit import (Convergence, FitData, FitResiduals, check_state, check_tensor, chi2_by_dataset, initial_weights,
                  make_optimizer)
from .galaxies import GALAXY_MODELS
from .blocks import BLOCKS
from .grid import Grid
from .io import RunLock, check_output_folder, checkpoint_file, load_checkpoint, save_checkpoint
from .outputs import format_table, select_start, write_outputs
from .posterior_run import build_inference, format_posterior_table, posterior_stage, residual_fn_for
from .response import intrinsic_block_counts
from .resources import (CUDA_CONTEXT_BYTES, SETUP_BYTES, _fmt_bytes, available_memory, check_resources,
                        estimate_memory)
from .spectra.cache import build_spectral_table
from .spectra.registry import make_components

__all__ = ["RunConfig", "Problem", "build_problem", "run", "load_resume", "check_data", "fit_progress", "FINE_ENERGY", "MODES", "STARTING_XLFS", "RESUME_SAFE", "REQUIRED_FIELDS", "MAX_STARTS",
           "MAX_DRAWS", "MAX_STEPS", "_field_kinds", "_is_kind", "check_resources", "estimate_memory",
           "available_memory", "SETUP_BYTES", "CUDA_CONTEXT_BYTES", "_fmt_bytes", "select_start", "write_outputs",
           "format_table"]  # the names defined elsewhere stay importable from here (their modules are in the docstring)


@dataclass
class Problem:
    """Everything built once per run: grid, cubes, spectra, data, CXB models."""

    grid: Grid
    phi0: torch.Tensor  # [nz, nL, nN] Mpc^-3 dex^-2
    data: FitData
    model: CXBModel  # at the data energies
    fine: CXBModel  # on a fine energy grid, for the output table
    ct_blocks: dict = field(default_factory=dict)  # zmax -> number of AGN per block [15]
    literature: dict = field(default_factory=dict)  # starting XLF name -> CXB chi2 per data set at weights 1
    constraints: Constraints | None = None  # counts and CT fractions (None in mode cxb)
    spectra_meta: dict = field(default_factory=dict)
    setup_seconds: float = 0.0

    def spectra_summary(self, cfg: "RunConfig") -> dict:
        """The spectral model of the run, for summary.json."""
        return {"model": cfg.spectral_model, "torus_table": cfg.torus_table,
                "components": [c["name"] for c in self.spectra_meta.get("components", [])],
                "n_draws": self.spectra_meta.get("n_draws"), "cache_key": self.spectra_meta.get("key")}




def starting_cube(xlf: str, grid: Grid, absorption: str, l_moment: int, device) -> torch.Tensor:
    """The starting XLF ``xlf`` (:data:`STARTING_XLFS`) times the absorption function on ``grid``,
    phi0 [nz, nL, nN] (``l_moment`` 0) or the L-weighted phi1 (1), Mpc^-3 dex^-2. On the CPU it is
    kept in the cache folder (``cubes/``, 6.9 MB each) under a key of the grid, the names, the
    package sources, torch's version and thread count: a run's set-up builds three cubes (0.1-0.2 s
    each), a cached one is read in milliseconds, bit for bit the built one (tested)."""
    from .io import cache_file, cache_key, cached
    from .io.cache import arrays_sha256, source_digest

    make = STARTING_XLFS[xlf][0]
    dev = torch.device(device)

    def build():
        return make(grid, absorption, l_moment=l_moment, device=dev)

    if dev.type != "cpu":
        return build()
    key = cache_key({"xlf": xlf, "absorption": absorption, "l_moment": int(l_moment),
                     "grid": arrays_sha256(grid.z, grid.logl_edges, grid.lognh_edges), "code": source_digest(),
                     "torch": torch.__version__, "threads": torch.get_num_threads()})

    def load(path, k):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - damaged: rebuilt
            return None
        phi = blob.get("phi") if isinstance(blob, dict) and blob.get("key") == k else None
        return phi if isinstance(phi, torch.Tensor) and tuple(phi.shape) == grid.shape else None

    return cached(build, key, path=cache_file("cubes", f"{xlf}-{absorption}-l{int(l_moment)}-{key[:16]}.pt"), load=load,
                  save=lambda tmp, v: torch.save({"key": key, "phi": v}, tmp), what="starting-cube cache file")


def build_problem(cfg: RunConfig, device: torch.device, log=print) -> Problem:
    t0 = time.time()
    if cfg.spectral_model != "transmitted":  # warns once (StaleTableWarning) when a shipped table is out of date,
        from .mc import check_shipped_tables  # also when the spectral table itself comes from the cache

        check_shipped_tables()
    grid = Grid()
    phi0 = starting_cube(cfg.xlf, grid, cfg.absorption, 0, device)
    phi1 = starting_cube(cfg.xlf, grid, cfg.absorption, 1, device)
    table = build_spectral_table(cfg.spectral_set, grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed,
                                 components=make_components(cfg.spectral_model, cfg.torus_table), device=device)
    datasets = load_cxb(cfg.datasets)
    data = FitData.from_cxb(datasets, device=device)
    gal = GALAXY_MODELS[cfg.galaxies]
    models = []
    for e in (data.energy, as_tensor(FINE_ENERGY, device)):
        k = cxb_kernel(table, grid, e, device=device)
        models.append(CXBModel(block_response(phi1, k, grid), e, gal(e).to(device)))
        if not models[1:]:  # A19 Table 5's literature rows: each starting XLF, unchanged, under this spectral set
            literature = {}
            for name, (_, label) in STARTING_XLFS.items():
                resp = block_response(phi1 if name == cfg.xlf else starting_cube(name, grid, cfg.absorption, 1, device),
                                      k, grid)
                pred = CXBModel(resp, e, gal(e).to(device))(torch.ones(1, BLOCKS.n, dtype=DTYPE, device=device))
                chi = chi2_by_dataset(pred, data, cfg.sys_floor)[0]
                literature[name] = {"label": label, **{n: float(chi[i]) for i, n in enumerate(data.names)},
                                    "total": float(chi.sum())}
    ct = {zmax: intrinsic_block_counts(phi0, grid, zmax) for zmax in (0.1, 1.0)}
    cons = None
    if cfg.mode != "cxb":
        cons = Constraints(grid, phi0, table, cfg.counts, cfg.use_ct, cfg.counts_weight, cfg.ct_weight, device=device,
                           cache=True)
    return Problem(grid, phi0, data, models[0], models[1], ct, literature, cons, table.meta, time.time() - t0)


def fit_progress(total: int, label: str, enabled: bool = True, initial: int = 0, stream=None) -> tqdm:
    """The fit loop's progress bar (tqdm, on stderr): ``update(1)`` per step, the status in
    ``set_postfix_str``. On a terminal it redraws one line in place; on a pipe or a log file
    (CI, batch jobs) it prints a line at most every 10 % of the steps and every 30 s, so logs
    stay short. ``enabled=False`` draws nothing."""
    stream = stream or sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    total = max(int(total), 1)
    return tqdm(total=total, initial=initial, desc=label, file=stream, leave=True, disable=not enabled,
                dynamic_ncols=tty, mininterval=0.1 if tty else 30.0, miniters=None if tty else max(total // 10, 1),
                bar_format=None if tty else "{desc} {n}/{total} ({percentage:3.0f}%) {elapsed}{postfix}")


def _check_finite(loss: torch.Tensor, step: int, saved_step: int | None) -> None:
    """PopsynthError if any start's loss is not finite; the message says what is on disk."""
    bad = ~torch.isfinite(loss)
    if bad.any():
        idx = torch.nonzero(bad)[:, 0][:5].tolist()
        if step == 0:
            raise PopsynthError(f"non-finite loss at the starting weights of start(s) {idx}",
                                "check `weight_prior`, `sys_floor` and the data tables; nothing was written")
        where = (f"the last finite state (step {saved_step}) is in the checkpoint" if saved_step is not None
                 else "no checkpoint was written")
        raise PopsynthError(f"non-finite loss at step {step} in start(s) {idx}",
                            f"lower `lr`, or use `optimizer` lm; {where}")


def load_resume(path, overrides: dict | None = None) -> tuple[dict, RunConfig, Path]:
    """Load a checkpoint for resuming and check everything in it against its own settings.

    Args:
      path: run folder or its checkpoint.pt.
      overrides: {field: value} for fields in :data:`RESUME_SAFE` (steps, device, progress),
        applied to the stored settings.
    Returns (checkpoint dict, config, run folder). Raises PopsynthError naming the file and
    the problem: unreadable or crafted file, missing keys, wrong types, unknown or invalid
    settings, tensors of the wrong shape or dtype for the stored number of starts and
    optimiser, non-finite or non-positive weights.
    """
    ckpt = load_checkpoint(path)
    p = checkpoint_file(path)
    src = f"checkpoint {p}"
    cfg = RunConfig.from_dict(ckpt["config"], source=f"{src}: config")
    cfg.out = str(p.parent)
    try:
        cfg.validate()
    except PopsynthError as err:
        raise PopsynthError(f"{src}: stored setting invalid ({err.what})",
                            "it was damaged or edited; start a new run") from None
    for k, v in (overrides or {}).items():
        if k not in RESUME_SAFE:
            raise PopsynthError(f"setting '{k}' cannot change on resume", f"only {', '.join(RESUME_SAFE)} can")
        setattr(cfg, k, v)
    cfg.validate()
    opt = make_optimizer(cfg.optimizer, cfg.lr)
    check_state(ckpt["opt_state"], opt.state_spec(cfg.starts, BLOCKS.n), f"{src}: opt_state")
    check_state(ckpt["conv_state"], Convergence.state_spec(cfg.starts), f"{src}: conv_state")
    check_tensor(ckpt["w0"], (cfg.starts, BLOCKS.n), DTYPE, f"{src}: w0")
    if not bool((ckpt["w0"] > 0).all()):
        raise PopsynthError(f"{src}: w0 holds non-positive weights", "it was damaged or edited; start a new run")
    return ckpt, cfg, p.parent


def check_data(cfg: RunConfig) -> None:
    """Read and check the data tables the run will use (CXB spectra; number counts and CT
    fractions unless ``mode == "cxb"``): a missing, damaged or unknown table is reported in
    seconds, before the set-up. Raises PopsynthError naming the file or table."""
    load_cxb(cfg.datasets)
    if cfg.mode != "cxb":
        from .data.counts import list_counts, load_counts, load_ct_fractions

        known = list_counts()
        bad = [n for n in cfg.counts if n not in known]
        if bad:
            raise PopsynthError(f"unknown counts table(s) {bad}", f"choose from {known}, or pass `counts` none")
        for name in cfg.counts:
            load_counts(name)
        if cfg.use_ct:
            load_ct_fractions()


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def run(cfg: RunConfig, resume: str | None = None, log=print, overrides: dict | None = None, warn=_warn) -> dict:
    """Fit (or resume) and write all outputs; returns the summary dict.

    Everything that can be checked without set-up is checked first (settings, device, output
    folder, memory, and on resume the checkpoint); then the output folder is locked
    (:class:`popsynth.io.RunLock`) for the rest of the run.

    Args:
      cfg: the settings of a new run (ignored on resume, except ``cfg.steps`` when
        ``overrides`` is None, for backward compatibility).
      resume: run folder or checkpoint.pt to continue; its stored settings are used.
      overrides: on resume, {field: value} of :data:`RESUME_SAFE` fields to change.
      log, warn: where progress lines and warnings go.
    Raises PopsynthError for bad input, and :class:`popsynth.errors.RunInterrupted` (a
    KeyboardInterrupt) on Ctrl-C, saying what is on disk.
    """
    t_start = time.time()
    ckpt = None
    if resume:
        if overrides is None:
            overrides = {"steps": cfg.steps} if cfg.steps is not None else {}
        ckpt, cfg, _ = load_resume(resume, overrides)
    else:
        cfg.validate()
    device = resolve_device(cfg.device)
    out = Path(cfg.out)
    check_output_folder(out)
    check_resources(cfg, device)
    check_data(cfg)
    out.mkdir(parents=True, exist_ok=True)
    resumed_step = int(ckpt["step"]) if ckpt is not None else None
    progress = {"stage": "set-up", "saved": None, "finished": False}
    try:
        with RunLock(out, log=log):
            return _run_locked(cfg, ckpt, device, out, t_start, log, warn, progress)
    except KeyboardInterrupt:
        raise RunInterrupted(str(out), progress["stage"], progress["saved"], resumed_step, progress["finished"]) from None


def _run_locked(cfg: RunConfig, ckpt: dict | None, device: torch.device, out: Path, t_start: float, log, warn,
                progress: dict) -> dict:
    opt = make_optimizer(cfg.optimizer, cfg.lr)
    steps = cfg.steps or opt.default_steps
    prob = build_problem(cfg, device, log)
    log(f"popsynth {__version__}: spectral set {cfg.spec_set}, mode {cfg.mode}, {cfg.starts} starts, optimizer {opt.name} "
        f"(lr {opt.lr:g}), loss {cfg.loss}, weight prior {cfg.weight_prior:g} dex, {prob.data.n} CXB points, device {device}; set-up {prob.setup_seconds:.1f} s")

    if cfg.mode == "posterior":  # the optimiser finds the posterior mode of the joint likelihood
        lik, prior = build_inference(cfg, prob, device)
        residual_fn = residual_fn_for(lik, prior)
    else:  # CXB (+ prior, + constraints in joint mode), with the Jacobian written out for LM
        residual_fn = FitResiduals(prob.model, prob.data, cfg.loss, cfg.sys_floor, cfg.weight_prior,
                                   prob.constraints if cfg.mode == "joint" else None)

    conv = Convergence(cfg.rtol, cfg.patience)
    if ckpt is not None:
        state = {k: v.to(device) for k, v in ckpt["opt_state"].items()}
        conv_state = {k: v.to(device) for k, v in ckpt["conv_state"].items()}
        w0 = ckpt["w0"].to(device)
        step0 = int(ckpt["step"])
        history = list(ckpt.get("history", []))
        wall_before = float(ckpt.get("wall_seconds", 0.0))
        log(f"resuming from step {step0} of {steps} ({out / 'checkpoint.pt'})")
    else:
        w0 = initial_weights(cfg.starts, BLOCKS.n, cfg.seed, *cfg.init_range, device=device)
        state = opt.init(w0)
        loss0 = (residual_fn(w0) ** 2).sum(-1)
        _check_finite(loss0, 0, None)
        conv_state = conv.init(loss0)
        step0, history, wall_before = 0, [], 0.0

    def checkpoint(step, finished):
        save_checkpoint(out / "checkpoint.pt", {
            "config": cfg.to_dict(), "step": step, "opt_state": state, "conv_state": conv_state, "w0": w0,
            "history": history, "finished": finished, "wall_seconds": wall_before + time.time() - t_start})
        progress["saved"], progress["finished"] = step, finished

    progress["stage"] = "fit"
    bar = fit_progress(steps, f"fit set {cfg.spec_set}", enabled=cfg.progress, initial=step0)
    step = step0
    while step < steps and not bool(conv.stalled(conv_state).all()):
        info = conv.step_info()
        new_state, loss = opt.step(state, residual_fn, active=conv.active(conv_state), info=info)
        if not torch.isfinite(loss).all():
            checkpoint(step, False)
            _check_finite(loss, step + 1, step)
        state = new_state
        step += 1
        conv_state = conv.update(conv_state, loss, info)
        history.append([step, float(loss.min()), float(loss.median())])
        bar.set_postfix_str(f"best loss {float(loss.min()):.4g}", refresh=False)
        bar.update(1)
        if step % cfg.checkpoint_every == 0:
            checkpoint(step, False)
    bar.close()
    checkpoint(step, True)
    w = opt.weights(state).detach()
    warnings = _movement_warnings(residual_fn, w0, w, step, cfg, opt)
    for msg in warnings:
        warn(msg)
    if cfg.mode == "posterior":
        progress["stage"] = "posterior sampling"
        summary = posterior_stage(cfg, prob, lik, prior, w, step, out, wall_before + time.time() - t_start, log)
        log(format_posterior_table(summary))
        return summary
    progress["stage"] = "writing outputs"
    summary = write_outputs(cfg, prob, w, step, steps, conv.stalled(conv_state),
                            wall_before + time.time() - t_start, out, warnings)
    log(format_table(summary))
    return summary


def _movement_warnings(residual_fn, w0: torch.Tensor, w: torch.Tensor, step: int, cfg: RunConfig, opt) -> list[str]:
    """A warning when no start lowered its loss by more than 0.1 % from its starting weights
    (a learning rate far too small or too large for the problem), else []."""
    with torch.no_grad():
        l0 = (residual_fn(w0) ** 2).sum(-1)
        l1 = (residual_fn(w) ** 2).sum(-1)
    if step == 0 or bool((l1 < l0 * (1 - 1e-3)).any()):
        return []
    grew = bool((l1 > l0 * (1 + 1e-3)).any())
    lo, hi = opt.lr_range
    why = ("the loss grew: `lr` is too large for this problem" if grew
           else "the weights hardly moved: `lr` is too small (or too large a damping) for this problem")
    return [f"no start lowered its loss by more than 0.1 % in {step} steps of `optimizer` {opt.name} with `lr` {opt.lr:g} "
            f"({why}); try `lr` within {lo:g}-{hi:g} (default {opt.default_lr:g}) or `optimizer` lm"]

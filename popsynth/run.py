"""A fitting run: set-up, the batched fit loop with checkpoints and resume, and the outputs.

``run(RunConfig(...))`` is what ``python train.py`` does. Files written to ``config.out``:
checkpoint.pt, xlf_best.h5, xlf_best_a19.npy, cxb_model.ecsv, summary.json.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from ._tensor import DTYPE, as_tensor, resolve_device
from .cosmology import CosmologyParams, distance_tables
from .constraints import DEFAULT_COUNTS, Constraints
from .cxb import CXBModel, block_response, cxb_kernel
from .data.cxb import TRAINING_SETS, load_cxb
from .errors import PopsynthError, RunInterrupted
from .fit import (A19_CONVERGED_COST, LOSSES, Convergence, FitData, FitResiduals, a19_cost, check_state, chi2_by_dataset,
                  check_tensor, initial_weights, make_optimizer)
from .galaxies import GALAXY_MODELS
from .grid import N_BLOCKS, NH_CLASS_NAMES, Grid, block_names
from .io import (RunLock, check_output_folder, checkpoint_file, export_xlf_hdf5, load_checkpoint, run_files,
                save_checkpoint, write_a19_layout, write_cxb_table, write_json)
from .posterior_run import (A19_TABLE5, build_inference, format_literature_rows, format_posterior_table,
                            intrinsic_ct_fraction, posterior_stage, residual_fn_for)
from .progress import Progress
from .spectra.model import SPECTRAL_MODELS, build_spectral_table, make_components
from .spectra.sets import get_spectral_set
from .xlf import ABSORPTION_MODELS, apply_block_weights, build_phi0


MODES = ("posterior", "a19", "joint", "cxb")


def _phi0_u14(grid, absorption, l_moment=0, device=None):
    return build_phi0(grid, absorption, l_moment=l_moment, device=device)


def _phi0_a15(grid, absorption, l_moment=0, device=None):
    from .xlf_a15 import build_phi0_a15

    return build_phi0_a15(grid, absorption, l_moment=l_moment, device=device)


#: Starting XLFs (of all Compton-thin AGN, times the absorption function): name -> (cube builder, label).
STARTING_XLFS = {"u14": (_phi0_u14, "Ueda et al. 2014 LDDE"),
                 "a15": (_phi0_a15, "Aird et al. 2015 LADE (hard), with this run's absorption function")}


@dataclass
class RunConfig:
    """Everything that defines a run (stored in the checkpoint; a run is reproducible from it)."""

    spec_set: int = 5
    starts: int = 100
    steps: int | None = None  # default: the optimizer's default_steps
    lr: float | None = None  # default: the optimizer's default_lr
    optimizer: str = "lm"
    loss: str = "chi2"
    sys_floor: float = 0.0
    weight_prior: float = 1.0  # dex; <= 0 disables
    seed: int = 0
    device: str = "cpu"
    out: str | None = None  # default: checkpoints/spec-set-<spec_set> (set in __post_init__)
    draws: int = 64
    spectra_seed: int = 0
    galaxies: str = "a19"
    absorption: str = "a19"
    xlf: str = "u14"  # starting XLF of all Compton-thin AGN: u14 (Ueda et al. 2014 LDDE) or a15 (Aird et al. 2015 LADE)
    spectral_model: str = "a19"
    torus_table: str | None = None
    mode: str = "posterior"  # posterior: joint likelihood, mode + NUTS; a19: A19's procedure; joint: one loss; cxb
    chains: int = 4  # posterior: NUTS chains (one batch)
    warmup: int = 300  # posterior: warm-up iterations per chain (pilot and main run each)
    samples: int = 1600  # posterior: kept iterations per chain
    smooth_prior: float = 0.0  # posterior: dex; ties adjacent luminosity blocks (0 = off)
    cxb_norm_sigma: float = 0.1  # posterior: 1-sigma prior on each CXB instrument's absolute normalisation (0 = fixed)
    select_chi2_max: float | None = None  # a19: only starts with CXB chi2 below this are selectable
    counts: tuple = DEFAULT_COUNTS
    use_ct: bool = True
    counts_weight: float = 1.0
    ct_weight: float = 1.0
    datasets: tuple = TRAINING_SETS
    checkpoint_every: int = 20
    rtol: float = 1e-6
    patience: int = 10
    init_range: tuple = (0.3, 5.0)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.out is None:
            self.out = f"checkpoints/spec-set-{self.spec_set}"

    def validate(self) -> None:
        """Check every setting (types, ranges, names) without touching files or building anything.

        Raises PopsynthError naming the command-line flag of the bad setting. Memory and the
        output folder are checked separately (:func:`check_resources`,
        :func:`popsynth.io.check_output_folder`) because they depend on the machine.
        """
        for name, flag in (("starts", "--starts"), ("draws", "--draws"), ("seed", "--seed"),
                           ("spectra_seed", "spectra_seed"), ("checkpoint_every", "checkpoint_every"),
                           ("patience", "patience")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise PopsynthError(f"{flag} must be an integer, got {v!r}", f"pass an integer {flag}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)):
            raise PopsynthError(f"--steps must be an integer, got {self.steps!r}", "pass an integer --steps")
        for name, flag in (("sys_floor", "--sys-floor"), ("weight_prior", "--weight-prior"),
                           ("counts_weight", "--counts-weight"), ("ct_weight", "--ct-weight"), ("rtol", "rtol")):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PopsynthError(f"{flag} must be a finite number, got {v!r}", f"pass a finite {flag}")
        get_spectral_set(self.spec_set)
        make_optimizer(self.optimizer, self.lr)
        if self.loss not in LOSSES:
            raise PopsynthError(f"unknown loss '{self.loss}'", f"use --loss {' or '.join(LOSSES)}")
        if self.starts < 1:
            raise PopsynthError(f"--starts must be >= 1, got {self.starts}", "pass a positive number of starts")
        if self.steps is not None and self.steps < 1:
            raise PopsynthError(f"--steps must be >= 1, got {self.steps}", "pass a positive number of steps")
        if self.steps is not None and self.steps > MAX_STEPS:
            raise PopsynthError(f"--steps must be <= {MAX_STEPS}, got {self.steps}",
                                "starts stop when they stall; lm needs tens of steps, gd some 10^4")
        if not (0 <= self.seed < 2 ** 63):
            raise PopsynthError(f"--seed must be in 0 .. 2**63 - 1, got {self.seed}", "pass e.g. --seed 0")
        if not (0 <= self.spectra_seed < 2 ** 63):
            raise PopsynthError(f"spectra_seed must be in 0 .. 2**63 - 1, got {self.spectra_seed}", "e.g. 0")
        if not (0 <= self.sys_floor < 1):
            raise PopsynthError(f"--sys-floor must be a fraction in [0, 1), got {self.sys_floor}", "e.g. --sys-floor 0.03")
        if self.weight_prior < 0:
            raise PopsynthError(f"--weight-prior must be >= 0 dex, got {self.weight_prior}",
                                "pass a width in dex, e.g. --weight-prior 1, or 0 to switch the prior off")
        for name, flag in (("counts_weight", "--counts-weight"), ("ct_weight", "--ct-weight")):
            if getattr(self, name) < 0:
                raise PopsynthError(f"{flag} must be >= 0, got {getattr(self, name)}", f"pass e.g. {flag} 1")
        if self.galaxies not in GALAXY_MODELS:
            raise PopsynthError(f"unknown galaxy model '{self.galaxies}'", f"use one of {sorted(GALAXY_MODELS)}")
        if self.xlf not in STARTING_XLFS:
            raise PopsynthError(f"unknown starting XLF '{self.xlf}'", f"use --xlf {' or '.join(STARTING_XLFS)}")
        if self.absorption not in ABSORPTION_MODELS:
            raise PopsynthError(f"unknown absorption function '{self.absorption}'",
                                f"use --absorption {' or '.join(ABSORPTION_MODELS)}")
        try:
            lo, hi = (float(x) for x in self.init_range)
        except (TypeError, ValueError):
            raise PopsynthError(f"bad initial weight range {self.init_range!r}", "use (low, high) with 0 < low < high") from None
        if not (0 < lo < hi < math.inf):
            raise PopsynthError(f"bad initial weight range {self.init_range}", "use 0 < low < high")
        if self.spectral_model not in SPECTRAL_MODELS:
            raise PopsynthError(f"unknown spectral model '{self.spectral_model}'",
                                f"use --spectral-model {' or '.join(SPECTRAL_MODELS)}")
        if self.torus_table is not None and not Path(self.torus_table).is_file():
            raise PopsynthError(f"torus table '{self.torus_table}' not found",
                                "pass the path of an XSPEC atable FITS file (e.g. torus1006.fits)")
        if self.mode not in MODES:
            raise PopsynthError(f"unknown mode '{self.mode}'", f"use --mode {' or '.join(MODES)}")
        if self.mode == "joint" and not (self.counts or self.use_ct):
            raise PopsynthError("--mode joint needs at least one counts or CT constraint",
                                "drop --counts none / --no-ct, or use --mode cxb")
        if self.draws < 1:
            raise PopsynthError(f"--draws must be >= 1, got {self.draws}", "pass a positive number of draws")
        for name, flag, lo, hi in (("chains", "--chains", 2, 64), ("warmup", "--warmup", 10, 100000),
                                   ("samples", "--samples", 10, 1000000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (lo <= v <= hi):
                raise PopsynthError(f"{flag} must be an integer in {lo}..{hi}, got {v!r}",
                                    f"pass e.g. {flag} {getattr(RunConfig, name)}")
        v = self.smooth_prior
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise PopsynthError(f"--smooth-prior must be a finite width in dex >= 0, got {v!r}",
                                "pass e.g. --smooth-prior 0.5, or 0 for none")
        v = self.cxb_norm_sigma
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 <= v < 1):
            raise PopsynthError(f"--cxb-norm-sigma must be a fraction in [0, 1), got {v!r}",
                                "pass e.g. --cxb-norm-sigma 0.1 (10 %), or 0 to fix each instrument's normalisation")
        v = self.select_chi2_max
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0)):
            raise PopsynthError(f"--select-chi2-max must be a finite chi2 > 0, got {v!r}", "pass e.g. --select-chi2-max 74")
        if self.checkpoint_every < 1 or self.patience < 1 or not (0 <= self.rtol < 1):
            raise PopsynthError(f"bad internal settings checkpoint_every={self.checkpoint_every}, patience={self.patience}, "
                                f"rtol={self.rtol}", "use checkpoint_every >= 1, patience >= 1, 0 <= rtol < 1")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["datasets"] = list(self.datasets)
        d["counts"] = list(self.counts)
        d["init_range"] = list(self.init_range)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        """Rebuild a config from :meth:`to_dict` output (e.g. a checkpoint's), checking it.

        Every key must be a field and every value of the field's type (ints are accepted for
        floats; lists for tuples). Fields missing from ``d`` take their defaults (older
        checkpoints), except those in :data:`REQUIRED_FIELDS`. Raises PopsynthError starting
        with ``source`` and naming the field.
        """
        fix = "it was damaged or edited, or written by another version; start a new run"
        if not isinstance(d, dict):
            raise PopsynthError(f"{source} must be a dict of settings, got {type(d).__name__}", fix)
        kinds = _field_kinds()
        unknown = sorted(str(k) for k in d if k not in kinds)
        if unknown:
            raise PopsynthError(f"{source} has unknown field(s) {', '.join(unknown)}", fix)
        missing = [k for k in REQUIRED_FIELDS if k not in d]
        if missing:
            raise PopsynthError(f"{source} lacks field(s) {', '.join(missing)}", fix)
        out = {}
        for k, v in d.items():
            base, optional, elem = kinds[k]
            if v is None and optional:
                out[k] = None
                continue
            if base is tuple:
                ok = isinstance(v, (list, tuple)) and all(_is_kind(x, elem) for x in v)
                val = tuple(float(x) if elem is float else x for x in v) if ok else None
            else:
                ok = _is_kind(v, base)
                val = float(v) if ok and base is float else v
            if not ok:
                want = f"a list of {elem.__name__}" if base is tuple else base.__name__
                raise PopsynthError(f"{source}: field '{k}' must be {want}{' or null' if optional else ''}, "
                                    f"got {type(v).__name__} {v!r}"[:300], fix)
            out[k] = val
        return cls(**out)


REQUIRED_FIELDS = ("spec_set", "starts", "optimizer", "loss", "seed", "draws")
MAX_STARTS = 10_000_000
MAX_DRAWS = 10_000
MAX_STEPS = 1_000_000


def _is_kind(v, kind) -> bool:
    if kind is bool:
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    if kind is float:
        return isinstance(v, (int, float))
    return isinstance(v, kind)


def _field_kinds() -> dict[str, tuple[type, bool, type | None]]:
    """{field: (base type, None allowed, element type of tuples)} from RunConfig's annotations."""
    names = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}
    kinds = {}
    for f in dataclasses.fields(RunConfig):
        parts = [x.strip() for x in str(f.type).split("|")]
        optional = "None" in parts
        base = names[[x for x in parts if x != "None"][0]]
        elem = None
        if base is tuple:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            elem = float if all(isinstance(x, float) for x in default) else str
        kinds[f.name] = (base, optional, elem)
    return kinds


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit in ("B", "kB") else f"{n:.1f} {unit}"
        n /= 1000.0


# Memory model, bytes, measured with ru_maxrss on the default grid (60 log N_H cells, 1201
# rest-frame energies) on CPU: the set-up peaks at ~1 GB with 2 draws; each spectral draw adds
# its [60 cells x 1201 energies] table and the temporaries of building it (3 copies, measured
# 1.6 MB/draw) and, with counts / CT constraints (modes a19, joint), the band-flux integrals
# of every survey (12 copies, measured 7.0 MB/draw); lm holds per start the residuals r [n]
# and the forward-mode Jacobian J [n x 15] with its temporaries (measured 36 kB/start for
# n = 89), adam/gd a few [15 + n] vectors; every start also gets output spectra on 241 energies.
SETUP_BYTES = 1.0e9
CUDA_CONTEXT_BYTES = 0.5e9


def estimate_memory(cfg: RunConfig, device: torch.device | str = "cpu") -> dict:
    """Rough peak memory of a run, bytes: {"host", "device", "draws", "starts", "setup"}.

    ``draws`` and ``starts`` are the parts that scale with --draws and --starts; on CPU
    ``device`` is 0 and everything counts as host memory. An estimate (within a factor ~1.5,
    on the safe side), for refusing runs that cannot fit, not for planning to the byte.
    """
    from .spectra.model import default_energy_grid

    device = torch.device(device)
    cell_table = Grid().lognh.size * default_energy_grid().numel() * 8  # one draw's [nN, nE] float64
    with_constraints = cfg.mode != "cxb"
    draws_host = cfg.draws * cell_table * 3  # the table and the temporaries of building it (always on CPU)
    draws_all = cfg.draws * cell_table * (12 if with_constraints else 3)
    n_res = 90 + (60 if cfg.mode in ("joint", "posterior") else 0)  # CXB points + prior (+ counts and CT points)
    vectors = 4 * (N_BLOCKS + n_res) + 4 * FINE_ENERGY.size
    per_start = 8 * (vectors + (3 * N_BLOCKS * n_res if cfg.optimizer == "lm" else 0))
    starts = cfg.starts * per_start + 200 * (cfg.steps or make_optimizer(cfg.optimizer, cfg.lr).default_steps)
    if device.type == "cuda":
        dev = CUDA_CONTEXT_BYTES + (draws_all - draws_host + cfg.draws * cell_table) + starts
        return {"host": SETUP_BYTES + draws_host, "device": dev, "draws": draws_all, "starts": starts,
                "setup": SETUP_BYTES}
    return {"host": SETUP_BYTES + draws_all + starts, "device": 0.0, "draws": draws_all, "starts": starts,
            "setup": SETUP_BYTES}


def available_memory(device: torch.device | str = "cpu") -> tuple[float | None, str]:
    """(bytes available, where that number comes from); (None, reason) when unknown.

    CUDA: free memory of the device (torch.cuda.mem_get_info). Host: MemAvailable of
    /proc/meminfo, lowered to the cgroup (container) limit minus its usage where one is set;
    elsewhere os.sysconf's available physical pages.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _ = torch.cuda.mem_get_info(device)
            return float(free), f"free on {device}"
        except Exception:  # no driver / not initialisable: resolve_device reports that
            return None, "unknown"
    avail, source = None, "unknown"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail, source = float(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
                    break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
            source = "available physical pages (sysconf)"
        except (ValueError, OSError, AttributeError):
            return None, "unknown"
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = float(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            if float(limit) - used < avail:
                avail, source = max(float(limit) - used, 0.0), "the container's memory limit (cgroup memory.max)"
    except (OSError, ValueError):
        pass
    return avail, source


def check_resources(cfg: RunConfig, device: torch.device | str = "cpu") -> dict:
    """Refuse, before any set-up, a run whose memory estimate exceeds what is available, or
    whose --starts / --draws exceed the sane bounds (MAX_STARTS, MAX_DRAWS). Returns the
    estimate (see :func:`estimate_memory`). Where the available memory is unknown only the
    bounds are checked."""
    device = torch.device(device)
    est = estimate_memory(cfg, device)
    too_many = cfg.starts > MAX_STARTS or cfg.draws > MAX_DRAWS
    for where, dev in [("host", torch.device("cpu"))] + ([("device", device)] if device.type == "cuda" else []):
        avail, source = available_memory(dev)
        need = est[where]
        if not too_many and (avail is None or need <= avail):
            continue
        mem = "memory" if where == "host" else f"{device} memory"
        parts = (f"(estimate: set-up {_fmt_bytes(est['setup'])}, spectral draws {_fmt_bytes(est['draws'])}, "
                 f"state of the starts {_fmt_bytes(est['starts'])})")
        have = f"{_fmt_bytes(avail)} is available ({source})" if avail is not None else "the available memory is unknown"
        if too_many:
            bound = (f"--starts {cfg.starts} is above the limit of {MAX_STARTS}" if cfg.starts > MAX_STARTS
                     else f"--draws {cfg.draws} is above the limit of {MAX_DRAWS}")
            raise PopsynthError(f"{bound} and the run would need about {_fmt_bytes(need)} of {mem} {parts}, "
                                f"while {have}",
                                "use fewer --starts or --draws (defaults 100 and 64; A19 used 100 starts)")
        what = f"--starts {cfg.starts} and --draws {cfg.draws} need about {_fmt_bytes(need)} of {mem} {parts}"
        fixed = estimate_memory(dataclasses.replace(cfg, starts=0, draws=0), device)[where]
        per_start = estimate_memory(dataclasses.replace(cfg, starts=1, draws=0), device)[where] - fixed
        per_draw = estimate_memory(dataclasses.replace(cfg, starts=0, draws=1), device)[where] - fixed
        fit_starts = int((avail - fixed - cfg.draws * per_draw) // per_start) if per_start > 0 else 0
        fit_draws = int((avail - fixed - cfg.starts * per_start) // per_draw) if per_draw > 0 else 0
        hints = ([f"--starts {fit_starts} or fewer (with --draws {cfg.draws})"] if fit_starts >= 1 else []) + \
                ([f"--draws {fit_draws} or fewer (with --starts {cfg.starts})"] if fit_draws >= 1 else [])
        fix = ("use fewer starts or draws: " + " or ".join(hints) + " fit here") if hints else \
            "use fewer --starts and --draws, or a machine with more memory"
        raise PopsynthError(f"{what}, but only {have}", fix)
    return est


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
    constraints: Constraints | None = None  # counts and CT fractions (None in --mode cxb)
    spectra_meta: dict = field(default_factory=dict)
    setup_seconds: float = 0.0

    def spectra_summary(self, cfg: "RunConfig") -> dict:
        """The spectral model of the run, for summary.json."""
        return {"model": cfg.spectral_model, "torus_table": cfg.torus_table,
                "components": [c["name"] for c in self.spectra_meta.get("components", [])],
                "n_draws": self.spectra_meta.get("n_draws"), "cache_key": self.spectra_meta.get("key")}


FINE_ENERGY = np.logspace(np.log10(0.3), np.log10(300.0), 241)  # keV


def block_counts(phi0: torch.Tensor, grid: Grid, zmax: float, cosmology: CosmologyParams = CosmologyParams()) -> torch.Tensor:
    """Number of AGN per block, all sky, from the first z node to ``zmax``: [15].

    N_k = 4 pi int dz dV_c/(dz dOmega) int_k phi0 dlogL dlogN_H, trapezoid in z over the nodes
    <= zmax (zmax must be a node). Used for CT fractions: N_CT / N_all is linear in the weights.
    """
    zsel = grid.z <= zmax + 1e-9
    if not np.isclose(grid.z[zsel][-1], zmax):
        raise PopsynthError(f"z = {zmax} is not a grid node", "use a z grid that contains it")
    from .grid import trapezoid_weights

    zz = grid.z[zsel]
    d = distance_tables(zz, cosmology, device=phi0.device)
    wz = as_tensor(trapezoid_weights(zz), phi0.device) * d["dvc_dz_dsr_mpc3"] * 4 * math.pi
    masks = grid.block_masks(phi0.device)
    dl, dn = as_tensor(grid.dlogl, phi0.device), as_tensor(grid.dlognh, phi0.device)
    per_cell = torch.einsum("zln,z,l,n->ln", phi0[zsel], wz, dl, dn)
    return torch.einsum("ln,kln->k", per_cell, masks)


def ct_fraction(weights: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Intrinsic CT fraction N(log N_H >= 24) / N(all) per start: weights [B, 15], counts [15] -> [B]."""
    return intrinsic_ct_fraction(weights, counts)


def build_problem(cfg: RunConfig, device: torch.device, log=print) -> Problem:
    t0 = time.time()
    if cfg.spectral_model != "transmitted":  # warns once (StaleTableWarning) when a shipped table is out of date,
        from .mc import check_shipped_tables  # also when the spectral table itself comes from the cache

        check_shipped_tables()
    grid = Grid()
    make_phi0 = STARTING_XLFS[cfg.xlf][0]
    phi0 = make_phi0(grid, cfg.absorption, device=device)
    phi1 = make_phi0(grid, cfg.absorption, l_moment=1, device=device)
    table = build_spectral_table(cfg.spec_set, grid.lognh_edges, n_draws=cfg.draws, seed=cfg.spectra_seed,
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
            for name, (make, label) in STARTING_XLFS.items():
                resp = block_response(phi1 if name == cfg.xlf else make(grid, cfg.absorption, l_moment=1, device=device),
                                      k, grid)
                pred = CXBModel(resp, e, gal(e).to(device))(torch.ones(1, N_BLOCKS, dtype=DTYPE, device=device))
                chi = chi2_by_dataset(pred, data, cfg.sys_floor)[0]
                literature[name] = {"label": label, **{n: float(chi[i]) for i, n in enumerate(data.names)},
                                    "total": float(chi.sum())}
    ct = {zmax: block_counts(phi0, grid, zmax) for zmax in (0.1, 1.0)}
    cons = None
    if cfg.mode != "cxb":
        cons = Constraints(grid, phi0, table, cfg.counts, cfg.use_ct, cfg.counts_weight, cfg.ct_weight, device=device)
    return Problem(grid, phi0, data, models[0], models[1], ct, literature, cons, table.meta, time.time() - t0)


def _check_finite(loss: torch.Tensor, step: int, saved_step: int | None) -> None:
    """PopsynthError if any start's loss is not finite; the message says what is on disk."""
    bad = ~torch.isfinite(loss)
    if bad.any():
        idx = torch.nonzero(bad)[:, 0][:5].tolist()
        if step == 0:
            raise PopsynthError(f"non-finite loss at the starting weights of start(s) {idx}",
                                "check --weight-prior, --sys-floor and the data tables; nothing was written")
        where = (f"the last finite state (step {saved_step}) is in the checkpoint" if saved_step is not None
                 else "no checkpoint was written")
        raise PopsynthError(f"non-finite loss at step {step} in start(s) {idx}",
                            f"lower --lr, or use --optimizer lm; {where}")


RESUME_SAFE = ("steps", "device", "progress")  # settings a resumed run may change


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
    check_state(ckpt["opt_state"], opt.state_spec(cfg.starts, N_BLOCKS), f"{src}: opt_state")
    check_state(ckpt["conv_state"], Convergence.state_spec(cfg.starts), f"{src}: conv_state")
    check_tensor(ckpt["w0"], (cfg.starts, N_BLOCKS), DTYPE, f"{src}: w0")
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
            raise PopsynthError(f"unknown counts table(s) {bad}", f"choose from {known}, or pass --counts none")
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
        w0 = initial_weights(cfg.starts, N_BLOCKS, cfg.seed, *cfg.init_range, device=device)
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
    bar = Progress(steps, f"fit set {cfg.spec_set}", enabled=cfg.progress)
    step = step0
    while step < steps and not bool(conv.stalled(conv_state).all()):
        new_state, loss = opt.step(state, residual_fn)
        if not torch.isfinite(loss).all():
            checkpoint(step, False)
            _check_finite(loss, step + 1, step)
        state = new_state
        step += 1
        conv_state = conv.update(conv_state, loss)
        history.append([step, float(loss.min()), float(loss.median())])
        bar.update(step, f"best loss {float(loss.min()):.4g}")
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
    why = ("the loss grew: --lr is too large for this problem" if grew
           else "the weights hardly moved: --lr is too small (or too large a damping) for this problem")
    return [f"no start lowered its loss by more than 0.1 % in {step} steps of --optimizer {opt.name} with --lr {opt.lr:g} "
            f"({why}); try --lr within {lo:g}-{hi:g} (default {opt.default_lr:g}) or --optimizer lm"]


def write_outputs(cfg: RunConfig, prob: Problem, w: torch.Tensor, step: int, steps: int, stalled: torch.Tensor,
                  wall: float, out: Path, warnings: list[str] | None = None) -> dict:
    """Evaluate all starts, pick the best, write the XLF, CXB table and summary.json."""
    data = prob.data
    pred = prob.model(w)
    cost = a19_cost(pred, data)
    chi2 = chi2_by_dataset(pred, data, cfg.sys_floor)
    chi2_tot = chi2.sum(-1)
    converged = cost <= A19_CONVERGED_COST
    pool = converged if bool(converged.any()) else torch.ones_like(converged)
    if cfg.mode == "a19" and cfg.select_chi2_max is not None:  # the constrained selection
        capped = pool & (chi2_tot <= cfg.select_chi2_max)
        if not bool(capped.any()):
            raise PopsynthError(f"no converged start has a CXB chi2 <= {cfg.select_chi2_max:g} (lowest "
                                f"{float(chi2_tot.min()):.1f})", "raise --select-chi2-max or drop it")
        pool = capped
    cons = prob.constraints
    cons_chi2 = cons.chi2(w) if cons is not None else {}
    cons_tot = cons.total(w) if cons is not None else torch.zeros_like(chi2_tot)
    if cfg.mode == "a19":  # A19 sec. 4: the converged start that best fits counts and CT fractions
        select_stat, select_rule = cons_tot, "lowest counts + CT-fraction chi2 among CXB-converged starts"
        if cfg.select_chi2_max is not None:
            select_rule += f" with CXB chi2 <= {cfg.select_chi2_max:g}"
    elif cfg.mode == "joint":
        select_stat = chi2_tot + cons_tot
        select_rule = "lowest CXB + counts + CT-fraction chi2 among CXB-converged starts"
    else:
        select_stat, select_rule = chi2_tot, "lowest CXB chi2 among converged starts"
    best = int(torch.argmin(torch.where(pool, select_stat, torch.full_like(select_stat, math.inf))))
    ctf = {z: ct_fraction(w, c) for z, c in prob.ct_blocks.items()}
    wb = w[best:best + 1]
    grid = prob.grid
    cube = apply_block_weights(prob.phi0, wb, grid)[0].cpu().numpy()
    n_pts = [int((data.dataset == i).sum()) for i in range(len(data.names))]
    fit_stats = {
        "chi2_cxb": {n: float(chi2[best, i]) for i, n in enumerate(data.names)},
        "n_points": dict(zip(data.names, n_pts)),
        "chi2_total": float(chi2_tot[best]),
        "dof": data.n - N_BLOCKS,
        "reduced_chi2_cxb": float(chi2_tot[best]) / (data.n - N_BLOCKS),
        "a19_cost": float(cost[best]),
    }
    if cons is not None:
        fit_stats["chi2_constraints"] = {n: float(v[best]) for n, v in cons_chi2.items()}
        fit_stats["n_points_constraints"] = {n: cons.n_points(n) for n in cons.names}
        fit_stats["chi2_constraints_total"] = float(cons_tot[best])
        fit_stats["ct_fractions_observed_vs_model"] = cons.ct_fractions(w[best:best + 1])
    spec = get_spectral_set(cfg.spec_set)
    attrs = {"spec_set": cfg.spec_set, "spec_set_description": spec.description, "spectral_set": spec.describe(),
             "cosmology": CosmologyParams().describe(), "weights": wb[0].tolist(), "block_names": block_names(),
             "fit_statistics": fit_stats, "config": cfg.to_dict(), "best_start": best, "selection": select_rule,
             "absorption_function": cfg.absorption, "xlf_start": f"{STARTING_XLFS[cfg.xlf][1]} x absorption function"}
    export_xlf_hdf5(out / "xlf_best.h5", cube, grid, attrs,
                    extra={"weights_all_starts": w.cpu().numpy(), "converged": converged.cpu().numpy(),
                           "a19_cost_all_starts": cost.cpu().numpy(), "chi2_all_starts": chi2_tot.cpu().numpy()})
    write_a19_layout(out / "xlf_best_a19.npy", cube, grid)
    fine = prob.fine
    cols = {"energy": fine.energy.cpu().numpy(), "total": fine(wb)[0].cpu().numpy()}
    by = fine.by_class(wb)[0]
    for c, name in enumerate(NH_CLASS_NAMES):
        cols[f"agn_{name}"] = by[c].cpu().numpy()
    cols["galaxies"] = fine.extra.cpu().numpy()
    if int(converged.sum()) >= 2:
        allc = fine(w[converged]).cpu().numpy()
        cols["total_p16"], cols["total_p84"] = np.percentile(allc, [16, 84], axis=0)
    write_cxb_table(out / "cxb_model.ecsv", cols, {
        "quantity": "E^2 dN/dE of the model CXB, best start; total = AGN classes + galaxies",
        "spec_set": cfg.spec_set, "galaxies": cfg.galaxies, "best_start": best, "popsynth_version": __version__,
        "p16_p84": "spread over converged starts" if "total_p16" in cols else "fewer than 2 converged starts"})

    def spread(x: torch.Tensor) -> dict:
        sel = x[converged] if bool(converged.any()) else x
        q = torch.quantile(sel, torch.tensor([0.16, 0.5, 0.84], dtype=sel.dtype, device=sel.device)).tolist()
        return {"median": q[1], "p16": q[0], "p84": q[2], "std": float(sel.std()) if sel.numel() > 1 else 0.0,
                "best_start": float(x[best]), "n": int(sel.numel())}

    summary = {
        "popsynth_version": __version__,
        "spec_set": cfg.spec_set,
        "n_starts": cfg.starts,
        "n_converged": int(converged.sum()),
        "convergence_criterion": f"A19 eq. B3 cost <= {A19_CONVERGED_COST}",
        "n_stalled": int(stalled.sum()),
        "steps_done": step,
        "steps_max": steps,
        "optimizer": cfg.optimizer,
        "loss": cfg.loss,
        "sys_floor": cfg.sys_floor,
        "weight_prior_dex": cfg.weight_prior,
        "seed": cfg.seed,
        "mode": cfg.mode,
        "best_start": best,
        "selection": select_rule,
        "best_weights": dict(zip(block_names(), wb[0].tolist())),
        **fit_stats,
        "ct_fraction_z0.1": spread(ctf[0.1]),
        "ct_fraction_z1.0": spread(ctf[1.0]),
        "xlf_start": cfg.xlf, "literature_rows": prob.literature,
        "wall_seconds": round(wall, 3),
        "setup_seconds": round(prob.setup_seconds, 3),
        "warnings": list(warnings or []),
        "spectra": prob.spectra_summary(cfg),
        "files": run_files(out),
    }
    write_json(out / "summary.json", summary)
    return summary


def format_table(s: dict) -> str:
    """A19 Table 5 style: chi^2 per CXB dataset for the best start, plus CT fractions.

    The reference column holds A19's numbers only where A19 gives them for this run's spectral
    set (A19 Table 5 and sec. 6 give them for spectral set 5), "-" elsewhere."""
    t5 = A19_TABLE5.get(s["spec_set"])
    ours = t5 is not None
    labels = {"chandra_cosmos": "Chandra COSMOS", "rxte": "RXTE", "swift_bat": "Swift-BAT"}
    ref_head = f"A19 set {s['spec_set']}" if ours else "A19"

    def ref(key, fmt=".2f"):
        x = t5.get(key) if ours else None
        return f"{x:>12{fmt}}" if x is not None else f"{'-':>12}"

    lines = [f"CXB fit, spectral set {s['spec_set']}: {s['n_converged']}/{s['n_starts']} starts converged "
             f"({s['convergence_criterion']}); best start {s['best_start']}",
             f"{'CXB constraint':<18}{'points':>8}{'chi2':>10}{ref_head:>12}"]
    for name, chi in s["chi2_cxb"].items():
        lines.append(f"{labels.get(name, name):<18}{s['n_points'][name]:>8}{chi:>10.2f}{ref(name)}")
    lines.append(f"{'Total':<18}{sum(s['n_points'].values()):>8}{s['chi2_total']:>10.2f}{ref('total')}")
    lines.append(f"{'Reduced chi2':<18}{s['dof']:>8}{s['reduced_chi2_cxb']:>10.2f}{ref('reduced')}")
    lines += format_literature_rows(s)
    if "chi2_constraints" in s:
        lines.append(f"selected start {s['best_start']} ({s['selection']})")
        lines.append(f"{'Counts / CT constraint':<44}{'points':>7}{'chi2':>10}")
        for name, chi in s["chi2_constraints"].items():
            lines.append(f"{name:<44}{s['n_points_constraints'][name]:>7}{chi:>10.2f}")
        lines.append(f"{'Total':<44}{sum(s['n_points_constraints'].values()):>7}{s['chi2_constraints_total']:>10.2f}")
        lines.append(f"{'Observed CT fraction':<34}{'band keV':>10}{'observed %':>18}{'model %':>9}")
        for c in s["ct_fractions_observed_vs_model"]:
            band = f"{c['band_keV'][0]:g}-{c['band_keV'][1]:g}"
            obs = f"{100 * c['observed']:.1f} +{100 * c['err_hi']:.1f}/-{100 * c['err_lo']:.1f}"
            lines.append(f"{c['survey']:<34}{band:>10}{obs:>18}{100 * c['model']:>9.1f}")
    for z, r in (("0.1", "50 +/- 9 %"), ("1.0", "56 +/- 7 %")):
        c = s[f"ct_fraction_z{z}"]
        lines.append(f"CT fraction to z={z}: {100 * c['median']:.1f} % (16-84 % over converged starts: {100 * c['p16']:.1f}-"
                     f"{100 * c['p84']:.1f} %, selected start {100 * c['best_start']:.1f} %; "
                     f"{'A19 set 5: ' + r if s['spec_set'] == 5 else 'A19: -'})")
    lines.append(f"wall time {s['wall_seconds']:.1f} s; outputs in {Path(s['files']['summary']).parent}")
    return "\n".join(lines)

"""The settings of a fitting run: :class:`RunConfig`, its checks and the registries of allowed names.

A RunConfig is what ``train.py`` builds from its flags and what a checkpoint stores; it is
reproducible from :meth:`RunConfig.to_dict`. :meth:`RunConfig.validate` is the one check of a
config for library callers; the command line uses the same name checks (:func:`check_choice`)
as argparse ``choices``. Error messages name the settings (RunConfig fields) in backticks;
:mod:`popsynth.cli` shows them as command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .constraints import DEFAULT_COUNTS
from .data.cxb import TRAINING_SETS
from .errors import PopsynthError

MODES = ("posterior", "a19", "joint", "cxb")

#: Energies of the output CXB table (cxb_model.ecsv), keV [241].
FINE_ENERGY = np.logspace(np.log10(0.3), np.log10(300.0), 241)


def _phi0_u14(grid, absorption, l_moment=0, device=None):
    from .xlf import build_phi0

    return build_phi0(grid, absorption, l_moment=l_moment, device=device)


def _phi0_a15(grid, absorption, l_moment=0, device=None):
    from .xlf_a15 import build_phi0_a15

    return build_phi0_a15(grid, absorption, l_moment=l_moment, device=device)


#: Starting XLFs (of all Compton-thin AGN, times the absorption function): name -> (cube builder, label).
STARTING_XLFS = {"u14": (_phi0_u14, "Ueda et al. 2014 LDDE"),
                 "a15": (_phi0_a15, "Aird et al. 2015 LADE (hard), with this run's absorption function")}

#: Fields whose value is a name from a registry: field -> what the name is (for messages).
CHOICE_FIELDS = {"spec_set": "spectral set", "optimizer": "optimizer", "loss": "loss", "galaxies": "galaxy model",
                 "absorption": "absorption function", "xlf": "starting XLF", "spectral_model": "spectral model",
                 "mode": "mode"}


def choices(field: str) -> tuple:
    """The allowed values of a name field (see :data:`CHOICE_FIELDS`), from the registries."""
    if field == "spec_set":
        from .spectra.sets import SPECTRAL_SETS

        return tuple(sorted(SPECTRAL_SETS))
    if field == "optimizer":
        from .fit import OPTIMIZERS

        return tuple(OPTIMIZERS)
    if field == "loss":
        from .fit import LOSSES

        return tuple(LOSSES)
    if field == "galaxies":
        from .galaxies import GALAXY_MODELS

        return tuple(GALAXY_MODELS)
    if field == "absorption":
        from .xlf import ABSORPTION_MODELS

        return tuple(ABSORPTION_MODELS)
    if field == "xlf":
        return tuple(STARTING_XLFS)
    if field == "spectral_model":
        from .spectra.registry import SPECTRAL_MODELS

        return tuple(SPECTRAL_MODELS)
    if field == "mode":
        return MODES
    raise KeyError(field)


def check_choice(field: str, value) -> None:
    """PopsynthError "unknown <what> '<value>'; use `field` a or b" unless ``value`` is allowed.

    The spectral set is checked by :func:`popsynth.spectra.sets.get_spectral_set` (which also
    accepts its number as a string)."""
    if field == "spec_set":
        from .spectra.sets import get_spectral_set

        get_spectral_set(value)
        return
    names = choices(field)
    if isinstance(value, str) and value in names:
        return
    raise PopsynthError(f"unknown {CHOICE_FIELDS[field]} '{value}'", f"use `{field}` {' or '.join(names)}")


class Choices:
    """The allowed values of a name field as an argparse ``choices`` container: iterating gives
    the names (for --help); ``value in Choices(field)`` raises the PopsynthError of
    :func:`check_choice` for a name not allowed, so the command line reports it in one line with
    the same words as :meth:`RunConfig.validate`."""

    def __init__(self, field: str):
        self.field = field

    def __iter__(self):
        return iter(str(c) for c in choices(self.field))

    def __contains__(self, value) -> bool:
        check_choice(self.field, value)
        return True


REQUIRED_FIELDS = ("spec_set", "starts", "optimizer", "loss", "seed", "draws")
MAX_STARTS = 10_000_000
MAX_DRAWS = 10_000
MAX_STEPS = 1_000_000
RESUME_SAFE = ("steps", "device", "progress")  # settings a resumed run may change


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

    @property
    def spectral_set(self):
        """The :class:`~popsynth.spectra.sets.SpectralSet` numbered ``spec_set`` (A19 Table 4), the one
        place a run resolves it; PopsynthError for an unknown number."""
        from .spectra.sets import get_spectral_set

        return get_spectral_set(self.spec_set)

    def validate(self) -> None:
        """Check every setting (types, ranges, names) without touching files or building anything.

        Raises PopsynthError naming the bad setting (the field, in backticks). Memory and the
        output folder are checked separately (:func:`popsynth.resources.check_resources`,
        :func:`popsynth.io.check_output_folder`) because they depend on the machine.
        """
        for name in ("starts", "draws", "seed", "spectra_seed", "checkpoint_every", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise PopsynthError(f"`{name}` must be an integer, got {v!r}", f"pass an integer `{name}`")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int)):
            raise PopsynthError(f"`steps` must be an integer, got {self.steps!r}", "pass an integer `steps`")
        for name in ("sys_floor", "weight_prior", "counts_weight", "ct_weight", "rtol"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise PopsynthError(f"`{name}` must be a finite number, got {v!r}", f"pass a finite `{name}`")
        self.spectral_set
        from .fit import make_optimizer

        make_optimizer(self.optimizer, self.lr)
        check_choice("loss", self.loss)
        if self.starts < 1:
            raise PopsynthError(f"`starts` must be >= 1, got {self.starts}", "pass a positive number of starts")
        if self.steps is not None and self.steps < 1:
            raise PopsynthError(f"`steps` must be >= 1, got {self.steps}", "pass a positive number of steps")
        if self.steps is not None and self.steps > MAX_STEPS:
            raise PopsynthError(f"`steps` must be <= {MAX_STEPS}, got {self.steps}",
                                "starts stop when they stall; lm needs tens of steps, gd some 10^4")
        if not (0 <= self.seed < 2 ** 63):
            raise PopsynthError(f"`seed` must be in 0 .. 2**63 - 1, got {self.seed}", "pass e.g. `seed` 0")
        if not (0 <= self.spectra_seed < 2 ** 63):
            raise PopsynthError(f"`spectra_seed` must be in 0 .. 2**63 - 1, got {self.spectra_seed}", "e.g. 0")
        if not (0 <= self.sys_floor < 1):
            raise PopsynthError(f"`sys_floor` must be a fraction in [0, 1), got {self.sys_floor}",
                                "e.g. `sys_floor` 0.03")
        if self.weight_prior < 0:
            raise PopsynthError(f"`weight_prior` must be >= 0 dex, got {self.weight_prior}",
                                "pass a width in dex, e.g. `weight_prior` 1, or 0 to switch the prior off")
        for name in ("counts_weight", "ct_weight"):
            if getattr(self, name) < 0:
                raise PopsynthError(f"`{name}` must be >= 0, got {getattr(self, name)}", f"pass e.g. `{name}` 1")
        for name in ("galaxies", "xlf", "absorption"):
            check_choice(name, getattr(self, name))
        try:
            lo, hi = (float(x) for x in self.init_range)
        except (TypeError, ValueError):
            raise PopsynthError(f"bad initial weight range {self.init_range!r}", "use (low, high) with 0 < low < high") from None
        if not (0 < lo < hi < math.inf):
            raise PopsynthError(f"bad initial weight range {self.init_range}", "use 0 < low < high")
        check_choice("spectral_model", self.spectral_model)
        if self.torus_table is not None and not Path(self.torus_table).is_file():
            raise PopsynthError(f"torus table '{self.torus_table}' not found",
                                "pass the path of an XSPEC atable FITS file (e.g. torus1006.fits)")
        check_choice("mode", self.mode)
        if self.mode == "joint" and not (self.counts or self.use_ct):
            raise PopsynthError("`mode` joint needs at least one counts or CT constraint",
                                "drop `counts` none / `use_ct=False`, or use `mode` cxb")
        if self.draws < 1:
            raise PopsynthError(f"`draws` must be >= 1, got {self.draws}", "pass a positive number of draws")
        for name, lo, hi in (("chains", 2, 64), ("warmup", 10, 100000), ("samples", 10, 1000000)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (lo <= v <= hi):
                raise PopsynthError(f"`{name}` must be an integer in {lo}..{hi}, got {v!r}",
                                    f"pass e.g. `{name}` {getattr(RunConfig, name)}")
        v = self.smooth_prior
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
            raise PopsynthError(f"`smooth_prior` must be a finite width in dex >= 0, got {v!r}",
                                "pass e.g. `smooth_prior` 0.5, or 0 for none")
        v = self.cxb_norm_sigma
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and 0 <= v < 1):
            raise PopsynthError(f"`cxb_norm_sigma` must be a fraction in [0, 1), got {v!r}",
                                "pass e.g. `cxb_norm_sigma` 0.1 (10 %), or 0 to fix each instrument's normalisation")
        v = self.select_chi2_max
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0)):
            raise PopsynthError(f"`select_chi2_max` must be a finite chi2 > 0, got {v!r}",
                                "pass e.g. `select_chi2_max` 74")
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

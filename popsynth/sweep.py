"""Sweeps: a grid of ``train.py`` runs, one Dask task per configuration, gathered into one table.

    popsynth sweep CONFIG.toml [--scheduler ADDRESS] [--workers N] [--out DIR]

``CONFIG.toml`` holds the options every run shares (``[fixed]``) and the grid (``[grid]``: a
list of values per option; every combination is one configuration), with optional sweep
settings (``[sweep]``: ``out``, ``workers``)::

    [sweep]
    out = "sweeps/spectral_sets"
    [fixed]
    mode = "joint"
    starts = 100
    [grid]
    spec_set = [1, 2, 3, 4, 5]
    spectral_model = ["a19", "transmitted"]

Keys are ``train.py`` options, spelt with ``_`` or ``-`` (``spec_set``, ``spectral-model``,
``no_ct``, ...), or other :class:`popsynth.run.RunConfig` fields (``spectra_seed``,
``datasets``, ...); ``out`` and ``resume`` are the sweep's own. Every key and value is checked,
and every configuration validated, before anything runs (:func:`load_sweep`).

Each configuration runs :func:`popsynth.run.run` in its own folder ``<out>/<name>``, the name
made of its grid options in RunConfig field order (:func:`folder_name`, e.g.
``spec_set-1__spectral_model-a19``). The folder holds the run's usual files, ``sweep_config.json``
(the settings it was started with) and ``sweep.log`` (its log). A sweep is resumable: a
configuration whose folder holds a finished ``summary.json`` is reused, not run again; one
interrupted after its first checkpoint resumes from it (an unreadable checkpoint restarts the
run cleanly). A configuration that fails is recorded with its error message; the others go on.

Results: ``<out>/sweep.ecsv`` (one row per configuration: its options, status, error, CXB chi2
per data set, counts and CT-fraction chi2, intrinsic CT fractions to z = 0.1 and 1 with their
16-84 % intervals, wall time and output folder; see :data:`COLUMN_DESCRIPTIONS`), rewritten
atomically after every finished configuration, and ``<out>/sweep.png``, a summary figure (needs
matplotlib). Dask distributed is needed (``pip install -e ".[sweep]"``); the default cluster is
a LocalCluster of ``--workers`` single-threaded workers, ``--scheduler`` joins an existing one
(see docs/sweep.md for SLURM/PBS with dask-jobqueue).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import socket
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PopsynthError

SWEEP_TABLES = ("sweep", "fixed", "grid")
"""The tables a sweep file may hold."""

SWEEP_SETTINGS = {"out": "output folder of the sweep (a string)", "workers": "LocalCluster workers (an integer >= 1)"}
"""Keys of the ``[sweep]`` table: key -> what it must be."""

RESERVED = {"out": "the sweep names each configuration's folder (set [sweep] out or --out)",
            "resume": "a sweep resumes interrupted configurations by itself"}
"""Run options a sweep file may not set, with the reason."""

INVERTED = {"no_ct": "use_ct", "quiet": "progress"}
"""train.py switches whose RunConfig field is the negation."""

#: Settings that do not change what a configuration computes (ignored when comparing a folder's
#: stored settings with the sweep's).
NOT_IDENTITY = ("out", "device", "progress")

CONFIG_FILE = "sweep_config.json"
LOG_FILE = "sweep.log"
TABLE_FILE = "sweep.ecsv"
FIGURE_FILE = "sweep.png"

COLUMN_DESCRIPTIONS = {
    "name": "configuration name = its output folder under the sweep folder",
    "status": "done (ran in this sweep), reused (finished before, not run again) or failed",
    "error": "one-line error of a failed configuration ('' otherwise)",
    "fit_point": "where the chi2 columns are evaluated: 'posterior median' (mode posterior: the posterior-median "
                 "prediction) or 'selected start' (modes a19, joint, cxb)",
    "chi2_cxb_total": "CXB chi2 summed over the data sets",
    "cxb_points": "number of CXB points",
    "chi2_counts": "number-count chi2 (sum over the counts tables; NaN without counts)",
    "chi2_ct": "observed CT-fraction chi2 (sum over the surveys; NaN without them)",
    "chi2_constraints_total": "counts + CT-fraction chi2",
    "constraints_points": "number of counts and CT-fraction points",
    "wall_seconds": "wall time of the run (from its summary.json; for a failed one, until it failed), s",
    "out": "output folder of the configuration",
}

_CT_STATS = ("median", "p16", "p84")
_CT_Z = ("0.1", "1.0")


# ---------------------------------------------------------------------------------------------
# The sweep file: keys, values, configurations


def option_fields() -> dict[str, str]:
    """{accepted key (underscore spelling): RunConfig field} for every key a sweep may set."""
    from .cli import FLAGS
    from .run import RunConfig

    keys = {dest: fld for dest, (_, fld) in FLAGS.items() if dest not in RESERVED}
    for f in dataclasses.fields(RunConfig):
        if f.name not in RESERVED and f.name not in keys:
            keys[f.name] = f.name
    return keys


def choices() -> dict[str, tuple]:
    """Allowed values of the options that take a name from a fixed list: {field: values}."""
    from .fit import LOSSES, OPTIMIZERS
    from .galaxies import GALAXY_MODELS
    from .run import MODES, STARTING_XLFS
    from .spectra.registry import SPECTRAL_MODELS
    from .spectra.sets import SPECTRAL_SETS
    from .xlf import ABSORPTION_MODELS

    return {"spec_set": tuple(sorted(SPECTRAL_SETS)), "mode": MODES, "optimizer": tuple(OPTIMIZERS),
            "loss": LOSSES, "galaxies": tuple(GALAXY_MODELS), "absorption": tuple(ABSORPTION_MODELS),
            "xlf": tuple(STARTING_XLFS), "spectral_model": SPECTRAL_MODELS}


def _kind_text(base: type, elem, optional: bool) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    text = f"a list of {elem.__name__ if elem is not float else 'numbers'}" if base is tuple else names[base]
    return text + (" (or leave the key out for the default)" if optional else "")


def _flag(key: str) -> str:
    from .cli import FLAGS

    return FLAGS[key][0] if key in FLAGS else key


def convert_value(key: str, value, where: str, base_dir: Path | None = None) -> tuple[str, object]:
    """One sweep-file value as (RunConfig field, value), checked for type and allowed names.

    ``key`` is in underscore spelling; ``where`` names the place for errors (e.g.
    "sweep.toml: [grid] spec_set"). Relative ``torus_table`` paths are taken relative to
    ``base_dir`` (the sweep file's folder). Raises PopsynthError naming the key, the value and
    the allowed values.
    """
    from .run import _field_kinds

    fields = option_fields()
    fld = fields[key]
    base, optional, elem = _field_kinds()[fld]
    allowed = choices().get(fld)
    shown = repr(value)[:80]
    if key in INVERTED:
        if not isinstance(value, bool):
            raise PopsynthError(f"{where} = {shown} must be true or false", f"write {key} = true or false")
        return fld, not value
    if fld == "spec_set":
        from .spectra.sets import get_spectral_set

        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise PopsynthError(f"{where} = {shown} is not a spectral set", f"allowed values: {list(allowed)}")
        try:
            return fld, get_spectral_set(value).number
        except PopsynthError:
            raise PopsynthError(f"{where} = {shown} is not a spectral set", f"allowed values: {list(allowed)}") from None
    if fld == "counts":
        from .cli import _to_config

        if isinstance(value, str):
            return fld, _to_config("counts", value)
        if isinstance(value, list) and all(isinstance(x, str) for x in value):
            return fld, tuple(value)
        raise PopsynthError(f"{where} = {shown} must be a list of counts-table names or 'none'",
                            'write e.g. counts = ["bat105_agn_differential_14_195keV"] or counts = "none"')
    ok = (isinstance(value, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool) if elem is float
                                          else isinstance(x, elem) for x in value)) if base is tuple else (
        isinstance(value, bool) if base is bool else
        not isinstance(value, bool) and isinstance(value, (int, float) if base is float else base))
    if not ok:
        raise PopsynthError(f"{where} = {shown} must be {_kind_text(base, elem, optional)}",
                            f"write a value like the default of train.py {_flag(key)}")
    if base is tuple:
        value = tuple(float(x) if elem is float else x for x in value)
    elif base is float:
        value = float(value)
    if allowed is not None and value not in allowed:
        raise PopsynthError(f"{where} = {shown} is not allowed", f"allowed values: {', '.join(map(str, allowed))}")
    if fld == "device":
        import torch

        try:
            torch.device(value.strip().lower() if value.strip().lower() != "auto" else "cpu")
        except (RuntimeError, ValueError):
            raise PopsynthError(f"{where} = {shown} is not a device", "allowed values: cpu, cuda, cuda:N, auto") from None
    if fld == "torus_table" and base_dir is not None and not Path(value).is_absolute():
        value = str((base_dir / value).resolve())
    return fld, value


def _normalise_key(key) -> str:
    return str(key).replace("-", "_")


def _unknown_key(where: str, key: str) -> PopsynthError:
    if key in RESERVED:
        return PopsynthError(f"{where}: '{key}' cannot be set per run", RESERVED[key])
    return PopsynthError(f"{where}: unknown option '{key}'",
                         f"allowed keys: {', '.join(sorted(option_fields()))} (train.py options, '-' or '_')")


@dataclass
class Configuration:
    """One point of the grid: its name (= folder name), its grid options {key: value as written
    in the sweep file} and the full :class:`popsynth.run.RunConfig` (``out`` set to the folder)."""

    name: str
    options: dict
    config: object  # RunConfig

    @property
    def folder(self) -> Path:
        return Path(self.config.out)


@dataclass
class Sweep:
    """A parsed and checked sweep file. Build it with :func:`load_sweep` or :func:`parse_sweep`.

    Attributes: ``source`` (file name, for messages), ``fixed`` ({field: value}), ``grid``
    ({key: [values]} in file order, keys in underscore spelling), ``grid_fields`` ({key: field}),
    ``out`` and ``workers`` from ``[sweep]`` (None when absent), ``base_dir`` (folder of the file).
    """

    source: str
    fixed: dict
    grid: dict
    grid_fields: dict
    out: str | None = None
    workers: int | None = None
    base_dir: Path | None = None
    _fixed_keys: dict = field(default_factory=dict, repr=False)

    def configurations(self, out) -> list[Configuration]:
        """Every combination of the grid (the first key varies slowest) as a :class:`Configuration`
        with its folder under ``out``. Raises PopsynthError naming the configuration and the
        problem when one is invalid, or when two configurations would share a folder name."""
        from .cli import A19_PROCEDURE
        from .run import RunConfig

        keys = list(self.grid)
        combos = list(itertools.product(*(self.grid[k] for k in keys))) if keys else [()]
        out = Path(out)
        result, seen = [], {}
        given_fixed = set(self.fixed)
        for combo in combos:
            options = dict(zip(keys, combo))
            fields = {"progress": False, **self.fixed}
            given = set(given_fixed)
            for k, v in options.items():
                fld, val = convert_value(k, v, f"{self.source}: [grid] {k}", self.base_dir)
                fields[fld] = val
                given.add(fld)
            if fields.get("mode") == "a19":  # A19's procedure as written, as train.py --mode a19
                for k, v in A19_PROCEDURE.items():
                    if k not in given:
                        fields[k] = v
            name = folder_name({self.grid_fields[k]: fields[self.grid_fields[k]] for k in keys})
            fields["out"] = str(out / name)
            cfg = RunConfig(**fields)
            label = ", ".join(f"{k}={v!r}" for k, v in options.items()) or "the fixed options"
            try:
                cfg.validate()
                _check_bounds(cfg)
            except PopsynthError as err:
                raise PopsynthError(f"{self.source}: configuration {label}: {err.what}", err.fix) from None
            if name in seen:
                raise PopsynthError(f"{self.source}: configurations {seen[name]} and {label} share the folder name "
                                    f"'{name}'", "make the values differ in letters, digits, '.', '+' or '-' "
                                                 "(other characters become '_')")
            seen[name] = label
            result.append(Configuration(name, options, cfg))
        return result


def _check_bounds(cfg) -> None:
    """The machine-independent bounds of a run (MAX_STARTS, MAX_DRAWS); the memory a run needs
    is checked by the worker that runs it (workers may be other machines)."""
    from .run import MAX_DRAWS, MAX_STARTS

    if cfg.starts > MAX_STARTS:
        raise PopsynthError(f"--starts {cfg.starts} is above the limit of {MAX_STARTS}", "use fewer starts")
    if cfg.draws > MAX_DRAWS:
        raise PopsynthError(f"--draws {cfg.draws} is above the limit of {MAX_DRAWS}", "use fewer draws (default 64)")


def _parse_toml(path: Path) -> dict:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise PopsynthError("reading a sweep file on Python 3.10 needs the tomli package",
                                'pip install "tomli>=1.1" (Python 3.11 has it built in)') from None
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise PopsynthError(f"sweep file {path} not found", "pass the path of a TOML file (see examples/)") from None
    except OSError as exc:
        raise PopsynthError(f"sweep file {path} cannot be read ({exc.strerror})", "check the path and its permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise PopsynthError(f"sweep file {path} is not valid TOML ({exc})", "fix the syntax (https://toml.io)") from None


def load_sweep(path) -> Sweep:
    """Read and check a sweep file (TOML): see :func:`parse_sweep`."""
    path = Path(path)
    return parse_sweep(_parse_toml(path), source=path.name, base_dir=path.resolve().parent)


def parse_sweep(doc: dict, source: str = "sweep", base_dir: Path | None = None) -> Sweep:
    """Check a sweep document ({"sweep": {...}, "fixed": {...}, "grid": {...}}) key by key.

    Every key must be a train.py option or RunConfig field (not ``out`` or ``resume``), every
    grid entry a non-empty list of distinct values, every value of the option's type and
    among its allowed values; an option may not be both fixed and in the grid. Raises
    PopsynthError naming the table, the key and (for values) the allowed ones. The
    combinations themselves are validated by :meth:`Sweep.configurations`.
    """
    if not isinstance(doc, dict):
        raise PopsynthError(f"{source} must hold TOML tables", "see examples/sweep_spectral_sets.toml")
    bad = [k for k in doc if k not in SWEEP_TABLES]
    if bad:
        hint = " (run options go in [fixed] or [grid])" if _normalise_key(bad[0]) in option_fields() else ""
        raise PopsynthError(f"{source}: unknown table or key '{bad[0]}'{hint}",
                            f"a sweep file holds the tables {', '.join(f'[{t}]' for t in SWEEP_TABLES)}")
    for t in SWEEP_TABLES:
        if t in doc and not isinstance(doc[t], dict):
            raise PopsynthError(f"{source}: '{t}' must be a table", f"write [{t}] on a line of its own, keys below it")
    settings = doc.get("sweep", {})
    for k, v in settings.items():
        if k not in SWEEP_SETTINGS:
            raise PopsynthError(f"{source}: unknown key '{k}' in [sweep]", f"allowed keys: {', '.join(SWEEP_SETTINGS)}")
    out = settings.get("out")
    if out is not None and not (isinstance(out, str) and out.strip()):
        raise PopsynthError(f"{source}: [sweep] out = {out!r} must be {SWEEP_SETTINGS['out']}", 'write e.g. out = "sweeps/mine"')
    workers = settings.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise PopsynthError(f"{source}: [sweep] workers = {workers!r} must be {SWEEP_SETTINGS['workers']}",
                            "write e.g. workers = 2")
    fields = option_fields()
    fixed, fixed_keys = {}, {}
    for raw, value in doc.get("fixed", {}).items():
        key = _normalise_key(raw)
        if key not in fields:
            raise _unknown_key(f"{source}: [fixed]", key)
        fld, val = convert_value(key, value, f"{source}: [fixed] {key}", base_dir)
        if fld in fixed:
            raise PopsynthError(f"{source}: [fixed] sets {fld} twice ('{fixed_keys[fld]}' and '{raw}')", "keep one of them")
        fixed[fld], fixed_keys[fld] = val, raw
    grid, grid_fields = {}, {}
    for raw, values in doc.get("grid", {}).items():
        key = _normalise_key(raw)
        where = f"{source}: [grid] {key}"
        if key not in fields:
            raise _unknown_key(f"{source}: [grid]", key)
        fld = fields[key]
        if fld in fixed:
            raise PopsynthError(f"{where} is also in [fixed] ('{fixed_keys[fld]}')", "keep it in one of the two tables")
        if fld in grid_fields.values():
            raise PopsynthError(f"{where}: the grid sets {fld} twice", "keep one of the keys")
        if not isinstance(values, list) or not values:
            raise PopsynthError(f"{where} must be a non-empty list of values", f"write e.g. {key} = [{_example(fld)}]")
        converted = [convert_value(key, v, where, base_dir)[1] for v in values]
        for i, c in enumerate(converted):
            if c in converted[:i]:
                raise PopsynthError(f"{where} lists the value {values[i]!r} twice", "list each value once")
        grid[key], grid_fields[key] = list(values), fld
    return Sweep(source, fixed, grid, grid_fields, out, workers, base_dir, fixed_keys)


def _example(fld: str) -> str:
    ex = {"spec_set": "1, 2, 3", "seed": "0, 1, 2", "spectral_model": '"a19", "transmitted"', "mode": '"a19", "joint"'}
    return ex.get(fld, "...")


def _name_part(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value) if value != int(value) or abs(value) >= 1e16 else str(int(value))
    elif isinstance(value, (tuple, list)):
        text = "+".join(_name_part(v) for v in value) if value else "none"
    elif value is None:
        text = "none"
    elif isinstance(value, str) and ("/" in value or os.sep in value):
        text = Path(value).stem
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def folder_name(options: dict) -> str:
    """The folder name of a configuration from its grid options {RunConfig field: value}.

    Fields in RunConfig order (so the name does not depend on the order of the file), each as
    ``field-value`` joined by ``__``; values as written (floats without trailing zeros, tuples
    joined by '+', paths by their file stem), characters other than letters, digits, '.', '+'
    and '-' replaced by '_'. A sweep without a grid has the one configuration ``run``.
    """
    from .run import RunConfig

    order = [f.name for f in dataclasses.fields(RunConfig)]
    parts = [f"{k}-{_name_part(options[k])}" for k in sorted(options, key=order.index)]
    return "__".join(parts) or "run"


# ---------------------------------------------------------------------------------------------
# Folder states and the task


def identity(cfg) -> dict:
    """The settings that define what a configuration computes (RunConfig.to_dict() without
    :data:`NOT_IDENTITY`), as JSON-compatible values."""
    d = cfg.to_dict()
    return {k: v for k, v in d.items() if k not in NOT_IDENTITY}


def finished_summary(folder) -> dict | None:
    """The summary.json of a finished run in ``folder``, or None (absent or unreadable: the run
    writes it last, atomically, so a readable one means the run finished)."""
    p = Path(folder) / "summary.json"
    try:
        s = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return s if isinstance(s, dict) and "mode" in s else None


def folder_state(conf: Configuration) -> str:
    """"new", "finished" or "unfinished" for a configuration's folder.

    Raises PopsynthError when the folder holds a run of other settings (its sweep_config.json
    differs: the fixed options changed) or files that no sweep wrote."""
    folder = conf.folder
    if not folder.exists():
        return "new"
    if not folder.is_dir():
        raise PopsynthError(f"{folder} is a file, not a configuration folder", "remove it or use another --out")
    stored_path = folder / CONFIG_FILE
    if not stored_path.exists():
        if any(p.name not in (".popsynth.lock",) for p in folder.iterdir()):
            raise PopsynthError(f"{folder} holds files that popsynth sweep did not write (no {CONFIG_FILE})",
                                "use another --out, or move that folder away")
        return "new"
    try:
        stored = json.loads(stored_path.read_text())
    except (OSError, ValueError):
        return "unfinished"  # torn by a crash before the atomic write existed: start it again
    mine = json.loads(json.dumps(identity(conf.config)))
    diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
    if diff:
        shown = ", ".join(f"{k} {stored.get(k)!r} -> {mine.get(k)!r}" for k in diff[:4])
        raise PopsynthError(f"{folder} holds a run of other settings ({shown})",
                            "use another --out for the changed sweep, or delete that folder to run it again")
    return "finished" if finished_summary(folder) is not None else "unfinished"


def _resumable(cfg) -> dict:
    """The settings a checkpoint must share with a configuration to be resumed for it (all but
    out and the settings a resume may change: steps, device, progress)."""
    from .run import RESUME_SAFE

    return {k: v for k, v in identity(cfg).items() if k not in RESUME_SAFE}


def run_configuration(config: dict, torch_threads: int = 1) -> dict:
    """The Dask task: run one configuration in its folder ``config["out"]``; never raises.

    ``config`` is a RunConfig.to_dict(). Writes sweep_config.json first, then runs (or resumes
    an interrupted run from its checkpoint, with this configuration's steps, device and
    progress; an unreadable checkpoint or one of other settings is started again), logging to
    sweep.log. ``torch.set_num_threads(torch_threads)`` first,
    so that workers do not fight over the cores.

    Returns {"status": "done" | "failed", "error": one line or "", "seconds": wall time of the
    task, "summary": the summary dict or None, "host": the worker's host name, "resumed": bool}.
    """
    import torch

    t0 = time.time()
    result = {"status": "failed", "error": "", "seconds": 0.0, "summary": None, "host": socket.gethostname(),
              "resumed": False}
    try:
        from .io import write_json
        from .run import RESUME_SAFE, RunConfig, load_resume, run

        if torch_threads:
            torch.set_num_threads(int(torch_threads))
        cfg = RunConfig.from_dict(config, source="sweep configuration")
        folder = Path(cfg.out)
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / CONFIG_FILE, identity(cfg))
        with open(folder / LOG_FILE, "a") as fh:
            def log(*args):
                print(*args, file=fh, flush=True)

            def warn(msg):
                print(f"warning: {msg}", file=fh, flush=True)

            log(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} on {result['host']} (pid {os.getpid()})")
            resume = None
            if (folder / "checkpoint.pt").exists():
                try:
                    _, stored, _ = load_resume(folder)
                    if _resumable(stored) == _resumable(cfg):
                        resume = str(folder)
                    else:
                        log("the checkpoint holds other settings: starting again")
                except PopsynthError as err:
                    log(f"the checkpoint cannot be resumed ({err}): starting again")
            try:
                if resume:
                    log(f"resuming from {folder / 'checkpoint.pt'}")
                    result["resumed"] = True
                    summary = run(RunConfig(), resume=resume, log=log, warn=warn,
                                  overrides={k: getattr(cfg, k) for k in RESUME_SAFE})
                else:
                    summary = run(cfg, log=log, warn=warn)
            except Exception:
                log(traceback.format_exc().rstrip())
                raise
            log(f"finished in {time.time() - t0:.1f} s")
        result.update(status="done", summary=summary)
    except Exception as exc:  # recorded in the table; the sweep goes on
        result["error"] = one_line_error(exc)
    except KeyboardInterrupt as exc:  # a RunInterrupted in a thread worker: report, do not kill the worker
        result["error"] = f"interrupted ({exc})"
    result["seconds"] = time.time() - t0
    return result


def one_line_error(exc: BaseException) -> str:
    """``exc`` as one line: the message of a PopsynthError, else "Type: message"."""
    text = str(exc) if isinstance(exc, PopsynthError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())[:500]


# ---------------------------------------------------------------------------------------------
# The table


def summary_row(summary: dict | None, datasets=None) -> dict:
    """The numeric columns of one configuration from its summary.json (NaN where absent).

    Posterior runs: chi2 per data set and totals of the posterior-median prediction
    (``chi2_at_median``, or ``neg2_loglike_at_median`` in summaries of older versions;
    ``cxb_chi2_at_median``, ``constraints_chi2_at_median``); runs
    of modes a19, joint and cxb: chi2 of the selected start (``chi2_cxb``, ``chi2_total``,
    ``chi2_constraints``). CT fractions: median, p16, p84 of ``ct_fraction_z0.1`` and
    ``ct_fraction_z1.0`` (posterior samples, or converged starts). ``datasets``: the CXB data
    set names (default: the training sets).
    """
    from .data.cxb import TRAINING_SETS

    datasets = tuple(datasets or TRAINING_SETS)
    nan = math.nan
    row = {f"chi2_cxb_{d}": nan for d in datasets}
    row.update(chi2_cxb_total=nan, cxb_points=-1, chi2_counts=nan, chi2_ct=nan, chi2_constraints_total=nan,
               constraints_points=-1, fit_point="")
    for z in _CT_Z:
        for q in _CT_STATS:
            row[f"ct_fraction_z{z}_{q}"] = nan
    if not summary:
        return row
    if summary.get("mode") == "posterior":
        per = dict(summary.get("chi2_at_median", summary.get("neg2_loglike_at_median", {})))
        cxb = {d: per.pop(d) for d in list(per) if d in datasets}
        cons = per
        row.update(chi2_cxb_total=summary.get("cxb_chi2_at_median", nan), cxb_points=summary.get("cxb_points", -1),
                   constraints_points=summary.get("constraints_points", -1), fit_point="posterior median")
        cons_total = summary.get("constraints_chi2_at_median", nan)
    else:
        cxb = dict(summary.get("chi2_cxb", {}))
        cons = dict(summary.get("chi2_constraints", {}))
        row.update(chi2_cxb_total=summary.get("chi2_total", nan), cxb_points=sum(summary.get("n_points", {}).values()),
                   fit_point="selected start")
        if "n_points_constraints" in summary:
            row["constraints_points"] = sum(summary["n_points_constraints"].values())
        cons_total = summary.get("chi2_constraints_total", nan)
    for d, v in cxb.items():
        row[f"chi2_cxb_{d}"] = float(v)
    counts = [v for k, v in cons.items() if not k.startswith("ct:")]
    ct = [v for k, v in cons.items() if k.startswith("ct:")]
    row["chi2_counts"] = float(sum(counts)) if counts else nan
    row["chi2_ct"] = float(sum(ct)) if ct else nan
    row["chi2_constraints_total"] = float(cons_total) if cons else nan
    for z in _CT_Z:
        c = summary.get(f"ct_fraction_z{z}", {})
        for q in _CT_STATS:
            row[f"ct_fraction_z{z}_{q}"] = float(c.get(q, nan))
    return row


def _option_value(v):
    if isinstance(v, tuple):
        return ",".join(map(str, v)) if v else "none"
    return "" if v is None else v


def make_row(conf: Configuration, status: str, summary: dict | None = None, error: str = "",
             seconds: float = math.nan, grid_fields=()) -> dict:
    """One table row: name, grid options (RunConfig values), status, error, the numeric columns
    of :func:`summary_row`, wall time and output folder."""
    row = {"name": conf.name}
    for fld in grid_fields:
        row[fld] = _option_value(getattr(conf.config, fld))
    row.update(status=status, error=error)
    row.update(summary_row(summary, conf.config.datasets))
    wall = summary.get("wall_seconds") if summary else None
    row["wall_seconds"] = float(wall) if wall is not None else float(seconds)
    row["out"] = str(conf.folder)
    return row


def _json_safe(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def build_table(rows: list[dict], meta: dict | None = None):
    """An astropy Table of the rows (same keys in every row), with column descriptions and
    ``meta`` (JSON-compatible)."""
    from astropy.table import Table

    names = list(rows[0])
    t = Table(rows=[[r[k] for k in names] for r in rows], names=names)
    for name in names:
        desc = COLUMN_DESCRIPTIONS.get(name)
        if desc is None and name.startswith("chi2_cxb_"):
            desc = f"CXB chi2 of the data set {name[len('chi2_cxb_'):]}"
        if desc is None and name.startswith("ct_fraction_z"):
            z, q = name[len("ct_fraction_z"):].rsplit("_", 1)
            desc = f"intrinsic CT fraction of all AGN to z = {z}, {q} (posterior samples or converged starts)"
        if desc is None:
            desc = f"grid option {name} (RunConfig field; train.py {_flag(name)})"
        t[name].description = desc
        if name == "wall_seconds":
            t[name].unit = "s"
    t.meta.update(_json_safe(meta or {}))
    return t


def write_table(table, path) -> None:
    """Write the sweep table as ECSV, atomically."""
    from .io.ecsv import write_ecsv

    write_ecsv(Path(path), table)


def read_table(path):
    """Read a sweep table (``sweep.ecsv``) back as an astropy Table; PopsynthError when it is
    missing or not a readable ECSV table."""
    from .io.ecsv import read_ecsv

    return read_ecsv(Path(path), label="sweep table", fix="re-run popsynth sweep to rewrite it",
                     missing_fix="run popsynth sweep first").table


def plot_sweep(table, path) -> Path | None:
    """Summary figure of a sweep table: chi2 of the CXB and of counts + CT fractions per
    configuration (top), intrinsic CT fractions to z = 0.1 and 1 with 16-84 % intervals
    (bottom); failed configurations marked. Written atomically as PNG; returns the path, or
    None when matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    import numpy as np

    from .io import atomic_write

    n = len(table)
    x = np.arange(n)
    fig = Figure(figsize=(max(6.0, 0.5 * n + 2.5), 7.0), layout="constrained")
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    failed = np.array([s == "failed" for s in table["status"]])
    for col, marker, label in (("chi2_cxb_total", "o", "CXB"), ("chi2_constraints_total", "s", "counts + CT fractions")):
        y = np.asarray(table[col], dtype=float)
        if np.isfinite(y).any():
            ax1.plot(x, y, marker, label=label, ls="none")
    points = {str(p) for p, st in zip(table["fit_point"], table["status"]) if st in ("done", "reused")}
    ax1.set_ylabel({"selected start": "chi2 of the selected start",
                    "posterior median": "chi2 at the posterior median"}.get(
        points.pop() if len(points) == 1 else "", "chi2 (selected start, or posterior median)"))
    if np.isfinite(np.asarray(table["chi2_cxb_total"], dtype=float)).any():
        ax1.set_yscale("log")
    for i in np.nonzero(failed)[0]:
        for ax in (ax1, ax2):
            ax.axvspan(i - 0.4, i + 0.4, color="0.85", zorder=0)
        ax2.text(i, 0.5, "failed", rotation=90, ha="center", va="center", transform=ax2.get_xaxis_transform())
    for k, (z, color) in enumerate(zip(_CT_Z, ("C0", "C3"))):
        med = np.asarray(table[f"ct_fraction_z{z}_median"], dtype=float)
        lo = med - np.asarray(table[f"ct_fraction_z{z}_p16"], dtype=float)
        hi = np.asarray(table[f"ct_fraction_z{z}_p84"], dtype=float) - med
        ok = np.isfinite(med)
        if ok.any():
            ax2.errorbar(x[ok] + (k - 0.5) * 0.2, med[ok], yerr=[lo[ok], hi[ok]], fmt="o", color=color, capsize=2,
                         label=f"to z = {z}")
    ax2.set_ylabel("intrinsic CT fraction (16-84 %)")
    ax2.set_ylim(0, 1)
    ax2.set_xticks(x)
    ax2.set_xticklabels([str(nm).replace("__", "\n") for nm in table["name"]], fontsize=7, rotation=90)
    for ax in (ax1, ax2):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax1.set_title(f"popsynth sweep: {n} configurations")
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    return path


# ---------------------------------------------------------------------------------------------
# Running a sweep


@dataclass
class SweepResult:
    """What :func:`run_sweep` did: the table (astropy), its path, the figure path (None when
    not drawn), how many configurations ran, were reused and failed, and the wall time, s."""

    table: object
    table_path: Path
    figure_path: Path | None
    n_run: int
    n_reused: int
    n_failed: int
    seconds: float


@contextlib.contextmanager
def _glibc_malloc_defaults():
    """Start a LocalCluster's workers without MALLOC_TRIM_THRESHOLD_. Dask's nannies set it
    (65536) for their workers, and in this process's environment: setting it turns off glibc's
    dynamic mmap threshold, so every MB-sized tensor of the photon loop is a fresh mmap, and a
    configuration runs ~3x slower (1.4 s instead of 0.48 s measured here)."""
    import dask
    import distributed  # noqa: F401 - its config defaults, before the override below

    saved = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            yield
    finally:
        if saved is not None:
            os.environ["MALLOC_TRIM_THRESHOLD_"] = saved


def _client(scheduler: str | None, workers: int):
    """(client, cluster or None) for an existing scheduler or a new LocalCluster of ``workers``
    single-threaded worker processes.

    Processes, not threads: the Levenberg-Marquardt fit takes forward-mode derivatives
    (torch.func.jacfwd), whose dual levels are global to a process, so two fits in threads of
    one process break each other."""
    try:
        import logging

        from distributed import Client, LocalCluster
    except ImportError:
        raise PopsynthError("popsynth sweep needs Dask distributed", 'pip install -e ".[sweep]" '
                            '(or pip install "dask[distributed]")') from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError, ValueError) as exc:
            raise PopsynthError(f"cannot reach the Dask scheduler at {scheduler} ({one_line_error(exc)})",
                                "start it first (dask scheduler, or a dask-jobqueue cluster: docs/sweep.md), "
                                "or drop --scheduler for a local cluster") from None
    with _glibc_malloc_defaults():  # workers without Dask's MALLOC_TRIM_THRESHOLD_ (see there)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
    return Client(cluster), cluster


def _check_before_running(confs: list[Configuration], remote: bool) -> None:
    """Data tables of every distinct constraint choice, and (local clusters) the devices."""
    from ._tensor import resolve_device
    from .run import check_data

    seen = set()
    for c in confs:
        cfg = c.config
        key = (cfg.mode == "cxb", cfg.counts, cfg.use_ct, cfg.datasets)
        if key not in seen:
            seen.add(key)
            try:
                check_data(cfg)
            except PopsynthError as err:
                raise PopsynthError(f"configuration {c.name}: {err.what}", err.fix) from None
        if not remote:
            resolve_device(cfg.device)


def run_sweep(sweep: Sweep, out=None, workers: int | None = None, scheduler: str | None = None,
              torch_threads: int = 1, figure: bool = True, log=print) -> SweepResult:
    """Run every configuration of ``sweep`` not finished yet, one Dask task each, and gather the table.

    Args:
      sweep: from :func:`load_sweep`.
      out: sweep folder (default: the file's [sweep] out, else sweeps/<file stem>).
      workers: LocalCluster workers (default: [sweep] workers, else 2); ignored with ``scheduler``.
      scheduler: address of an existing Dask scheduler (e.g. "tcp://10.0.0.1:8786"), or None
        for a new LocalCluster.
      torch_threads: torch threads per task (each worker runs one task at a time).
      figure: draw sweep.png (skipped with a note when matplotlib is missing).
      log: where progress lines go.
    Everything is checked before the first task (settings, data tables, devices, folders).
    Writes ``<out>/sweep.ecsv`` after every finished configuration and ``<out>/sweep.png`` at
    the end. Raises PopsynthError for bad input; a configuration that fails is a row with
    status "failed". On Ctrl-C the table holds what finished (the rest "pending") and
    KeyboardInterrupt propagates.
    """
    from . import __version__
    from .io import check_output_folder

    t0 = time.time()
    out = Path(out or sweep.out or Path("sweeps") / Path(sweep.source).stem)
    workers = workers if workers is not None else (sweep.workers or 2)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PopsynthError(f"--workers must be an integer >= 1, got {workers!r}", "pass e.g. --workers 2")
    confs = sweep.configurations(out)
    check_output_folder(out)
    _check_before_running(confs, remote=scheduler is not None)
    states = [folder_state(c) for c in confs]
    grid_fields = [sweep.grid_fields[k] for k in sweep.grid]
    meta = {"popsynth_version": __version__, "sweep_file": sweep.source, "fixed": sweep.fixed, "grid": sweep.grid,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "cluster": scheduler or f"LocalCluster({workers} worker processes x 1 thread)"}
    rows = []
    for c, state in zip(confs, states):
        if state == "finished":
            rows.append(make_row(c, "reused", finished_summary(c.folder), grid_fields=grid_fields))
        else:
            rows.append(make_row(c, "pending", grid_fields=grid_fields))
    todo = [i for i, s in enumerate(states) if s != "finished"]
    client, cluster = _client(scheduler, workers) if todo else (None, None)
    table_path = out / TABLE_FILE
    n_failed = 0
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_table(build_table(rows, meta), table_path)
        log(f"sweep {sweep.source}: {len(confs)} configurations, {len(confs) - len(todo)} finished before, "
            f"{len(todo)} to run, in {out}")
        if todo:
            from distributed import as_completed

            token = uuid.uuid4().hex[:8]
            futures = client.map(run_configuration, [confs[i].config.to_dict() for i in todo],
                                 torch_threads=torch_threads, key=[f"popsynth-{confs[i].name}-{token}" for i in todo],
                                 pure=False)
            index = {f.key: i for f, i in zip(futures, todo)}
            for k, fut in enumerate(as_completed(futures), 1):
                i = index[fut.key]
                try:
                    res = fut.result()
                except Exception as exc:  # the worker died (KilledWorker) or the task could not run
                    res = {"status": "failed", "error": one_line_error(exc), "seconds": math.nan, "summary": None}
                fut.release()
                rows[i] = make_row(confs[i], res["status"], res.get("summary"), res["error"], res["seconds"],
                                   grid_fields=grid_fields)
                write_table(build_table(rows, meta), table_path)
                n_failed += res["status"] == "failed"
                r = rows[i]
                what = (f"failed: {res['error']}" if res["status"] == "failed" else
                        f"done in {r['wall_seconds']:.1f} s{' (resumed)' if res.get('resumed') else ''}: "
                        f"CXB chi2 {r['chi2_cxb_total']:.1f}, counts+CT chi2 {r['chi2_constraints_total']:.1f}, "
                        f"CT fraction to z=0.1 {r['ct_fraction_z0.1_median']:.3f}")
                log(f"[{k}/{len(todo)}] {confs[i].name}: {what}")
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    table = build_table(rows, meta)
    write_table(table, table_path)
    fig_path = None
    if figure:
        fig_path = plot_sweep(table, out / FIGURE_FILE)
        if fig_path is None:
            log('note: matplotlib is not installed, so no sweep.png; pip install -e ".[plots]" for the figure')
    return SweepResult(table, table_path, fig_path, len(todo), len(confs) - len(todo), n_failed, time.time() - t0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="popsynth sweep",
        description="Run a grid of train.py configurations on Dask (one task each) and gather one table "
                    "(sweep.ecsv) and a figure (sweep.png). Finished configurations are reused, interrupted "
                    "ones resume, failed ones are recorded.",
        epilog="example: popsynth sweep examples/sweep_spectral_sets.toml --workers 2\n"
               "file format, clusters (SLURM/PBS with dask-jobqueue): docs/sweep.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="sweep file (TOML): [fixed] options, [grid] lists of values, optional [sweep] out/workers")
    p.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler (default: a new LocalCluster)")
    p.add_argument("--workers", type=int, metavar="N", help="LocalCluster workers, one thread each (default: [sweep] workers, else 2)")
    p.add_argument("--torch-threads", type=int, default=1, metavar="N", help="torch threads per task (default 1)")
    p.add_argument("--out", metavar="DIR", help="sweep folder (default: [sweep] out, else sweeps/<file stem>)")
    p.add_argument("--no-figure", action="store_true", help="do not draw sweep.png")
    p.add_argument("--dry-run", action="store_true", help="check the file, list the configurations and their state, run nothing")
    return p


def main(argv=None) -> int:
    """``popsynth sweep``: 0 all configurations finished, 1 some failed (see the table), 2 bad
    input (one line on stderr), 130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        if args.torch_threads < 1:
            raise PopsynthError(f"--torch-threads must be >= 1, got {args.torch_threads}", "pass e.g. --torch-threads 1")
        sweep = load_sweep(args.config)
        if args.dry_run:
            out = Path(args.out or sweep.out or Path("sweeps") / Path(sweep.source).stem)
            confs = sweep.configurations(out)
            _check_before_running(confs, remote=args.scheduler is not None)
            for c in confs:
                print(f"{folder_state(c):<10} {c.folder}")
            print(f"{len(confs)} configurations")
            return 0
        res = run_sweep(sweep, args.out, args.workers, args.scheduler, torch_threads=args.torch_threads,
                        figure=not args.no_figure)
    except PopsynthError as err:  # the output-folder checks name the parameter `out`: here it is --out
        print(f"error: {err}".replace("`out`", "--out"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished configurations are in the table; rerun the same command to continue "
              "(finished ones are reused, interrupted ones resume from their checkpoints)", file=sys.stderr)
        return 130
    print(f"{res.n_run} ran, {res.n_reused} reused, {res.n_failed} failed in {res.seconds:.1f} s; table {res.table_path}"
          + (f", figure {res.figure_path}" if res.figure_path else ""))
    return 1 if res.n_failed else 0


if __name__ == "__main__":
    sys.exit(main())

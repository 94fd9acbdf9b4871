"""Command line of ``train.py``: fit the XLF block weights to the CXB for one spectral set."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys

from .errors import PopsynthError

EPILOG = """\
examples:
  python train.py --spec-set 5                       # joint posterior (CXB + counts + CT fractions), CPU
  python train.py --spec-set 5 --mode a19            # A19's procedure as written (gd, eq. B3, 100 starts, no prior)
  python train.py --spec-set 1 --mode joint --starts 1000 --out checkpoints/set1
  python train.py --resume checkpoints/spec-set-5    # continue an interrupted run
  python train.py --spec-set 5 --device cuda         # on a GPU (needs a CUDA build of torch)

outputs (in --out): checkpoint.pt, xlf_best.h5 (cube + axes + metadata; with --mode posterior also
percentile cubes phi_p16/p50/p84 and the posterior samples of the weights), xlf_best_a19.npy (A19 array
layout [119 z, 150 log L, 80 log N_H]), cxb_model.ecsv, summary.json.
"""


def _lr_help() -> str:
    from .fit import OPTIMIZERS

    parts = [f"{name}: {c.lr_meaning}, {c.lr_range[0]:g} to {c.lr_range[1]:g}, default {c.default_lr:g}"
             for name, c in OPTIMIZERS.items()]
    return "learning rate, finite and > 0, within the working range of the optimizer (" + "; ".join(parts) + ")"


#: flags that set a RunConfig field to the opposite of their presence: dest -> field
INVERTED = {"no_ct": "use_ct", "quiet": "progress"}

MODELS = ("blocks", "physical")


def _options() -> list[tuple[str, dict]]:
    """train.py's options in --help order: (dest, add_argument keywords). The flag is ``--`` and
    the dest with '-' for '_'; the dest is the RunConfig field (or a key of :data:`INVERTED`),
    except ``resume`` and ``model``. Types come from RunConfig's annotations and the allowed
    names from the registries (:func:`popsynth.config.choices`)."""
    return [
        ("spec_set", dict(help="spectral set of A19 Table 4 (photon index, reflection, cutoff distributions); default 5")),
        ("starts", dict(help="number of random starts fitted together (default 100; at most 10000000, and as many as "
                             "the memory holds: a run that cannot fit is refused with an estimate)")),
        ("steps", dict(help="maximum optimiser steps, 1 to 1000000 (default: lm 200, adam 3000, gd 20000); "
                            "starts stop early when stalled")),
        ("lr", dict(help=_lr_help())),
        ("optimizer", dict(help="lm = batched Levenberg-Marquardt (default, fastest); adam; gd = plain gradient descent "
                                "as in A19")),
        ("loss", dict(help="chi2 with the data errors (default) or a19 = eq. B3 cost sum (obs-model)^2/2n")),
        ("sys_floor", dict(help="fractional systematic error added in quadrature to every CXB point for chi2, in [0, 1) "
                                "(e.g. 0.03); default 0")),
        ("weight_prior", dict(help="width in dex (finite, >= 0) of a Gaussian prior on log10 of each block weight around "
                                   "1 (default 1.0; 0 = off, as A19)")),
        ("seed", dict(help="seed of the random starting weights, 0 to 2**63-1 (default 0)")),
        ("device", dict(help="cpu (default), cuda, cuda:N or auto")),
        ("out", dict(help="output folder (default checkpoints/spec-set-N); must be a folder you can write to; "
                          "one run at a time per folder (a lock file .popsynth.lock guards it)")),
        ("resume", dict(metavar="PATH", help="resume the run in this folder (or its checkpoint.pt) with its stored "
                                             "settings; --steps, --device and --quiet may change, any other flag must "
                                             "match the stored value")),
        ("draws", dict(help="spectral parameter draws per class, 1 to 10000 (default 64)")),
        ("galaxies", dict(help="galaxy CXB term: a19 (A19 fixed shape, default), sfr (X-ray binaries from cosmic SFR "
                               "history) or none")),
        ("xlf", dict(help="starting XLF of all Compton-thin AGN: u14 = Ueda et al. 2014 LDDE (default), a15 = Aird et "
                          "al. 2015 LADE (hard band; parameters not yet checked against the paper, docs/xlf_a15.md); "
                          "both times the --absorption function. The printed table gives the CXB chi2 of each, unfitted")),
        ("absorption", dict(help="starting absorption function: a19 = U14+R15 (A19 App. A, default) or u14")),
        ("spectral_model", dict(help="AGN spectrum: a19 = scattered + transmitted + pexmon-like reflection + torus "
                                     "reprocessing (A19 sec. 5.2, default); a19-incident-cutoff = torus reprocesses the "
                                     "cutoff power law; a19-full-absorber = reflection also Compton-attenuated; "
                                     "transmitted = no reflection, no torus")),
        ("torus_table", dict(metavar="FITS", help="XSPEC torus atable (torus1006.fits, UXCLUMPY, borus02) replacing the "
                                                  "built-in Monte Carlo torus")),
        ("model", dict(metavar="{" + ",".join(MODELS) + "}",
                       help="blocks (default): the 15 block weights of A19 on the U14+R15 cube; physical: the "
                            "physical-parameter model (U14 LDDE and A19 absorption-function parameters), run by "
                            "'popsynth physical' with the remaining options (see 'popsynth physical --help')")),
        ("mode", dict(help="posterior (default): the joint likelihood of CXB + counts + CT fractions, its mode by the "
                           "batched optimiser, then NUTS chains (medians and 16-84 %% intervals of everything); "
                           "a19: A19's procedure as written (plain gradient descent on w, eq. B3 cost, U(0.3, 5) starts, "
                           "no prior; these are its defaults), then the converged start that best fits the counts and "
                           "CT fractions; joint: one chi2 loss over everything, best start; cxb: CXB only")),
        ("chains", dict(help="posterior: NUTS chains, 2-64 (default 4)")),
        ("warmup", dict(help="posterior: warm-up iterations per chain, for the pilot and the main run (default 300)")),
        ("samples", dict(help="posterior: kept iterations per chain (default 1600)")),
        ("smooth_prior", dict(help="posterior: width in dex of a prior tying adjacent luminosity blocks of one N_H class "
                                   "(default 0 = off)")),
        ("cxb_norm_sigma", dict(help="posterior: 1-sigma prior width of each CXB instrument's absolute normalisation, a "
                                     "fraction in [0, 1); marginalised (default 0.1; 0 fixes the normalisations to the "
                                     "published values)")),
        ("select_chi2_max", dict(help="a19: select only among converged starts whose CXB chi2 is at most this "
                                      "(constrained selection)")),
        ("counts", dict(metavar="NAMES",
                        help="comma-separated number-count tables of data/counts (default: BAT 105-month differential, "
                             "Lehmer+12 CDF-S 0.5-2 and 2-8 keV, Cappelluti+09 XMM-COSMOS 2-10 keV) or 'none'")),
        ("no_ct", dict(action="store_true", help="leave the observed CT fractions out of the constraints")),
        ("counts_weight", dict(help="weight (finite, >= 0) of the counts chi2 in --mode joint (default 1)")),
        ("ct_weight", dict(help="weight (finite, >= 0) of the CT-fraction chi2 in --mode joint (default 1)")),
        ("quiet", dict(action="store_true", help="no progress bar")),
    ]


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, made from :func:`_options`. Every option defaults to None so that
    :func:`main` knows which flags were given (the defaults of a new run are RunConfig's; on
    --resume the stored ones). A name that is not allowed (``choices``) raises the PopsynthError
    of :func:`popsynth.config.check_choice`, so it is reported on one line like any other."""
    from .config import CHOICE_FIELDS, Choices, _field_kinds

    kinds = _field_kinds()
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Fit the 15 block weights of the U14+R15 X-ray luminosity function to the cosmic X-ray "
                    "background (Chandra COSMOS, RXTE, Swift/BAT), for many random starts at once "
                    "(Ananna et al. 2019, section 5.1).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    for dest, kw in _options():
        kw = dict(kw)
        if kw.get("action") == "store_true":
            kw["default"] = None
        elif dest in CHOICE_FIELDS:  # names from a registry (the spectral set's number is read as a name: "5")
            kw["choices"] = Choices(dest)
        elif dest in kinds and kinds[dest][0] in (int, float):
            kw["type"] = kinds[dest][0]
        p.add_argument(_flag(dest), dest=dest, **kw)
    return p


def _run_flags() -> dict[str, tuple[str, str]]:
    """dest -> (flag, RunConfig field) of every flag that sets a RunConfig field."""
    from .config import RunConfig

    fields = {f.name for f in dataclasses.fields(RunConfig)}
    return {dest: (_flag(dest), INVERTED.get(dest, dest)) for dest, _ in _options()
            if INVERTED.get(dest, dest) in fields}


#: dest -> (flag, RunConfig field), derived from the options; the value conversions are in _to_config
FLAGS = _run_flags()

#: A19's procedure as written (section 5.1, Appendix B): the defaults of --mode a19.
A19_PROCEDURE = {"optimizer": "gd", "loss": "a19", "weight_prior": 0.0}


def flag_text(text: str) -> str:
    """A library message as train.py prints it: each setting named in backticks becomes its flag
    (`starts` -> --starts, `use_ct=False` -> --no-ct, `resume` -> --resume); names without a flag
    keep their backticks."""
    names = {f"`{dest}`": _flag(dest) for dest, _ in _options() if dest not in INVERTED}
    names.update({f"`{field}=False`": _flag(dest) for dest, field in INVERTED.items()})
    return re.sub(r"`[A-Za-z_][A-Za-z0-9_]*(=False)?`", lambda m: names.get(m.group(0), m.group(0)), text)


def _to_config(dest: str, value):
    """A flag's value as the RunConfig field's value."""
    if dest == "spec_set":  # checked by the parser (choices)
        return int(value)
    if dest == "counts":
        if value.strip().lower() == "none":
            return ()
        return tuple(n.strip() for n in value.split(",") if n.strip())
    if dest in ("no_ct", "quiet"):
        return not value
    return value


def _given(args: argparse.Namespace) -> dict:
    """The flags the user actually gave: {dest: value}."""
    return {k: v for k, v in vars(args).items() if v is not None and k not in ("resume", "model")}


def _new_config(given: dict):
    from .config import RunConfig

    fields = {FLAGS[d][1]: _to_config(d, v) for d, v in given.items()}
    if fields.get("mode") == "a19":
        for k, v in A19_PROCEDURE.items():
            fields.setdefault(k, v)
    return RunConfig(**fields)


def _show(field: str, value) -> str:
    if isinstance(value, tuple):
        return ",".join(value) if value else "none"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _resume_overrides(resume: str, given: dict) -> tuple[dict, list[str]]:
    """Check the flags given with --resume against the checkpoint's stored settings.

    Returns ({field: value} for the flags that may change on resume, ["--steps 400 (stored
    200)", ...] describing them). Raises PopsynthError listing every flag that differs from the
    stored value (flags equal to it are accepted and change nothing).
    """
    from pathlib import Path

    from .fit import make_optimizer
    from .run import RESUME_SAFE, load_resume

    _, stored, folder = load_resume(resume)
    conflicts, overrides, applied = [], {}, []
    for dest, value in given.items():
        flag, field = FLAGS[dest]
        new = _to_config(dest, value)
        if field == "out":
            if Path(new).resolve() != folder.resolve():
                conflicts.append(f"--out {value} (the run's folder is {folder})")
            continue
        old = getattr(stored, field)
        if field in RESUME_SAFE:
            if new != old:
                overrides[field] = new
                applied.append(f"{flag}{'' if isinstance(value, bool) else f' {value}'} (stored {field} {_show(field, old)})")
            continue
        if field == "lr":
            old = make_optimizer(stored.optimizer, stored.lr).lr
            same = math.isclose(new, old, rel_tol=1e-12)
        elif isinstance(old, float) and isinstance(new, (int, float)):
            same = math.isclose(new, old, rel_tol=1e-12, abs_tol=1e-15)
        elif field == "torus_table" and old is not None:
            same = Path(new).resolve() == Path(old).resolve()
        else:
            same = new == old
        if not same:
            shown = flag if isinstance(value, bool) else f"{flag} {value}"
            conflicts.append(f"{shown} (stored {field} {_show(field, old)})")
    if conflicts:
        raise PopsynthError(
            f"--resume {folder}: {', '.join(conflicts)} differ{'s' if len(conflicts) == 1 else ''} from the settings "
            "stored in its checkpoint",
            f"drop {'it' if len(conflicts) == 1 else 'them'} to continue that run as stored (only "
            f"{', '.join(FLAGS[d][0] for d in FLAGS if FLAGS[d][1] in RESUME_SAFE)} may change on resume), "
            "or start a new run with another --out")
    return overrides, applied


def _interrupted(intr) -> str:
    """The one line printed on Ctrl-C, true to what is on disk (see RunInterrupted)."""
    import shlex

    ckpt = f"{intr.out.rstrip('/')}/checkpoint.pt"
    cmd = f"python train.py --resume {shlex.quote(intr.out)}"
    if intr.saved_step is not None and intr.finished:
        return (f"interrupted while {intr.stage}: the finished fit (step {intr.saved_step}) is in {ckpt}, "
                f"some output files may be missing; write them again with: {cmd}")
    if intr.saved_step is not None:
        return f"interrupted during the {intr.stage}: steps up to {intr.saved_step} are saved in {ckpt}; continue with: {cmd}"
    if intr.resumed_step is not None:
        return (f"interrupted during the {intr.stage}, before a new checkpoint was written: {ckpt} is unchanged "
                f"(step {intr.resumed_step}); continue with: {cmd}")
    return (f"interrupted during the {intr.stage}, before the first checkpoint: nothing of this run was saved; "
            "rerun the same command to start again")


def _split_model(argv) -> tuple[str | None, list[str]]:
    """(the value of --model or None, the other arguments)."""
    model, rest, i = None, [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--model":
            model = argv[i + 1] if i + 1 < len(argv) else ""
            i += 2
            continue
        if a.startswith("--model="):
            model = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    return model, rest


def _warn(msg: str) -> None:
    print(f"warning: {flag_text(msg)}", file=sys.stderr)


def main(argv=None) -> int:
    """Run train.py with ``argv`` (default sys.argv[1:]); returns the exit code: 0 done, 2 bad
    input (one line "error: <what is wrong>; <what to do>" on stderr), 130 interrupted.

    ``--model physical`` hands the other arguments to ``popsynth physical``
    (:func:`popsynth.physical_run.main`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    model, rest = _split_model(argv)
    if model is not None and model not in MODELS:
        print(f"error: unknown model {model!r}; use --model blocks (default) or --model physical", file=sys.stderr)
        return 2
    if model == "physical":
        from .physical_run import main as physical_main

        return physical_main(rest)
    args = None
    try:
        args = build_parser().parse_args(rest)  # a name not allowed raises PopsynthError (see build_parser)
        given = _given(args)
        from .errors import RunInterrupted
        from .run import RunConfig, run

        try:
            if args.resume:
                overrides, applied = _resume_overrides(args.resume, given)
                if applied:
                    print(f"resume: applying {', '.join(applied)}")
                run(RunConfig(), resume=args.resume, overrides=overrides, warn=_warn)
            else:
                from ._tensor import resolve_device

                cfg = _new_config(given)
                cfg.validate()
                resolve_device(cfg.device)
                run(cfg, warn=_warn)
        except RunInterrupted as intr:
            print(_interrupted(intr), file=sys.stderr)
            return 130
    except PopsynthError as err:
        print(f"error: {flag_text(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args is not None and args.resume:
            import shlex

            msg = (f"interrupted before the resumed run started: its checkpoint is unchanged; "
                   f"continue with: python train.py --resume {shlex.quote(args.resume)}")
        else:
            msg = "interrupted before the set-up finished; nothing was saved; rerun the same command to start again"
        print(msg, file=sys.stderr)
        return 130
    return 0

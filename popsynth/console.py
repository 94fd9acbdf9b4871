"""The ``popsynth`` console script: one entry point, one subcommand per tool.

``popsynth <command> [options]`` runs the ``main(argv)`` function of the module that owns the
command (imported only when the command is called, so that ``popsynth --help`` stays fast and a
command whose optional extra is not installed does not break the others). Each command is also
reachable as ``python -m popsynth.<module>``; ``popsynth train`` is ``python train.py``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("popsynth.cli", "fit the XLF (same options as train.py)"),
    "figures": ("popsynth.figures", "A19 Figs. 1-4 and 7 from the spectral library"),
    "mock": ("popsynth.mock", "mock AGN catalogue from a run's XLF"),
    "forecast": ("popsynth.forecast", "expected AGN numbers for a survey"),
    "bhad": ("popsynth.bhad", "black-hole accretion-rate and mass density"),
    "unresolved": ("popsynth.unresolved", "unresolved CXB and resolved fractions"),
    "compare": ("popsynth.compare", "figures of a run against published data (XLF, N_H, CT fraction, counts, CXB)"),
    "sweep": ("popsynth.sweep", "grid of train.py runs on Dask"),
    "physical": ("popsynth.physical_run", "fit and sample the physical-parameter population model"),
}
"""command -> (module whose ``main(argv)`` runs it, one-line description)."""


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: popsynth <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "'popsynth <command> --help' describes each command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to a command; returns its exit code
    (2 with a one-line error for an unknown command)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} "
              "('popsynth --help' lists them)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(rest)
    return 0 if code is None else int(code)


def exit_fast(code) -> None:
    """End the process with exit status ``code`` without the interpreter's teardown: flush
    stdout and stderr, run the ``atexit`` handlers (logging, h5py, tqdm, dask finalizers: what
    a normal exit runs first), then ``os._exit``. Skipped is only the final garbage collection
    and module / C++ static teardown, which for torch takes 0.7-0.9 s on the 2-core VM (measured:
    ``python -c "import torch"`` exits 0.7 s after its last line) and writes nothing. Every file a
    command writes is closed (atomic writes) before it returns. ``POPSYNTH_FAST_EXIT=0``: a
    normal ``sys.exit``. Used by the command-line entry points only (``train.py``, ``popsynth``),
    never by library calls."""
    import atexit
    import os

    code = 0 if code is None else int(code)
    if os.environ.get("POPSYNTH_FAST_EXIT", "1") == "0":
        sys.exit(code)
    try:
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os._exit(code)


def script() -> None:
    """The ``popsynth`` console script: :func:`main` on ``sys.argv``, then :func:`exit_fast`."""
    exit_fast(main())


if __name__ == "__main__":
    script()

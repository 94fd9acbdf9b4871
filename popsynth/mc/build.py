"""Rebuild the Monte Carlo Green's function tables (torus and slab).

    python -m popsynth.mc.build --kind torus|slab|all --photons N --device cpu|cuda \\
        --seed S --out data/greens/

Each configuration (log N_H, theta_tor node of the torus; the one semi-infinite slab) runs
``--photons`` photons spread evenly over the input energy bins, on the chosen device, with a
seed derived from ``--seed`` and the configuration index (so a rebuild is reproducible and
configurations are independent). ``--workers N`` runs the configurations as tasks on a Dask
LocalCluster of N single-threaded processes (``--scheduler ADDRESS``: an existing cluster, e.g.
a dask-jobqueue one); the tables are the same as a serial build's. A progress bar (tqdm, on
stderr; ``--quiet``: none) follows the configurations. Tables are
written atomically (temporary file, then os.replace) to ``<out>/torus.h5`` and
``<out>/slab.h5``. On a GPU use many more photons (e.g. ``--photons 5e7 --device cuda
--max-active 4000000``) to shrink the Monte Carlo errors; see data/greens/README.md.

Every table records the physics it was built with: the tabulated medium (dataset
``medium_rows``), the line data, the tabulation arguments, the xraydb version and the sha256
of xraydb's database (see :func:`popsynth.mc.currency.check_table`). Two more modes:

    python -m popsynth.mc.build --check [--kind K] [--out DIR]

compares the tables in DIR with today's code and physics (every medium node, rtol 1e-9) and
exits with 1 if one is stale;

    python -m popsynth.mc.build --add-reference [--kind K] [--out DIR]

stores the medium reference in existing tables without re-running the Monte Carlo (their
photon datasets stay byte-identical); it refuses unless today's tabulated medium is bit for
bit the one the table was built with (its ``medium_fingerprint``). On CPUs where numpy's
SIMD ``exp`` differs from the build machine's, run it with the generic code path:
``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL" python -m popsynth.mc.build --add-reference``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .._tensor import resolve_device
from ..errors import PopsynthError
from ..io.greens import add_medium_reference, read_greens, write_greens
from .currency import check_table, xraydb_provenance
from .grids import DEFAULT_THETA_TOR
from .simulate import build_table, dask_map
from .transport import tabulate_medium

DEFAULT_PHOTONS = {"torus": 1_500_000, "slab": 15_000_000}


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m popsynth.mc.build",
        description=(
            "Rebuild the photon Monte Carlo Green's function tables: torus (BNTorus geometry, "
            "sphere with a biconical opening, source at the centre) and slab (semi-infinite "
            "neutral slab lit by an isotropic point source on its surface, pexrav R = 1)."
        ),
        epilog=(
            "Examples: 'python -m popsynth.mc.build --kind all' rebuilds the shipped tables "
            "(about 15 min on 2 CPU cores); 'python -m popsynth.mc.build --kind torus "
            "--photons 5e7 --device cuda --max-active 4000000' builds a 25x less noisy torus "
            "table on a GPU."
        ),
    )
    p.add_argument("--kind", choices=("torus", "slab", "all"), default="all", help="which table(s) to build")
    p.add_argument(
        "--photons", type=float, default=None,
        help="photons per configuration (default: 1.5e6 torus, 1.5e7 slab)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--seed", type=int, default=20190101, help="base random seed (default 20190101)")
    p.add_argument(
        "--out", type=Path, default=Path("data/greens"), help="output folder (default data/greens/)"
    )
    p.add_argument(
        "--log-nh", type=_floats, default=None,
        help="torus log10 N_H nodes, comma-separated (default 20-22 step 0.5, 22-26 step 0.25)",
    )
    p.add_argument(
        "--theta", type=_floats, default=None,
        help=f"torus half-opening angle nodes in deg (default {','.join(str(t) for t in DEFAULT_THETA_TOR)})",
    )
    p.add_argument("--batches", type=int, default=8, help="independent photon batches for MC errors (default 8)")
    p.add_argument(
        "--max-active", type=int, default=None,
        help="photons followed at once (default 65536 on CPU, 2097152 on CUDA)",
    )
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: robust on a shared machine; try 2+ on an idle one)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--workers", type=int, default=0,
        help=(
            "run the configurations as tasks on a Dask LocalCluster of this many single-threaded "
            "worker processes (default 0: one after the other in this process); the table is the "
            "same, each configuration having its own seed"
        ),
    )
    p.add_argument(
        "--scheduler", default=None,
        help="address of an existing Dask scheduler to run the configurations on (instead of --workers)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true",
        help="check the tables in --out against today's code and physics (exit 1 if stale); build nothing",
    )
    mode.add_argument(
        "--add-reference", action="store_true",
        help=(
            "store today's tabulated medium, line data and xraydb version in the existing tables in "
            "--out without re-running the Monte Carlo (only if bit-identical to the build's medium)"
        ),
    )
    return p


def _check(kinds, out: Path) -> int:
    stale = 0
    for kind in kinds:
        chk = check_table(read_greens(out / f"{kind}.h5"), name=str(out / f"{kind}.h5"))
        print(("ok    " if chk.current else "STALE ") + chk.message() + f" [{chk.seconds:.2f} s]", flush=True)
        stale += not chk.current
    return 1 if stale else 0


def _add_reference(kinds, out: Path, medium) -> int:
    for kind in kinds:
        path = add_medium_reference(
            out / f"{kind}.h5", medium,
            note=(
                "medium reference added after the build, without re-running the Monte Carlo: today's "
                f"tabulation reproduces the table's medium_fingerprint {medium.fingerprint()} bit for "
                "bit, so it is the medium the table was built with; xraydb fields describe the "
                "installation that reproduced it"
            ),
        )
        chk = check_table(read_greens(path), medium, name=str(path))
        print(f"added the medium reference to {path}: {chk.message()}", flush=True)
        if not chk.current:
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        dev = resolve_device(args.device)
        if args.threads and args.threads > 0:
            torch.set_num_threads(args.threads)
        kinds = ("torus", "slab") if args.kind == "all" else (args.kind,)
        t0 = time.perf_counter()
        if args.check:
            return _check(kinds, Path(args.out))
        medium = tabulate_medium(device=dev)
        prov = xraydb_provenance()
        print(
            f"medium: {medium.description} (fingerprint {medium.fingerprint()}), xraydb "
            f"{prov['xraydb_version']} (database sha256 {prov['xraydb_db_sha256'][:12]}), device {dev}",
            flush=True,
        )
        if args.add_reference:
            return _add_reference(kinds, Path(args.out), medium.to("cpu"))
        max_active = args.max_active or ((1 << 21) if dev.type == "cuda" else (1 << 16))
        if args.workers < 0:
            raise PopsynthError(f"--workers {args.workers} is negative", "pass 0 (this process) or more workers")
        client = cluster = None
        map_fn = map
        if args.workers or args.scheduler:
            from ..sweep import _client

            client, cluster = _client(args.scheduler, args.workers or 1)
            map_fn = dask_map(client)
            print(f"configurations run as tasks on {args.scheduler or f'a LocalCluster of {args.workers} workers'}",
                  flush=True)
        try:
            _build(args, argv, kinds, medium, dev, max_active, not args.quiet, map_fn)
        finally:
            if client is not None:
                client.close()
            if cluster is not None:
                cluster.close()
        print(f"done in {time.perf_counter() - t0:.0f} s", flush=True)
    except PopsynthError as err:  # library messages name `device`; this command's flag is --device
        print(f"error: {str(err).replace('`device`', '--device')}", file=sys.stderr)
        return 2
    return 0


def _build(args, argv, kinds, medium, dev, max_active, progress, map_fn) -> None:
    """Build and write the tables of ``kinds``, the configurations run by ``map_fn``."""
    for kind in kinds:
        photons = int(args.photons) if args.photons else DEFAULT_PHOTONS[kind]
        tk = time.perf_counter()
        table = build_table(
            kind, medium, photons=photons, seed=args.seed, device=dev,
            log_nh=args.log_nh if kind == "torus" else None,
            theta_tor_deg=args.theta if kind == "torus" else None,
            n_batches=args.batches, progress=progress, map_fn=map_fn, max_active=max_active,
        )
        table.meta["command"] = "python -m popsynth.mc.build " + " ".join(
            sys.argv[1:] if argv is None else argv
        )
        table.meta["threads"] = int(torch.get_num_threads())
        path = write_greens(table, Path(args.out) / f"{kind}.h5")
        size = path.stat().st_size / 1e6
        print(
            f"wrote {path} ({size:.1f} MB): {kind}, {photons:,} photons per configuration, "
            f"{time.perf_counter() - tk:.0f} s, version key {table.version_key}",
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(main())

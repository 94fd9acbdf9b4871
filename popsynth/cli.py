"""Command line of ``train.py``: fit the XLF block weights to the CXB for one spectral set."""

from __future__ import annotations

import argparse
import sys

from .errors import PopsynthError

EPILOG = """\
examples:
  python train.py --spec-set 5                       # A19's preferred spectra, 100 starts, CPU
  python train.py --spec-set 1 --starts 1000 --out checkpoints/set1
  python train.py --spec-set 5 --optimizer gd --loss a19 --lr 2e-3 --steps 20000   # as A19 did it
  python train.py --resume checkpoints/spec-set-5    # continue an interrupted run
  python train.py --spec-set 5 --device cuda         # on a GPU (needs a CUDA build of torch)

outputs (in --out): checkpoint.pt, xlf_best.h5 (cube + axes + metadata), xlf_best_a19.npy
(A19 array layout [119 z, 150 log L, 80 log N_H]), cxb_model.ecsv, summary.json.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py",
        description="Fit the 15 block weights of the U14+R15 X-ray luminosity function to the cosmic X-ray "
                    "background (Chandra COSMOS, RXTE, Swift/BAT), for many random starts at once "
                    "(Ananna et al. 2019, section 5.1).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec-set", type=str, default="5", metavar="N",
                   help="spectral set 1-5 of A19 Table 4 (photon index, reflection, cutoff distributions); default 5")
    p.add_argument("--starts", type=int, default=100, help="number of random starts fitted together (default 100)")
    p.add_argument("--steps", type=int, default=None,
                   help="maximum optimiser steps (default: lm 200, adam 3000, gd 20000); starts stop early when stalled")
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (gd: step on w, default 2e-3; adam: on log w, default 0.05; lm: initial damping, default 1e-2)")
    p.add_argument("--optimizer", default="lm", metavar="{lm,adam,gd}",
                   help="lm = batched Levenberg-Marquardt (default, fastest); adam; gd = plain gradient descent as in A19")
    p.add_argument("--loss", default="chi2", metavar="{chi2,a19}",
                   help="chi2 with the data errors (default) or a19 = eq. B3 cost sum (obs-model)^2/2n")
    p.add_argument("--sys-floor", type=float, default=0.0,
                   help="fractional systematic error added in quadrature to every CXB point for chi2 (e.g. 0.03); default 0")
    p.add_argument("--weight-prior", type=float, default=1.0,
                   help="width in dex of a Gaussian prior on log10 of each block weight around 1 (default 1.0; 0 = off, as A19)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random starting weights (default 0)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--out", default=None, help="output folder (default checkpoints/spec-set-N)")
    p.add_argument("--resume", default=None, metavar="PATH",
                   help="resume the run in this folder (or checkpoint.pt); its stored settings are used, --steps may extend it")
    p.add_argument("--draws", type=int, default=64, help="spectral parameter draws per class (default 64)")
    p.add_argument("--galaxies", default="a19", metavar="{a19,sfr,none}",
                   help="galaxy CXB term: a19 (A19 fixed shape, default), sfr (X-ray binaries from cosmic SFR history) or none")
    p.add_argument("--absorption", default="a19", metavar="{a19,u14}",
                   help="starting absorption function: a19 = U14+R15 (A19 App. A, default) or u14")
    p.add_argument("--spectral-model", default="a19", metavar="{a19,a19-incident-cutoff,a19-full-absorber,transmitted}",
                   help="AGN spectrum: a19 = scattered + transmitted + pexmon-like reflection + torus reprocessing "
                        "(A19 sec. 5.2, default); a19-incident-cutoff = torus reprocesses the cutoff power law; "
                        "a19-full-absorber = reflection also Compton-attenuated; transmitted = no reflection, no torus")
    p.add_argument("--torus-table", default=None, metavar="FITS",
                   help="XSPEC torus atable (torus1006.fits, UXCLUMPY, borus02) replacing the built-in Monte Carlo torus")
    p.add_argument("--mode", default="a19", metavar="{a19,joint,cxb}",
                   help="a19 (default): fit the CXB, then select the converged start that best fits the number counts "
                        "and observed CT fractions (A19 sec. 4); joint: one loss over CXB + counts + CT fractions; "
                        "cxb: CXB only")
    p.add_argument("--counts", default=None, metavar="NAMES",
                   help="comma-separated number-count tables of data/counts (default: BAT 105-month differential, "
                        "Lehmer+12 CDF-S 0.5-2 and 2-8 keV, Cappelluti+09 XMM-COSMOS 2-10 keV) or 'none'")
    p.add_argument("--no-ct", action="store_true", help="leave the observed CT fractions out of the constraints")
    p.add_argument("--counts-weight", type=float, default=1.0, help="weight of the counts chi2 in --mode joint (default 1)")
    p.add_argument("--ct-weight", type=float, default=1.0, help="weight of the CT-fraction chi2 in --mode joint (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .run import RunConfig, run
        from .spectra.sets import get_spectral_set

        from .constraints import DEFAULT_COUNTS

        spec = get_spectral_set(args.spec_set).number
        if args.counts is None:
            counts = DEFAULT_COUNTS
        elif args.counts.strip().lower() == "none":
            counts = ()
        else:
            counts = tuple(n.strip() for n in args.counts.split(",") if n.strip())
        cfg = RunConfig(spec_set=spec, starts=args.starts, steps=args.steps, lr=args.lr, optimizer=args.optimizer,
                        loss=args.loss, sys_floor=args.sys_floor, weight_prior=args.weight_prior, seed=args.seed,
                        device=args.device, out=args.out or f"checkpoints/spec-set-{spec}", draws=args.draws,
                        galaxies=args.galaxies, absorption=args.absorption, spectral_model=args.spectral_model,
                        torus_table=args.torus_table, mode=args.mode, counts=counts, use_ct=not args.no_ct,
                        counts_weight=args.counts_weight, ct_weight=args.ct_weight, progress=not args.quiet)
        if not args.resume:
            cfg.validate()
            from ._tensor import resolve_device

            resolve_device(cfg.device)
        run(cfg, resume=args.resume)
    except PopsynthError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished work is in the last checkpoint; continue with --resume", file=sys.stderr)
        return 130
    return 0

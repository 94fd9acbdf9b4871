#!/usr/bin/env bash
# GPU check in one command (under five minutes on a GPU machine):
#
#   bash benchmarks/gpu_check.sh
#
# 1. the CUDA tests (pytest -m cuda tests/test_gpu.py: CXB, counts, CT fractions and posterior log
#    density on CUDA against CPU to 1e-10 relative in float64; fit, outputs, NUTS, Monte Carlo on CUDA);
# 2. timed on the GPU and on the CPU of the same machine, side by side:
#    the spectral table build (set 5, cold cache), a default fit (--mode joint, 100 starts, 64 draws;
#    the fit of train.py's default posterior mode without its 5 minutes of NUTS), a 100,000-start fit
#    (--mode cxb), a short posterior (the default mode with a short NUTS run, 4 chains) and a short
#    Monte Carlo (one torus configuration, log N_H 24, theta_tor 60 deg; the medium tabulation before
#    it is not timed).
# Prints one table: step, sizes, GPU time, CPU time, ratio, and the CPU-GPU difference of the fit
# statistics. Exit status 0 when every step ran (and the tests passed), 1 otherwise.
#
# Without a CUDA GPU (or with GPU_CHECK_FORCE_CPU=1) it runs the CPU fallback: the same steps with
# smaller sizes on the CPU only (the CUDA tests then skip), and says so. CI runs the fallback
# (tests/test_gpu.py::test_gpu_check_script_cpu_fallback).
#
# Sizes (environment variables; GPU default / CPU-fallback default):
#   GPU_CHECK_STARTS          starts of the default fit              100 / 100
#   GPU_CHECK_BIG_STARTS      starts of the big fit                  100000 / 2000
#   GPU_CHECK_CPU_BIG_STARTS  starts of the big fit's CPU reference  10000 (the CPU column says so)
#   GPU_CHECK_DRAWS           spectral draws                         64 / 8
#   GPU_CHECK_STEPS           optimiser steps (default: lm's cap, 500; fits stop when every start has converged)
#   GPU_CHECK_SAMPLES         NUTS warm-up and kept iterations       50 / 20
#   GPU_CHECK_CHAINS          NUTS chains                            4 / 4
#   GPU_CHECK_PHOTONS         Monte Carlo photons                    2000000 / 20000
#   GPU_CHECK_SKIP_TESTS=1    skip step 1
#   PYTHON                    the interpreter (default: python)
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python}"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/popsynth-gpu-check.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

if [ "${GPU_CHECK_FORCE_CPU:-0}" != "1" ] && "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    MODE=gpu
else
    MODE=cpu
fi
"$PY" - "$MODE" <<'EOF'
import os, platform, sys, torch
mode = sys.argv[1]
print(f"popsynth GPU check: torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPU cores")
if mode == "gpu":
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}")
else:
    why = "GPU_CHECK_FORCE_CPU=1" if os.environ.get("GPU_CHECK_FORCE_CPU") == "1" else "no CUDA GPU visible to torch"
    print(f"CPU fallback ({why}): the same steps with smaller sizes on the CPU only; the CUDA tests skip")
EOF

STATUS=0
T0=$SECONDS
if [ "${GPU_CHECK_SKIP_TESTS:-0}" != "1" ]; then
    echo "== CUDA tests: pytest -m cuda tests/test_gpu.py"
    TS=$SECONDS
    "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -n 15
    RC=${PIPESTATUS[0]}
    # exit code 5: every test deselected/skipped is not an error on a machine without CUDA
    if [ "$RC" != "0" ] && ! { [ "$MODE" = "cpu" ] && [ "$RC" = "5" ]; }; then
        echo "CUDA tests FAILED (pytest exit code $RC)"
        STATUS=1
    fi
    echo "CUDA tests: pytest exit code $RC in $((SECONDS - TS)) s"
fi

echo "== timed steps"
"$PY" - "$MODE" "$TMP" <<'EOF'
import os, sys, time, traceback

import torch

mode, tmp = sys.argv[1], sys.argv[2]
gpu = mode == "gpu"


def env(name, gpu_default, cpu_default):
    v = os.environ.get(name)
    return int(float(v)) if v else (gpu_default if gpu else cpu_default)


STARTS = env("GPU_CHECK_STARTS", 100, 100)
BIG = env("GPU_CHECK_BIG_STARTS", 100_000, 2_000)
CPU_BIG = env("GPU_CHECK_CPU_BIG_STARTS", 10_000, BIG) if gpu else BIG
DRAWS = env("GPU_CHECK_DRAWS", 64, 8)
STEPS = int(os.environ["GPU_CHECK_STEPS"]) if os.environ.get("GPU_CHECK_STEPS") else None
NUTS = env("GPU_CHECK_SAMPLES", 50, 20)
CHAINS = env("GPU_CHECK_CHAINS", 4, 4)
PHOTONS = env("GPU_CHECK_PHOTONS", 2_000_000, 20_000)
DEVICES = ["cuda", "cpu"] if gpu else ["cpu"]
quiet = dict(log=lambda *a: None, warn=lambda *a: None)

from popsynth.grid import Grid  # noqa: E402
from popsynth.mc.build import build_table  # noqa: E402
from popsynth.mc.transport import tabulate_medium  # noqa: E402
from popsynth.run import RunConfig, run  # noqa: E402
from popsynth.spectra.cache import build_spectral_table  # noqa: E402

rows, failed = [], []


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev):
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t, out


def step(name, sizes, fn, compare=None, cpu_sizes=None):
    """Run fn(dev) on every device; one row: times, ratio and the CPU-GPU difference."""
    times, outs = {}, {}
    for dev in DEVICES:
        try:
            times[dev], outs[dev] = timed(lambda: fn(dev), dev)
        except Exception as exc:
            traceback.print_exc()
            failed.append(f"{name} on {dev}: {type(exc).__name__}: {exc}")
            times[dev] = None
    note = ""
    if compare and all(outs.get(d) is not None for d in ("cuda", "cpu")):
        note = compare(outs["cpu"], outs["cuda"])
    rows.append((name, sizes, times, note, cpu_sizes))
    shown = ", ".join(f"{d} {t:.2f} s" if t is not None else f"{d} FAILED" for d, t in times.items())
    print(f"{name} [{sizes}]: {shown}" + (f"; {note}" if note else ""), flush=True)


def rel(a, b):
    return abs(a - b) / max(abs(a), 1e-300)


edges = Grid().lognh_edges
os.environ["POPSYNTH_CACHE"] = os.path.join(tmp, "cache-build")  # cold: the build itself is timed
step("spectral table build", f"set 5, {DRAWS} draws",
     lambda dev: build_spectral_table(5, edges, n_draws=DRAWS, device=torch.device(dev)),
     compare=lambda a, b: f"max rel diff {float(((b.mean.cpu() - a.mean).abs() / a.mean.abs().clamp_min(1e-300)).max()):.1e}")
# the fits read the table built above (warm cache), as a second run of train.py would
os.environ["POPSYNTH_CACHE"] = os.path.join(tmp, "cache-build")


def fit(dev, **kw):
    cfg = RunConfig(out=os.path.join(tmp, f"{kw.get('mode')}-{kw.get('starts')}-{dev}"), device=dev, draws=DRAWS,
                    steps=STEPS, progress=False, **kw)
    return run(cfg, **quiet)


def chi2_note(a, b):
    return (f"chi2 CPU {a['chi2_total']:.6g} GPU {b['chi2_total']:.6g} (rel {rel(a['chi2_total'], b['chi2_total']):.1e}), "
            f"set-up CPU {a['setup_seconds']:.1f} s GPU {b['setup_seconds']:.1f} s")


step("default fit", f"--mode joint, {STARTS} starts", lambda dev: fit(dev, mode="joint", starts=STARTS),
     compare=chi2_note)
step(f"{BIG}-starts fit", f"--mode cxb, {BIG} starts",
     lambda dev: fit(dev, mode="cxb", starts=BIG if dev == "cuda" or not gpu else CPU_BIG),
     cpu_sizes=f"{CPU_BIG} starts" if gpu and CPU_BIG != BIG else None)
step("short posterior", f"NUTS {CHAINS} chains, {NUTS}+{NUTS} iterations",
     lambda dev: run(RunConfig(out=os.path.join(tmp, f"post-{dev}"), device=dev, draws=DRAWS, starts=STARTS,
                               steps=STEPS, chains=CHAINS, warmup=max(NUTS, 10), samples=max(NUTS, 10),
                               progress=False), **quiet),
     compare=lambda a, b: f"CXB -2lnL at median CPU {a['cxb_chi2_at_median']:.4g} GPU {b['cxb_chi2_at_median']:.4g}")
media = {}


def mc(dev):
    if dev not in media:
        media[dev] = tabulate_medium(device=torch.device(dev))
    t = build_table("torus", media[dev], photons=PHOTONS, seed=1, device=torch.device(dev), log_nh=(24.0,),
                    theta_tor_deg=(60.0,), n_batches=4, progress=None,
                    max_active=(1 << 21) if dev == "cuda" else (1 << 16))
    return t


for dev in DEVICES:  # the medium tabulation is a set-up cost, not the Monte Carlo
    media[dev] = tabulate_medium(device=torch.device(dev))
step("short Monte Carlo", f"torus, 1 configuration, {PHOTONS} photons", mc)

print()
head = f"{'step':<24}{'sizes':<42}" + ("".join(f"{d.upper() + ' s':>10}" for d in DEVICES))
head += f"{'CPU/GPU':>9}" if gpu else ""
print(head)
for name, sizes, times, note, cpu_sizes in rows:
    line = f"{name:<24}{sizes:<42}"
    for d in DEVICES:
        t = times.get(d)
        line += f"{t:>10.2f}" if t is not None else f"{'FAILED':>10}"
    if gpu:
        tc, tg = times.get("cpu"), times.get("cuda")
        line += f"{tc / tg:>9.1f}" if tc and tg else f"{'-':>9}"
        if cpu_sizes:
            line += f"  (CPU: {cpu_sizes})"
    print(line)
if not gpu:
    print("CPU fallback: CPU times only, at the reduced sizes above; run on a GPU machine for the comparison")
if failed:
    print("FAILED steps:\n  " + "\n  ".join(failed))
    sys.exit(1)
EOF
RC=$?
[ "$RC" != "0" ] && STATUS=1
echo "gpu_check: $([ $STATUS = 0 ] && echo OK || echo FAILED) in $((SECONDS - T0)) s ($([ "$MODE" = gpu ] && echo GPU || echo 'CPU fallback'))"
exit $STATUS

"""Memory a run needs and what the machine has: refuse, before any set-up, a run that cannot fit."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .config import FINE_ENERGY, MAX_DRAWS, MAX_STARTS, RunConfig
from .errors import PopsynthError
from .blocks import BLOCKS
from .grid import Grid


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

    ``draws`` and ``starts`` are the parts that scale with ``cfg.draws`` and ``cfg.starts``; on CPU
    ``device`` is 0 and everything counts as host memory. An estimate (within a factor ~1.5,
    on the safe side), for refusing runs that cannot fit, not for planning to the byte.
    """
    from .fit import make_optimizer
    from .spectra.table import default_energy_grid

    device = torch.device(device)
    cell_table = Grid().lognh.size * default_energy_grid().numel() * 8  # one draw's [nN, nE] float64
    with_constraints = cfg.mode != "cxb"
    draws_host = cfg.draws * cell_table * 3  # the table and the temporaries of building it (always on CPU)
    draws_all = cfg.draws * cell_table * (12 if with_constraints else 3)
    n_res = 90 + (60 if cfg.mode in ("joint", "posterior") else 0)  # CXB points + prior (+ counts and CT points)
    vectors = 4 * (BLOCKS.n + n_res) + 4 * FINE_ENERGY.size
    per_start = 8 * (vectors + (3 * BLOCKS.n * n_res if cfg.optimizer == "lm" else 0))
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
    whose ``starts`` / ``draws`` exceed the sane bounds (MAX_STARTS, MAX_DRAWS). Returns the
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
            bound = (f"`starts` {cfg.starts} is above the limit of {MAX_STARTS}" if cfg.starts > MAX_STARTS
                     else f"`draws` {cfg.draws} is above the limit of {MAX_DRAWS}")
            raise PopsynthError(f"{bound} and the run would need about {_fmt_bytes(need)} of {mem} {parts}, "
                                f"while {have}",
                                "use fewer `starts` or `draws` (defaults 100 and 64; A19 used 100 starts)")
        what = f"`starts` {cfg.starts} and `draws` {cfg.draws} need about {_fmt_bytes(need)} of {mem} {parts}"
        fixed = estimate_memory(dataclasses.replace(cfg, starts=0, draws=0), device)[where]
        per_start = estimate_memory(dataclasses.replace(cfg, starts=1, draws=0), device)[where] - fixed
        per_draw = estimate_memory(dataclasses.replace(cfg, starts=0, draws=1), device)[where] - fixed
        fit_starts = int((avail - fixed - cfg.draws * per_draw) // per_start) if per_start > 0 else 0
        fit_draws = int((avail - fixed - cfg.starts * per_start) // per_draw) if per_draw > 0 else 0
        hints = ([f"`starts` {fit_starts} or fewer (with `draws` {cfg.draws})"] if fit_starts >= 1 else []) + \
                ([f"`draws` {fit_draws} or fewer (with `starts` {cfg.starts})"] if fit_draws >= 1 else [])
        fix = ("use fewer starts or draws: " + " or ".join(hints) + " fit here") if hints else \
            "use fewer `starts` and `draws`, or a machine with more memory"
        raise PopsynthError(f"{what}, but only {have}", fix)
    return est

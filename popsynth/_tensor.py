"""dtype and device policy, set in one place; the one bracketing helper of the interpolators.

Integrals run in float64 (``DTYPE``). Nothing here changes torch's global default dtype.

:func:`bracket` (torch) and :func:`bracket_np` (numpy) find the interval of a sorted node
array that holds each query point and the linear fraction inside it; every piecewise-linear
interpolator and integral in popsynth (log-log spectra, N(>S) at the L edges, band fluxes,
the Green's-function node weights, the unresolved-background moments, the mock's band
integrals) brackets through them. :func:`node_below` is the raw lookup for interpolants
that extrapolate past the last node (the selection antiderivative).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .errors import PopsynthError

DTYPE = torch.float64


def resolve_device(name: str | torch.device | None = "cpu") -> torch.device:
    """Turn a user device string ("cpu", "cuda", "cuda:1", "mps", "auto") into a torch.device.

    "auto" picks CUDA when available, else CPU. Raises PopsynthError when the requested
    accelerator is not available on this machine.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "cpu").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise PopsynthError(
            f"unknown device '{name}'", "use `device` cpu, cuda, cuda:N, mps or auto"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PopsynthError(
                f"device '{name}' requested but this torch build sees no CUDA GPU",
                "use `device` cpu, or install a CUDA build of torch (see README) on a GPU machine",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PopsynthError(
                f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist",
                "pick an index below that count",
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise PopsynthError(f"device '{name}' is not available here", "use `device` cpu")
        raise PopsynthError(
            "the MPS backend has no float64 support, which popsynth's integrals need",
            "use `device` cpu or a CUDA GPU",
        )
    elif dev.type != "cpu":
        raise PopsynthError(f"unsupported device type '{dev.type}'", "use `device` cpu or cuda")
    return dev


def as_tensor(x, device: torch.device | str | None = None) -> torch.Tensor:
    """Convert array-like ``x`` to a float64 tensor on ``device`` (no copy if already there)."""
    return torch.as_tensor(x, dtype=DTYPE, device=device)


#: CPU buffers from this size up come from numpy's allocator (:func:`empty_cpu`)
LARGE_BUFFER_BYTES = 4 << 20


def empty_cpu(shape, dtype: torch.dtype = DTYPE, device: torch.device | str | None = None) -> torch.Tensor:
    """An uninitialised tensor [shape] on ``device``. On the CPU, buffers of 4 MiB and more are
    allocated by numpy (shared, ``torch.from_numpy``): numpy asks the kernel for transparent huge
    pages on large allocations (``madvise``): measured, the CXB cube path (a fresh 68 MB cube per
    call) takes ~400 page faults per call instead of ~17,000 (torch's allocator maps 4 KiB pages;
    its ``THP_MEM_ALLOC_ENABLE`` applies to every allocation of the process and stalled the set-up
    on compaction here, benchmarks/README.md). Other devices and small buffers: ``torch.empty``."""
    dev = torch.device("cpu") if device is None else torch.device(device)
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    if dev.type != "cpu" or n < LARGE_BUFFER_BYTES or dtype not in _NUMPY_DTYPES:
        return torch.empty(shape, dtype=dtype, device=dev)
    return torch.from_numpy(np.empty(shape, dtype=_NUMPY_DTYPES[dtype]))


_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}


def interp_loglog(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Interpolate ``fp(xp)`` at ``x`` linearly in log x - log f, along the last axis of fp.

    Shapes: x [...x] (any), xp [n] increasing and positive, fp [..., n] non-negative.
    Returns [..., *x.shape]. Outside [xp[0], xp[-1]] the end value is held (clamped);
    callers keep x inside the table range (the rest-frame energy grid is built wide
    enough for that). Zeros in fp interpolate as zero (log of a floor of 1e-300; results
    <= 1e-290 are set to 0).
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or xp.requires_grad or fp.requires_grad)):
        out = interp_loglog_query_major(x, xp, fp)  # [Q, M]
        # contiguous [..., *x.shape] as before: kernels built from it keep the layout their
        # contractions expect (a strided kernel costs a copy in every einsum that uses it)
        return empty_cpu(out.T.shape, out.dtype, out.device).copy_(out.T).reshape(*fp.shape[:-1], *x.shape)
    lf, slope, lo, t = _interp_setup(x, xp, fp)
    out = slope.index_select(0, lo).mul_(t[:, None]).add_(lf.index_select(0, lo))  # [Q, M]: f0 + (f1 - f0) t
    # values at or below 1e-290 (interpolated zeros) become 0 (out of place: autograd holds
    # exp's result for the backward pass)
    return torch.nn.functional.threshold(out.exp(), 1e-290, 0.0).T.contiguous().reshape(*fp.shape[:-1], *x.shape)


def _interp_setup(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor):
    """(log f in the node-major layout [n, M], its slopes [n - 1, M], the interval lo [Q] and the
    fraction t [Q] of every query) for :func:`interp_loglog`."""
    lo, _, t, _ = bracket(torch.log(xp), torch.log(x).reshape(-1), right=False)
    # node-major layout [n, M]: each query gathers one contiguous row (M values) instead of M
    # scattered ones, and the slope f1 - f0 of an interval is taken once per interval, not once
    # per query; the same operations on the same values as f0 + (f1 - f0) t per query, so the
    # same bits
    lf = torch.log(fp.clamp_min(1e-300)).reshape(-1, fp.shape[-1]).T.contiguous()  # [n, M]
    return lf, lf[1:] - lf[:-1], lo, t


def interp_loglog_query_major(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """:func:`interp_loglog` without autograd, in the query-major layout: [x.numel(), M] with M =
    fp.shape[:-1] flattened (element [q, m] is interp_loglog(x, xp, fp)[m, q], bit for bit). For a
    caller that transposes anyway (the CXB kernel), this saves one full copy."""
    return _interp_rows(*_interp_setup(x, xp, fp))


def _interp_rows(lf: torch.Tensor, slope: torch.Tensor, lo: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """exp(lf[lo] + slope[lo] t) [Q, M], interpolated zeros (<= 1e-290) set to 0: the no-autograd
    path of :func:`interp_loglog`, in place in buffers from :func:`empty_cpu` (the [Q, M]
    intermediates of a CXB kernel are 4 MB each: measured, ~1,300 page faults per kernel call with
    fresh torch allocations, ~60 with these)."""
    q, m = lo.numel(), lf.shape[1]
    out = torch.index_select(slope, 0, lo, out=empty_cpu((q, m), lf.dtype, lf.device)).mul_(t[:, None])
    out.add_(torch.index_select(lf, 0, lo, out=empty_cpu((q, m), lf.dtype, lf.device)))
    return torch.nn.functional.threshold(out.exp_(), 1e-290, 0.0, inplace=True)


class Bracket(NamedTuple):
    """The interval of the nodes holding each query point (see :func:`bracket`).

    lo, hi: long (int64 for numpy) node indices, shape of the query, hi = lo + 1, 0 <= lo <= n - 2;
    width = nodes[hi] - nodes[lo]; frac = (xq - nodes[lo]) / width clamped to [0, 1]
    (width and frac are None when ``fraction=False``).
    """

    lo: object
    hi: object
    frac: object
    width: object


def node_below(nodes: torch.Tensor, xq: torch.Tensor, *, right: bool = True) -> torch.Tensor:
    """Index of the last node <= xq (``right`` True) or < xq (``right`` False), -1 below the first node.

    nodes [n] increasing (any dtype), xq any shape. Returns long, shape of xq, values -1 .. n-1
    (no clamping: callers choose how to treat points outside the nodes).
    """
    return torch.searchsorted(nodes, xq.contiguous(), right=right) - 1


def bracket(nodes: torch.Tensor, xq: torch.Tensor, *, right: bool = True, fraction: bool = True) -> Bracket:
    """The node interval [nodes[lo], nodes[hi]] holding each xq, for linear interpolation.

    nodes [n] increasing, n >= 2; xq any shape (same dtype as nodes). ``right``: a point equal to a
    node k (0 < k < n-1) falls in interval k (True: the node is the interval's left end, frac 0) or
    interval k - 1 (False: its right end, frac 1); as torch.searchsorted's ``right``.
    Points below nodes[0] take interval 0, points above nodes[-1] interval n - 2 (frac clamped to
    0 and 1, so the end values are held). Returns :class:`Bracket` (lo, hi, frac, width); frac and
    width (same dtype as nodes) only when ``fraction``. The arithmetic is fixed, one operation per
    line: hi = clamp(searchsorted, 1, n - 1), lo = hi - 1, width = nodes[hi] - nodes[lo],
    frac = clamp((xq - nodes[lo]) / width, 0, 1); callers rely on its bits.
    """
    hi = torch.searchsorted(nodes, xq.contiguous(), right=right).clamp_(1, nodes.numel() - 1)
    lo = hi - 1
    if not fraction:
        return Bracket(lo, hi, None, None)
    # torch.take of the node spacings (the same subtraction, taken once per interval) and of the
    # left nodes: the values of nodes[hi] - nodes[lo] and nodes[lo], gathered faster
    width = torch.take(nodes[1:] - nodes[:-1], lo)
    return Bracket(lo, hi, ((xq - torch.take(nodes, lo)) / width).clamp(0.0, 1.0), width)


def bracket_np(nodes: np.ndarray, xq: np.ndarray, *, right: bool = True, fraction: bool = True) -> Bracket:
    """:func:`bracket` for numpy arrays (same conventions, same operations): nodes [n] increasing,
    n >= 2; xq any shape. Returns :class:`Bracket` of int64 indices and float arrays."""
    hi = np.clip(np.searchsorted(nodes, xq, side="right" if right else "left"), 1, nodes.size - 1)
    lo = hi - 1
    if not fraction:
        return Bracket(lo, hi, None, None)
    width = nodes[hi] - nodes[lo]
    return Bracket(lo, hi, np.clip((xq - nodes[lo]) / width, 0.0, 1.0), width)

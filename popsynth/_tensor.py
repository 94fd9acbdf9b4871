"""dtype and device policy, set in one place.

Integrals run in float64 (``DTYPE``). Nothing here changes torch's global default dtype.
"""

from __future__ import annotations

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
            f"unknown device '{name}'", "use --device cpu, cuda, cuda:N, mps or auto"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PopsynthError(
                f"device '{name}' requested but this torch build sees no CUDA GPU",
                "use --device cpu, or install a CUDA build of torch (see README) on a GPU machine",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PopsynthError(
                f"device '{name}' requested but only {torch.cuda.device_count()} CUDA device(s) exist",
                "pick an index below that count",
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise PopsynthError(f"device '{name}' is not available here", "use --device cpu")
        raise PopsynthError(
            "the MPS backend has no float64 support, which popsynth's integrals need",
            "use --device cpu or a CUDA GPU",
        )
    elif dev.type != "cpu":
        raise PopsynthError(f"unsupported device type '{dev.type}'", "use --device cpu or cuda")
    return dev


def as_tensor(x, device: torch.device | str | None = None) -> torch.Tensor:
    """Convert array-like ``x`` to a float64 tensor on ``device`` (no copy if already there)."""
    return torch.as_tensor(x, dtype=DTYPE, device=device)


def interp_loglog(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Interpolate ``fp(xp)`` at ``x`` linearly in log x - log f, along the last axis of fp.

    Shapes: x [...x] (any), xp [n] increasing and positive, fp [..., n] non-negative.
    Returns [..., *x.shape]. Outside [xp[0], xp[-1]] the end value is held (clamped);
    callers keep x inside the table range (the rest-frame energy grid is built wide
    enough for that). Zeros in fp interpolate as zero (log of a floor of 1e-300).
    """
    lx = torch.log(x)
    lxp = torch.log(xp)
    idx = torch.searchsorted(lxp, lx.reshape(-1).contiguous()).clamp(1, lxp.numel() - 1)
    x0, x1 = lxp[idx - 1], lxp[idx]
    t = ((lx.reshape(-1) - x0) / (x1 - x0)).clamp(0.0, 1.0)
    lf = torch.log(fp.clamp_min(1e-300))
    f0 = lf[..., idx - 1]
    f1 = lf[..., idx]
    out = torch.exp(f0 + (f1 - f0) * t)
    out = torch.where(out < 1e-290, torch.zeros_like(out), out)
    return out.reshape(*fp.shape[:-1], *x.shape)

"""Checkpoints: atomic save with a format tag, and a safe, structurally checked load.

Checkpoints are read with ``torch.load(weights_only=True)`` (tensors and plain containers
only), so a crafted file cannot run code.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from .. import __version__
from ..errors import PopsynthError
from .files import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "checkpoint_file", "load_checkpoint"]

CHECKPOINT_FORMAT = "popsynth-checkpoint-1"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Save a checkpoint dict (tensors on CPU) atomically with the format tag and version."""
    payload = {**payload, "format": CHECKPOINT_FORMAT, "version": __version__}
    cpu = _to_cpu(payload)
    atomic_write(path, lambda tmp: torch.save(cpu, tmp))


_CHECKPOINT_TENSOR_DICTS = ("opt_state", "conv_state")


def checkpoint_file(path) -> Path:
    """``path/checkpoint.pt`` for a run folder, else ``path`` itself."""
    p = Path(path)
    return p / "checkpoint.pt" if p.is_dir() else p


def load_checkpoint(path) -> dict:
    """Load and structurally check a checkpoint (a run folder or its checkpoint.pt).

    Loaded with ``torch.load(weights_only=True)``: only tensors and plain containers and
    numbers are unpickled, so a crafted file cannot run code. Returns the payload dict with
    keys config (dict), step (int >= 0), opt_state and conv_state (dicts of tensors), w0
    (tensor), history (list), finished (bool), wall_seconds (float). Shapes and dtypes of the
    tensors depend on the run's settings and are checked by :func:`popsynth.run.load_resume`.
    Raises PopsynthError naming the file and the problem.
    """
    p = checkpoint_file(path)
    if not p.exists():
        raise PopsynthError(f"checkpoint {p} not found", "pass `resume` the run folder or its checkpoint.pt")
    if not p.is_file():
        raise PopsynthError(f"checkpoint {p} is not a file", "pass `resume` the run folder or its checkpoint.pt")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            d = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        text = str(exc)
        if "Weights only load failed" in text:
            import re

            m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
            what = f"the object {m.group(1)}" if m else "a pickle instruction"
            raise PopsynthError(f"checkpoint {p} holds {what}, which a popsynth checkpoint never contains; "
                                "refused to load it (unpickling it could run code)",
                                "resume only from a checkpoint.pt written by train.py, or start a new run") from None
        raise PopsynthError(f"checkpoint {p} is corrupt or unreadable ({type(exc).__name__})",
                            "delete it and start a new run, or resume from another copy") from None
    if not isinstance(d, dict) or d.get("format") != CHECKPOINT_FORMAT:
        raise PopsynthError(f"{p} is not a popsynth checkpoint (format tag missing or different)",
                            "resume from a checkpoint.pt written by this version of train.py")
    _check_checkpoint_structure(d, p)
    return d


def _check_checkpoint_structure(d: dict, p: Path) -> None:
    def bad(what: str):
        return PopsynthError(f"checkpoint {p}: {what}", "it was damaged or edited; start a new run, or resume from another copy")

    for key in ("config", "step", "opt_state", "conv_state", "w0"):
        if key not in d:
            raise bad(f"lacks '{key}'")
    if not isinstance(d["config"], dict) or not all(isinstance(k, str) for k in d["config"]):
        raise bad(f"'config' must be a dict of settings, got {type(d['config']).__name__}")
    step = d["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"'step' must be an integer >= 0, got {step!r}")
    for key in _CHECKPOINT_TENSOR_DICTS:
        v = d[key]
        if not isinstance(v, dict) or not v:
            raise bad(f"'{key}' must be a non-empty dict of tensors, got {type(v).__name__}")
        for k, t in v.items():
            if not isinstance(t, torch.Tensor):
                raise bad(f"'{key}[{k!r}]' must be a tensor, got {type(t).__name__}")
    if not isinstance(d["w0"], torch.Tensor):
        raise bad(f"'w0' must be a tensor, got {type(d['w0']).__name__}")
    hist = d.setdefault("history", [])
    if not isinstance(hist, list) or not all(
            isinstance(h, (list, tuple)) and len(h) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                                  for x in h) for h in hist):
        raise bad("'history' must be a list of [step, best loss, median loss] entries")
    if not isinstance(d.setdefault("finished", False), bool):
        raise bad(f"'finished' must be true or false, got {d['finished']!r}")
    wall = d.setdefault("wall_seconds", 0.0)
    if isinstance(wall, bool) or not isinstance(wall, (int, float)) or not (wall >= 0):
        raise bad(f"'wall_seconds' must be a number >= 0, got {wall!r}")


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj

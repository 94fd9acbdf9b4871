"""Where the project's data files live.

``data_dir()`` is the repository's ``data/`` folder (next to the ``popsynth`` package in a
clone or an editable install), or the folder named by the ``POPSYNTH_DATA`` environment
variable when set.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PopsynthError

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Folder holding the project's data tables (ECSV / HDF5 with provenance headers)."""
    env = os.environ.get("POPSYNTH_DATA")
    d = Path(env) if env else _REPO_ROOT / "data"
    if not d.is_dir():
        raise PopsynthError(
            f"data folder {d} not found",
            "run from a clone of the repository installed with 'pip install -e .', "
            "or set POPSYNTH_DATA to the repository's data/ folder",
        )
    return d


def cache_dir() -> Path:
    """Folder for tables the project builds and caches (spectral tables); created on demand.

    ``POPSYNTH_CACHE`` overrides the default ``<repo>/cache``.
    """
    env = os.environ.get("POPSYNTH_CACHE")
    d = Path(env) if env else _REPO_ROOT / "cache"
    d.mkdir(parents=True, exist_ok=True)
    return d

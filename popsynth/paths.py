"""Where the project's data files live and where built tables are cached.

Data (``data_dir()``): the tables the library reads (CXB and number-count ECSV tables, the
Green's function tables ``greens/*.h5``, ...) live in the repository's top-level ``data/``
folder. They ship with the package through one mechanism, a setuptools package-dir mapping in
``pyproject.toml`` (``popsynth._data -> data``, with package-data globs): a wheel or a regular
``pip install .`` puts them in ``<site-packages>/popsynth/_data/``, while in a clone or an
editable install (``pip install -e .``) they are read in place from ``<repository>/data/``.
``data_dir()`` returns the first of:

1. the folder named by the ``POPSYNTH_DATA`` environment variable, when set;
2. ``popsynth/_data/`` next to the installed package (wheel or regular install);
3. ``data/`` next to the ``popsynth`` package folder (clone or editable install).

Cache (``cache_dir()``): the user's cache folder (``platformdirs.user_cache_dir("popsynth")``,
e.g. ``~/.cache/popsynth`` on Linux), or the folder named by ``POPSYNTH_CACHE``; never the
source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PopsynthError

_PACKAGE_DIR = Path(__file__).resolve().parent
_INSTALLED_DATA = _PACKAGE_DIR / "_data"  # wheel / regular install (package-dir mapping)
_SOURCE_DATA = _PACKAGE_DIR.parent / "data"  # clone / editable install


def data_dir() -> Path:
    """Folder holding the project's data tables (ECSV / HDF5 with provenance headers).

    ``POPSYNTH_DATA`` when set, else the copy installed with the package
    (``popsynth/_data``), else the repository's ``data/`` (clone or editable install).
    """
    env = os.environ.get("POPSYNTH_DATA")
    if env:
        d = Path(env)
        if not d.is_dir():
            raise PopsynthError(f"POPSYNTH_DATA={env} is not a folder",
                                "point POPSYNTH_DATA at a copy of the repository's data/ folder, or unset it")
        return d
    for d in (_INSTALLED_DATA, _SOURCE_DATA):
        if d.is_dir():
            return d
    raise PopsynthError(
        f"the popsynth data folder was not found (looked in {_INSTALLED_DATA} and {_SOURCE_DATA})",
        "reinstall popsynth ('pip install .' or 'pip install -e .' from a clone), "
        "or set POPSYNTH_DATA to the repository's data/ folder",
    )


def default_cache_dir() -> Path:
    """The user's cache folder for popsynth (``platformdirs.user_cache_dir("popsynth")``); not created."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("popsynth", appauthor=False))


def cache_dir() -> Path:
    """Folder for tables the project builds and caches (spectral tables); created on demand.

    ``POPSYNTH_CACHE`` when set, else :func:`default_cache_dir` (e.g. ``~/.cache/popsynth``).
    """
    env = os.environ.get("POPSYNTH_CACHE")
    d = Path(env).expanduser() if env else default_cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PopsynthError(f"cannot create the cache folder {d} ({exc.strerror or type(exc).__name__})",
                            "set POPSYNTH_CACHE to a writable folder") from None
    return d

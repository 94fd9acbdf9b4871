"""Caches: the one cache-key builder, content digests, and the wrapper that caches a builder.

Builders (a spectral table, a Green's function table, ...) compute; they do not know about
files. A caller that wants the result kept on disk wraps the builder::

    key = cache_key({"spec": ..., "grid": edges_array, "version": __version__})
    table = cached(lambda: build(...), key, path=cache_file("spectra", f"set5-{key}.pt"),
                   load=read_table_if_valid, save=write_table)

* :func:`cache_key`: sha256 (hex, first ``n_hex`` digits) of a JSON payload, keys sorted;
  numpy arrays and torch tensors in it stand for the sha256 of their float64 bytes.
* :func:`file_sha256` / :func:`arrays_sha256`: digests naming input tables by content.
* :func:`cached`: load the cached value for ``key`` if the file holds a valid one, else build,
  save atomically (a reader sees the old file or the new one) and return it.
* :func:`cache_file`: a path in the user's cache folder (:func:`popsynth.paths.cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np

from ..errors import PopsynthError
from .files import atomic_write

__all__ = ["cache_key", "file_sha256", "arrays_sha256", "source_digest", "cache_file", "cached"]

T = TypeVar("T")


def _encode(o):
    """JSON stand-in for values json cannot write: arrays/tensors -> sha256 of their float64 bytes."""
    try:
        import torch

        if isinstance(o, torch.Tensor):
            o = o.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    if isinstance(o, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(o, dtype=np.float64).tobytes()).hexdigest()
    raise TypeError(f"cache_key: cannot encode {type(o).__name__}")


def cache_key(payload, n_hex: int = 32) -> str:
    """Cache key of ``payload`` (a JSON-serialisable description of everything a result depends on).

    sha256 of ``json.dumps(payload, sort_keys=True)`` as hex, its first ``n_hex`` digits (1-64).
    numpy arrays and torch tensors anywhere in the payload are written as the sha256 (hex) of
    their values as float64 bytes; other values json cannot write raise TypeError.
    """
    if not 1 <= int(n_hex) <= 64:
        raise PopsynthError(f"`n_hex` must lie in 1-64, got {n_hex}", "pass the number of hex digits to keep")
    text = json.dumps(payload, sort_keys=True, default=_encode)
    return hashlib.sha256(text.encode()).hexdigest()[:int(n_hex)]


_DIGESTS: dict[tuple, str] = {}


def file_sha256(path) -> str:
    """sha256 (hex) of a file's bytes, read once per process per file version (path, size,
    modification and change times, inode: a rewritten or replaced file is read again).

    Raises :class:`PopsynthError` when the file cannot be read."""
    p = Path(path).resolve()
    try:
        st = p.stat()
        key = (str(p), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if key not in _DIGESTS:
            h = hashlib.sha256()
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            _DIGESTS[key] = h.hexdigest()
    except OSError as exc:
        raise PopsynthError(f"cannot read {p} ({exc.strerror or type(exc).__name__})",
                            "check that the file exists and is readable") from None
    return _DIGESTS[key]


def arrays_sha256(*arrays) -> str:
    """sha256 (hex) of arrays / tensors (each one's dtype, shape and bytes, in order), for
    tables held in memory only."""
    import torch

    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


_SOURCE_DIGEST: list[str] = []


def source_digest() -> str:
    """sha256 of the popsynth package's Python sources (every ``*.py`` below the package, by
    relative path and content): part of the key of cached results that code computes, so an
    edit of any module rebuilds them. Computed once per process."""
    if not _SOURCE_DIGEST:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for f in sorted(root.rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
        _SOURCE_DIGEST.append(h.hexdigest())
    return _SOURCE_DIGEST[0]


def cache_file(kind: str, name: str) -> Path:
    """``cache_dir()/kind/name``: a file of the cache folder (``POPSYNTH_CACHE`` or the user's
    cache folder; created on demand, the ``kind`` subfolder when the file is written)."""
    from ..paths import cache_dir

    return cache_dir() / kind / name


def cached(builder: Callable[[], T], key: str, *, path, load: Callable[[Path, str], "T | None"],
           save: Callable[[str, T], None], what: str = "cache file") -> T:
    """``builder()``'s result, kept in the file ``path`` under ``key``.

    path None: no caching, returns ``builder()``. Else, when ``path`` exists,
    ``load(path, key)`` returns the cached value, or None when the file is unreadable, damaged
    or for another key (``load`` says why, e.g. with a warning); then the value is built and
    written with ``save(tmp_path, value)`` through :func:`~popsynth.io.files.atomic_write`.
    A failed write (a read-only cache folder) warns (RuntimeWarning) and still returns the
    value. ``what`` names the file in that warning.
    """
    if path is None:
        return builder()
    path = Path(path)
    if path.exists():
        value = load(path, key)
        if value is not None:
            return value
    value = builder()
    try:
        atomic_write(path, lambda tmp: save(tmp, value))
    except OSError as exc:  # the value is still good; only the cache copy is lost
        warnings.warn(f"could not write the {what} {path} ({exc.strerror or type(exc).__name__}); "
                      "set POPSYNTH_CACHE to a writable folder", RuntimeWarning, stacklevel=2)
    return value

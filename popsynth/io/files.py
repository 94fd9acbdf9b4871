"""Files: the one atomic writer, JSON output, output-folder checks and the run lock.

Every file popsynth writes goes through :func:`atomic_write` (a temporary file in the same
folder, fsync, then ``os.replace``): a crash leaves the old file or the new one, never a torn
one. :func:`check_output_folder` and :class:`RunLock` guard a run's output folder.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

from ..errors import PopsynthError

__all__ = ["current_umask", "atomic_write", "write_json", "check_output_folder", "LOCK_NAME", "RunLock"]


def current_umask() -> int:
    """The process umask (permission bits removed from new files), read without changing it
    where the OS allows (Linux: /proc/self/status); else set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Write a file atomically: ``write(tmp_path)`` then fsync and rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a torn file.
    The file gets the permissions a plain ``open(path, "w")`` would give: 0o666 less the
    umask (mkstemp's temporary file is 0o600, which would otherwise be kept).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON (keys in insertion order, trailing newline), atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))



def check_output_folder(path) -> None:
    """Check before any work that ``path`` is, or can be created as, a writable folder.

    Writability is tested by creating (and removing) a temporary file: permission bits alone
    do not tell (root ignores them; ACLs, read-only mounts and quotas are not in them).
    Raises PopsynthError: ``path`` is an existing file, lies below a file, or the folder (or
    the nearest existing folder above it, where it would be created) cannot be written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise PopsynthError(f"output folder {p} is an existing file, not a folder",
                            "pass `out` a folder (new or existing), not a file")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise PopsynthError(f"output folder {p} cannot be created: {probe} is a file",
                            "pass `out` a path whose parents are folders")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".popsynth-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        where = "is not writable" if probe == p else f"cannot be created: {probe} is not writable"
        reason = exc.strerror or type(exc).__name__
        raise PopsynthError(f"output folder {p} {where} ({reason})",
                            "pass `out` a folder you can write to, or fix its permissions") from None


LOCK_NAME = ".popsynth.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError, OSError):
        return True  # exists but is not ours, or cannot be checked: assume alive
    return True


class RunLock:
    """An exclusive lock on an output folder, so two runs never write the same files.

    The lock file ``<folder>/.popsynth.lock`` holds JSON {pid, host, started}. On POSIX it is
    held with ``fcntl.flock``, which the kernel releases when the process dies, so a lock file
    left by a killed run is stale by construction and is taken over (with a note through
    ``log``). A lock naming another host is never taken over (flock may not reach across a
    network file system); elsewhere (no fcntl) the file is created with O_EXCL and a lock
    whose PID no longer runs on this host is taken over. :meth:`release` removes the file.
    Use as a context manager or call acquire()/release().
    """

    def __init__(self, folder, log=print):
        self.folder, self.path, self.log = Path(folder), Path(folder) / LOCK_NAME, log
        self._fd: int | None = None

    def _owner(self) -> dict:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return info if isinstance(info, dict) else {}
        except (OSError, ValueError):
            return {}

    def _busy(self, info: dict) -> PopsynthError:
        who = (f"PID {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
               if info else "an unknown process")
        return PopsynthError(f"another run ({who}) is using the output folder {self.folder} (lock file {self.path})",
                             "wait for it to finish or pass a different `out`; if no such run exists any more, "
                             f"delete {self.path}")

    def _stale_note(self, info: dict) -> None:
        if info:
            pid, host = info.get("pid"), info.get("host")
            state = "has ended" if isinstance(pid, int) and not _pid_alive(pid) else "no longer holds it"
            self.log(f"note: took over the stale lock {self.path} of PID {pid} on {host} "
                     f"(started {info.get('started', '?')}; that process {state})")

    def _write_owner(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, data)
        os.fsync(fd)

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # not POSIX
            return self._acquire_excl()
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise self._busy(self._owner()) from None
            try:  # the holder may have removed the file between our open and flock: retry on a fresh file
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            info = self._owner()
            if info and info.get("host") not in (None, socket.gethostname()):
                os.close(fd)
                raise self._busy(info)
            self._stale_note(info)
            self._write_owner(fd)
            self._fd = fd
            return self
        raise PopsynthError(f"could not lock the output folder {self.folder}", "retry, or pass a different `out`")

    def _acquire_excl(self) -> "RunLock":
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                info = self._owner()
                pid = info.get("pid")
                if info.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
                    self._stale_note(info)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._busy(info) from None
            self._write_owner(fd)
            self._fd = fd
            return self
        raise PopsynthError(f"could not lock the output folder {self.folder}", "retry, or pass a different `out`")

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

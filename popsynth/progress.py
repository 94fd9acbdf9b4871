"""A small progress bar on stderr (no dependency). Redraws in place on a terminal; on a pipe
or log file it prints a line every ~10 % so logs stay short."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "", enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.time()
        self._last_decile = -1

    def update(self, done: int, info: str = "") -> None:
        if not self.enabled:
            return
        frac = min(done / self.total, 1.0)
        el = time.time() - self.t0
        eta = el / frac - el if frac > 0 else 0.0
        if self.tty:
            n = int(30 * frac)
            self.stream.write(f"\r{self.label} [{'#' * n}{'.' * (30 - n)}] {done}/{self.total} {el:5.1f}s eta {eta:5.1f}s {info}   ")
            self.stream.flush()
        else:
            dec = int(frac * 10)
            if dec > self._last_decile:
                self._last_decile = dec
                self.stream.write(f"{self.label} {done}/{self.total} ({100 * frac:3.0f}%) {el:.1f}s {info}\n")
                self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

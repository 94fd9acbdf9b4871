"""Progress of the fit loop on stderr, drawn by tqdm.

On a terminal tqdm redraws one line in place; on a pipe or a log file (CI, batch jobs) it prints a
line at most every 10 % of the steps and every 30 s, so logs stay short."""

from __future__ import annotations

import sys


class Progress:
    """``Progress(total, label, enabled)``; ``update(done, info)`` sets the absolute step count and a
    status text; ``close()`` ends the line. A disabled bar does nothing."""

    def __init__(self, total: int, label: str = "", enabled: bool = True, stream=None):
        self.enabled = bool(enabled)
        self._bar = None
        if not self.enabled:
            return
        from tqdm import tqdm

        stream = stream or sys.stderr
        tty = hasattr(stream, "isatty") and stream.isatty()
        total = max(int(total), 1)
        self._bar = tqdm(total=total, desc=label, file=stream, leave=True, dynamic_ncols=tty,
                         mininterval=0.1 if tty else 30.0, miniters=None if tty else max(total // 10, 1),
                         bar_format=None if tty else "{desc} {n}/{total} ({percentage:3.0f}%) {elapsed}{postfix}")

    def update(self, done: int, info: str = "") -> None:
        if self._bar is None:
            return
        self._bar.update(int(done) - self._bar.n)
        if info:
            self._bar.set_postfix_str(info, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

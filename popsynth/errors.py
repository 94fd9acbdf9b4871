"""One exception type for problems a user can fix.

Every :class:`PopsynthError` carries a message that says what is wrong and a hint that
says what to do; the command line prints both on one line and exits non-zero.
"""


class PopsynthError(Exception):
    """A user-facing error: ``str(err)`` is "<what is wrong>; <what to do>"."""

    def __init__(self, what: str, fix: str = ""):
        self.what = what.rstrip(". ")
        self.fix = fix.strip()
        super().__init__(f"{self.what}; {self.fix}" if self.fix else self.what)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`popsynth.run.run`, with what is on disk at that moment.

    Attributes:
      out: the run's output folder (str).
      stage: what was running: "set-up", "fit" or "writing outputs".
      saved_step: step of the last checkpoint this run wrote, or None when it wrote none.
      resumed_step: step of the checkpoint the run resumed from, or None for a new run.
      finished: True when the last checkpoint written holds the finished fit.

    A subclass of KeyboardInterrupt, so callers that only catch that still see a Ctrl-C.
    """

    def __init__(self, out: str, stage: str, saved_step: int | None = None, resumed_step: int | None = None,
                 finished: bool = False):
        self.out, self.stage, self.saved_step = str(out), stage, saved_step
        self.resumed_step, self.finished = resumed_step, finished
        super().__init__(f"interrupted during {stage}")

    @property
    def checkpoint_exists(self) -> bool:
        """True when the output folder holds a checkpoint of this run (written or resumed from)."""
        return self.saved_step is not None or self.resumed_step is not None

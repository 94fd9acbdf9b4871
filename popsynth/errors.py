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

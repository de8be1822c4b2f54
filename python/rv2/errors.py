"""The one error base of rv2.

Every error rv2 raises on purpose derives from `RV2Error`. Bad input (a
missing file, a malformed table, a setting out of range) raises a `UserError`:
the CLI prints it as one line and exits with status 2, and loses nothing. Any
other exception is a bug and keeps its traceback.

`UserError` is also a `ValueError` (and `MissingInputError` a
`FileNotFoundError`), so library callers that catch the built-in kinds keep
working.
"""
from __future__ import annotations


class RV2Error(Exception):
    """Base of every error rv2 raises deliberately."""


class UserError(RV2Error, ValueError):
    """Bad input: the message names the input, what is wrong and what to do."""

    exit_code = 2


class MissingInputError(UserError, FileNotFoundError):
    """A file or folder the user pointed at (or rv2 needs) does not exist."""


class InterruptedRun(RV2Error):
    """A run stopped by a signal after leaving its outputs consistent; the
    message says how to resume. Exit status 128 + signal number."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def one_line(exc: BaseException) -> str:
    """The message of `exc` on one line (internal newlines folded)."""
    text = str(exc).strip() or type(exc).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


__all__ = ["RV2Error", "UserError", "MissingInputError", "InterruptedRun", "one_line"]

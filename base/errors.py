"""Errors caused by the user's input rather than by a bug.

The entry scripts print these as one line (no traceback unless ``--debug``)
and exit non-zero; every message names the flag, file or value at fault.
"""


class UserError(RuntimeError):
    """Bad input found while running (exit status 1)."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, foreign or unsafe; the message names the file."""


class DataError(UserError):
    """A dataset folder, file or image cannot be used; the message names it."""

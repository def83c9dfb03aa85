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


class BadImageError(DataError):
    """One image (or mask) file cannot be decoded; :attr:`path` names it.

    Raised inside datasets, also in DataLoader workers; ``--bad_images skip``
    drops such samples instead of stopping.
    """

    def __init__(self, path, reason=""):
        super().__init__(f"cannot read image {path}: {reason}" if reason else path)
        self.path = str(path)

    def __reduce__(self):  # DataLoader workers pickle exceptions; keep the path
        return (type(self), (self.path, str(self).split(": ", 1)[-1]))

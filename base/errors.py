"""Errors caused by the user's input rather than by a bug.

The entry scripts print these as one line (no traceback unless ``--debug``)
and exit non-zero; every message names the flag, file or value at fault.
"""


class ConfigError(ValueError):
    """A configuration value is invalid (exit status 2); the message names the flag and value."""


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


def one_line(exc):
    """The user-facing line of ``exc`` (str): its message's first line, or its type's name without one.

    An exception re-raised from a DataLoader worker carries the worker's
    traceback in its message; its last line holds the original message.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]
        text = text.split(": ", 1)[1] if ": " in text else text
    return text.splitlines()[0] if text else type(exc).__name__


def error_line(exc):
    """``"<type>: <one line>"`` (the type alone for an exception without a message, e.g. ``KeyboardInterrupt``):
    how a run's log and its ``status.json`` record the error that stopped it."""
    name = type(exc).__name__
    return f"{name}: {one_line(exc)}" if str(exc).strip() else name

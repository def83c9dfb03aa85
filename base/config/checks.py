"""The rules a flag's value must meet: each check raises :class:`ConfigError` ``"--flag=value: rule"``.

A task's ``check_config`` raises through :func:`check`; the others are the
folder rules that several flags share.
"""

import os

from base.errors import ConfigError


def check(condition, flag, value, rule):
    """Raise :class:`ConfigError` ``"--flag=value: rule"`` unless ``condition``."""
    if not condition:
        raise ConfigError(f"--{flag}={value!r}: {rule}")


def check_dir_exists(flag, path):
    """Raise :class:`ConfigError` unless ``path`` is an existing, non-empty folder."""
    check(bool(path), flag, path, "a folder is required here")
    check(os.path.isdir(path), flag, path, "no such folder")
    check(bool(os.listdir(path)), flag, path, "the folder is empty")


def check_folder_name(flag, name):
    """Raise ``ConfigError`` unless ``name`` is one folder name: the run folders stay under ``--output_dir``.

    Refused: empty, ``.`` and ``..``, a path separator (``/``, and ``\\`` on
    Windows) and control characters (a newline would split the log's lines and
    ``utils.runs``' table).
    """
    check(name not in ("", ".", ".."), flag, name, "must name a folder (not empty, '.' or '..')")
    for sep in {"/", os.sep, os.altsep} - {None}:
        check(sep not in name, flag, name, f"must be one folder name, without a path separator ({sep!r})")
    check(name.isprintable(), flag, name, "must not hold a control character (a newline, a tab, ...)")


def check_writable_dir(flag, path):
    """Raise ``ConfigError`` unless ``path`` is, or can be created as, a writable folder."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    check(os.path.isdir(existing), flag, path, f"{existing} is not a folder")
    check(os.access(existing, os.W_OK | os.X_OK), flag, path, f"{existing} is not writable")

"""Atomic file writes, and a failed write as one line that names the file.

Writes follow timm's ``CheckpointSaver`` idea: serialize to a temporary file in
the destination folder, flush and ``fsync`` it, then ``os.replace`` it over the
final name, so a crash leaves either the old file or the new one, never half a
file. Every file of a run that must not be left half-written (checkpoints,
exports, the config JSON, the row files, the trackers' run ids) goes through
:func:`atomic_write`.
"""

import os

from base.errors import CheckpointError


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening a folder
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write_fn):
    """Call ``write_fn(file_object)`` on a temporary file, then move it to ``path``.

    Raises:
        whatever ``write_fn`` raises; the temporary file is removed and any
        previous ``path`` is left untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def _os_error_in(exc):
    """The ``OSError`` that caused ``exc`` (itself, or one in its cause/context chain), or ``None``.

    ``torch.save`` reports a failed ``write`` as ``RuntimeError: ... unexpected pos``
    with the ``OSError`` only as its context.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def write_or_fail(path, write_fn, what="file"):
    """:func:`atomic_write`, with a failed write (disk full, no permission) as one :class:`CheckpointError`.

    Raises:
        CheckpointError: ``"cannot write <what> <path>: <OS reason>; ..."``; a
            previous file at ``path`` is left intact and no temporary file stays.
    """
    try:
        atomic_write(path, write_fn)
    except (OSError, RuntimeError) as exc:
        os_error = _os_error_in(exc)
        if os_error is None:
            raise
        reason = os_error.strerror or str(os_error) or type(os_error).__name__
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            reason = f"the run folder {folder} is gone (deleted while the run was using it?)"
        kept = "the previous file there is intact" if os.path.exists(path) else "nothing was written"
        raise CheckpointError(f"cannot write {what} {path}: {reason}; {kept}") from exc

"""One training process per run folder: an exclusive POSIX record lock (``lockf``) on ``<run_dir>/.lock``.

The kernel drops the lock when its process ends, ``kill -9`` included. A
record lock belongs to the process that took it and is not inherited across
``fork``, so DataLoader workers, which can outlive a killed trainer by
seconds, never hold it (a ``flock`` would be theirs too). The price of record
locks: closing *any* descriptor of the file in the holding process drops the
lock, and the kernel grants a process its own lock again. So this module
alone opens the file, and a second lock of a folder within one process is
refused here without opening it. The holder's pid is written into the file.
Where ``fcntl`` does not exist (Windows) no lock is taken.
"""

import os

from base.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None

# (device, inode) of each lock file this process holds.
_HELD = set()


def process_alive(pid):
    """Whether process ``pid`` exists on this machine (this process counts as alive); ``pid`` an int."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):  # not a pid this system can have
        return False
    except OSError:  # e.g. PermissionError: it exists, under another user
        return True
    return True


class RunLock:
    """Hold the run folder's lock from :meth:`acquire` to :meth:`release`.

    Raises:
        UserError: from :meth:`acquire`, another live process, or another
            trainer of this process, holds the lock; the message names the
            folder and the holder's pid.
    """

    def __init__(self, run_dir):
        self.path, self._fd, self._key = os.path.join(run_dir, ".lock"), None, None

    def acquire(self):
        if fcntl is None or self._fd is not None:
            return self
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            stat = None
        if stat is not None and (stat.st_dev, stat.st_ino) in _HELD:  # (opening it, then closing, would drop it)
            raise self._in_use(os.getpid())
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):  # EAGAIN or EACCES, as the platform has it
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise self._in_use(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        stat = os.fstat(fd)
        self._fd, self._key = fd, (stat.st_dev, stat.st_ino)
        _HELD.add(self._key)
        return self

    def release(self):
        if self._fd is not None:
            _HELD.discard(self._key)
            os.close(self._fd)  # closing drops the record lock
            self._fd = None

    def _in_use(self, holder):
        return UserError(
            f"run folder {os.path.dirname(self.path)} is in use by process {holder} "
            f"(another training of this run); wait for it to end or stop it"
        )

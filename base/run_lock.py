"""One training process per run folder: an exclusive ``flock`` on ``<run_dir>/.lock``.

The kernel drops the lock when the holder's file is closed, so it is released
on any exit, ``kill -9`` included. DataLoader workers forked while it is held
share it and hold it until they exit too. Where ``fcntl`` does not exist
(Windows) no lock is taken.
"""
import os

from base.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None


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
        UserError: from :meth:`acquire`, another live process holds the lock;
            the message names the folder and that process's pid.
    """

    def __init__(self, run_dir):
        self.path, self._fd = os.path.join(run_dir, ".lock"), None

    def acquire(self):
        if fcntl is None or self._fd is not None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"run folder {os.path.dirname(self.path)} is in use by process {holder} "
                            f"(another training of this run); wait for it to end or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

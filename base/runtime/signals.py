"""Preemption: turn SIGTERM/SIGINT into a flag the loop checks between steps."""

import atexit
import contextlib
import gc
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler now, so ours (below) runs before it
import signal
import threading
import traceback


class Preempted(Exception):
    """Training stopped at a step boundary on a signal, after writing a checkpoint.

    Attributes:
        signum: the signal number (``signal.SIGTERM`` or ``signal.SIGINT``).
        exit_code: ``128 + signum``, the shell's convention for death by signal.
    """

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum


class PreemptionFlag:
    """Context manager: while active, SIGTERM and SIGINT set :attr:`signum` instead of killing.

    A second SIGINT raises ``KeyboardInterrupt`` at once (an impatient Ctrl-C
    still works). Outside the main thread it does nothing, since Python only
    lets the main thread install handlers. Previous handlers are restored on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum, self._previous = None, {}
        self._critical, self._interrupt_pending = 0, False

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.signum is not None:
            if self._critical:  # finish the critical section first, then stop
                self._interrupt_pending = True
                return
            raise KeyboardInterrupt
        self.signum = signum

    @contextlib.contextmanager
    def critical(self):
        """A section that a second Ctrl-C does not cut in half: its ``KeyboardInterrupt`` waits for the end.

        For state that must change together (weights, optimizer, counters).
        Blocking the signal would not do: the kernel hands it to another thread
        (torch's pools) and Python still runs the handler in the main thread.
        """
        self._critical += 1
        try:
            yield
        finally:
            self._critical -= 1
        if not self._critical and self._interrupt_pending:
            self._interrupt_pending = False
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


@contextlib.contextmanager
def signals_held():
    """Hold SIGTERM/SIGINT pending while DataLoader workers are forked.

    Workers start with the signals blocked (the mask is inherited) and switch
    to ignoring them in :func:`ignore_signals_in_worker`, so a signal sent to
    the whole process group can never kill a worker that has just been forked.
    The main process gets a held signal as soon as the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, PreemptionFlag.SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_signals_in_worker(worker_id):
    """DataLoader ``worker_init_fn``: workers leave SIGTERM/SIGINT to the main process.

    The main process finishes its step and checkpoints; a worker that died on
    the same signal would instead make the DataLoader raise mid-step. Ignoring
    before unblocking discards anything that arrived while the worker started.
    """
    for sig in PreemptionFlag.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, PreemptionFlag.SIGNALS)


@contextlib.contextmanager
def ctrl_c_ignored():
    """SIGINT is ignored inside (from the main thread; elsewhere nothing changes); its handler is restored after.

    For a process that has already decided to stop on Ctrl-C, while it lets
    go of what it holds: a further Ctrl-C has nothing left to stop.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def release_frames(exc):
    """Free the locals of the frames in ``exc``'s traceback, and in those of the exceptions it happened during.

    An interrupted loop over a DataLoader keeps its iterator alive there, and
    with it the worker processes, until the exception is gone; releasing the
    iterator joins the workers, which may take seconds. Called inside
    :func:`ctrl_c_ignored`, that happens at a known moment, not in a
    ``__del__`` that a Ctrl-C would turn into a traceback on stderr. Frames
    still running (the caller's) are left as they are.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        traceback.clear_frames(exc.__traceback__)
        exc = exc.__context__
    gc.collect()  # what reference cycles held


@atexit.register  # registered after multiprocessing's own exit handler, so it runs first
def _kill_leftover_workers():
    """At interpreter exit, SIGKILL daemonic children (DataLoader workers) still alive.

    multiprocessing ends them with SIGTERM and then waits; workers that ignore
    SIGTERM (see :func:`ignore_signals_in_worker`) would make that wait endless
    when an exception left a DataLoader iterator unfinished.
    """
    children = [c for c in multiprocessing.active_children() if c.daemon]
    if children and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would report these kills
    for child in children:
        child.kill()

"""What the root entry scripts call: parse, run, turn input errors into one line."""

import argparse
import sys
import threading

from base.config.parse import ConfigError, str2bool
from base.errors import UserError, one_line
from base.runtime.signals import Preempted, ctrl_c_ignored, release_frames


def main(cls, argv=None):
    """Build ``cls`` from ``argv`` (trainer or evaluator) and call its ``run()``.

    Returns:
        the process exit status: 0 on success; 1 for a :class:`UserError`
        (bad data, checkpoint, ``--resume`` target) or a non-finite loss; 2 for a bad flag or config
        value (argparse exits with 2 itself while parsing); ``128 + signal``
        (143 for SIGTERM, 130 for SIGINT) when preempted, after the checkpoint
        is written; 130 after a second Ctrl-C. ``--debug`` shows tracebacks.
    """
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--debug", type=str2bool, nargs="?", const=True, default=False)
    try:  # known before the full parse, which may itself fail on --resume
        debug = peek.parse_known_args(argv)[0].debug
    except SystemExit:
        debug = False
    prog = getattr(cls, "PROG", None) or cls.__name__
    status = _launch_processes(prog, argv)
    if status is not None:
        return status
    saved_hook = threading.excepthook
    if not debug:  # a library's background thread (TensorBoard's writer) failing: one line, not a traceback
        threading.excepthook = lambda info: print(
            f"{prog}: warning: background thread {info.thread.name if info.thread else '?'} stopped: "
            f"{one_line(info.exc_value) if info.exc_value else info.exc_type.__name__}",
            file=sys.stderr,
        )
    try:
        cls.from_argv(argv).run()
    except Preempted as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        with ctrl_c_ignored():  # stopping already: a further Ctrl-C in a DataLoader's __del__ would be a traceback
            print(f"{prog}: interrupted", file=sys.stderr)
            release_frames(exc)
        return 130
    except (UserError, ConfigError, FloatingPointError) as exc:  # NaN loss: its step is in the message
        if debug:
            raise
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    finally:
        threading.excepthook = saved_hook
    return 0


def _launch_processes(prog, argv):
    """With ``--gpu_devices 0,1,...`` (a list) and not yet under torchrun: run torchrun, one process per device.

    Returns ``None`` when there is nothing to launch (the caller goes on in
    this process), or 2 for a bad list; otherwise this process becomes
    ``torchrun`` (``os.execv``), so signals reach it directly, it passes them
    on to its processes (which checkpoint and stop together), and its exit
    status is the script's. Each process takes its device from the list by
    local rank (see :mod:`base.runtime.distributed`).
    """
    import os

    from base.runtime.distributed import launch_command, parse_devices

    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--gpu_devices", default=None)
    peek.add_argument("--print_config", nargs="?", const=True, default=False)
    for flag in ("--lr_find", "--preview_augment"):  # one-process side modes: refused in this process, in one line
        peek.add_argument(flag, default="")
    try:
        known = peek.parse_known_args(argv)[0]
    except SystemExit:
        return None
    spec, side_mode = known.gpu_devices, known.lr_find or known.preview_augment
    if parse_devices(spec) is None or "LOCAL_RANK" in os.environ or known.print_config or side_mode:
        return None  # printing starts nothing; a side mode runs in one process
    try:
        command = launch_command(spec, sys.argv[0], sys.argv[1:] if argv is None else list(argv))
        from base.runtime.device import select_device

        select_device(spec)  # every listed GPU exists: else one line here, not a failure in each process
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(command[0], command)


def exit_fast(status):
    """End an entry script with ``status``, skipping the interpreter's teardown.

    Unloading torch (and torch._dynamo, which any optimizer imports) takes ~0.6-1 s
    at exit, after all work is done. Everything a run writes is already closed
    (checkpoints fsynced and renamed, the log, ``metrics.csv``, TensorBoard and
    DataLoader workers released by ``fit``), so only W&B's service (if imported),
    stdout/stderr and logging are flushed here before ``os._exit``. Library ``atexit`` handlers do not run:
    close what needs closing before returning from ``run``.
    """
    import logging
    import os

    wandb = sys.modules.get("wandb")
    if wandb is not None:  # W&B's service process may still be writing a run's log: wait for it
        try:
            wandb.teardown()
        except Exception:  # noqa: BLE001 - the run is over; its tracker's errors were reported already
            pass
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(status)

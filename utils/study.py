"""A study: several runs of one trainer entry script in one folder (what ``utils.cv`` and ``utils.sweep`` share).

Layout of ``<output_dir>/<proj_name>/<kind>_<timestamp>/`` (``kind``: ``cv`` or ``sweep``)::

    study.json          the command that made the study (re-running it continues this folder)
    <timestamp>/        one run folder per run: each trainer is launched with
                        --output_dir <output_dir>/<proj_name> --proj_name <kind>_<timestamp>
    logs/<name>.log     a run's console output, when runs go in parallel or through SLURM

A run is found again by its config's flags (``fold``/``seed``, ``sweep_trial``), never by launch order,
so a study killed at any moment continues where it stopped: a finished run is kept, an unfinished one
with a checkpoint is resumed (``--resume <run folder>``), one without is started again.
"""

import contextlib
import datetime
import fcntl
import glob
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time

from base.config.parse import ConfigError, parse_config
from base.run.folder import TIMESTAMP_FORMAT
from base.run.status import read_status
from base.runtime.atomic_files import atomic_write
from utils.submit import trainer_class

STUDY_FILE = "study.json"
#: Flags a study sets on each run, which its trainer flags may not name (``--output_dir`` and
#: ``--proj_name`` may be given: they say where the study folder goes).
STUDY_FLAGS = ("resume", "folds", "fold", "sweep_trial")


def split_command(argv, parser):
    """``(study options, entry script, trainer flags)`` from ``argv``: the study's own flags (those of
    ``parser``, before or after the script) are taken out, the rest goes to the trainer untouched.

    ``parser`` must be built with ``allow_abbrev=False``, so that e.g. the trainer's ``--fold`` is
    not read as an abbreviation of ``--folds``. Exits 2 (``parser.error``) without an entry script.
    """
    i = next((i for i, arg in enumerate(argv) if arg.endswith(".py")), None)
    if i is None:
        if "-h" in argv or "--help" in argv:
            parser.parse_args(["--help"])  # prints the tool's own help and exits 0
        parser.error("name a trainer entry script, e.g. trainer_vanilla.py")
    opts, trainer_args = parser.parse_known_args([*argv[:i], *argv[i + 1 :]])
    return opts, argv[i], trainer_args


def resolve_trainer(script, trainer_args, prog):
    """``(trainer class, resolved args)`` of ``script`` with ``trainer_args``, checked as the trainer checks them.

    Raises:
        ConfigError: the script is not a trainer entry script, or ``trainer_args`` names a flag the study
            sets itself (:data:`STUDY_FLAGS`). A bad trainer flag exits 2 with the trainer's one line.
    """
    if not os.path.isfile(script):
        raise ConfigError(f"{script}: no such entry script")
    cls = trainer_class(script)
    named = {a.split("=", 1)[0] for a in trainer_args if a.startswith("--")}
    for flag in STUDY_FLAGS:
        if f"--{flag}" in named:
            raise ConfigError(f"--{flag}: {prog} sets it for each run; leave it out of the trainer flags")
    args, _ = parse_config(cls, trainer_args)
    return cls, args


@contextlib.contextmanager
def file_lock(path):
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block: processes that
    share a study (``--parallel`` threads, a second command, jobs on one file system) take turns."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(project_dir, kind, command, new=False):
    """The study folder for ``command`` (a JSON-able dict naming the study): the newest
    ``<project_dir>/<kind>_*`` whose ``study.json`` holds the same command, else a new one.

    Returns:
        ``(study folder, continued)``: ``continued`` is True for a folder that already existed.

    Raises:
        OSError: the folder or its ``study.json`` cannot be written.
    """
    with file_lock(os.path.join(project_dir, f".{kind}.lock")):  # two commands at once: one study
        return _find_or_create(project_dir, kind, command, new)


def _find_or_create(project_dir, kind, command, new):
    if not new:
        for path in sorted(glob.glob(os.path.join(project_dir, f"{kind}_*", STUDY_FILE)), reverse=True):
            try:
                with open(path, encoding="utf-8") as f:
                    if json.load(f).get("command") == command:
                        return os.path.dirname(path), True
            except (OSError, ValueError):
                continue  # a damaged study file is not this study
    stamp = datetime.datetime.now().strftime(TIMESTAMP_FORMAT)
    os.makedirs(project_dir, exist_ok=True)
    for i in range(1000):
        folder = os.path.join(project_dir, f"{kind}_{stamp}" + (f"_{i}" if i else ""))
        try:
            os.makedirs(folder)
            break
        except FileExistsError:
            continue
    doc = json.dumps({"kind": kind, "command": command, "created": stamp}, indent=2, sort_keys=True)
    atomic_write(os.path.join(folder, STUDY_FILE), lambda f: f.write(doc.encode("utf-8")))
    return folder, False


def study_runs(study_dir):
    """``[(run folder, config dict, status dict)]`` of the run folders in ``study_dir``, oldest first."""
    runs = []
    for config_path in sorted(glob.glob(os.path.join(study_dir, "*", "config_*.json"))):
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f).get("config", {})
        except (OSError, ValueError):
            continue
        run_dir = os.path.dirname(config_path)
        runs.append((run_dir, config, read_status(run_dir)))
    return runs


def find_run(runs, **flags):
    """The newest run of :func:`study_runs` whose config has every ``flag=value`` of ``flags``, or None."""
    matching = [r for r in runs if all(r[1].get(k) == v for k, v in flags.items())]
    return matching[-1] if matching else None


def continue_flags(run):
    """What a run of the study still needs: ``None`` (finished: keep it), ``["--resume", run folder]``
    (it has a checkpoint) or ``[]`` (start it, again)."""
    from base.checkpoint.resume import newest_checkpoint

    if run is None:
        return []
    run_dir, _, status = run
    if status.get("status") in ("finished", "pruned"):
        return None
    return ["--resume", run_dir] if newest_checkpoint(run_dir) else []


def run_flags(project_dir, study_dir, trainer_args, **flags):
    """The trainer flags of one run of the study: ``trainer_args``, then where it writes, then ``flags``
    (``--name value`` each; later flags win in argparse)."""
    out = [*trainer_args, "--output_dir", project_dir, "--proj_name", os.path.basename(study_dir)]
    for name, value in flags.items():
        out += [f"--{name}", str(value)]
    return out


class Launcher:
    """Run trainer processes, ``parallel`` at a time: here, or through ``utils.submit`` on a cluster.

    Args:
        script: the entry script. parallel: how many at once (>= 1).
        log_dir: where a run's console output goes (``<name>.log``) when ``parallel > 1`` or ``submit``;
            with one local run at a time it goes to this console.
        submit: ``None`` (local processes), or a ``utils.submit`` cluster (``slurm``, ``local``, ``debug``);
            ``submit_args`` is the string of further ``utils.submit`` flags (partition, time, GPUs).
    """

    def __init__(self, script, parallel=1, log_dir=None, submit=None, submit_args=""):
        self.script, self.parallel, self.log_dir = script, parallel, log_dir
        self.submit, self.submit_args = submit, submit_args
        self.stopping = threading.Event()  # set on Ctrl-C: no run starts after it

    def command(self, flags):
        """The command line of one run with trainer ``flags``."""
        if self.submit:
            launcher = ["-m", "utils.submit", "--cluster", self.submit, "--wait", *shlex.split(self.submit_args)]
            return [sys.executable, *launcher, self.script, *flags]
        return [sys.executable, self.script, *flags]

    def start(self, name, flags):
        """Start one run; returns ``(Popen, log file or None)``, or ``(None, None)`` when it cannot start (the
        line printed) or :attr:`stopping` is set (after a Ctrl-C nothing new starts)."""
        if self.stopping.is_set():
            return None, None
        log = None
        try:
            if self.parallel > 1 or self.submit:
                os.makedirs(self.log_dir, exist_ok=True)
                log = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
            return subprocess.Popen(self.command(flags), stdout=log, stderr=log), log
        except OSError as exc:
            print(f"{name}: cannot start: {exc}", file=sys.stderr)
            if log is not None:
                log.close()
            return None, None

    def run(self, name, flags):
        """Run one and wait (from any thread); returns its exit status, 1 when it could not start, None when
        :attr:`stopping` kept it from starting."""
        proc, log = self.start(name, flags)
        if proc is None:
            return None if self.stopping.is_set() else 1
        try:
            return proc.wait()  # never killed here: a Ctrl-C reaches the run itself, which checkpoints
        finally:
            if log is not None:
                log.close()

    def run_all(self, jobs, on_done=None):
        """Run ``jobs`` (``[(name, flags)]``), ``parallel`` at a time; returns ``{name: exit status}``.

        ``on_done(name, status)`` is called as each ends. This runs in the calling (main) thread alone and
        polls, so a Ctrl-C (SIGINT to the process group) is seen at once: nothing more starts, the running
        runs (which got it too) are waited for while they write their checkpoints, and it re-raises.
        """
        results, queue, running = {}, list(jobs), {}
        try:
            while queue or running:
                while queue and len(running) < self.parallel:
                    name, flags = queue.pop(0)
                    proc, log = self.start(name, flags)
                    if proc is None:
                        results[name] = 1
                        if on_done:
                            on_done(name, 1)
                    else:
                        running[proc] = (name, log)
                for proc in [p for p in running if p.poll() is not None]:
                    name, log = running.pop(proc)
                    if log is not None:
                        log.close()
                    results[name] = proc.returncode
                    if on_done:
                        on_done(name, proc.returncode)
                time.sleep(0.05)
        except KeyboardInterrupt:
            self.stopping.set()
            for proc, (_, log) in running.items():
                proc.wait()
                if log is not None:
                    log.close()
            raise
        return results


def run_metrics(status):
    """``{"val_<monitor>": best, "test_<metric>": value, ...}`` of a run's ``status.json`` dict (what it has)."""
    out = {}
    if status.get("monitor") and status.get("best") is not None:
        out[status["monitor"]] = float(status["best"])
    out.update({f"test_{k}": float(v) for k, v in (status.get("test") or {}).items()})
    return out


def mean_std(values):
    """``(mean, sample std)`` of ``values`` (std with n - 1, ``None`` for fewer than two; ``(None, None)``
    for none), the convention of reporting results over seeds and folds."""
    values = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def format_mean_std(mean, std, digits=4):
    """``"m ± s"`` (``"m ± n/a"`` for one value, ``""`` for none)."""
    if mean is None:
        return ""
    return f"{mean:.{digits}f} ± {'n/a' if std is None else f'{std:.{digits}f}'}"

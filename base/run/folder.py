"""Run folders, their config JSON and log file.

Layout of one run::

    <output_dir>/<proj_name>/<timestamp>/
        config_<proj_name>_<timestamp>.json
        <proj_name>_<timestamp>_log.txt
        metrics.csv          one row per validation (see base.run.row_files)
        summary/             TensorBoard events
        <model>_best_ckpt.pth, <model>_last_ckpt.pth, ...

``<proj_name>`` and ``<model>`` (``--model_type``, else the model's class name: ``checkpoint_prefix``) in
file names are made safe by :func:`base.run.file_names.file_name_part` (``timm/resnet18`` -> ``timm-resnet18``).
"""

import datetime
import json
import logging
import os
import re
import subprocess
import sys

import torch

from base.errors import UserError
from base.run.lock import process_alive
from base.runtime.atomic_files import atomic_write

TIMESTAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"


class RunDirError(UserError, OSError):
    """A run folder or a file in it cannot be created or written; the message names it (exit status 1).

    Also an ``OSError``, so callers that handle failed writes as OS errors keep doing so.
    """


def cannot_write_error(path, exc, what="write"):
    """A one-line :class:`RunDirError` for ``exc``, a failed write of ``path``; says when its folder is gone."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return RunDirError(
            f"cannot {what} {path}: the run folder {folder} is gone (deleted while the run was using it?)"
        )
    return RunDirError(f"cannot {what} {path}: {exc.strerror or exc}")


def create_run_dir(output_dir, proj_name):
    """Create a new ``<output_dir>/<proj_name>/<timestamp>`` folder.

    Two runs started in the same second get ``<timestamp>_1``, ``_2``, ...

    Returns:
        ``(path, timestamp)``.

    Raises:
        RunDirError: the folder cannot be created (``<output_dir>/<proj_name>``
            read-only or a file, ...), or ``proj_name`` does not name one folder
            right under ``output_dir`` (``..``, ``a/b``); one line naming the folder.
    """
    stamp = datetime.datetime.now().strftime(TIMESTAMP_FORMAT)
    parent = os.path.join(output_dir, proj_name)
    # Behind --proj_name's own check: never create anything outside --output_dir. Compared by name,
    # not by resolving links: a project folder the user linked to another disk is theirs to choose.
    if os.path.dirname(os.path.normpath(os.path.abspath(parent))) != os.path.normpath(os.path.abspath(output_dir)):
        raise RunDirError(
            f"--proj_name {proj_name!r}: {parent} is outside --output_dir {output_dir} or "
            f"not right under it; give one folder name"
        )
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        reason = "a file is in the way" if os.path.exists(parent) else exc.strerror or exc
        raise RunDirError(
            f"--output_dir {output_dir}: cannot create the folder {parent} for the runs of "
            f"--proj_name {proj_name}: {reason}"
        ) from None
    for i in range(1000):
        name = stamp if i == 0 else f"{stamp}_{i}"
        try:
            os.makedirs(os.path.join(parent, name))
            return os.path.join(parent, name), name
        except FileExistsError:
            continue
        except OSError as exc:  # e.g. a read-only <output_dir>/<proj_name>
            raise RunDirError(
                f"--output_dir {output_dir}: cannot create a run folder in {parent}: {exc.strerror or exc}"
            ) from None
    raise RunDirError(
        f"--output_dir {output_dir}: could not create a run folder in {parent} (1000 runs started in the same second?)"
    )


# The project's folder: its git checkout is the code a run used.
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(folder, *args):
    """``git <args>``'s stdout in ``folder``, or ``None`` when git is missing or fails (not a checkout)."""
    try:
        # --no-optional-locks: only look, never rewrite the index (other git commands may be running).
        out = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=folder, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit(folder=PROJECT_DIR):
    """The current git commit (40 hex digits) of the checkout holding ``folder``, or ``None`` outside one."""
    return (_git(folder, "rev-parse", "HEAD") or "").strip() or None


def git_dirty(folder=PROJECT_DIR):
    """Whether the checkout holding ``folder`` has uncommitted changes.

    Returns:
        ``True`` when ``git status --porcelain`` lists anything (modified,
        staged or untracked files not ignored), ``False`` when it lists
        nothing, ``None`` without git or outside a checkout.
    """
    out = _git(folder, "status", "--porcelain")
    return None if out is None else bool(out.strip())


def write_config(path, args, provenance, extra=None):
    """Write the resolved flags, their origins and environment facts as JSON.

    The file can be passed back as ``--config`` to start a new run from it.
    Written atomically: a crash leaves the old file or the new one.

    ``meta`` records the git commit and ``git_dirty`` (uncommitted changes:
    the commit alone does not give the code; ``None`` without git).

    Raises:
        RunDirError: the file cannot be written (any previous file is left intact).
    """
    doc = {
        "config": vars(args),
        "provenance": provenance,
        "meta": {
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "python": sys.version.split()[0],
            "git_commit": git_commit(),
            "git_dirty": git_dirty(),
            "argv": sys.argv,
            **(extra or {}),
        },
    }
    _write_json(path, doc)


def _version(package):
    """``package``'s installed version from its metadata (importing torchvision just for this costs ~1 s)."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _write_json(path, doc):
    """Atomically write ``doc`` as JSON; raises :class:`RunDirError` naming ``path`` (old file intact)."""
    text = json.dumps(doc, indent=2, sort_keys=True, default=str)
    try:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    except OSError as exc:
        raise cannot_write_error(path, exc) from exc


#: ``extra=`` of a record for the run's log file alone, not stderr: what the console shows already in
#: another form (the entry script's one error line).
FILE_ONLY = {"console": False}


def setup_logger(name, log_path=None, level=logging.INFO):
    """A logger writing ``time level message`` lines to stderr and ``log_path`` (appended).

    Its handlers are also attached to the root logger (whose level is lowered
    to ``level`` if higher) until :func:`close_logger`, so what a task or hook
    logs with ``logging.getLogger(__name__)`` reaches the console and the run log too.
    A record logged with ``extra=FILE_ONLY`` goes to ``log_path`` only.
    """
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False  # its records reach the handlers once, not again through the root
    close_logger(logger)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    handlers[0].addFilter(lambda record: getattr(record, "console", True))
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="a", encoding="utf-8"))
    root = logging.getLogger()
    logger.root_level = root.level  # restored by close_logger
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.setLevel(level)
        logger.addHandler(handler)
        root.addHandler(handler)
    return logger


def close_logger(logger):
    """Detach and close ``logger``'s handlers (the run's log file among them), here and on the root logger.

    The root logger's level is set back, and ``logger`` is dropped from
    ``logging``'s registry, so a process that fits many trainers (a notebook, a
    sweep) does not accumulate loggers, open files or handlers.
    """
    root = logging.getLogger()
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        root.removeHandler(handler)
        handler.close()
    if hasattr(logger, "root_level"):
        root.setLevel(logger.root_level)
        del logger.root_level
    logging.Logger.manager.loggerDict.pop(logger.name, None)


def record_resume(path, args, provenance, checkpoint, changes=None):
    """Update a run's config JSON on resume: new values win, each resume is listed in ``meta``.

    ``changes`` (``{flag: (run's value, new value)}``) is recorded with the resume as ``changed``.

    A missing or unreadable file is rewritten from scratch with what is known now.
    Written atomically: a crash leaves the old file or the new one.

    Raises:
        RunDirError: the file cannot be written (it is left as it was).
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = {}
    # A hand-edited file may hold anything: keep what fits, rebuild the rest.
    doc = doc if isinstance(doc, dict) else {}
    meta = doc["meta"] = doc["meta"] if isinstance(doc.get("meta"), dict) else {}
    meta["resumes"] = meta["resumes"] if isinstance(meta.get("resumes"), list) else []
    doc["config"], doc["provenance"] = vars(args), provenance
    meta["resumes"].append(
        {
            "time": datetime.datetime.now().strftime(TIMESTAMP_FORMAT),
            "checkpoint": checkpoint,
            "argv": sys.argv,
            "changed": {k: list(v) for k, v in (changes or {}).items()},
        }
    )
    _write_json(path, doc)


# The temporary name base.runtime.atomic_files.atomic_write gives a file while writing it.
_TEMP_FILE = re.compile(r"^\..+\.tmp(\d+)$")


def remove_stale_temp_files(run_dir):
    """Delete ``.<name>.tmp<pid>`` files in ``run_dir`` whose writer process is gone.

    :func:`base.runtime.atomic_files.atomic_write` writes under that name, then renames;
    a writer killed in between leaves the file behind for good. Files of live
    processes (this one included) may still be renamed and are kept.
    Subfolders are not searched. The pid test sees only this machine's
    processes: do not call it while another machine writes into ``run_dir``.

    Returns:
        the removed paths (list of str).

    Raises:
        OSError: ``run_dir`` cannot be listed, or a stale file cannot be removed.
    """
    removed = []
    with os.scandir(run_dir) as entries:
        for entry in entries:
            m = _TEMP_FILE.match(entry.name)
            if not m or not entry.is_file(follow_symlinks=False) or process_alive(int(m.group(1))):
                continue
            try:
                os.remove(entry.path)
            except FileNotFoundError:  # removed meanwhile
                continue
            removed.append(entry.path)
    return removed

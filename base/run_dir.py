"""Run folders, their config JSON, log file, TensorBoard events and ``metrics.csv``.

Layout of one run::

    <output_dir>/<proj_name>/<timestamp>/
        config_<proj_name>_<timestamp>.json
        <proj_name>_<timestamp>_log.txt
        metrics.csv          one row per validation
        summary/             TensorBoard events
        <model>_best_ckpt.pth, <model>_last_ckpt.pth, ...
"""
import csv
import datetime
import io
import json
import logging
import os
import re
import subprocess
import sys

import torch
import torchvision

from base.checkpoint import atomic_write

TIMESTAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"


def create_run_dir(output_dir, proj_name):
    """Create a new ``<output_dir>/<proj_name>/<timestamp>`` folder.

    Two runs started in the same second get ``<timestamp>_1``, ``_2``, ...

    Returns:
        ``(path, timestamp)``.

    Raises:
        OSError: the folder cannot be created (e.g. ``output_dir`` unwritable).
    """
    stamp = datetime.datetime.now().strftime(TIMESTAMP_FORMAT)
    parent = os.path.join(output_dir, proj_name)
    os.makedirs(parent, exist_ok=True)
    for i in range(1000):
        name = stamp if i == 0 else f"{stamp}_{i}"
        try:
            os.makedirs(os.path.join(parent, name))
            return os.path.join(parent, name), name
        except FileExistsError:
            continue
    raise OSError(f"could not create a run folder under {parent}")


def git_commit():
    """The project's current git commit, or ``None`` outside a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_config(path, args, provenance, extra=None):
    """Write the resolved flags, their origins and environment facts as JSON.

    The file can be passed back as ``--config`` to start a new run from it.
    Written atomically: a crash leaves the old file or the new one.

    Raises:
        OSError: the file cannot be written (any previous file is left intact).
    """
    doc = {
        "config": vars(args),
        "provenance": provenance,
        "meta": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                 "python": sys.version.split()[0], "git_commit": git_commit(),
                 "argv": sys.argv, **(extra or {})},
    }
    _write_json(path, doc)


def _write_json(path, doc):
    text = json.dumps(doc, indent=2, sort_keys=True, default=str)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def setup_logger(name, log_path=None, level=logging.INFO):
    """A logger writing ``time level message`` lines to stderr and ``log_path`` (appended)."""
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    close_logger(logger)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)]
    if log_path:
        handlers.append(logging.FileHandler(log_path, mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def close_logger(logger):
    """Detach and close ``logger``'s handlers (the run's log file among them)."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


class MetricsCSV:
    """Append-only ``metrics.csv``; the header is fixed by the first row written.

    Keys that a later row lacks are left empty; keys it adds are dropped with
    the header unchanged, so the file always parses as one table.
    """

    def __init__(self, path):
        self.path = path
        self.fields = None
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            with open(path, newline="", encoding="utf-8") as f:
                self.fields = next(csv.reader(f))

    def drop_rows_after(self, step):
        """Remove rows logged after ``step`` (a resume redoes that work and logs it again).

        The file is rewritten atomically: a crash leaves every row or the kept ones.

        Raises:
            OSError: the file cannot be rewritten (it is left as it was).
        """
        if self.fields is None:
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if int(float(r.get("step") or 0)) <= step]
        if len(kept) == len(rows):
            return
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.fields)
        writer.writeheader()
        writer.writerows(kept)
        atomic_write(self.path, lambda f: f.write(text.getvalue().encode("utf-8")))

    def write(self, row):
        new = self.fields is None
        if new:
            self.fields = list(row)
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(row)


def record_resume(path, args, provenance, checkpoint, changes=None):
    """Update a run's config JSON on resume: new values win, each resume is listed in ``meta``.

    ``changes`` (``{flag: (run's value, new value)}``) is recorded with the resume as ``changed``.

    A missing or unreadable file is rewritten from scratch with what is known now.
    Written atomically: a crash leaves the old file or the new one.

    Raises:
        OSError: the file cannot be written (it is left as it was).
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        doc = {"meta": {}}
    doc["config"], doc["provenance"] = vars(args), provenance
    doc.setdefault("meta", {}).setdefault("resumes", []).append(
        {"time": datetime.datetime.now().strftime(TIMESTAMP_FORMAT), "checkpoint": checkpoint,
         "argv": sys.argv, "changed": {k: list(v) for k, v in (changes or {}).items()}})
    _write_json(path, doc)


# The temporary name base.checkpoint.atomic_write gives a file while writing it.
_TEMP_FILE = re.compile(r"^\..+\.tmp(\d+)$")


def _process_alive(pid):
    """Whether process ``pid`` exists on this machine (this process counts as alive)."""
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


def remove_stale_temp_files(run_dir):
    """Delete ``.<name>.tmp<pid>`` files in ``run_dir`` whose writer process is gone.

    :func:`base.checkpoint.atomic_write` writes under that name, then renames;
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
            if not m or not entry.is_file(follow_symlinks=False) or _process_alive(int(m.group(1))):
                continue
            try:
                os.remove(entry.path)
            except FileNotFoundError:  # removed meanwhile
                continue
            removed.append(entry.path)
    return removed

"""``<run>/status.json``: what state a run is in, kept up to date by its trainer (read by ``utils.runs``).

Written (atomically, by rank 0) when a launch starts (``running``: a new run
as soon as its folder exists, so an error while its data and model are built
is recorded too; a resumed run once its checkpoint has loaded), after every
validation (progress, best metric), and when it ends: ``finished``,
``preempted`` (SIGTERM/SIGINT, a checkpoint to resume from), ``crashed``
(an exception; its line, ``<type>: <message>``, is kept in ``error``) or
``pruned`` (a sweep gave the trial up after a validation: the trainer's
``request_stop``; untested, its one-line reason kept in ``stop_reason``; a
resume trains it no further). A process
killed without warning (``kill -9``, a lost node) leaves ``running`` behind; the
run folder's lock (:mod:`base.run.lock`) tells such a run from a live one.

Fields: ``status``, ``resumes`` (launches after the first), ``trainer``,
``model``, ``data``, ``epoch``/``global_step`` done, ``planned_epochs``/
``planned_steps``, ``monitor`` (``val_<metric>``), ``monitor_mode``, ``best``
(its best value or ``None``), ``test`` (``{metric: float}``), ``wall_seconds``
(all launches together, seconds), ``started``/``updated`` (local time,
``YYYY-mm-dd HH:MM:SS``), ``error``, ``stop_reason``, ``pid``, ``host``.
"""

import datetime
import json
import logging
import math
import os
import socket
import time

from base.errors import error_line

STATUS_FILE = "status.json"
STATES = ("running", "finished", "preempted", "crashed", "pruned")


def read_status(run_dir, strict=False):
    """The run's status dict, or ``{}`` when it has none.

    A file that cannot be read as a JSON object gives ``{}`` too, unless
    ``strict``: then it raises ``ValueError`` with one line naming the file.
    """
    path = os.path.join(run_dir, STATUS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        if strict:
            raise ValueError(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None
        return {}
    if not isinstance(doc, dict):
        if strict:
            raise ValueError(f"{path} holds a JSON {type(doc).__name__}, not an object")
        return {}
    return doc


def _now():
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")


def _finite(value):
    """``value`` as a float, ``None`` for +-inf or NaN (no best yet): JSON has no infinity."""
    return float(value) if math.isfinite(value) else None


class RunStatus:
    """The trainer's side of ``status.json``: :meth:`begin`, :meth:`progress`, :meth:`end`.

    Raises:
        RunDirError: from any method, the file cannot be written (names it).
    """

    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, STATUS_FILE)
        self.doc, self._start, self._wall_before = {}, time.monotonic(), 0.0

    def begin(self, facts, position, resumed):
        """Mark the launch ``running``; a resumed run counts one more resume and keeps its wall time.

        ``facts``: ``{"trainer", "model", "data", "monitor", "monitor_mode"}`` of the run; ``position``: see
        :meth:`progress`.
        """
        try:
            old = read_status(os.path.dirname(self.path), strict=True) if resumed else {}
        except ValueError as exc:  # say so: the count of launches and the wall time start again
            logging.getLogger(__name__).warning("%s: the run's resumes and wall time so far are lost", exc)
            old = {}
        self._start, self._wall_before = time.monotonic(), float(old.get("wall_seconds") or 0.0)
        self.doc = {
            **old,
            **facts,
            "resumes": int(old.get("resumes", -1)) + 1,
            "started": old.get("started") or _now(),
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "error": None,
            "stop_reason": None,
        }
        self._write("running", position)

    def progress(self, position):
        """Record the position and best metric (after a validation): ``position`` is ``{"epoch", "global_step",
        "planned_epochs", "planned_steps", "best"}`` (``best``: the monitored metric's best value, or an infinity)."""
        self._write("running", position)

    def end(self, status, position, test=None, error=None, reason=None):
        """Record how the launch ended: ``status`` in :data:`STATES`; ``error`` an exception or ``None``;
        ``reason`` why a stop request ended it (``pruned``), or ``None``."""
        if test is not None:
            self.doc["test"] = {k: float(v) for k, v in test.items()}
        if error is not None:
            self.doc["error"] = error_line(error)
        if reason is not None:
            self.doc["stop_reason"] = reason
        self._write(status, position)

    def _write(self, status, position):
        from base.run.folder import cannot_write_error  # (torch: kept out of utils.runs's import)

        self.doc.update(
            {
                "status": status,
                **position,
                "best": _finite(position["best"]),
                "wall_seconds": round(self._wall_before + time.monotonic() - self._start, 3),
                "updated": _now(),
            }
        )
        text = json.dumps(self.doc, indent=2, sort_keys=True)
        # The temporary name of base.runtime.atomic_files.atomic_write: a stale one is removed at the next launch.
        tmp = os.path.join(os.path.dirname(self.path), f".{STATUS_FILE}.tmp{os.getpid()}")
        try:
            # Renamed into place, so a reader sees the old file or the new one; not fsynced: it is
            # rewritten at every validation, and after a power cut the run's checkpoints say the rest.
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            raise cannot_write_error(self.path, exc) from None

"""Where a run's numbers go: ``--loggers tensorboard,csv,wandb,mlflow``, each a :class:`Tracker`.

A tracker records metrics and images (Python's ``logging`` loggers record the
run's text log; they are not trackers). A task or hook never calls a tracker:
it calls ``trainer.log_scalar`` (or ``log_image``) and the trainer hands the
values to every chosen tracker through a :class:`TrackerSet`. Call order for
one launch of a run (a resume is a new launch of the same run)::

    start(run)                 once, after the run folder and any resumed state are ready
    [ log_scalars(scalars, step) | log_image(name, image, step) | rewind(states, step) ]*
    finish(status, final, step)  once: status 'finished', 'preempted', 'crashed' or 'pruned'
    close()                    always (also after a failed start)

What each tracker receives: the resolved config with provenance at ``start``
(TensorBoard as a text table, W&B as the run's config, MLflow as params and
tags; ``csv`` relies on the config JSON beside it), ``train/*`` scalars every
``--log_every_steps``, ``val/*`` scalars at each validation, ``test/*`` at the
end, and the final metrics at ``finish``. ``rewind`` comes when the trainer
loads a checkpoint mid-launch (``--nonfinite rollback``): what was logged after
it is forgotten where the tracker can (as a resume does at ``start``), since the
steps after it are redone and logged again.

Each ``(name, step)`` is recorded once by each tracker, also across launches.
A resumed launch redoes the steps after ``RunInfo.step`` and logs them again,
so each tracker forgets or skips what earlier launches logged there: ``csv``
drops those rows, TensorBoard purges them (``purge_step``), MLflow skips the
points its run holds, W&B ignores steps below its run's last. What a launch
that trained nothing would repeat (the test, the final metrics) the trainer
does not log again.

Trackers that write into the run folder (``tensorboard``, ``csv``; see
:mod:`base.run.file_trackers`) fail like the checkpoints would: a write error
stops the run with one line naming the file. Trackers outside it (``wandb``,
``mlflow``: a server, another disk; see :mod:`base.run.external_trackers`) are
best-effort: their first error is logged once as a warning, that tracker is
switched off for the rest of the launch, and training goes on.
"""

import dataclasses
import importlib.util

from base.errors import ConfigError

#: ``--loggers`` name -> (module:class of its tracker, the pip package it needs or None).
TRACKERS = {
    "tensorboard": ("base.run.file_trackers:TensorBoardTracker", None),
    "csv": ("base.run.file_trackers:CSVTracker", None),
    "wandb": ("base.run.external_trackers:WandbTracker", "wandb"),
    "mlflow": ("base.run.external_trackers:MLflowTracker", "mlflow-skinny"),
}


@dataclasses.dataclass
class RunInfo:
    """What a tracker may know about the run it records.

    ``config`` is the resolved flags (``{flag: value}``), ``provenance`` where each
    came from, ``step`` the optimizer step the launch starts from (its
    rows after it are redone and logged again), ``resumed`` whether this
    launch continues an existing run folder. ``redo_validation``: the launch
    starts inside the validation at step ``step + 1`` and does it again, so at
    that step only the validation's points come again, not the training's.
    ``states``: each tracker's :meth:`Tracker.state_dict` as saved in the
    checkpoint the launch resumes from (``{tracker name: state}``; empty for a new run).
    """

    run_dir: str
    proj_name: str
    timestamp: str
    output_dir: str
    trainer: str
    config: dict
    provenance: dict
    config_path: str
    step: int = 0
    resumed: bool = False
    redo_validation: bool = False
    states: dict = dataclasses.field(default_factory=dict)


class Tracker:
    """A tracker does nothing by default; override what it supports.

    ``best_effort`` trackers (those outside the run folder) may fail without
    stopping training (see the module docstring).
    """

    name = ""
    best_effort = False

    def start(self, run):
        """Open the tracker for ``run`` (a :class:`RunInfo`)."""

    def log_scalars(self, scalars, step):
        """Record ``{name: float}`` at optimizer step ``step`` (int)."""

    def log_image(self, name, image, step):
        """Record ``image`` (a float tensor ``(3, H, W)`` in [0, 1]) at ``step``."""

    def flush(self):
        """Make what was logged so far durable (called at the end of training and of the test)."""

    def rewind(self, states, step):
        """Forget what was logged after a checkpoint the launch has just gone back to; it is logged again.

        ``states`` is ``{tracker name: state}`` as saved in that checkpoint (this
        tracker's :meth:`state_dict` under its :attr:`name`, as :attr:`RunInfo.states`),
        ``step`` the optimizer step the launch goes on from (int): the points up to
        it stay. A tracker that cannot forget leaves what it logged.
        """

    def state_dict(self):
        """What a resume from a checkpoint saved now must know of this tracker (plain types), or ``None``.

        Saved in every checkpoint and handed back in :attr:`RunInfo.states` when a launch resumes from it.
        """

    def finish(self, status, final, step):
        """End the launch at optimizer step ``step``: ``status`` 'finished' | 'preempted' | 'crashed' | 'pruned';
        ``final`` ``{name: float}`` (the best validation value as ``best/val_<metric>`` and the test
        metrics as ``test/<metric>``, the latter already given to :meth:`log_scalars` at ``step``;
        empty when an earlier launch finished the run at ``step`` and got them)."""

    def close(self):
        """Release files, threads or connections; called once, whatever happened before."""


def parse_tracker_names(value):
    """``"tensorboard,csv"`` -> ``["tensorboard", "csv"]``, checked.

    Raises:
        ConfigError: an unknown name, or a chosen tracker whose package is not
            installed (the message says what to ``pip install``).
    """
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"--loggers={value!r}: unknown logger {name!r} (choose from {', '.join(TRACKERS)})")
        module = TRACKERS[name][1]
        if module and importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"--loggers={value!r}: the {name} logger needs the {module} package: pip install {module}"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"--loggers={value!r}: a logger is named twice")
    return names


def build_trackers(names):
    """One fresh :class:`Tracker` per name of :func:`parse_tracker_names` (a list, in that order)."""
    trackers = []
    for name in names:
        module, cls = TRACKERS[name][0].split(":")
        trackers.append(getattr(importlib.import_module(module), cls)())
    return trackers


class TrackerSet:
    """Hands every call to each tracker; switches off a best-effort one at its first error.

    ``loggers`` is the list of :class:`Tracker` (the ``--loggers`` of the run).
    Only the trackers whose ``start`` succeeded get the later calls (a tracker that
    failed to start has nothing to log to or finish), and each is finished at
    most once (a failed ``finish`` makes the launch a crash, whose own ``finish``
    reaches only the trackers not finished yet). ``warn(message)`` reports a
    best-effort tracker's error (once per tracker).
    """

    def __init__(self, loggers=(), warn=print):
        self.loggers, self.warn, self._closed = list(loggers), warn, False
        self._started, self._finished = [], []

    def __bool__(self):
        return bool(self._started)

    def _call_one(self, tracker, method, *args):
        """``tracker.method(*args)``; True if it returned. A best-effort tracker's error switches it off."""
        try:
            getattr(tracker, method)(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - a tracker may fail in any way; the run must not
            if not tracker.best_effort:
                raise
            self._started = [other for other in self._started if other is not tracker]
            self.warn(
                f"the {tracker.name} logger failed in {method} ({type(exc).__name__}: "
                f"{(str(exc).strip().splitlines() or [''])[0]}); it is off for the rest of this run, "
                f"training goes on"
            )
            try:
                tracker.close()
            except Exception:  # noqa: BLE001 - already reported
                pass
            return False

    def _call(self, method, *args):
        for tracker in list(self._started):
            self._call_one(tracker, method, *args)

    def start(self, run):
        for tracker in self.loggers:  # close() releases the trackers whose start failed half-way
            if self._call_one(tracker, "start", run):
                self._started.append(tracker)

    def state_dict(self):
        """``{tracker name: state}`` of the started trackers that have one (see :meth:`Tracker.state_dict`)."""
        return {tracker.name: state for tracker in self._started if (state := tracker.state_dict()) is not None}

    def log_scalars(self, scalars, step):
        if scalars:
            self._call("log_scalars", scalars, step)

    def log_image(self, name, image, step):
        self._call("log_image", name, image, step)

    def flush(self):
        self._call("flush")

    def rewind(self, states, step):
        self._call("rewind", states, step)

    def finish(self, status, final, step):
        for tracker in [lg for lg in self._started if lg not in self._finished]:
            self._finished.append(tracker)  # once, even if it raises here
            self._call_one(tracker, "finish", status, final, step)

    def close(self):
        """Close every tracker once; errors of one do not keep the others open."""
        if self._closed:
            return
        self._closed = True
        for tracker in self.loggers:
            try:
                tracker.close()
            except Exception:  # noqa: BLE001 - closing after the run: nothing left to save
                pass

"""Where a run's numbers go: ``--loggers tensorboard,csv,wandb,mlflow`` behind one small interface.

A task or hook never calls a tracker: it calls ``trainer.log_scalar`` (or
``log_image``) and the trainer hands the values to every chosen logger
through a :class:`LoggerSet`. Call order for one launch of a run (a resume
is a new launch of the same run)::

    start(run)                 once, after the run folder and any resumed state are ready
    [ log_scalars(scalars, step) | log_image(name, image, step) | rewind(states, step) ]*
    finish(status, final, step)  once: status 'finished', 'preempted' or 'crashed'
    close()                    always (also after a failed start)

What each logger receives: the resolved config with provenance at ``start``
(TensorBoard as a text table, W&B as the run's config, MLflow as params and
tags; ``csv`` relies on the config JSON beside it), ``train/*`` scalars every
``--log_every_steps``, ``val/*`` scalars at each validation, ``test/*`` at the
end, and the final metrics at ``finish``. ``rewind`` comes when the trainer
loads a checkpoint mid-launch (``--nonfinite rollback``): what was logged after
it is forgotten where the logger can (as a resume does at ``start``), since the
steps after it are redone and logged again.

Each ``(name, step)`` is recorded once by each logger, also across launches.
A resumed launch redoes the steps after ``RunInfo.step`` and logs them again,
so each logger forgets or skips what earlier launches logged there: ``csv``
drops those rows, TensorBoard purges them (``purge_step``), MLflow skips the
points its run holds, W&B ignores steps below its run's last. What a launch
that trained nothing would repeat (the test, the final metrics) the trainer
does not log again.

Loggers that write into the run folder (``tensorboard``, ``csv``) fail like the
checkpoints would: a write error stops the run with one line naming the file.
Trackers outside it (``wandb``, ``mlflow``: a server, another disk) are
best-effort: their first error is logged once as a warning, that tracker is
switched off for the rest of the launch, and training goes on.
"""

import csv
import dataclasses
import importlib.util
import os

from base.config.parse import ConfigError
from base.run.folder import cannot_write_error
from base.run.row_files import resume_rows, step_of

#: Logger name -> (module:class, the pip package it needs or None).
LOGGERS = {
    "tensorboard": ("base.run.trackers:TensorBoardLogger", None),
    "csv": ("base.run.trackers:CSVLogger", None),
    "wandb": ("base.run.external_trackers:WandbLogger", "wandb"),
    "mlflow": ("base.run.external_trackers:MLflowLogger", "mlflow-skinny"),
}


@dataclasses.dataclass
class RunInfo:
    """What a logger may know about the run it logs.

    ``config`` is the resolved flags (``{flag: value}``), ``provenance`` where each
    came from, ``step`` the optimizer step the launch starts from (its
    rows after it are redone and logged again), ``resumed`` whether this
    launch continues an existing run folder. ``redo_validation``: the launch
    starts inside the validation at step ``step + 1`` and does it again, so at
    that step only the validation's points come again, not the training's.
    ``states``: each logger's :meth:`RunLogger.state_dict` as saved in the
    checkpoint the launch resumes from (``{logger name: state}``; empty for a new run).
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


class RunLogger:
    """A logger does nothing by default; override what it supports.

    ``best_effort`` loggers (trackers outside the run folder) may fail without
    stopping training (see the module docstring).
    """

    name = ""
    best_effort = False

    def start(self, run):
        """Open the logger for ``run`` (a :class:`RunInfo`)."""

    def log_scalars(self, scalars, step):
        """Record ``{name: float}`` at optimizer step ``step`` (int)."""

    def log_image(self, name, image, step):
        """Record ``image`` (a float tensor ``(3, H, W)`` in [0, 1]) at ``step``."""

    def flush(self):
        """Make what was logged so far durable (called at the end of training and of the test)."""

    def rewind(self, states, step):
        """Forget what was logged after a checkpoint the launch has just gone back to; it is logged again.

        ``states`` is ``{logger name: state}`` as saved in that checkpoint (this
        logger's :meth:`state_dict` under its :attr:`name`, as :attr:`RunInfo.states`),
        ``step`` the optimizer step the launch goes on from (int): the points up to
        it stay. A logger that cannot forget leaves what it logged.
        """

    def state_dict(self):
        """What a resume from a checkpoint saved now must know of this logger (plain types), or ``None``.

        Saved in every checkpoint and handed back in :attr:`RunInfo.states` when a launch resumes from it.
        """

    def finish(self, status, final, step):
        """End the launch at optimizer step ``step``: ``status`` 'finished' | 'preempted' | 'crashed';
        ``final`` ``{name: float}`` (the best validation value as ``best/val_<metric>`` and the test
        metrics as ``test/<metric>``, the latter already given to :meth:`log_scalars` at ``step``;
        empty when an earlier launch finished the run at ``step`` and got them)."""

    def close(self):
        """Release files, threads or connections; called once, whatever happened before."""


def parse_logger_names(value):
    """``"tensorboard,csv"`` -> ``["tensorboard", "csv"]``, checked.

    Raises:
        ConfigError: an unknown name, or a chosen tracker whose package is not
            installed (the message says what to ``pip install``).
    """
    names = [n.strip().lower() for n in str(value).split(",") if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise ConfigError(f"--loggers={value!r}: unknown logger {name!r} (choose from {', '.join(LOGGERS)})")
        module = LOGGERS[name][1]
        if module and importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"--loggers={value!r}: the {name} logger needs the {module} package: pip install {module}"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"--loggers={value!r}: a logger is named twice")
    return names


def build_loggers(names):
    """One fresh logger per name of :func:`parse_logger_names`."""
    loggers = []
    for name in names:
        module, cls = LOGGERS[name][0].split(":")
        loggers.append(getattr(importlib.import_module(module), cls)())
    return loggers


class LoggerSet:
    """Hands every call to each logger; switches off a best-effort one at its first error.

    Only the loggers whose ``start`` succeeded get the later calls (a logger that
    failed to start has nothing to log to or finish), and each is finished at
    most once (a failed ``finish`` makes the launch a crash, whose own ``finish``
    reaches only the loggers not finished yet). ``warn(message)`` reports a
    best-effort logger's error (once per logger).
    """

    def __init__(self, loggers=(), warn=print):
        self.loggers, self.warn, self._closed = list(loggers), warn, False
        self._started, self._finished = [], []

    def __bool__(self):
        return bool(self._started)

    def _call_one(self, logger, method, *args):
        """``logger.method(*args)``; True if it returned. A best-effort logger's error switches it off."""
        try:
            getattr(logger, method)(*args)
            return True
        except Exception as exc:  # noqa: BLE001 - a tracker may fail in any way; the run must not
            if not logger.best_effort:
                raise
            self._started = [other for other in self._started if other is not logger]
            self.warn(
                f"the {logger.name} logger failed in {method} ({type(exc).__name__}: "
                f"{(str(exc).strip().splitlines() or [''])[0]}); it is off for the rest of this run, "
                f"training goes on"
            )
            try:
                logger.close()
            except Exception:  # noqa: BLE001 - already reported
                pass
            return False

    def _call(self, method, *args):
        for logger in list(self._started):
            self._call_one(logger, method, *args)

    def start(self, run):
        for logger in self.loggers:  # close() releases the loggers whose start failed half-way
            if self._call_one(logger, "start", run):
                self._started.append(logger)

    def state_dict(self):
        """``{logger name: state}`` of the started loggers that have one (see :meth:`RunLogger.state_dict`)."""
        return {logger.name: state for logger in self._started if (state := logger.state_dict()) is not None}

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
        for logger in [lg for lg in self._started if lg not in self._finished]:
            self._finished.append(logger)  # once, even if it raises here
            self._call_one(logger, "finish", status, final, step)

    def close(self):
        """Close every logger once; errors of one do not keep the others open."""
        if self._closed:
            return
        self._closed = True
        for logger in self.loggers:
            try:
                logger.close()
            except Exception:  # noqa: BLE001 - closing after the run: nothing left to save
                pass


def _hparam_value(value):
    """A config value as TensorBoard's HParams plugin takes it (bool, int, float or str)."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardLogger(RunLogger):
    """TensorBoard events in ``<run>/summary``; the config as a text table; HParams at the end.

    A resumed launch opens its events file with ``purge_step`` one past its start
    step: TensorBoard then hides the earlier launches' points from that step on,
    which this launch logs again as it redoes those steps. TensorBoard purges
    whole steps, so a redone validation's step is kept, training points and all
    (its validation points show twice only if they were logged before the failure).
    """

    name = "tensorboard"

    def __init__(self):
        self.writer, self.run = None, None

    def start(self, run):
        self.run, self.folder = run, os.path.join(run.run_dir, "summary")
        self._open(run.step + 1 + run.redo_validation if run.resumed else None)
        rows = [f"| {k} | {v!r} | {run.provenance.get(k, '')} |" for k, v in sorted(run.config.items())]
        self._write(
            lambda: self.writer.add_text(
                "config", "\n".join(["| flag | value | from |", "|---|---|---|", *rows]), run.step
            )
        )

    def _open(self, purge_step):
        """Start a new events file; TensorBoard hides the points at ``purge_step`` and after in the older ones."""
        from torch.utils.tensorboard import SummaryWriter  # slow import; only for training

        def open_writer():
            self.writer = SummaryWriter(self.folder, purge_step=purge_step)

        self._write(open_writer, "create TensorBoard events in", self.folder)

    def _write(self, fn, what="write TensorBoard events", path=None):
        try:
            fn()
        except OSError as exc:  # e.g. the run folder was deleted: one line that says so
            raise cannot_write_error(path or os.path.join(self.folder, "events"), exc, what) from None

    def log_scalars(self, scalars, step):
        def write():
            for name, value in scalars.items():
                self.writer.add_scalar(name, value, step)

        self._write(write)

    def log_image(self, name, image, step):
        self._write(lambda: self.writer.add_image(name, image, step))

    def flush(self):
        self._write(self.writer.flush)

    def rewind(self, states, step):
        """Go on in a new events file whose ``purge_step`` is ``step + 1``: TensorBoard hides the points
        after ``step`` in the files before it, which this launch logs again.

        TensorBoard purges whole steps: a validation at ``step`` itself logged after the checkpoint (when
        its step checkpoint was saved before it) is kept, and shows twice once it is done again.
        """
        self.flush()  # what was logged up to now reaches the old file before the new one starts
        self.close()
        self._open(step + 1)

    def finish(self, status, final, step):
        if status != "finished" or not final:
            return
        # run_name ".": into this run's own folder, so the HParams tab shows one row per run.
        hparams = {k: _hparam_value(v) for k, v in self.run.config.items()}
        metrics = {f"hparam/{k}": v for k, v in final.items()}
        self._write(lambda: self.writer.add_hparams(hparams, metrics, run_name=".", global_step=step))

    def close(self):
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:  # the run folder is gone; the error that stopped the run says so
                pass
            self.writer = None


class CSVLogger(RunLogger):
    """Every scalar as a row ``step,name,value`` of ``<run>/scalars.csv`` (per-step curves in plain text).

    ``metrics.csv`` (one row per validation) is written whatever ``--loggers``
    says: resume, ``inspect_history.py`` and ``utils.runs`` read it. On resume
    and on a rollback the file is cut back to the rows the checkpoint covers
    (its state counts them; see :mod:`base.run.row_files`).
    """

    name = "csv"
    HEADER = ("step", "name", "value")

    def __init__(self):
        self.path, self.file, self.rows = None, None, 0

    def start(self, run):
        self.path = os.path.join(run.run_dir, "scalars.csv")
        self.rewind(run.states, run.step)

    def rewind(self, states, step):
        """Keep the rows the checkpoint of ``states`` counts, drop the rest, and append after them.

        ``states``' ``csv`` entry ``None`` (a new run, or a checkpoint written before rows were
        counted): keep the rows up to ``step``. See :func:`base.run.row_files.resume_rows`.

        Raises:
            RunDirError: the file cannot be read, repaired or rewritten; names it.
        """
        if self.file is not None:  # a rollback: the rows written so far reach the file before it is cut
            self.flush()
            self.close()
        covered = (states.get(self.name) or {}).get("rows")
        header, self.rows = resume_rows(
            self.path, covered, lambda row: step_of(row) <= step, lambda header: tuple(header) == self.HEADER, "\n"
        )
        try:
            self.file = open(self.path, "a", newline="", encoding="utf-8")
            self.writer = csv.writer(self.file, lineterminator="\n")
            if header is None:
                self.writer.writerow(self.HEADER)
        except OSError as exc:
            raise cannot_write_error(self.path, exc) from None

    def log_scalars(self, scalars, step):
        try:
            self.writer.writerows([step, name, repr(float(value))] for name, value in scalars.items())
        except OSError as exc:
            raise cannot_write_error(self.path, exc) from None
        self.rows += len(scalars)

    def state_dict(self):
        """``{"rows": data rows written}``: a resume from this checkpoint keeps those, drops the rest."""
        return {"rows": self.rows}

    def flush(self):
        try:
            self.file.flush()
        except OSError as exc:
            raise cannot_write_error(self.path, exc) from None

    def close(self):
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None

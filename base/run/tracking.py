"""Where a launch of a run is recorded: ``status.json`` and the ``--loggers``, opened and closed.

Mixed into :class:`base.trainer.TrainerBase`; kept apart so the loop itself reads in one sitting.
"""

import math

from base.errors import error_line
from base.run.folder import FILE_ONLY
from base.run.status import RunStatus, read_status
from base.run.trackers import LoggerSet, RunInfo, build_loggers, parse_logger_names


class TrackingMixin:
    """Rank 0 opens ``status.json`` (:meth:`_begin_status`, :meth:`_start_tracking`) and the loggers once
    set up (:meth:`_start_tracking`), and records how the launch ended (:meth:`_end_tracking`); other
    processes have neither."""

    def _begin_status(self):
        """Mark a new run ``running`` in status.json as soon as its folder exists (rank 0).

        So an error while its data and model are built leaves ``crashed`` and that error there, not a
        folder that says nothing. A resumed run's status changes only once its checkpoint has loaded
        (:meth:`_start_tracking`): a failed resume leaves the run as it was.
        """
        self.status = RunStatus(self.run_dir)
        self.status.begin(self, resumed=False)

    def _start_tracking(self, config_path):
        """Mark a resumed run ``running`` in status.json (a new one: record its plan) and open the
        ``--loggers`` (rank 0)."""
        a = self.args
        # Did an earlier launch finish the run in the very state loaded (validated at its last step, nothing
        # to redo)? A resume from an older checkpoint of that step (written before its validation) redoes work.
        old = read_status(self.run_dir) if self.resume_from else {}
        if (
            old.get("status") == "finished"
            and old.get("global_step") == self.global_step
            and self._validated_at == self.global_step
            and not self._redo_validation
        ):
            self._finished_at = self.global_step
        if self.resume_from:
            self.status = RunStatus(self.run_dir)
            self.status.begin(self, resumed=True)
        else:  # begun when its folder was made: now with the planned steps
            self.status.progress(self)
        self.loggers = LoggerSet(build_loggers(parse_logger_names(a.loggers)), warn=self.logger.warning)
        # A finished run resumed from its end state redoes nothing: its loggers keep all they hold (the
        # test's points come after `last`, and this launch does not log them again), so no rows are cut.
        states = {} if self._finished_at is not None else self._resumed_logger_states
        self.loggers.start(
            RunInfo(
                self.run_dir,
                a.proj_name,
                self.timestamp,
                a.output_dir,
                type(self).__name__,
                dict(vars(a)),
                dict(self.provenance),
                config_path,
                self._kept_step(),
                bool(self.resume_from),
                self._redo_validation,
                states,
            )
        )

    def _keep_rows_of_checkpoint(self, metrics_rows, logger_states):
        """Cut metrics.csv and the loggers back to what the checkpoint just loaded covers (rank 0).

        Called whenever a checkpoint is loaded, on resume and on ``--nonfinite rollback`` alike: the
        work after the checkpoint is redone and logged again, so what was logged of it goes.
        ``metrics_rows`` (int, or ``None`` from a checkpoint that does not count them) and
        ``logger_states`` (``{logger name: state}``) are as the checkpoint saved them. Loggers not
        started yet (a resume) are given ``logger_states`` at ``start`` and cut there.

        Raises:
            RunDirError: a row file cannot be read, repaired or rewritten; names it.
        """
        if self.metrics_csv is not None:
            self.metrics_csv.resume(metrics_rows, self._validated_at)
        self.loggers.rewind(logger_states, self._kept_step())

    def _kept_step(self):
        """The last step whose logged points a launch from the loaded state keeps (int): the checkpoint's,
        or the one before it when the checkpoint was taken inside that step's validation (redone)."""
        return self.global_step - 1 if self._redo_validation else self.global_step

    def _end_tracking(self, status, test=None, error=None):
        """Record how this launch ended in status.json and close the loggers with the final metrics (rank 0).

        ``status``: 'finished', 'preempted' or 'crashed'. With an ``error`` (the launch is failing
        already) a failure here is logged, never raised over it. A crash's error line goes to the run
        log as well (every process with a log file), to the file only: the entry script prints it on
        the console.
        """
        if status == "crashed" and error is not None and self.logger is not None:
            self.logger.error("crashed: %s", error_line(error), extra=FILE_ONLY)
        if self.status is None:
            return
        final = {}
        if self.early_stopper.best not in (math.inf, -math.inf):
            final[f"best/val_{self.monitor}"] = self.early_stopper.best
        final.update({f"test/{k}": v for k, v in (test or {}).items()})
        if self._finished_at == self.global_step:
            final = {}  # a finished run resumed with nothing to do: its loggers have these already
        try:
            # The loggers first: "finished" in status.json then says that they got `final`.
            self.loggers.finish(status, final, self.global_step)
            self.status.end(status, self, test=test, error=error)
        except Exception as exc:  # noqa: BLE001
            if error is None:
                raise
            self.logger.error("could not record the run's end (%s): %s", status, exc)

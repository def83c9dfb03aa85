"""Where a launch of a run is recorded: ``status.json`` and the ``--loggers``, opened and closed.

Mixed into :class:`base.trainer_base.TrainerBase`; kept apart so the loop itself reads in one sitting.
"""
import math

from base.loggers import LoggerSet, RunInfo, build_loggers, parse_logger_names
from base.run_status import RunStatus


class TrackingMixin:
    """Rank 0 opens ``status.json`` and the loggers once set up (:meth:`_start_tracking`) and records
    how the launch ended (:meth:`_end_tracking`); other processes have neither."""

    def _start_tracking(self, config_path):
        """Mark the run ``running`` in status.json and open the ``--loggers`` (rank 0)."""
        a = self.args
        self.status = RunStatus(self.run_dir)
        self.status.begin(self, resumed=bool(self.resume_from))
        self.loggers = LoggerSet(build_loggers(parse_logger_names(a.loggers)), warn=self.logger.warning)
        keep = self.global_step - 1 if self._redo_validation else self.global_step  # an interrupted validation: redone
        self.loggers.start(RunInfo(self.run_dir, a.proj_name, self.timestamp, a.output_dir, type(self).__name__,
                                   dict(vars(a)), dict(self.provenance), config_path, keep, bool(self.resume_from),
                                   self._resumed_logger_states))

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
        # The step the points stay up to, as RunInfo.step in _start_tracking.
        self.loggers.rewind(logger_states, self.global_step - 1 if self._redo_validation else self.global_step)

    def _end_tracking(self, status, test=None, error=None):
        """Record how this launch ended in status.json and close the loggers with the final metrics (rank 0).

        ``status``: 'finished', 'preempted' or 'crashed'. With an ``error`` (the launch is failing
        already) a failure here is logged, never raised over it.
        """
        if self.status is None:
            return
        final = {}
        if self.early_stopper.best not in (math.inf, -math.inf):
            final[f"best/val_{self.monitor}"] = self.early_stopper.best
        final.update({f"test/{k}": v for k, v in (test or {}).items()})
        try:
            self.status.end(status, self, test=test, error=error)
            self.loggers.finish(status, final, self.global_step)
        except Exception as exc:  # noqa: BLE001
            if error is None:
                raise
            self.logger.error("could not record the run's end (%s): %s", status, exc)

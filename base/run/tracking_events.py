"""Where a launch is recorded, and what it opened released: the trainer's side of ``tracking``.

Bodies of the tracking events of :class:`base.trainer.TrainerBase` (setup, each validation, the end of
``fit``); they keep no state of their own: ``tracking`` does.
"""

from __future__ import annotations

import math
import os

from base.errors import error_line
from base.run.folder import FILE_ONLY
from base.run.trackers import RunInfo
from base.run.tracking import RunTracking
from base.runtime import distributed


class TrackingEvents:
    """What the trainer tells ``tracking``: the run's facts, its position, its start and its end."""

    def _run_facts(self) -> dict:
        """The run's fixed facts for status.json: trainer, model, data, monitored metric."""
        a = self.args
        data = getattr(a, "data_type", None) or os.path.basename(os.path.normpath(getattr(a, "data_dir", "") or ""))
        return {
            "trainer": type(self).__name__,
            "model": getattr(a, "model_type", None),
            "data": data or None,
            "monitor": f"val_{self.monitor}",
            "monitor_mode": self.monitor_mode,
        }

    def _position(self) -> dict:
        """Where the run is, for status.json (see :meth:`base.run.status.RunStatus.progress`)."""
        a = self.args
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "planned_epochs": a.epochs if a.max_steps <= 0 else None,
            "planned_steps": self.total_steps,
            "best": self.early_stopper.best,
        }

    def _start_tracking(self) -> None:
        """Mark a resumed run ``running`` in status.json (a new one: record its plan) and start the trackers (rank 0).

        Did an earlier launch finish the run in the very state loaded (validated at its last step, nothing to
        redo)? Then its trackers keep all they hold. A resume from an older checkpoint of that step (written
        before its validation) redoes work.
        """
        a = self.args
        finished_here = (
            bool(self.resume_from)
            and self.progress.validated_now
            and not self._redo_validation
            and RunTracking.finished_before(self.run_dir, self.global_step)
        )
        run = RunInfo(
            self.run_dir,
            a.proj_name,
            self.timestamp,
            a.output_dir,
            type(self).__name__,
            dict(vars(a)),
            dict(self.provenance),
            self.folder.config_path,
            self._kept_step(),
            bool(self.resume_from),
            self._redo_validation,
        )
        self.tracking.start(run, a.loggers, self._run_facts(), self._position(), finished_here, self.logger.warning)

    def _end_tracking(self, status: str, test: dict | None = None, error: BaseException | None = None) -> None:
        """Record how this launch ended (``'finished'``, ``'preempted'``, ``'crashed'``, or the status of a
        :meth:`request_stop`, whose reason goes with it) and close the trackers with the final metrics (rank 0).
        A crash's error line goes to the run log as well (to the file only: the entry script prints it on the
        console)."""
        if status == "crashed" and error is not None and self.logger is not None:
            self.logger.error("crashed: %s", error_line(error), extra=FILE_ONLY)
        final = {}
        if self.early_stopper.best not in (math.inf, -math.inf):
            final[f"best/val_{self.monitor}"] = self.early_stopper.best
        final.update({f"test/{k}": v for k, v in (test or {}).items()})
        stop = self.progress.stop_request
        reason = stop["reason"] if stop is not None and stop["status"] == status else None
        self.tracking.end(status, self._position(), final, test=test, error=error, logger=self.logger, reason=reason)

    def release(self):
        """Free what a fit opened, whatever state it stopped in: workers, trackers, log, run lock.

        Called at the end of :meth:`fit`; a notebook or sweep may fit many trainers in one process without
        open files, threads or loggers piling up.
        """
        for loader in self.loaders.values():  # persistent workers: stop them now
            getattr(getattr(loader, "_iterator", None), "_shutdown_workers", lambda: None)()
        self.tracking.close()
        if self.folder is not None:
            self.folder.close()
        if self._started_group:
            distributed.shutdown()
            self._started_group = False

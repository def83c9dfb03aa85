"""Where a run's numbers go: ``status.json``, ``metrics.csv`` and the ``--loggers`` trackers (rank 0).

One part the trainer owns (``trainer.tracking``). Other processes than rank 0 write nothing: their
tracking is empty and every call is a no-op. Order for one launch: :meth:`RunTracking.begin_status` (a
new run, as soon as its folder exists), :meth:`RunTracking.open_rows`, any checkpoint load
(:meth:`RunTracking.keep_rows_of_checkpoint`), :meth:`RunTracking.start`, then logs and
:meth:`RunTracking.progress`, and :meth:`RunTracking.end` once.
"""

from __future__ import annotations

import logging

from base.run.row_files import MetricsCSV
from base.run.status import RunStatus, read_status
from base.run.trackers import RunInfo, TrackerSet, build_trackers, parse_tracker_names


class RunTracking:
    """Rank 0's ``status.json``, ``metrics.csv`` and trackers, with what a resume must know of them."""

    def __init__(self):
        self.trackers = TrackerSet()  # the --loggers, from start() on
        self.status = None  # RunStatus, from begin_status() (new run) or start() (resumed)
        self.metrics_csv = None  # MetricsCSV, from open_rows()
        # The step at which an earlier launch finished the run, when this one resumed from that very end state
        # (its trackers hold the test and final metrics already); None otherwise.
        self.finished_at = None
        self.resumed_states = {}  # what the loaded checkpoint covers of each tracker, for trackers started after it

    def begin_status(self, run_dir: str, facts: dict, position: dict) -> None:
        """Mark a new run ``running`` as soon as its folder exists, so an error while its data and model are
        built leaves ``crashed`` and that error there. A resumed run's status changes only in :meth:`start`,
        once its checkpoint has loaded: a failed resume leaves the run as it was."""
        self.status = RunStatus(run_dir)
        self.status.begin(facts, position, resumed=False)

    def open_rows(self, path: str) -> None:
        """Open ``metrics.csv`` at ``path`` (one row per validation)."""
        self.metrics_csv = MetricsCSV(path)

    def keep_rows_of_checkpoint(self, metrics_rows, tracker_states: dict, validated_at: int, kept_step: int) -> None:
        """Cut metrics.csv and the started trackers back to what a checkpoint just loaded covers.

        Called whenever a checkpoint is loaded, on resume and on ``--nonfinite rollback`` alike: the work
        after the checkpoint is redone and logged again. ``metrics_rows`` (int, or ``None`` from a checkpoint
        that does not count them) and ``tracker_states`` are as the checkpoint saved them; trackers not
        started yet (a resume) get ``tracker_states`` at :meth:`start` and are cut there. ``kept_step``: the
        last step whose points stay.

        Raises:
            RunDirError: a row file cannot be read, repaired or rewritten; names it.
        """
        self.resumed_states = tracker_states
        if self.metrics_csv is not None:
            self.metrics_csv.resume(metrics_rows, validated_at)
        self.trackers.rewind(tracker_states, kept_step)

    def start(self, run: RunInfo, names: str, facts: dict, position: dict, finished_here: bool, warn) -> None:
        """Mark a resumed run ``running`` (a new one: record its plan) and start the ``--loggers`` ``names``.

        ``finished_here``: an earlier launch finished the run in the very state loaded (validated at its last
        step, nothing to redo): its trackers keep all they hold (the test's points come after ``last`` and
        are not logged again), so no rows are cut. ``warn``: how a best-effort tracker's failure is said.
        """
        if finished_here:
            self.finished_at = position["global_step"]
        if run.resumed:
            self.status = RunStatus(run.run_dir)
            self.status.begin(facts, position, resumed=True)
        else:
            self.status.progress(position)
        self.trackers = TrackerSet(build_trackers(parse_tracker_names(names)), warn=warn)
        run.states = {} if finished_here else self.resumed_states
        self.trackers.start(run)

    @staticmethod
    def finished_before(run_dir: str, global_step: int) -> bool:
        """Whether status.json says an earlier launch finished the run at ``global_step``."""
        old = read_status(run_dir)
        return old.get("status") == "finished" and old.get("global_step") == global_step

    def progress(self, position: dict) -> None:
        """Record the position after a validation in status.json."""
        if self.status is not None:
            self.status.progress(position)

    def write_row(self, row: dict) -> None:
        """Append one validation's row to metrics.csv."""
        if self.metrics_csv is not None:
            self.metrics_csv.write(row)

    def log_scalars(self, scalars: dict, step: int) -> None:
        """Hand ``{name: float}`` at ``step`` to every tracker."""
        if self.trackers:
            self.trackers.log_scalars(scalars, step)

    def log_image(self, name: str, image, step: int) -> None:
        """Hand ``image`` (float ``(3, H, W)`` in [0, 1]) to the trackers that take images."""
        if self.trackers:
            self.trackers.log_image(name, image, step)

    def flush(self) -> None:
        """Make what was logged so far durable."""
        self.trackers.flush()

    def end(self, status: str, position: dict, final: dict, test=None, error=None, logger=None, reason=None) -> None:
        """Record how this launch ended and close the trackers with ``final`` (``{name: float}``).

        ``status``: 'finished', 'preempted', 'crashed' or 'pruned' (``reason``: why, one line, for status.json).
        With an ``error`` (the launch is failing already) a
        failure here is logged to ``logger``, never raised over it. A finished run resumed with nothing to
        do gives its trackers nothing again.
        """
        if self.status is None:
            return
        if self.finished_at == position["global_step"]:
            final = {}
        try:
            # The trackers first: "finished" in status.json then says that they got `final`.
            self.trackers.finish(status, final, position["global_step"])
            self.status.end(status, position, test=test, error=error, reason=reason)
        except Exception as exc:  # noqa: BLE001
            if error is None:
                raise
            (logger or logging.getLogger(__name__)).error("could not record the run's end (%s): %s", status, exc)

    def state_dict(self) -> dict:
        """The rows written so far and what each tracker holds: a resume from this state keeps them."""
        return {
            "metrics_rows": self.metrics_csv.rows if self.metrics_csv is not None else None,
            "loggers": self.trackers.state_dict(),
        }

    def close(self) -> None:
        """Close the trackers (always; also after a failed start)."""
        self.trackers.close()

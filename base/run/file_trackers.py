"""The trackers that write into the run folder: TensorBoard events and ``scalars.csv`` (see :mod:`base.run.trackers`).

They fail like the checkpoints would: a write error stops the run with one line naming the file.
"""

import csv
import os

from base.run.folder import cannot_write_error
from base.run.row_files import resume_rows, step_of
from base.run.trackers import Tracker


def _hparam_value(value):
    """A config value as TensorBoard's HParams plugin takes it (bool, int, float or str)."""
    return value if isinstance(value, (bool, int, float, str)) else str(value)


class TensorBoardTracker(Tracker):
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


class CSVTracker(Tracker):
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

"""What :class:`base.trainer.TrainerBase` does differently under DDP (several processes, one run).

Rank 0 alone writes the run folder: config, log, TensorBoard, ``metrics.csv``
and checkpoints. Every other process reads its share of the data, trains its
replica and takes part in the decisions all processes must take together
(stop on a signal, too many bad images, a non-finite loss: see
:mod:`base.runtime.distributed`). With one process each method here is the
single-process behaviour.
"""

import logging
import os

from base.run import folder as run_dir
from base.run.file_names import file_name_part
from base.run.lock import RunLock
from base.runtime import distributed


class DistributedMixin:
    """The run folder and the signal agreement of a data-parallel run."""

    def _open_run_dir(self):
        """Make (rank 0) or reopen the run folder, lock it and start the log; all processes agree on the folder.

        Processes other than rank 0 log warnings to stderr only, and with
        ``--debug`` everything to ``rank<k>_log.txt`` in the run folder.
        """
        a = self.args
        if self.resume_from:
            self.run_dir = self.resume_from[0]
        elif self.rank == 0:
            self.run_dir = run_dir.create_run_dir(a.output_dir, a.proj_name)[0]
        self.run_dir = distributed.broadcast_object(self.run_dir)  # rank 0's timestamp, for every process
        self.timestamp = os.path.basename(self.run_dir)
        if self.rank == 0:
            self.lock = RunLock(self.run_dir).acquire()  # before anything in the folder is written
            log_file = f"{file_name_part(a.proj_name)}_{self.timestamp}_log.txt"
            self.logger = run_dir.setup_logger(f"trainer.{id(self)}", os.path.join(self.run_dir, log_file))
        else:
            self.logger = run_dir.setup_logger(
                f"trainer.{id(self)}",
                os.path.join(self.run_dir, f"rank{self.rank}_log.txt") if a.debug else None,
                logging.INFO if a.debug else logging.WARNING,
            )

    def _agreed_signal(self):
        """The signal any process got since the last step (the highest number), or None; a collective."""
        signum = int(distributed.all_reduce_max([self._preemption.signum or 0])[0])
        return signum or None

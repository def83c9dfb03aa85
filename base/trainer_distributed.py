"""What :class:`base.trainer_base.TrainerBase` does differently under DDP (several processes, one run).

Rank 0 alone writes the run folder: config, log, TensorBoard, ``metrics.csv``
and checkpoints. Every other process reads its share of the data, trains its
replica and takes part in the decisions all processes must take together
(stop on a signal, too many bad images, a non-finite loss: see
:mod:`base.distributed`). With one process each method here is the
single-process behaviour.
"""
import io
import logging
import os

import torch

from base import distributed, run_dir
from base.run_lock import RunLock
from base.state import seed_everything


class DistributedMixin:
    """The run folder, the signal agreement and the per-process RNG states of a data-parallel run."""

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
            self.logger = run_dir.setup_logger(
                f"trainer.{id(self)}", os.path.join(self.run_dir, f"{a.proj_name}_{self.timestamp}_log.txt"))
        else:
            self.logger = run_dir.setup_logger(
                f"trainer.{id(self)}", os.path.join(self.run_dir, f"rank{self.rank}_log.txt") if a.debug else None,
                logging.INFO if a.debug else logging.WARNING)

    def _agreed_signal(self):
        """The signal any process got since the last step (the highest number), or None; a collective."""
        signum = int(distributed.all_reduce_max([self._preemption.signum or 0])[0])
        return signum or None

    def _gathered_rng(self):
        """The RNG state a checkpoint holds: this process's, or under DDP a list of every process's (a collective)."""
        if self.world_size == 1:
            return self._step_rng
        # As torch.save bytes: tensors inside all_gather_object do not unpickle reliably.
        buffer = io.BytesIO()
        torch.save(self._step_rng, buffer)
        return [torch.load(io.BytesIO(b), weights_only=True) for b in distributed.all_gather_object(buffer.getvalue())]

    def _own_rng(self, saved, saved_world):
        """This process's RNG state out of a checkpoint's ``rng`` (see :meth:`_gathered_rng`).

        Returns ``None`` (and logs why) when the checkpoint has none for this
        rank: a run resumed with more processes than it had; such a process
        is reseeded from ``(--seed, rank, step)`` instead.
        """
        states = saved if isinstance(saved, list) else [saved]
        if self.rank < len(states):
            return states[self.rank]
        seed_everything(self.args.seed + 1_000_003 * self.rank + self.global_step)
        self.logger.warning("the checkpoint holds the random state of %d process(es); process %d starts a new "
                            "stream from --seed, its rank and the step", saved_world, self.rank)
        return None

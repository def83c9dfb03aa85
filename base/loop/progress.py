"""Where the loop is: epochs, optimizer steps and the sample position inside the epoch.

One part the trainer owns (``trainer.progress``). The position is the resume point: a resumed
run starts its epoch's order at ``samples_in_epoch`` (see :class:`base.loop.state.ResumableSampler`),
so the same samples are never trained twice and none is skipped.
"""

from __future__ import annotations

import math

from base.loop.state import training_batches

#: How a stop request may end a run (its status in status.json): ``pruned``, a sweep gave the trial up
#: (it is not tested: see :meth:`base.trainer.TrainerBase.request_stop`).
STOP_STATES = ("pruned",)


class LoopProgress:
    """Counters of the training loop, with ``state_dict``/``load_state_dict``.

    Attributes:
        epoch: completed epochs (int).
        global_step: completed optimizer steps (int).
        batch_in_epoch: batches of the current epoch already consumed, on this process (int).
        samples_in_epoch: positions of the current epoch's order consumed by all processes (int).
        validated_at: the ``global_step`` of the last validation, ``-1`` before the first.
        stop_request: ``{"status", "reason"}`` the run was asked to end with (:meth:`request_stop`), or ``None``.
    """

    def __init__(self):
        self.epoch = 0
        self.global_step = 0
        self.batch_in_epoch = 0
        self.samples_in_epoch = 0
        self.validated_at = -1
        self.stop_request = None

    @property
    def validated_now(self) -> bool:
        """True when the last validation was at the current step."""
        return self.validated_at == self.global_step

    def advance(self, batches: int, batch_size: int, world_size: int, epoch_size: int, order_end: int) -> None:
        """Count ``batches`` (each of ``batch_size`` samples, on each of ``world_size`` processes) just consumed.

        ``epoch_size`` is the training split's length; ``order_end`` where this process's order ends
        (``ResumableSampler.end``): once reached, what is left of the epoch, if anything, waits for the next.
        """
        self.batch_in_epoch += batches
        self.samples_in_epoch = min(epoch_size, self.samples_in_epoch + batches * batch_size * world_size)
        if self.samples_in_epoch >= order_end:
            self.samples_in_epoch = epoch_size

    def next_epoch(self) -> None:
        """The epoch is over: count it and start the next one at its first sample."""
        self.epoch, self.batch_in_epoch, self.samples_in_epoch = self.epoch + 1, 0, 0

    def request_stop(self, status: str, reason: str) -> None:
        """Ask the loop to end the run with ``status`` (in :data:`STOP_STATES`) for ``reason`` (one line).

        Raises:
            ValueError: ``status`` is not a stop state.
        """
        if status not in STOP_STATES:
            raise ValueError(f"request_stop: status {status!r} is not one of {list(STOP_STATES)}")
        self.stop_request = {"status": status, "reason": str(reason)}

    def done(self, epochs: int, max_steps: int, early_stop: bool) -> bool:
        """Whether training ends here: the run's length is reached, early stopping or a stop request says so."""
        return self.length_reached(epochs, max_steps) or early_stop or self.stop_request is not None

    def end_note(self, run_dir: str) -> str:
        """Why a resumed run that is :meth:`done` trains nothing (one line, for the log)."""
        if self.stop_request is not None:
            return (
                f"the run {run_dir} was stopped at epoch {self.epoch}, step {self.global_step} "
                f"({self.stop_request['status']}: {self.stop_request['reason']}): nothing left to train"
            )
        return (
            f"the run {run_dir} is complete (epoch {self.epoch}, step {self.global_step}): nothing left to train; "
            "to train longer, resume with a larger --epochs or --max_steps"
        )

    def length_reached(self, epochs: int, max_steps: int) -> bool:
        """Whether the run's length is reached: ``--max_steps`` when > 0 (``--epochs`` is then ignored), else
        ``--epochs``."""
        return self.global_step >= max_steps if max_steps > 0 else self.epoch >= epochs

    def planned_total_steps(
        self, epochs: int, max_steps: int, epoch_size: int, batch_size: int, accum_steps: int, world_size: int
    ) -> int:
        """Optimizer steps in the whole run: ``max_steps`` if > 0, else done + left to ``epochs``.

        The steps left count the rest of the current epoch from its sample position at ``batch_size``
        (``accum_steps`` batches a step, the last step of an epoch taking what is left), so a resume
        with another batch size or more epochs plans the schedule for what is really left.
        """
        if max_steps > 0:
            return max_steps
        if self.epoch >= epochs:
            return self.global_step  # finished
        rest = training_batches(epoch_size - self.samples_in_epoch, batch_size, world_size)
        whole = training_batches(epoch_size, batch_size, world_size)
        return (
            self.global_step
            + math.ceil(rest / accum_steps)
            + (epochs - self.epoch - 1) * math.ceil(whole / accum_steps)
        )

    def state_dict(self) -> dict:
        """The counters under the checkpoint's keys (``validated_at`` and ``stop_request`` included)."""
        return {
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batch_in_epoch": self.batch_in_epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "validated_at": self.validated_at,
            "stop_request": dict(self.stop_request) if self.stop_request is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        """Take the counters of :meth:`state_dict` (older checkpoints: see :mod:`base.checkpoint.older`)."""
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.batch_in_epoch, self.samples_in_epoch = state["batch_in_epoch"], state["samples_in_epoch"]
        self.validated_at = state["validated_at"]
        self.stop_request = dict(state["stop_request"]) if state["stop_request"] is not None else None

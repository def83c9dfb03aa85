"""The trainer's state tree and the events that write or reload it: save, resume, roll back, exception.

Bodies of events whose order :meth:`base.trainer.TrainerBase.train` sets; they keep no state of their own.
The checkpoint is the merge of the parts' states (:meth:`CheckpointEvents.state_dict`); the files are the
``checkpointer``'s; older checkpoints are read through :func:`base.checkpoint.older.upgrade` only.
"""

from __future__ import annotations

import json
from typing import Any

from base.checkpoint import older, state_tree, trainer_class
from base.checkpoint.files import load_checkpoint, load_model_state
from base.checkpoint.resume import newest_checkpoint
from base.checkpoint.resume_changes import apply_resume_changes
from base.errors import CheckpointError
from base.runtime.signals import Preempted


class CheckpointEvents:
    """State tree, saves and reloads of :class:`base.trainer.TrainerBase`."""

    def state_dict(self, gather: bool = True) -> dict[str, Any]:
        """The whole training state as of the last completed step: the merge of the parts' states.

        Tensors and plain types only. Under DDP a collective with ``gather`` (see
        :func:`base.checkpoint.state_tree.running_sums`); ``gather=False`` is none, for a checkpoint written
        while the others may be gone.
        """
        return {
            "model": self.raw_model.state_dict(),
            **self.step.state_dict(),
            **self.progress.state_dict(),
            **self.guard.state_dict(),
            **state_tree.running_sums(self.stats, self.rank, self.world_size, gather),
            **self.tracking.state_dict(),
            "world_size": self.world_size,
            "validating": False,
            "early_stopper": self.early_stopper.state_dict(),
            "hooks": state_tree.hook_states(self.hooks),
            "metrics": self.last_metrics,
            "config": json.dumps(vars(self.args), default=str),
            "trainer": type(self).__name__,  # the name alone, for older readers
            trainer_class.KEY: trainer_class.trainer_ref(type(self)),  # "module:Class", to rebuild a subclass task
            "eval_script": self.EVAL_SCRIPT,  # named in an evaluator's refusal of this checkpoint
            "model_card": self.model_card(),
        }

    def load_state_dict(self, state: dict[str, Any], source: str = "checkpoint") -> None:
        """Restore everything :meth:`state_dict` saved (older checkpoints too: :func:`base.checkpoint.older.upgrade`);
        metrics.csv and the trackers keep only what it covers.

        Raises:
            CheckpointError: the checkpoint's model, optimizer or hooks do not fit this trainer; the message
                names ``source`` and both sides.
            RunDirError: metrics.csv or a tracker's file cannot be cut back; names it.
        """
        state = older.upgrade(state, self.args.batch_size)
        saved_type = json.loads(state.get("config") or "{}").get("model_type")
        what = f"{source} (model_type {saved_type!r}; this run builds {vars(self.args).get('model_type')!r})"
        load_model_state(self.raw_model, state["model"], what)
        self.step.load_state_dict(state, what)
        state_tree.load_hook_states(self.hooks, state["hooks"], source, self.logger)
        self.early_stopper.load_state_dict(state["early_stopper"])
        self.progress.load_state_dict(state)
        self.guard.load_state_dict(state)
        self.last_metrics, self._redo_validation = state["metrics"], state["validating"]
        saved_world = self._resumed_world_size = state["world_size"]
        state_tree.load_running_sums(self.stats, state, self.rank, self.world_size, source, self.logger)
        if saved_world != self.world_size:
            self.logger.info(
                "%s was written by %d process(es), this run has %d: the rest of epoch %d is shared out again over "
                "%d (each sample once), so the run goes on correctly but not bit-identically to one that kept %d",
                source, saved_world, self.world_size, self.epoch + 1, self.world_size, saved_world,
            )  # fmt: skip
        # Last, once the state fits: the rows logged after this checkpoint go.
        self.tracking.keep_rows_of_checkpoint(
            state["metrics_rows"], state["loggers"], self.progress.validated_at, self._kept_step()
        )

    def resume(self, path: str) -> None:
        """Load the checkpoint at ``path`` onto this (set-up) trainer and log where training continues."""
        self.load_state_dict(load_checkpoint(path, map_location=self.device, flag="--resume"), f"--resume {path}")
        self.logger.info(
            "resumed from %s at epoch %d, sample %d of the epoch, step %d%s",
            path, self.epoch, self.progress.samples_in_epoch, self.global_step,
            " (inside a validation: it is done again first)" if self._redo_validation else "",
        )  # fmt: skip

    def _resume_launch(self, path: str) -> None:
        """Load the ``--resume`` checkpoint at ``path`` in setup, make the flags changed there take effect, and
        record the resume in the config file."""
        if self.resume_reason:
            self.logger.info("%s", self.resume_reason)
        built = [group.get("weight_decay") for group in self.optimizer.param_groups]  # before the load
        self.resume(path)
        world_changed = self._resumed_world_size not in (None, self.world_size)
        total = apply_resume_changes(
            self.resume_changes, self.optimizer, self.scheduler, self._planned_total_steps, self.args.warmup_steps,
            self.global_step, self.logger, world_changed, built,
        )  # fmt: skip
        self.total_steps = total if total is not None else self.total_steps
        # (loading it cut metrics.csv back to the rows it covers: see RunTracking.keep_rows_of_checkpoint)
        self.folder.record_resume(self.args, self.provenance, path, self.resume_changes)

    def _kept_step(self):
        """The last step whose logged points a launch from the loaded state keeps: the checkpoint's, or the one
        before it when the checkpoint was taken inside that step's validation (redone)."""
        return self.global_step - 1 if self._redo_validation else self.global_step

    def save(self, tag: str, state: dict | None = None, sync: bool = True) -> str:
        """Write ``state`` (default: :meth:`state_dict`) as the checkpoint ``tag`` (see
        :class:`base.checkpoint.checkpointer.Checkpointer`); returns its path.

        Never saves the steps counted after a non-finite loss noticed on the device (raises first). ``last``
        right after an improving validation is a byte copy of ``best`` when nothing can have changed between
        them (no hooks, one process).
        """
        if tag != "exception":
            self.guard.check(self.global_step)
        p, copyable = self.progress, state is None and not self.hooks and self.world_size == 1
        # (a request_stop after best was saved, at the same step, changes the state too)
        position = (p.epoch, p.global_step, p.samples_in_epoch, self.guard.skipped_steps, p.stop_request is not None)
        position = position if copyable else None
        return self.checkpointer.save(tag, state if state is not None else lambda: self.state_dict(gather=sync),
                                      position, sync)  # fmt: skip

    def _flush_before_save(self, failing: bool) -> None:
        """What was logged up to this step reaches the disk before a checkpoint of it: a resume from that
        checkpoint keeps those rows and redoes the rest, so none may be lost in a buffer."""
        try:
            self.tracking.flush()
        except OSError as exc:
            if not failing:
                raise
            self.logger.warning("%s", exc)  # the run is failing already: still try to save its state

    def save_step_checkpoint(self) -> str:
        """Write ``step<N>`` and delete step checkpoints beyond the newest ``--keep_last_k`` once it verifies.

        Raises:
            CheckpointError: the new file could not be written or does not verify (every older step
                checkpoint is kept); the message names it.
        """
        path = self.save(f"step{self.global_step}")
        self.checkpointer.rotate(path)
        return path

    def export_best(self) -> None:
        """Export the weights validation scored (the EMA's with ``--eval_ema``) as ``<prefix>_best.safetensors``
        with a JSON sidecar: the config and the validation metrics."""
        sidecar = {
            "config": vars(self.args),
            "metrics": self.last_metrics,
            "global_step": self.global_step,
            trainer_class.KEY: trainer_class.trainer_ref(type(self)),
            "eval_script": self.EVAL_SCRIPT,
            "model_card": self.model_card(),
        }
        self.checkpointer.export(self.eval_model().state_dict(), sidecar)

    def _nonfinite(self, loss) -> bool:
        """Apply ``--nonfinite`` to a window whose loss is NaN/inf (nothing was applied); returns False.

        ``skip``: the batch is dropped and counted. ``rollback``: reload the newest resumable checkpoint and
        multiply the learning rate by ``--rollback_lr_factor``; the rows and points logged after that
        checkpoint are dropped, as on resume, since the steps after it are done and logged again.

        Raises:
            FloatingPointError: ``raise``, more than ``--max_skipped_steps``, or nothing to roll back to.
        """
        a = self.args
        where = f"step {self.global_step + 1} (epoch {self.epoch + 1}, batch {self.progress.batch_in_epoch + 1})"
        action, message = self.guard.on_loss(loss, where), self.guard.message(loss, where)
        if action == "skip":
            self.logger.warning("%s: batch skipped (%d so far)", message, self.guard.skipped_steps)
            return False
        path = newest_checkpoint(self.run_dir, tags=("last", "step*", "preempt"))  # completed, finite steps
        if path is None:
            hint = f"the first step checkpoint comes at step {a.save_every_steps}" if a.save_every_steps else (
                "set --save_every_steps")  # fmt: skip
            raise FloatingPointError(f"{message}: no checkpoint of this run to roll back to yet ({hint})")
        factor = self.guard.roll_back(
            lambda: self.load_state_dict(load_checkpoint(path, map_location=self.device, flag="rolling back to"), path)
        )
        self.step.scale_lr(factor)  # the checkpoint's LR carries its own, older scale
        self._restart_epoch = True  # the data position moved back: restart the epoch loop
        self.logger.warning(
            "%s: rolled back to %s (step %d), learning rate x%g of the planned one",
            message, path, self.global_step, self.guard.lr_scale,
        )  # fmt: skip
        return False

    def _preempt(self):
        signum = self._preemption.signum
        path = self.save("preempt")
        name = {15: "SIGTERM", 2: "SIGINT"}.get(signum, f"signal {signum}")
        self.logger.warning("%s: stopped after step %d; checkpoint %s", name, self.global_step, path)
        raise Preempted(
            f"preempted by {name} after step {self.global_step}; checkpoint {path}; "
            f"continue with --resume {self.run_dir}",
            signum,
        )

    def _on_exception(self, exc: BaseException) -> None:
        """The ``on_exception`` hooks, then the ``exception`` checkpoint of the last completed step, if whole."""
        self._call("on_exception", exc)
        if isinstance(exc, Preempted) or self.run_dir is None or self.step is None:
            return
        if self.guard.pending():
            self.logger.error(
                "%s: no exception checkpoint: the steps counted since the non-finite loss were not "
                "applied; resume from the newest checkpoint",
                type(exc).__name__,
            )
            return
        if self.step.updating:  # parameters half-updated (an error inside optimizer.step): no whole step to save
            self.logger.error(
                "%s inside an optimizer update at step %d: no exception checkpoint (the weights "
                "are between two steps); resume from the newest checkpoint",
                type(exc).__name__,
                self.global_step + 1,
            )
            return
        try:
            # Inside a validation: the state as of its start, marked to be validated again on resume.
            # Only this process may be left (another one failed): no collective, so under DDP the
            # checkpoint holds this process's training-loss sums alone, marked as such (see state_dict).
            if self.rank != 0:
                return
            path = self.save("exception", state=self._validation_snapshot or self.state_dict(gather=False), sync=False)
        except CheckpointError as failed:  # e.g. the disk is full: say so, but let `exc` propagate
            self.logger.error(
                "%s (%s) at epoch %d step %d; the exception checkpoint could not be written: %s",
                type(exc).__name__,
                (str(exc).strip().splitlines() or [""])[0],
                self.epoch,
                self.global_step,
                failed,
            )
            return
        self.logger.error(
            "%s at epoch %d step %d; checkpoint of the last completed step: %s",
            type(exc).__name__,
            self.epoch,
            self.global_step,
            path,
        )

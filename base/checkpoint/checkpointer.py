"""The trainer's state tree and what is done with it: save, resume, roll back, export.

Mixed into :class:`base.trainer.TrainerBase`; kept apart so the loop
itself reads in one sitting.
"""

import glob
import json
import os
import re

import torch

from base.checkpoint.files import (
    copy_checkpoint,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    verify_checkpoint,
    write_or_fail,
)
from base.checkpoint.resume import newest_checkpoint
from base.errors import CheckpointError
from base.run.file_names import file_name_part
from base.runtime import distributed
from base.runtime.signals import Preempted


class CheckpointingMixin:
    """Checkpoint files of a run: ``<model>_<tag>_ckpt.pth`` in the run folder.

    ``<model>`` is :meth:`checkpoint_prefix`: ``--model_type`` where the task has that flag, else the
    model's class name, as a file name part (:func:`base.run.file_names.file_name_part`:
    ``timm/resnet18`` -> ``timm-resnet18``).

    Tags: ``best`` (best validation), ``last`` (latest validation or end of
    training), ``step<N>`` (every ``--save_every_steps``; the newest
    ``--keep_last_k`` kept), ``preempt`` (SIGTERM/SIGINT), ``exception`` (an
    exception escaped; ``last`` and ``best`` are left untouched; under DDP
    written by rank 0 alone, see :meth:`state_dict`).
    """

    def checkpoint_prefix(self):
        """``<model>`` of this run's file names: ``--model_type`` where the task declares that flag, else the class
        name of the model it built (a task needs no such flag to save). Override to name the files otherwise; it
        must not change when a run resumes."""
        name = vars(self.args).get("model_type") or type(self.module).__name__
        return file_name_part(name)

    def checkpoint_path(self, tag):
        """``<run_dir>/<model>_<tag>_ckpt.pth`` (see the class docstring for ``<model>``)."""
        return os.path.join(self.run_dir, f"{self.checkpoint_prefix()}_{tag}_ckpt.pth")

    def state_dict(self, gather=True):
        """The whole training state as of the last completed step; tensors and plain types only.

        Under DDP it is a collective (every process calls it): the model is
        the unwrapped :attr:`module` and the training-loss sums are every
        process's (``loss_sums``, one entry per rank) and their total
        (``loss_sum``/``loss_count``). ``gather=False`` is no collective, for a
        checkpoint written while the others may be gone: under DDP it holds
        this process's sums alone, the others' entries ``None`` and the totals
        ``None``, so a resume knows they are lost (see :meth:`load_state_dict`);
        ``world_size`` stays the run's.
        """
        # The loss sums since the last validation, and the logging window's sums of train_step's extra terms
        # (so a resume inside a window logs its mean right).
        own, window = self.stats.sums()
        if self.world_size == 1:
            loss_sums, extra_sums = [own], [window]
        elif gather:
            loss_sums, extra_sums = distributed.all_gather_object(own), distributed.all_gather_object(window)
        else:
            loss_sums = [own if r == self.rank else None for r in range(self.world_size)]
            extra_sums = [window if r == self.rank else None for r in range(self.world_size)]
        whole = None not in loss_sums
        return {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "batch_in_epoch": self.batch_in_epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "world_size": self.world_size,
            "lr_scale": self.lr_scale,
            "validating": False,
            "early_stopper": self.early_stopper.state_dict(),
            "hooks": [{"type": type(h).__name__, "state": h.state_dict()} for h in self.hooks],
            "metrics": self.last_metrics,
            "loss_sum": sum(v for v, _ in loss_sums) if whole else None,
            "loss_count": sum(n for _, n in loss_sums) if whole else None,
            "loss_sums": loss_sums,  # per process: a resume with as many carries each one's on, bit for bit
            "extra_sums": extra_sums,  # per process, likewise
            "validated_at": self._validated_at,
            "skipped_steps": self.skipped_steps,
            # the rows written so far (rank 0's): a resume from this state keeps them, redoes the rest
            "metrics_rows": self.metrics_csv.rows if self.metrics_csv is not None else None,
            "loggers": self.loggers.state_dict(),
            "config": json.dumps(vars(self.args), default=str),
            "trainer": type(self).__name__,
            "eval_script": self.EVAL_SCRIPT,  # named in an evaluator's refusal of this checkpoint
            "model_card": self.model_card(),
        }

    def load_state_dict(self, state, source="checkpoint"):
        """Restore everything :meth:`state_dict` saved; metrics.csv and the loggers keep only what it covers.

        Raises:
            CheckpointError: the checkpoint's model, optimizer or hooks do not
                fit this trainer; the message names ``source`` and both sides.
            RunDirError: metrics.csv or a logger's file cannot be cut back; names it.
        """
        saved_type = json.loads(state.get("config") or "{}").get("model_type")
        what = f"{source} (model_type {saved_type!r}; this run builds {vars(self.args).get('model_type')!r})"
        load_model_state(self.module, state["model"], what)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{what}: optimizer/scheduler state does not fit ({exc})") from None
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(
                    f"{what}: it holds no EMA weights, but this run has --ema_decay {self.args.ema_decay}"
                )
            self.ema.load_state_dict(state["ema"])
        self._load_hook_states(state["hooks"], source)
        self.early_stopper.load_state_dict(state["early_stopper"])
        self.epoch, self.global_step = state["epoch"], state["global_step"]
        self.batch_in_epoch, self.last_metrics = state["batch_in_epoch"], state["metrics"]
        self.samples_in_epoch = state.get("samples_in_epoch", self.batch_in_epoch * self.args.batch_size)
        self.lr_scale, self._redo_validation = state.get("lr_scale", 1.0), state.get("validating", False)
        self._validated_at, self.skipped_steps = state["validated_at"], state["skipped_steps"]
        self._resumed_logger_states = state.get("loggers") or {}  # for loggers that start after this
        saved_world = self._resumed_world_size = state.get("world_size", 1)
        self._load_running_sums(state, source)
        if saved_world != self.world_size:
            self.logger.info(
                "%s was written by %d process(es), this run has %d: the rest of epoch %d is shared "
                "out again over %d (each sample once), so the run goes on correctly but not "
                "bit-identically to one that kept %d",
                source,
                saved_world,
                self.world_size,
                self.epoch + 1,
                self.world_size,
                saved_world,
            )
        # Last, once the state fits: the rows logged after this checkpoint go (older checkpoints: None and
        # {}, the row files are then cut back by step).
        self._keep_rows_of_checkpoint(state.get("metrics_rows"), self._resumed_logger_states)

    def _load_running_sums(self, state, source):
        """Take up the training-loss sums since the last validation and the logging window's sums.

        With as many processes as the checkpoint, each takes its own; with
        another number, rank 0 carries the totals on and the others start
        from zero. A checkpoint written by one process of several (see
        :meth:`state_dict`) holds no totals: every process starts from zero,
        so the first ``train_loss`` after the resume averages the steps after
        it alone, never one process's share of the earlier steps with them.
        """
        sums = state.get("loss_sums")
        windows = state.get("extra_sums") or [({}, 0)]  # (older checkpoints: a fresh window)
        self.stats.load_sums()  # from zero, unless this process takes sums below
        if sums and None in sums:
            if self.rank == 0:
                self.logger.warning(
                    "%s was written by one process of %d after another had failed: it holds one "
                    "process's training-loss sums only, which are dropped; the train_loss of the "
                    "next validation averages the steps after %d alone",
                    source,
                    len(sums),
                    state["global_step"],
                )
            return
        loss, window = (0.0, 0), ({}, 0)
        if sums and len(sums) == self.world_size:
            loss = sums[self.rank]
        elif self.rank == 0:
            loss = state["loss_sum"], state["loss_count"]
        if len(windows) == self.world_size:
            window = windows[self.rank]
        elif self.rank == 0:
            keys = {k for extra, _ in windows for k in extra}
            window = {k: sum(extra.get(k, 0.0) for extra, _ in windows) for k in keys}, sum(n for _, n in windows)
        self.stats.load_sums(tuple(loss), window)

    def _load_hook_states(self, saved, source):
        """Give each hook the first saved state of its class; hooks added or removed since are logged."""
        saved = list(saved)
        for hook in self.hooks:
            match = next((s for s in saved if s["type"] == type(hook).__name__), None)
            if match is None:
                self.logger.warning("%s: no saved state for hook %s", source, type(hook).__name__)
                continue
            saved.remove(match)
            hook.load_state_dict(match["state"])
        for entry in saved:
            self.logger.warning("%s: saved state of hook %s has no hook to go to", source, entry["type"])

    def save(self, tag, state=None, sync=True):
        """Atomically write ``state`` (default: :meth:`state_dict`) as :meth:`checkpoint_path` ``(tag)``.

        Returns the path. A ``preempt`` checkpoint this run resumed from is
        removed once a newer checkpoint is on disk, and an ``exception`` one
        once a newer one to resume from is. Under DDP every process
        calls it and rank 0 writes; with ``sync`` the others wait until the file
        is there (``sync=False``: no collective, for a process on its own).
        """
        path = self.checkpoint_path(tag)
        if self._nonfinite_on_device and tag != "exception":
            self._check_nonfinite()  # never save the steps counted after a non-finite loss
        # `last` right after an improving validation holds what `best` was just given: copy the file's bytes
        # rather than serialize again. A copy, not a link: a damaged `best` must leave `last` intact. Only
        # without hooks: an after_epoch hook runs between the two and may change state.
        position = (self.epoch, self.global_step, self.samples_in_epoch, self.skipped_steps)
        if (
            state is None
            and tag == "last"
            and not self.hooks
            and self.world_size == 1
            and self._best_saved_at == position
            and os.path.isfile(self.checkpoint_path("best"))
        ):
            copy_checkpoint(self.checkpoint_path("best"), path)
            self._remove_stale_exception(tag, path)
            return path
        if state is None and tag == "best":
            self._best_saved_at = position
        state = self.state_dict(gather=sync) if state is None else state
        if self.rank != 0:
            if sync:
                distributed.barrier()
            return path
        # What was logged up to this step reaches the disk first: a resume from this checkpoint keeps
        # those rows and redoes the rest (see base.run.trackers.CSVLogger), so none may be lost in a buffer.
        try:
            self.loggers.flush()
        except OSError as exc:
            if tag != "exception":
                raise
            self.logger.warning("%s", exc)  # the run is failing already: still try to save its state
        save_checkpoint(state, path)
        if sync:
            distributed.barrier()
        resumed = self.resume_from[1] if self.resume_from else None
        if (
            tag != "preempt"
            and resumed
            and os.path.abspath(resumed) == self.checkpoint_path("preempt")
            and os.path.isfile(resumed)
            and os.path.getmtime(resumed) < os.path.getmtime(path)
        ):
            os.remove(resumed)  # superseded: a newer state of the resumed run is on disk
            self.logger.info("removed %s: %s holds newer work", resumed, os.path.basename(path))
        self._remove_stale_exception(tag, path)
        return path

    def _remove_stale_exception(self, tag, path):
        """Delete the run's ``exception`` checkpoint once ``path``, just written as ``tag``, is newer work.

        Only a tag a resume continues from counts (``last``, ``step<N>``,
        ``preempt``), not ``best``: a run killed between ``best`` and ``last``
        must still find the exception checkpoint's steps. Rank 0 only.
        """
        stale = self.checkpoint_path("exception")
        if (
            tag in ("exception", "best")
            or not os.path.isfile(stale)
            or os.path.getmtime(stale) >= os.path.getmtime(path)
        ):
            return
        os.remove(stale)
        self.logger.info("removed %s: %s holds newer work", stale, os.path.basename(path))

    def save_step_checkpoint(self):
        """Write ``step<N>`` and delete step checkpoints beyond the newest ``--keep_last_k``.

        Older ones are deleted only once the new file reads back and matches
        its checksum, so a bad write never costs the good checkpoints.

        Raises:
            CheckpointError: the new file could not be written or does not
                verify (every older step checkpoint is kept); the message names it.
        """
        path = self.save(f"step{self.global_step}")
        reason = verify_checkpoint(path) if self.rank == 0 else None
        if distributed.any_rank(reason is not None):
            reason = reason or f"{path} did not verify on rank 0"
            self.logger.warning("%s; every older step checkpoint is kept", reason)
            raise CheckpointError(f"{reason}; every older step checkpoint is kept")
        pattern = re.compile(re.escape(self.checkpoint_prefix()) + r"_step(\d+)_ckpt\.pth$")
        if self.rank != 0:
            return path
        steps = sorted(
            (int(m.group(1)), p)
            for p in glob.glob(os.path.join(self.run_dir, "*_ckpt.pth"))
            if (m := pattern.search(os.path.basename(p)))
        )
        for _, old in steps[: -self.args.keep_last_k]:
            os.remove(old)
        return path

    def export_best(self):
        """Write the model's weights as ``<model>_best.safetensors`` plus a JSON sidecar.

        ``<model>`` as in :meth:`checkpoint_path`. The sidecar ``<model>_best.json`` holds the config and the
        validation metrics; evaluators accept either file format.
        """
        if self.rank != 0:
            return
        from safetensors.torch import save as safetensors_bytes

        # The weights that validation scored: the EMA's with --eval_ema. safetensors refuses tensors that
        # share storage (tied weights) or are not contiguous: those alone are copied.
        tensors, storages = {}, set()
        for key, value in self.eval_model().state_dict().items():
            value = value.detach().cpu()  # no copy on the CPU
            storage = value.untyped_storage().data_ptr()
            if storage in storages or not value.is_contiguous():
                value = value.clone(memory_format=torch.contiguous_format)
            storages.add(value.untyped_storage().data_ptr())
            tensors[key] = value
        stem = os.path.join(self.run_dir, f"{self.checkpoint_prefix()}_best")
        write_or_fail(stem + ".safetensors", lambda f: f.write(safetensors_bytes(tensors)), "export")
        sidecar = {
            "config": vars(self.args),
            "metrics": self.last_metrics,
            "global_step": self.global_step,
            "eval_script": self.EVAL_SCRIPT,
            "model_card": self.model_card(),
        }
        write_or_fail(stem + ".json", lambda f: f.write(json.dumps(sidecar, indent=2, default=str).encode()), "export")

    def resume(self, path):
        """Load the checkpoint at ``path`` onto this (built) trainer and log where training continues."""
        self.load_state_dict(load_checkpoint(path, map_location=self.device, flag="--resume"), f"--resume {path}")
        self.logger.info(
            "resumed from %s at epoch %d, sample %d of the epoch, step %d%s",
            path,
            self.epoch,
            self.samples_in_epoch,
            self.global_step,
            " (inside a validation: it is done again first)" if self._redo_validation else "",
        )

    # ----------------------------------------------------------------- failures
    def handle_nonfinite(self, loss):
        """Apply ``--nonfinite`` to a step whose loss is NaN/inf; the weights are never updated.

        ``raise``: stop with ``FloatingPointError`` naming the step. ``skip``:
        drop the batch and count it. ``rollback``: reload the newest resumable
        checkpoint and multiply the learning rate by ``--rollback_lr_factor``;
        the rows and points logged after that checkpoint are dropped, as on resume,
        since the steps after it are done and logged again.
        Both stop with ``FloatingPointError`` after ``--max_skipped_steps``.
        """
        a = self.args
        where = f"step {self.global_step + 1} (epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1})"
        message = f"non-finite loss {loss.detach().float().item()} at {where}"
        if a.nonfinite == "raise":
            raise FloatingPointError(f"{message}; lower --lr, set --grad_clip, or use --nonfinite skip")
        self.skipped_steps += 1
        if self.skipped_steps > a.max_skipped_steps:
            raise FloatingPointError(f"{message}: more than --max_skipped_steps={a.max_skipped_steps} non-finite steps")
        self.optimizer.zero_grad(set_to_none=True)
        if a.nonfinite == "skip":
            self.logger.warning("%s: batch skipped (%d so far)", message, self.skipped_steps)
            return None
        path = newest_checkpoint(self.run_dir, tags=("last", "step*", "preempt"))  # completed, finite steps
        if path is None:
            hint = (
                f"the first step checkpoint comes at step {a.save_every_steps}"
                if a.save_every_steps
                else "set --save_every_steps"
            )
            raise FloatingPointError(f"{message}: no checkpoint of this run to roll back to yet ({hint})")
        skipped, scale = self.skipped_steps, self.lr_scale * a.rollback_lr_factor
        self.load_state_dict(load_checkpoint(path, map_location=self.device, flag="rolling back to"), path)
        self.skipped_steps = skipped
        self._scale_lr(scale / self.lr_scale)  # the checkpoint's LR carries its own, older scale
        self.lr_scale = scale  # so the factor compounds over rollbacks
        self._restart_epoch = True  # the data position moved back: restart the epoch loop
        self.logger.warning(
            "%s: rolled back to %s (step %d), learning rate x%g of the planned one",
            message,
            path,
            self.global_step,
            scale,
        )
        return None

    def _scale_lr(self, factor):
        """Multiply the current and the scheduled learning rates by ``factor``."""
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        schedulers = [self.scheduler] if self.scheduler is not None else []
        schedulers += list(getattr(self.scheduler, "_schedulers", []))  # SequentialLR's parts
        for sched in schedulers:
            sched.base_lrs = [lr * factor for lr in sched.base_lrs]
            if hasattr(sched, "_last_lr"):
                sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]

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

    def _on_exception(self, exc):
        self._call("on_exception", exc)
        if isinstance(exc, Preempted) or self.run_dir is None or self.optimizer is None:
            return
        if self._nonfinite_on_device and self._first_nonfinite is not None and int(self._first_nonfinite):
            self.logger.error(
                "%s: no exception checkpoint: the steps counted since the non-finite loss were not "
                "applied; resume from the newest checkpoint",
                type(exc).__name__,
            )
            return
        if self._mid_update:  # parameters half-updated (an error inside optimizer.step): no whole step to save
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

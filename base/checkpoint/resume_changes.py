"""What a resume may change, and how the loaded state follows: :class:`ResumeMixin`.

Mixed into :class:`base.trainer.TrainerBase`; kept apart so the loop
itself reads in one sitting.
"""

import math

from base.loop import optim
from base.loop.state import training_batches


class ResumeMixin:
    """Plans the run's length and applies flags changed on ``--resume`` to the loaded state."""

    #: Flags that may take a new value on ``--resume``; any other flag given there with
    #: a value unlike the run's is refused (it would change the model, data or numerics
    #: under the saved state). Subclasses extend it: ``TrainerBase.RESUME_CHANGEABLE | {...}``.
    RESUME_CHANGEABLE = frozenset(
        {
            "output_dir",
            "epochs",
            "max_steps",
            "batch_size",
            "eval_batch_size",
            "num_workers",
            "lr",
            "weight_decay",
            "warmup_steps",
            "grad_clip",
            "grad_clip_mode",
            "val_every_epochs",
            "val_every_steps",
            "early_stop_patience",
            "log_every_steps",
            "save_every_steps",
            "keep_last_k",
            "nonfinite",
            "max_skipped_steps",
            "rollback_lr_factor",
            "bad_images",
            "max_bad_images",
            "gpu_devices",
            "deterministic",
            "data_dir",
            "compile",
            "channels_last",
            "persistent_workers",
            "plot_lr",
            "sync_bn",
            "loggers",
        }
    )

    def planned_total_steps(self):
        """Optimizer steps in the whole run: ``--max_steps`` if set, else done + left to ``--epochs``.

        The steps left count the rest of the current epoch from its sample
        position at the current ``--batch_size`` (``--accum_steps`` batches a step,
        the last step of an epoch taking what is left), so a resume with another
        batch size or more epochs plans the schedule for what is really left.
        """
        a, loader = self.args, self.loaders["train"]
        if a.max_steps > 0:
            return a.max_steps
        if self.epoch >= a.epochs:
            return self.global_step  # finished
        size, batch, accum, world = len(loader.dataset), loader.batch_size, a.accum_steps, self.world_size
        return (
            self.global_step
            + math.ceil(training_batches(size - self.samples_in_epoch, batch, world) / accum)
            + (a.epochs - self.epoch - 1) * math.ceil(training_batches(size, batch, world) / accum)
        )

    def _apply_resume_changes(self, built_weight_decays=None):
        """Make flags changed on ``--resume`` take effect on the loaded state, and log each.

        Args:
            built_weight_decays: each param group's ``weight_decay`` as :meth:`build_optimizer`
                made it under this launch's flags, taken before the checkpoint's optimizer state
                replaced it. A new ``--weight_decay`` then gives each group its built value, so a
                no-decay group stays at 0 even when the run's old value was 0 as well. ``None``:
                groups whose decay equals the old value take the new one.
        """
        changes, log = self.resume_changes, self.logger
        for flag, (old, new) in sorted(changes.items()):
            log.info("--resume: --%s %r (the run had %r)", flag, new, old)
        if "lr" in changes and changes["lr"][0]:
            ratio = changes["lr"][1] / changes["lr"][0]
            for group in self.optimizer.param_groups:
                group["lr"] *= ratio
                group["initial_lr"] = group.get("initial_lr", group["lr"] / ratio) * ratio
            if self.scheduler is not None:
                self.scheduler.base_lrs = [lr * ratio for lr in self.scheduler.base_lrs]
        if "weight_decay" in changes:
            groups = self.optimizer.param_groups
            if built_weight_decays is not None and len(built_weight_decays) == len(groups):
                for group, decay in zip(groups, built_weight_decays):
                    group["weight_decay"] = decay
            else:
                for group in groups:
                    if group.get("weight_decay") == changes["weight_decay"][0]:  # not a no-decay group
                        group["weight_decay"] = changes["weight_decay"][1]
        # A new number of processes changes the samples per step like a new --batch_size does.
        world_changed = self._resumed_world_size not in (None, self.world_size)
        if (
            changes.keys() & {"epochs", "max_steps", "batch_size", "warmup_steps"} or world_changed
        ) and self.scheduler is not None:
            self.total_steps = self.planned_total_steps()
            moved = optim.retarget_schedule(self.scheduler, self.total_steps, self.args.warmup_steps)
            if moved:
                log.info(
                    "--resume: LR schedule rebuilt for %d steps in all (was %d), continuing at step %d with lr %.3g",
                    moved[1],
                    moved[0],
                    self.global_step,
                    self.optimizer.param_groups[0]["lr"],
                )
        elif "lr" in changes and self.scheduler is not None:
            optim.set_scheduled_lr(self.scheduler)

"""What a resume may change, and how the loaded state follows.

:data:`RESUME_CHANGEABLE` lists the flags a ``--resume`` may give new values; :func:`apply_resume_changes`
makes the changes take effect on the loaded optimizer and schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from base.loop import optim

#: Flags that may take a new value on ``--resume``; any other flag given there with
#: a value unlike the run's is refused (it would change the model, data or numerics
#: under the saved state). Tasks extend it: ``TrainerBase.RESUME_CHANGEABLE | {...}``.
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
        # the side modes' own values change nothing in a run (--lr_find and --preview_augment themselves
        # are refused with --resume by base.config.side_mode_flags, in one line that says why)
        "lr_find",
        "lr_find_range",
        "lr_find_steps",
        "preview_augment",
        "preview_samples",
        "sync_bn",
        "loggers",
        "sweep_trial",  # a resumed trial may be handed a new trial file (its params: checked as flags are)
    }
)


def apply_resume_changes(
    changes: dict,
    optimizer,
    scheduler,
    replan: Callable[[], int],
    warmup_steps: int,
    global_step: int,
    logger: logging.Logger,
    world_changed: bool = False,
    built_weight_decays: list | None = None,
) -> int | None:
    """Make flags changed on ``--resume`` take effect on the loaded optimizer and schedule, and log each.

    Args:
        changes: ``{flag: (run's value, new value)}``.
        replan: returns the run's total optimizer steps under the new flags (called when the length changes).
        world_changed: the run resumes over another number of processes (the samples per step change like a
            new ``--batch_size``).
        built_weight_decays: each param group's ``weight_decay`` as ``build_optimizer`` made it under this
            launch's flags, taken before the checkpoint's optimizer state replaced it. A new
            ``--weight_decay`` then gives each group its built value, so a no-decay group stays at 0 even
            when the run's old value was 0 as well. ``None``: groups whose decay equals the old value take
            the new one.

    Returns:
        the new total steps when the schedule was replanned, else ``None``.
    """
    for flag, (old, new) in sorted(changes.items()):
        logger.info("--resume: --%s %r (the run had %r)", flag, new, old)
    if "lr" in changes and changes["lr"][0]:
        ratio = changes["lr"][1] / changes["lr"][0]
        for group in optimizer.param_groups:
            group["lr"] *= ratio
            group["initial_lr"] = group.get("initial_lr", group["lr"] / ratio) * ratio
        if scheduler is not None:
            scheduler.base_lrs = [lr * ratio for lr in scheduler.base_lrs]
    if "weight_decay" in changes:
        groups = optimizer.param_groups
        if built_weight_decays is not None and len(built_weight_decays) == len(groups):
            for group, decay in zip(groups, built_weight_decays):
                group["weight_decay"] = decay
        else:
            for group in groups:
                if group.get("weight_decay") == changes["weight_decay"][0]:  # not a no-decay group
                    group["weight_decay"] = changes["weight_decay"][1]
    if (
        changes.keys() & {"epochs", "max_steps", "batch_size", "warmup_steps"} or world_changed
    ) and scheduler is not None:
        total = replan()
        moved = optim.retarget_schedule(scheduler, total, warmup_steps)
        if moved:
            logger.info(
                "--resume: LR schedule rebuilt for %d steps in all (was %d), continuing at step %d with lr %.3g",
                moved[1],
                moved[0],
                global_step,
                optimizer.param_groups[0]["lr"],
            )
        return total
    if "lr" in changes and scheduler is not None:
        optim.set_scheduled_lr(scheduler)
    return None

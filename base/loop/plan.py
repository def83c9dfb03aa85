"""A plan of the run for side modes (``--plot_lr``, an LR finder): its optimizer steps and learning rates.

:func:`plan_run` builds the task's data, model, optimizer and schedule as ``setup`` would, loads a
``--resume`` checkpoint's optimizer and schedule and applies the flags changed there, but makes no run
folder, starts no tracker and leaves the trainer's loop position (``trainer.progress``) as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from base.checkpoint import older
from base.checkpoint.files import load_checkpoint
from base.checkpoint.resume_changes import apply_resume_changes
from base.loop.progress import LoopProgress
from base.loop.step import OptimizerStep


@dataclasses.dataclass
class RunPlan:
    """What :func:`plan_run` planned: the optimizer and schedule at the start step, and the run's length."""

    optimizer: torch.optim.Optimizer
    scheduler: object  # an LRScheduler, or None
    start_step: int  # optimizer steps done (a resumed run's step)
    total_steps: int  # optimizer steps in the whole run
    steps_per_epoch: int
    resumed: bool


def plan_run(trainer) -> RunPlan:
    """The run's optimizer steps and learning rates as :meth:`setup` would plan them, for side modes
    (``--plot_lr``): built without a run folder or trackers, the trainer's loop position untouched.

    Raises:
        CheckpointError: the ``--resume`` checkpoint cannot be read or does not fit.
    """
    a, progress = trainer.args, LoopProgress()
    trainer.build()
    state = None
    if trainer.resume_from:
        state = older.upgrade(
            load_checkpoint(trainer.resume_from[1], map_location="cpu", flag="--resume"), a.batch_size
        )
        progress.load_state_dict(state)
    total = trainer._planned_total_steps(progress)
    trainer.optimizer, trainer.total_steps = trainer.build_optimizer(), total
    trainer.scheduler = trainer.build_scheduler()
    if state is not None:
        built = [group.get("weight_decay") for group in trainer.optimizer.param_groups]
        # the schedule's state only: a disabled scaler ignores the saved one, no EMA is built
        step = OptimizerStep(trainer.optimizer, trainer.scheduler, torch.amp.GradScaler("cpu", enabled=False), None)
        step.load_state_dict(state, f"--resume {trainer.resume_from[1]}")
        replan = lambda: trainer._planned_total_steps(progress)  # noqa: E731
        total = apply_resume_changes(
            trainer.resume_changes, trainer.optimizer, trainer.scheduler, replan, a.warmup_steps,
            progress.global_step, logging.getLogger("plot_lr"), False, built,
        ) or total  # fmt: skip
    per_epoch = math.ceil(len(trainer.loaders["train"]) / a.accum_steps)
    return RunPlan(
        trainer.optimizer, trainer.scheduler, progress.global_step, total, per_epoch, bool(trainer.resume_from)
    )

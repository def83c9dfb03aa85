"""``--plot_lr PNG``: draw the learning-rate schedule a run would follow, without training it.

The schedule is the trainer's own (``build_optimizer`` / ``build_scheduler``),
stepped once per optimizer step over the planned length, so warmup,
``--accum_steps``, ``--max_steps`` and, with ``--resume``, the resumed step
and any flag changed there (``--epochs``, ``--lr``, ...) are all in it.
"""
import csv
import logging
import math
import os
import warnings

from base.checkpoint import load_checkpoint
from base.errors import CheckpointError


def plot_lr_schedule(trainer, path):
    """Build ``trainer``'s data, model, optimizer and schedule; write the schedule to ``path`` and a ``.csv``.

    No run folder is created and nothing is trained. With ``--resume`` the
    schedule starts at the checkpoint's step, as the resumed run would.

    Args:
        trainer: a :class:`base.trainer_base.TrainerBase` from ``from_argv`` (not set up).
        path: the PNG to write; the values go to the same stem with ``.csv``
            (columns ``step``, ``lr``: optimizer steps and the first param group's LR).

    Returns:
        list of ``(step, lr)`` for every optimizer step still to run.

    Raises:
        CheckpointError: the ``--resume`` checkpoint cannot be read or does not fit.
    """
    from utils.plots import plt  # matplotlib with the Agg backend (slow import: only here)

    a = trainer.args
    trainer.build()
    state = None
    if trainer.resume_from:
        state = load_checkpoint(trainer.resume_from[1], map_location="cpu", flag="--resume")
        trainer.epoch, trainer.global_step = state["epoch"], state["global_step"]
        trainer.samples_in_epoch = state.get("samples_in_epoch", state["batch_in_epoch"] * a.batch_size)
    per_epoch = math.ceil(len(trainer.loaders["train"]) / a.accum_steps)  # optimizer steps
    trainer.total_steps = trainer.planned_total_steps()
    trainer.optimizer = trainer.build_optimizer()
    trainer.scheduler = trainer.build_scheduler()
    if state is not None:
        try:
            trainer.optimizer.load_state_dict(state["optimizer"])
            if trainer.scheduler is not None and state["scheduler"] is not None:
                trainer.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"--resume {trainer.resume_from[1]}: optimizer/scheduler state does not fit "
                                  f"({exc})") from None
        trainer.logger = logging.getLogger("plot_lr")
        trainer._apply_resume_changes()
    rows = []
    with warnings.catch_warnings():  # stepping the schedule without optimizer steps is the point here
        warnings.simplefilter("ignore", UserWarning)
        for step in range(trainer.global_step, trainer.total_steps):
            rows.append((step, trainer.optimizer.param_groups[0]["lr"]))
            if trainer.scheduler is not None:
                trainer.scheduler.step()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # checked writable at parse time
    with open(os.path.splitext(path)[0] + ".csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("step", "lr"), *rows])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], lw=1.5)
    for epoch_end in range(per_epoch, trainer.total_steps, per_epoch):
        ax.axvline(epoch_end, color="0.85", lw=0.6, zorder=0)
    if trainer.resume_from:
        ax.axvline(trainer.global_step, color="tab:red", ls="--", lw=1, label=f"resumed at step {trainer.global_step}")
        ax.legend()
    ax.set(xlabel=f"optimizer step ({a.batch_size} x {a.accum_steps} samples each; grey: epoch ends)",
           ylabel="learning rate", title=f"{type(trainer).__name__}: {trainer.total_steps} steps, "
                                         f"warmup {a.warmup_steps}, {a.lr_scheduler}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"--plot_lr: wrote {path} and its .csv ({len(rows)} steps, from step {trainer.global_step}; "
          f"peak lr {max((r[1] for r in rows), default=0):.3g})")
    return rows

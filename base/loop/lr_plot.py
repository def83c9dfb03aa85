"""``--plot_lr PNG``: draw the learning-rate schedule a run would follow, without training it.

The schedule is the trainer's own (``build_optimizer`` / ``build_scheduler``)
over the planned length, so warmup (the one the run really uses, see
:func:`base.loop.optim.warmup_used`), ``--accum_steps``, ``--max_steps`` and,
with ``--resume``, the resumed step and any flag changed there (``--epochs``,
``--lr``, ...) are all in it. A run of more than :data:`MAX_POINTS` steps is
drawn at that many steps spread evenly over it (its first and last step and
the end of the warmup among them): the LR of a ``LambdaLR`` is computed at
each of them directly, any other schedule is stepped through.
"""

import csv
import os
import warnings

import torch

from base.config.parse import ConfigError
from base.loop import optim

MAX_POINTS = 2000  # steps drawn and written to the .csv: a curve's worth, whatever the run's length
MAX_EPOCH_LINES = 200  # grey lines at epoch ends; more would be a grey block
MAX_STEPPED = 1_000_000  # a schedule with no closed form is stepped through, up to this many steps (~10 s)


def plot_lr_schedule(plan, args, title, path):
    """Draw ``plan``'s schedule (a :class:`base.loop.plan.RunPlan`) to ``path`` and its values to a ``.csv``.

    No run folder is created and nothing is trained. With ``--resume`` the
    schedule starts at the checkpoint's step, as the resumed run would.

    Args:
        plan: the run's plan (:meth:`base.trainer.TrainerBase.plan`).
        args: the run's flags (``--warmup_steps``, ``--batch_size``, ``--accum_steps``, ``--lr_scheduler``).
        title: the trainer's name, in the figure's title.
        path: the PNG to write; the values go to the same stem with ``.csv``
            (columns ``step``, ``lr``: optimizer steps and the first param group's LR).

    Returns:
        list of ``(step, lr)``: every optimizer step still to run, or, for more
        than :data:`MAX_POINTS` of them, the steps of :func:`sampled_steps`.

    Raises:
        ConfigError: a schedule that is not a ``LambdaLR`` over more than
            :data:`MAX_STEPPED` steps (it would have to be stepped through).
    """
    import matplotlib  # (slow import: only here)

    matplotlib.use("Agg")  # no display on servers; before pyplot's import
    import matplotlib.pyplot as plt

    a, per_epoch = args, plan.steps_per_epoch
    start, end = plan.start_step, plan.total_steps
    warmup = _warmup(plan.scheduler, a.warmup_steps)
    note = optim.warmup_note(plan.scheduler, a.warmup_steps)
    if note:
        print(f"--plot_lr: {note}")
    steps = sampled_steps(start, end, marks=(warmup,))
    rows = list(zip(steps, _lrs(plan.optimizer, plan.scheduler, start, steps)))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # checked writable at parse time
    with open(os.path.splitext(path)[0] + ".csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("step", "lr"), *rows])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], lw=1.5)
    epoch_ends = range(per_epoch, end, per_epoch)
    if len(epoch_ends) <= MAX_EPOCH_LINES:
        for epoch_end in epoch_ends:
            ax.axvline(epoch_end, color="0.85", lw=0.6, zorder=0)
    if plan.resumed:
        ax.axvline(start, color="tab:red", ls="--", lw=1, label=f"resumed at step {start}")
        ax.legend()
    cut = f" (--warmup_steps {a.warmup_steps} cut to half the run)" if warmup != a.warmup_steps else ""
    grey = "grey: epoch ends" if len(epoch_ends) <= MAX_EPOCH_LINES else f"{len(epoch_ends) + 1} epochs"
    ax.set(
        xlabel=f"optimizer step ({a.batch_size} x {a.accum_steps} samples each; {grey})",
        ylabel="learning rate",
        title=f"{title}: {end} steps, warmup {warmup}{cut}, {a.lr_scheduler}",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    drawn = f"{len(rows)} steps" if len(rows) == end - start else f"{len(rows)} of {end - start} steps"
    print(
        f"--plot_lr: wrote {path} and its .csv ({drawn}, from step {start}; "
        f"peak lr {max((r[1] for r in rows), default=0):.3g})"
    )
    return rows


def sampled_steps(start, end, marks=(), limit=MAX_POINTS):
    """The steps of ``range(start, end)`` to draw: all of them, or ``limit`` spread evenly plus ``marks``.

    Evenly spread: ``start + (end - 1 - start) * i // (limit - 1)`` for ``i`` in
    ``0 .. limit - 1``, so the first and last step are always in; each of
    ``marks`` inside the range (the warmup's end) is added.

    Returns:
        sorted list of distinct ints.
    """
    if end - start <= limit:
        return list(range(start, end))
    spread = {start + (end - 1 - start) * i // (limit - 1) for i in range(limit)}
    return sorted(spread | {m for m in marks if start <= m < end})


def _warmup(scheduler, warmup_steps):
    """The warmup ``scheduler`` uses (its :class:`base.loop.optim.WarmupCosine`'s), else ``warmup_steps``."""
    lambdas = [f for f in getattr(scheduler, "lr_lambdas", []) if isinstance(f, optim.WarmupCosine)]
    return lambdas[0].warmup if lambdas else warmup_steps


def _lrs(optimizer, scheduler, start, steps):
    """The first param group's LR at each of ``steps`` (sorted, the first being ``start``, the current step).

    At ``start`` it is the group's LR now; after that a ``LambdaLR`` gives
    ``base_lr * lambda(step)`` (what its ``step()`` sets), with no need to step;
    any other scheduler is stepped through to the last of ``steps``.

    Raises:
        ConfigError: stepping through would take more than :data:`MAX_STEPPED` steps.
    """
    now = optimizer.param_groups[0]["lr"]
    if scheduler is None:
        return [now] * len(steps)
    if type(scheduler) is torch.optim.lr_scheduler.LambdaLR:
        base, factor = scheduler.base_lrs[0], scheduler.lr_lambdas[0]
        return [now if step == start else base * factor(step) for step in steps]
    if steps and steps[-1] - start > MAX_STEPPED:
        raise ConfigError(
            f"--plot_lr: {type(scheduler).__name__} has to be stepped through "
            f"{steps[-1] - start} steps, more than {MAX_STEPPED}; plot a shorter run (--max_steps)"
        )
    lrs, wanted = [], set(steps)
    with warnings.catch_warnings():  # stepping the schedule without optimizer steps is the point here
        warnings.simplefilter("ignore", UserWarning)
        for step in range(start, steps[-1] + 1 if steps else start):
            if step in wanted:
                lrs.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return lrs

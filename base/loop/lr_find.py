"""``--lr_find PNG``: the learning-rate range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3), run before training to choose ``--lr``.

A deep copy of the built model trains for ``--lr_find_steps`` optimizer steps with the task's own
optimizer (``build_optimizer`` on the copy; no schedule, no EMA, no hooks) at learning rates rising
exponentially from ``MIN`` to ``MAX`` of ``--lr_find_range``: step ``i`` of ``n`` at
``MIN * (MAX / MIN) ** (i / (n - 1))``. Each param group runs at that lr times its share of ``--lr`` as
built (layer-wise decay keeps its ratios), so the suggestion is a ``--lr``. The batches are the run's
first ones, made exactly as the loop makes them (:mod:`base.loop.train_batches`: order, seeding, device
move, device augmentation, normalisation, Mixup/CutMix), and each step is the loop's
(:class:`base.loop.step.OptimizerStep`: ``--accum_steps``, ``--amp``, ``--grad_clip``). The sweep stops
early once the smoothed loss exceeds :data:`DIVERGED` times its minimum or a loss is not finite.

The smoothed loss is the bias-corrected exponential moving average of the step losses with
:data:`BETA` (as Lightning's ``Tuner.lr_find`` and fastai's ``lr_find`` record it). The suggestion follows
Lightning's ``_LRFinder.suggestion``: the lr of the steepest descent (the most negative gradient) of the
smoothed loss, leaving out the first points (10 of a sweep of 100 or more, a tenth of a shorter one)
and the last. The gradient is taken against ``log10(lr)``, the slope seen on the plot's log axis, as
Lightning did before 2.0 (it now takes it against the lr itself, which favours the small lrs).
The original model, the loop's position, the run's loaders and every global generator are left as
they were (:func:`base.loop.side_modes.run_side_mode` keeps the generators).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os

import numpy as np
import torch

from base.loop.step import OptimizerStep
from base.loop.train_batches import run_start_windows

BETA = 0.98  #: smoothing of the loss (an average over roughly the last 1 / (1 - BETA) = 50 steps)
DIVERGED = 4.0  #: the sweep stops once the smoothed loss exceeds this many times its minimum


@dataclasses.dataclass
class LRFinding:
    """What the sweep recorded: per optimizer step its lr (``--lr`` units), mean loss per sample and the
    smoothed loss; the suggested ``--lr`` (one of :attr:`lrs`, ``None`` when too few finite points), and why
    the sweep ended (``"done"``, ``"diverged"``, ``"non-finite loss"`` or ``"out of batches"``)."""

    lrs: list
    losses: list
    smoothed: list
    suggestion: float | None
    ended: str


def sweep_lrs(low: float, high: float, steps: int) -> list[float]:
    """``steps`` learning rates from ``low`` to ``high`` (both included), each a constant factor above the last."""
    return [low * (high / low) ** (i / (steps - 1)) for i in range(steps)]


def suggest(lrs: list, smoothed: list) -> int | None:
    """The index of the steepest descent of ``smoothed`` against ``log10(lrs)`` (see the module docstring);
    ``None`` with fewer than 2 finite points once the first and the last are left out."""
    n = len(smoothed)
    begin, end = min(10, n // 10), n - 1 if n > 2 else n
    index = [i for i in range(begin, end) if math.isfinite(smoothed[i])]
    if len(index) < 2:
        return None
    slope = np.gradient(np.array([smoothed[i] for i in index]), np.log10([lrs[i] for i in index]))
    return index[int(np.argmin(slope))]


def find_lr(trainer, path: str) -> LRFinding:
    """Run the range test on a copy of ``trainer``'s built model, write ``path`` and its ``.csv``, print the
    suggestion (one line) and return the sweep.

    ``trainer`` is built (``trainer.plan()``), not set up: no run folder, no trackers. While the sweep runs
    ``trainer.model`` and ``trainer.raw_model`` are the copy (``build_optimizer`` and ``train_step`` use
    them); both are put back after it.
    """
    a = trainer.args
    model = copy.deepcopy(trainer.raw_model)
    model = model.to(memory_format=torch.channels_last) if a.channels_last else model
    model.train()
    kept = trainer.model, trainer.raw_model
    trainer.model = trainer.raw_model = model
    try:
        lrs, losses, ended = _sweep(trainer, model, sweep_lrs(*a.lr_find_range, a.lr_find_steps))
    finally:
        trainer.model, trainer.raw_model = kept
    smoothed = _smoothed(losses)
    best = suggest(lrs, smoothed)
    found = LRFinding(lrs, losses, smoothed, None if best is None else lrs[best], ended)
    title = f"{type(trainer).__name__}: LR range test ({a.batch_size} x {a.accum_steps} samples a step)"
    _write(found, best, path, title)
    where = f"wrote {path} and its .csv ({len(lrs)} steps, lr {lrs[0]:.3g} to {lrs[-1]:.3g}, {ended})"
    if best is None:
        print(f"--lr_find: no suggestion (too few finite losses: widen --lr_find_range, more --lr_find_steps); {where}")
    else:
        print(f"--lr_find: suggested --lr {found.suggestion:.3g} (steepest descent of the smoothed loss); {where}")
    return found


def _sweep(trainer, model, planned):
    """Train ``model`` one optimizer step per lr of ``planned``; returns ``(lrs, losses, why it ended)``."""
    a = trainer.args
    optimizer = trainer.build_optimizer()
    shares = [group["lr"] / a.lr for group in optimizer.param_groups]
    scaler = torch.amp.GradScaler(trainer.device.type, enabled=trainer.use_fp16_scaler)
    step = OptimizerStep(optimizer, None, scaler, None, a.grad_clip, a.grad_clip_mode)
    loader = trainer.build_dataloader(trainer.datasets["train"], "train")  # its own: the run's stays unread
    windows = run_start_windows(loader, trainer.inputs, a.seed, a.accum_steps, a.bad_images == "skip")
    lrs, losses, smoothed = [], [], []
    try:
        for lr in planned:
            window = next(windows, None)
            if window is None:
                return lrs, losses, "out of batches"
            for group, share in zip(optimizer.param_groups, shares):
                group["lr"] = lr * share
            summed = step.accumulate(window, trainer._forward, model, 1, on_device=False) if window else None
            if summed is None:  # a window of only unreadable images (--bad_images skip): no step at this lr
                continue
            lrs.append(lr)
            if summed.nonfinite_loss is not None:
                losses.append(float(summed.nonfinite_loss))
                return lrs, losses, "non-finite loss"
            step.clip(norm_wanted=False)
            step.apply(model)
            losses.append(float(summed.loss_sum) / summed.samples)  # (a host sync per step)
            smoothed = _smoothed(losses)
            if not math.isfinite(smoothed[-1]) or smoothed[-1] > DIVERGED * min(smoothed):
                return lrs, losses, "diverged"
        return lrs, losses, "done"
    finally:
        windows.close()


def _smoothed(losses):
    """The bias-corrected moving average of ``losses`` with :data:`BETA`, at each step."""
    out, average = [], 0.0
    for i, loss in enumerate(losses):
        average = BETA * average + (1 - BETA) * loss
        out.append(average / (1 - BETA ** (i + 1)))
    return out


def _write(found, best, path, title):
    """The ``.csv`` (``lr``, ``loss``, ``smoothed_loss``) and the plot: loss against lr on a log axis, the
    suggestion marked."""
    import matplotlib  # (slow import: only here)

    matplotlib.use("Agg")  # no display on servers; before pyplot's import
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # checked writable at parse time
    with open(os.path.splitext(path)[0] + ".csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("lr", "loss", "smoothed_loss"), *zip(found.lrs, found.losses, found.smoothed)])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(found.lrs, found.losses, color="0.75", lw=1, label="loss")
    ax.plot(found.lrs, found.smoothed, color="tab:blue", lw=1.5, label=f"smoothed (EMA {BETA})")
    finite = [v for v in found.smoothed if math.isfinite(v)]
    if finite and max(finite) > min(finite):  # the raw losses of the last steps may be far off: follow the curve
        margin = 0.1 * (max(finite) - min(finite))
        ax.set_ylim(min(finite) - margin, max(finite) + margin)
    if best is not None:
        ax.plot([found.lrs[best]], [found.smoothed[best]], "o", color="tab:red", ms=8,
                label=f"suggested --lr {found.suggestion:.3g} (steepest descent)")  # fmt: skip
    ax.set(xscale="log", xlabel="learning rate (--lr)", ylabel="training loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""The optimizer step: micro-batches, AMP, clipping, the EMA update and the atomic update.

One part the trainer owns (``trainer.step``): :class:`OptimizerStep` holds the optimizer, the
schedule, the fp16 gradient scaler and the EMA, and is their one ``state_dict``. The loop
(:class:`base.trainer.TrainerBase`) reads a window of ``--accum_steps`` batches
(:func:`read_windows`), calls :meth:`OptimizerStep.accumulate`, the ``after_backward`` hooks,
:meth:`OptimizerStep.clip`, then :meth:`OptimizerStep.apply` inside a section a second Ctrl-C waits for.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from base.errors import CheckpointError
from base.loop.ema import ModelEMA
from base.runtime import distributed


def amp_context(enabled: bool, device: torch.device, dtype: torch.dtype):
    """Autocast for ``--amp`` on ``device`` in ``dtype``; a null context when off (a disabled autocast costs ~4 us)."""
    return torch.autocast(device.type, dtype=dtype) if enabled else contextlib.nullcontext()


def prepare_model(model: nn.Module, channels_last: bool, ema_decay: float, compile: bool):
    """Channels-last weights, the EMA copy, then ``torch.compile`` (in that order); returns ``(model, ema or None)``.

    ``nn.Module.compile`` compiles in place, so ``state_dict`` keys stay the model's own (no ``_orig_mod.``
    prefix) and checkpoints load with or without ``--compile``. The EMA copy is taken before compiling: it
    is only evaluated, and a copy of a compiled module would share its cache.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    ema = ModelEMA(model, ema_decay) if ema_decay > 0 else None
    if compile:
        model.compile()
    return model, ema


class Accumulated(NamedTuple):
    """What :meth:`OptimizerStep.accumulate` summed over a window (device tensors: no host sync)."""

    loss_sum: Any  # 0-dim float tensor: the loss summed per sample
    extra_sums: dict  # {key: 0-dim tensor}: train_step's other terms, summed per sample
    samples: int  # samples of this process in the window
    bad: torch.Tensor | None  # noticed on the device: a bool 0-dim tensor, any batch non-finite
    nonfinite_loss: torch.Tensor | None  # noticed on the host: the first non-finite loss (nothing was applied)


class OptimizerStep:
    """Optimizer, schedule, fp16 scaler and EMA, and the step that updates them together.

    Args:
        optimizer: the model's optimizer.
        scheduler: an ``LRScheduler`` stepped once per optimizer step, or ``None``.
        scaler: ``torch.amp.GradScaler`` (disabled unless fp16 AMP on CUDA).
        ema: :class:`base.loop.ema.ModelEMA` or ``None``.
        grad_clip: clip threshold (0: off); ``grad_clip_mode`` ``"norm"`` (total L2 norm) or ``"value"``.
    """

    def __init__(self, optimizer, scheduler, scaler, ema, grad_clip: float = 0.0, grad_clip_mode: str = "norm"):
        self.optimizer, self.scheduler, self.scaler, self.ema = optimizer, scheduler, scaler, ema
        self.grad_clip, self.grad_clip_mode = grad_clip, grad_clip_mode
        self.updating = False  # between the first parameter write and the end of apply()

    @property
    def lr(self) -> float:
        """The first param group's current learning rate."""
        return self.optimizer.param_groups[0]["lr"]

    def accumulate(
        self,
        batches: list[tuple[Any, int]],
        forward: Callable[[Any], dict],
        model: nn.Module,
        world_size: int,
        on_device: bool,
    ) -> Accumulated:
        """Forward and backward ``[(batch, samples)]`` of one window; gradients summed in the parameters.

        Each batch's loss is weighted by its share of the window's samples, so ``--accum_steps 4
        --batch_size 8`` gives the gradient of one batch of 32. Under DDP the weights are each batch's
        share of the samples of all processes times their number (DDP averages the gradients over
        them), the gradients are all-reduced only on the last batch (``no_sync`` before), and the
        processes agree on a non-finite loss before any ``backward``, so all skip (or stop) together.
        ``on_device``: a non-finite loss is flagged in a device tensor (no sync; see
        :mod:`base.loop.nonfinite`) rather than returned.
        """
        total = total_all = sum(n for _, n in batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, extra_sums, bad = 0.0, {}, None
        for i, (batch, n) in enumerate(batches):
            sync = world_size == 1 or i == len(batches) - 1
            with contextlib.nullcontext() if sync else model.no_sync():
                out = forward(batch)
                loss = out["loss"]
                weight = n / total
                if on_device:
                    flag = ~torch.isfinite(loss.detach()).all()
                    bad, nonfinite = (flag if bad is None else bad | flag), False
                else:  # a host sync per batch: the price of never applying an update from a NaN/inf loss
                    nonfinite = not torch.isfinite(loss.detach()).all()
                if world_size > 1:  # one all-reduce: the flag, and (first batch) the window's samples
                    flag, samples = distributed.all_reduce_sum([nonfinite, total if i == 0 else 0])
                    nonfinite, total_all = flag > 0, samples if i == 0 else total_all
                    weight = n * world_size / total_all
                if nonfinite:
                    self.optimizer.zero_grad(set_to_none=True)
                    return Accumulated(loss_sum, extra_sums, total, bad, loss)
                self.scaler.scale(loss * weight).backward()
            loss_sum = loss_sum + loss.detach().float() * n  # stays on device: no sync
            for key, value in out.items():  # other terms train_step reports, averaged like the loss
                if key != "loss":
                    extra_sums[key] = extra_sums.get(key, 0.0) + torch.as_tensor(value).detach().float() * n
        return Accumulated(loss_sum, extra_sums, total, bad, None)

    def clip(self, norm_wanted: bool) -> torch.Tensor | None:
        """Unscale and clip the gradients (``--grad_clip``); returns their total norm before clipping when
        ``norm_wanted`` (a device tensor: no sync), else ``None``."""
        if not (self.grad_clip > 0 or norm_wanted):
            return None
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.grad_clip > 0 and self.grad_clip_mode == "norm":
            return torch.nn.utils.clip_grad_norm_(params, self.grad_clip)  # the norm before clipping
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) if norm_wanted else None
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_value_(params, self.grad_clip)
        return norm

    def apply(self, raw_model: nn.Module, then: Callable[[], None] = lambda: None) -> None:
        """Update the weights (the scaler skips steps with inf gradients under fp16), the EMA of ``raw_model``
        and the schedule, then call ``then`` (the loop counts the step there). :attr:`updating` is True from the
        first parameter write until ``then`` returned: an error in between leaves no whole step to save.
        Call it where a second Ctrl-C waits."""
        self.updating = True
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if hasattr(self.optimizer, "found_inf"):  # set by the non-finite guard for this step only
            del self.optimizer.found_inf
        if self.ema is not None:
            self.ema.update(raw_model)
        if self.scheduler is not None:
            self.scheduler.step()
        then()
        self.updating = False

    def scale_lr(self, factor: float) -> None:
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

    def state_dict(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict, source: str = "checkpoint") -> None:
        """Take :meth:`state_dict`'s parts.

        Raises:
            CheckpointError: the optimizer or schedule does not fit, or the run has an EMA the state lacks;
                names ``source``.
        """
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError) as exc:
            raise CheckpointError(f"{source}: optimizer/scheduler state does not fit ({exc})") from None
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise CheckpointError(
                    f"{source}: it holds no EMA weights, but this run has --ema_decay {self.ema.decay}"
                )
            self.ema.load_state_dict(state["ema"])


def read_windows(batches: Iterable, accum_steps: int, on_window: Callable[[float], None]) -> Iterator[list]:
    """Group ``batches`` into lists of ``accum_steps`` (the last of an epoch may be shorter).

    Each list makes one optimizer step. Once its batches are read, ``on_window(seconds waited for them)``
    runs (the loop seeds the step's random draws from its position there: see
    :func:`base.loop.state.seed_position`), so reading ahead (copy-ahead, workers) changes nothing.
    """
    batches = iter(batches)
    while True:
        start = time.perf_counter()
        window = list(itertools.islice(batches, accum_steps))
        if not window:
            return
        on_window(time.perf_counter() - start)
        yield window


def window_batches(window: list, world_size: int, skip_bad: bool) -> list[tuple[Any, int]]:
    """``[(batch, samples)]`` to train on from ``window``; ``None`` entries are batches of only bad images.

    One process drops them. Under DDP every process must run as many forward/backward passes as the
    others, so a ``None`` is replaced by another batch of this process weighted 0 (it adds no gradient);
    a process with no batch at all makes every process skip the window (``[]``). A collective under DDP
    with ``skip_bad``.
    """
    good = [b for b in window if b is not None]
    if world_size == 1:
        return [(b, batch_size(b)) for b in good]
    if skip_bad and distributed.any_rank(not good):
        return []
    spare = good[0]
    return [(spare, 0) if b is None else (b, batch_size(b)) for b in window]


def batch_size(batch) -> int:
    """Samples in a batch: dim 0 of its first tensor."""
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, dict):
        batch = list(batch.values())
    return batch_size(batch[0])

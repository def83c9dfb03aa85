"""The non-finite guard: ``--nonfinite raise|skip|rollback`` for a step whose loss is NaN or inf.

One part the trainer owns (``trainer.guard``). The weights are never updated from a non-finite
loss. Two ways to notice one:

* on the host, per batch (``skip``, ``rollback``, DDP, the fp16 scaler): one host sync per batch;
* on the device (``raise`` with a fused optimizer, one process): no sync per step. The first bad
  step is recorded in a device tensor and every update from it on is skipped the way ``GradScaler``
  skips one (the fused optimizer reads ``found_inf``); :meth:`NonFiniteGuard.check` raises at the
  next log, validation or checkpoint, so no checkpoint holds a step counted after the bad one.

A rollback reloads a checkpoint: the trainer hands :meth:`NonFiniteGuard.roll_back` the function
that does it (the trainer owns the state tree).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


class NonFiniteGuard:
    """The ``--nonfinite`` policy and what it counts (``skipped_steps``, ``lr_scale``).

    Args:
        policy: ``"raise"``, ``"skip"`` or ``"rollback"``.
        max_skipped: stop after more than this many skipped or rolled-back steps.
        rollback_factor: learning-rate factor applied at each rollback (compounds).
    """

    def __init__(self, policy: str, max_skipped: int, rollback_factor: float):
        self.policy, self.max_skipped, self.rollback_factor = policy, max_skipped, rollback_factor
        self.skipped_steps = 0  # batches dropped or rolled back for a non-finite loss
        self.lr_scale = 1.0  # product of the rollback factors applied so far
        self.on_device = False  # see arm()
        self.first_bad = None  # on the device: the first step with a non-finite loss (0: none), once armed

    def arm(self, optimizer: torch.optim.Optimizer, world_size: int, fp16_scaler: bool) -> None:
        """Notice NaN/inf on the device when that is exact: ``raise``, one process, no fp16 scaler, and every
        param group fused (the fused optimizers skip an update whose ``found_inf`` is set)."""
        self.on_device = (
            self.policy == "raise"
            and world_size == 1
            and not fp16_scaler
            and all(g.get("fused") for g in optimizer.param_groups)
        )

    def mark(self, bad: torch.Tensor, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Record (on the device) ``step`` if ``bad`` (bool 0-dim tensor) and none was recorded, and make the
        optimizer skip this update if any step was bad. Sticky: no later step updates the weights either."""
        if self.first_bad is None:
            self.first_bad = torch.zeros((), dtype=torch.int64, device=bad.device)
        self.first_bad = torch.where((self.first_bad == 0) & bad, step, self.first_bad)
        optimizer.found_inf = (self.first_bad > 0).float()

    def pending(self) -> bool:
        """Whether a step since the start had a non-finite loss on the device (one host sync)."""
        return self.on_device and self.first_bad is not None and bool(int(self.first_bad))

    def check(self, global_step: int) -> None:
        """Raise if a step noticed on the device was non-finite; a no-op otherwise.

        Raises:
            FloatingPointError: names the bad step and ``global_step``, where it was noticed.
        """
        if not self.on_device or self.first_bad is None:
            return
        step = int(self.first_bad)
        if step:
            raise FloatingPointError(
                f"non-finite loss at step {step} (noticed at step {global_step}; no update was applied from "
                f"step {step} on); lower --lr, set --grad_clip, or use --nonfinite skip"
            )

    def on_loss(self, loss: torch.Tensor, where: str) -> str:
        """Apply the policy to a non-finite ``loss`` noticed on the host at ``where`` (e.g. ``"step 3 (epoch
        1, batch 3)"``): returns ``"skip"`` or ``"rollback"`` (the trainer then reloads a checkpoint).

        Raises:
            FloatingPointError: ``raise``, or more than ``max_skipped`` steps skipped; names the step.
        """
        message = self.message(loss, where)
        if self.policy == "raise":
            raise FloatingPointError(f"{message}; lower --lr, set --grad_clip, or use --nonfinite skip")
        self.skipped_steps += 1
        if self.skipped_steps > self.max_skipped:
            raise FloatingPointError(f"{message}: more than --max_skipped_steps={self.max_skipped} non-finite steps")
        return self.policy

    @staticmethod
    def message(loss: torch.Tensor, where: str) -> str:
        """``"non-finite loss nan at <where>"``."""
        return f"non-finite loss {loss.detach().float().item()} at {where}"

    def roll_back(self, reload: Callable[[], None]) -> float:
        """Roll back: ``reload()`` loads the newest resumable checkpoint (this guard's state with it); this
        run's count of skipped steps is kept and the learning-rate factor compounds over rollbacks.

        Returns:
            the factor by which the reloaded learning rates must be multiplied (the checkpoint's carry
            its own, older scale).
        """
        skipped, scale = self.skipped_steps, self.lr_scale * self.rollback_factor
        reload()
        factor = scale / self.lr_scale
        self.skipped_steps, self.lr_scale = skipped, scale
        return factor

    def state_dict(self) -> dict:
        return {"skipped_steps": self.skipped_steps, "lr_scale": self.lr_scale}

    def load_state_dict(self, state: dict) -> None:
        self.skipped_steps, self.lr_scale = state["skipped_steps"], state["lr_scale"]

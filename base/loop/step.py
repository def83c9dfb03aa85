"""One optimizer step of :class:`base.trainer.TrainerBase`, and the model features around it.

Mixed into the trainer; kept apart so the loop reads in one sitting. Here:
AMP, moving batches to the device (``--channels_last``), gradient
accumulation (``--accum_steps``), clipping, the update, the EMA and
``--compile``.
"""

import contextlib
import itertools
import time

import torch

from base.loop.ema import ModelEMA
from base.loop.state import seed_position
from base.runtime import distributed


class StepMixin:
    """Forward, backward, clip and update; the EMA; the model's memory format and compilation."""

    @property
    def amp_dtype(self):
        return torch.float16 if self.args.amp_dtype == "float16" else torch.bfloat16

    @property
    def use_fp16_scaler(self):
        return self.args.amp and self.amp_dtype == torch.float16 and self.device.type == "cuda"

    def autocast(self):
        """Autocast context for ``--amp`` (a null context when off: entering a disabled autocast costs ~4 us)."""
        if not self.args.amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch):
        """``batch`` (tensors in nested tuples, lists and dicts) on :attr:`device`, its uint8 images made the
        model's normalised float input (``--mean``/``--std``, ``--channels_last``): see :mod:`base.loop.input_stage`.

        For validation, tests and evaluators; training batches go through ``inputs.train_input`` in the loop.
        """
        return self.inputs.to_device(batch)

    def prepare_model(self):
        """After ``build``: channels-last weights, the EMA copy, then ``torch.compile`` (in that order).

        ``nn.Module.compile`` compiles in place, so ``state_dict`` keys stay
        the model's own (no ``_orig_mod.`` prefix) and checkpoints load with or
        without ``--compile``. The EMA copy is taken before compiling: it is
        only evaluated, and a copy of a compiled module would share its cache.
        """
        a = self.args
        if a.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.module = self.model
        self.ema = ModelEMA(self.model, a.ema_decay) if a.ema_decay > 0 else None
        if a.compile:
            self.model.compile()

    def eval_model(self):
        """The weights that validation scores and ``best`` keeps: the EMA's with ``--eval_ema``, else the model."""
        return self.ema.module if self.ema is not None and self.args.eval_ema else self.module

    def _windows(self, batches):
        """Group ``batches`` into lists of ``--accum_steps`` (the last of an epoch may be shorter).

        Each list makes one optimizer step. Once its batches are read, the
        global generators are seeded from the step's place in the run (see
        :func:`base.loop.state.seed_position`), for what the step draws (device
        augmentation, Mixup, dropout); each sample's own augmentation was
        seeded from its index when it was read (:class:`base.loop.state.SeededSamples`),
        so reading ahead (copy-ahead, workers) changes nothing. The seconds spent
        waiting for the batches are ``stats.window_wait`` (see :class:`base.loop.train_stats.TrainingStats`).
        """
        batches = iter(batches)
        while True:
            start = time.perf_counter()
            window = list(itertools.islice(batches, self.args.accum_steps))
            self.stats.window_wait = time.perf_counter() - start
            if not window:
                return
            seed_position(self.args.seed, self.rank, self.epoch, self.samples_in_epoch)
            yield window

    def _step(self, window):
        """One optimizer step over the batches of ``window`` (on the host; moved here one at a time).

        Each batch's loss is weighted by its share of the window's samples, so
        ``--accum_steps 4 --batch_size 8`` gives the gradient of one batch of
        32. ``None`` entries (batches of only skipped bad images) are left out.

        Under DDP the weights are each batch's share of the samples of all
        processes times their number (DDP averages the gradients over them),
        the gradients are all-reduced only on the window's last batch
        (``no_sync`` before), and the processes agree on a non-finite loss
        before any ``backward``, so all skip (or stop) together.

        Returns:
            True when the weights were updated and the position advanced; falsy
            when ``--nonfinite`` skipped or rolled back the window.
        """
        a = self.args
        batches = self._window_batches(window)
        if not batches:
            return False
        total = sum(n for _, n in batches)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, extra_sums, total_all, bad = 0.0, {}, total, None
        for i, (batch, n) in enumerate(batches):
            # Under DDP the forward and backward of all but the window's last batch skip the all-reduce.
            sync = self.world_size == 1 or i == len(batches) - 1
            with contextlib.nullcontext() if sync else self.model.no_sync():
                with self.autocast():
                    out = self.train_step(self.inputs.train_input(batch))
                loss = out["loss"]
                weight = n / total
                if self._nonfinite_on_device:  # no sync: the fused optimizer skips the update (below)
                    flag = ~torch.isfinite(loss.detach()).all()
                    bad = flag if bad is None else bad | flag
                    nonfinite = False
                else:  # a host sync per batch: the price of never applying an update from a NaN/inf loss
                    nonfinite = not torch.isfinite(loss.detach()).all()
                if self.world_size > 1:  # one all-reduce: the flag, and (first batch) the window's samples
                    flag, samples = distributed.all_reduce_sum([nonfinite, total if i == 0 else 0])
                    nonfinite, total_all = flag > 0, samples if i == 0 else total_all
                    weight = n * self.world_size / total_all
                if nonfinite:
                    return self.handle_nonfinite(loss)
                self.scaler.scale(loss * weight).backward()
            loss_sum = loss_sum + loss.detach().float() * n  # stays on device: no sync
            for key, value in out.items():  # other terms train_step reports, averaged like the loss
                if key != "loss":
                    extra_sums[key] = extra_sums.get(key, 0.0) + torch.as_tensor(value).detach().float() * n
        self._call("after_backward")
        # The step about to be logged records its gradient norm (before clipping): a device tensor, no sync.
        logged = (self.global_step + 1) % a.log_every_steps == 0
        if a.grad_clip > 0 or logged:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            if a.grad_clip > 0 and a.grad_clip_mode == "norm":
                norm = torch.nn.utils.clip_grad_norm_(params, a.grad_clip)  # the norm before clipping
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]) if logged else None
                if a.grad_clip > 0:
                    torch.nn.utils.clip_grad_value_(params, a.grad_clip)
            if logged:
                self.stats.grad_norm = norm
        # Weights, EMA, optimizer, schedule, counters and data position change together: a
        # second Ctrl-C waits until they all have, so no checkpoint holds half a step.
        if bad is not None:
            self._mark_nonfinite(bad)
        with self._preemption.critical():
            self._mid_update = True
            self.scaler.step(self.optimizer)  # with fp16 the scaler itself skips steps with inf grads
            self.scaler.update()
            if bad is not None:
                del self.optimizer.found_inf
            if self.ema is not None:
                self.ema.update(self.module)
            if self.scheduler is not None:
                self.scheduler.step()
            self.global_step += 1
            self.stats.add_step(loss_sum, extra_sums, total)
            self._advance_position(len(window))
            self._mid_update = False
        return True

    def _mark_nonfinite(self, bad):
        """Record (on the device) the first step with a non-finite loss, and skip this step's update if any.

        Sticky: once a loss was NaN/inf, no later step updates the weights
        either, so they stay those of the last good step until
        :meth:`_check_nonfinite` stops the run (at the next logging step,
        validation or checkpoint). PyTorch's fused optimizers read
        ``found_inf`` the way ``GradScaler`` hands it to them.
        """
        if self._first_nonfinite is None:
            self._first_nonfinite = torch.zeros((), dtype=torch.int64, device=bad.device)
        first = self._first_nonfinite
        self._first_nonfinite = torch.where((first == 0) & bad, self.global_step + 1, first)
        self.optimizer.found_inf = (self._first_nonfinite > 0).float()

    def _check_nonfinite(self):
        """Stop with ``FloatingPointError`` if a step since the start had a non-finite loss (one host sync).

        Only with updates skipped on the device (see :meth:`_mark_nonfinite`);
        called before anything is logged, validated or saved, so no checkpoint
        ever holds the steps counted after the bad one.
        """
        step = int(self._first_nonfinite) if self._first_nonfinite is not None else 0
        if step:
            raise FloatingPointError(
                f"non-finite loss at step {step} (noticed at step {self.global_step}; no update was applied from "
                f"step {step} on); lower --lr, set --grad_clip, or use --nonfinite skip"
            )

    def _window_batches(self, window):
        """``[(batch, samples)]`` to train on from ``window``; ``None`` entries are batches of only bad images.

        One process drops them. Under DDP every process must run as many
        forward/backward passes as the others, so a ``None`` is replaced by
        another batch of this process weighted 0 (it adds no gradient); a
        process with no batch at all makes every process skip the window.
        """
        good = [b for b in window if b is not None]
        if self.world_size == 1:
            return [(b, _batch_size(b)) for b in good]
        if self.args.bad_images == "skip" and distributed.any_rank(not good):
            return []
        spare = good[0]
        return [(spare, 0) if b is None else (b, _batch_size(b)) for b in window]

    def _advance_position(self, batches=1):
        """Count ``batches`` just consumed.

        The position counts the samples of all processes (``batches`` each).
        """
        loader = self.loaders["train"]
        self.batch_in_epoch += batches
        self.samples_in_epoch = min(
            len(loader.dataset), self.samples_in_epoch + batches * loader.batch_size * self.world_size
        )
        if self.samples_in_epoch >= loader.sampler.end:  # what is left, if anything, waits for the next epoch
            self.samples_in_epoch = len(loader.dataset)


def _batch_size(batch):
    """Samples in a batch: dim 0 of its first tensor."""
    if torch.is_tensor(batch):
        return batch.shape[0]
    if isinstance(batch, dict):
        batch = list(batch.values())
    return _batch_size(batch[0])

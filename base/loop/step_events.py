"""What one optimizer step of the loop does, around the parts that own its state.

Bodies of the step events of :meth:`base.trainer.TrainerBase._train_batches`; they keep no state of their
own: the optimizer, scaler, EMA and clipping are ``step``'s (:class:`base.loop.step.OptimizerStep`), the
counters ``progress``'s, the sums ``stats``', the non-finite policy ``guard``'s.
"""

from __future__ import annotations

from base.loop.step import window_batches
from base.loop.train_batches import seed_window
from base.runtime import distributed


class StepEvents:
    """Read a window, step, count it: the step of :class:`base.trainer.TrainerBase`."""

    def _window_read(self, seconds):
        """A window's batches are read (after ``seconds`` of waiting): seed the step's random draws (device
        augmentation, Mixup, dropout) from its place in the run, so reading ahead changes nothing."""
        self.stats.window_wait = seconds
        seed_window(self.args.seed, self.rank, self.progress)

    def _step(self, window):
        """One optimizer step over the batches of ``window`` (on the host; moved to the device one at a time).

        ``None`` entries (batches of only skipped bad images) are left out. Returns True when the weights
        were updated and the position advanced; False when ``--nonfinite`` skipped or rolled back the window.
        """
        a = self.args
        batches = window_batches(window, self.world_size, a.bad_images == "skip")
        if not batches:
            return False
        summed = self.step.accumulate(batches, self._forward, self.model, self.world_size, self.guard.on_device)
        if summed.nonfinite_loss is not None:
            return self._nonfinite(summed.nonfinite_loss)
        self._call("after_backward")
        # The step about to be logged records its gradient norm (before clipping): a device tensor, no sync.
        logged = (self.global_step + 1) % a.log_every_steps == 0
        norm = self.step.clip(norm_wanted=logged)
        if logged:
            self.stats.grad_norm = norm
        if summed.bad is not None:
            self.guard.mark(summed.bad, self.optimizer, self.global_step + 1)
        # Weights, EMA, optimizer, schedule, counters and data position change together: a
        # second Ctrl-C waits until they all have, so no checkpoint holds half a step.
        with self._preemption.critical():
            self.step.apply(self.raw_model, then=lambda: self._count_step(summed, len(window)))
        return True

    def _forward(self, batch):
        with self.autocast():
            return self.train_step(self.inputs.train_input(batch))

    def _count_step(self, summed, batches):
        self.progress.global_step += 1
        self.stats.add_step(summed.loss_sum, summed.extra_sums, summed.samples)
        self._advance(batches)

    def _advance(self, batches):
        """Count ``batches`` just consumed (the position counts the samples of all processes)."""
        loader = self.loaders["train"]
        self.progress.advance(batches, loader.batch_size, self.world_size, len(loader.dataset), loader.sampler.end)

    def _planned_total_steps(self, progress=None):
        a, loader, progress = self.args, self.loaders["train"], progress or self.progress
        size = len(loader.dataset)
        return progress.planned_total_steps(a.epochs, a.max_steps, size, loader.batch_size, a.accum_steps,
                                            self.world_size)  # fmt: skip

    def _agreed_signal(self):
        """The signal any process got since the last step (the highest number), or None; a collective."""
        signum = int(distributed.all_reduce_max([self._preemption.signum or 0])[0])
        return signum or None

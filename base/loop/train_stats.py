"""Training statistics of one process: what the loop measures between logs and validations.

One part the trainer owns (``trainer.stats``), with its own state:

* the training-loss sums since the last validation (``train_loss`` of metrics.csv);
* a task's extra ``train_step`` terms since the last log (``train/<key>``), averaged per sample;
* the gradient norm of the step about to be logged (a device tensor: no host sync per step);
* the clock of the logging window: images/s, seconds per step, and the seconds the loop waited for
  its batches (``train/data_time``).

The sums are device tensors (or floats) until a log or checkpoint reads them, so adding a step's
sums costs no host sync. The checkpoint holds :meth:`sums` of every process (see
``base.checkpoint.checkpointer``); the clock is not saved: a resumed run starts a new window.
"""

import time


class TrainingStats:
    """Sums and clock of training on this process (see the module docstring)."""

    def __init__(self):
        self.loss_sum, self.loss_count = 0.0, 0  # since the last validation: samples and their loss sum
        self.extra_sums, self.extra_count = {}, 0  # train_step's other outputs since the last log (on device)
        self.grad_norm = None  # the logged step's norm before clipping (a device tensor), or None
        self.clock = None  # perf_counter() when the logging window's clock started; None: stopped
        self.clock_count = 0  # extra_count when the clock started (samples timed = extra_count - this)
        self.clock_step = 0  # global step when the clock started
        self.data_time = 0.0  # seconds waited for batches since the clock started
        self.window_wait = 0.0  # seconds waited for the window of the step about to run
        self.data_warned = False  # the log said once that data loading holds training back

    def add_step(self, loss_sum, extra_sums, samples):
        """Count one optimizer step: ``loss_sum`` (0-dim tensor, summed per sample), ``extra_sums`` (``{key:
        0-dim tensor}``) over ``samples`` samples. No host sync."""
        self.loss_sum = self.loss_sum + loss_sum
        self.loss_count += samples
        for key, value in extra_sums.items():
            self.extra_sums[key] = self.extra_sums.get(key, 0.0) + value
        self.extra_count += samples

    def start_window(self, global_step):
        """Before a step's window is trained: start the clock if it is stopped (at the start, after a
        validation), else add the wait for this window's batches to :attr:`data_time` (the first window's
        wait came before the clock started, so it is not counted)."""
        if self.clock is None:
            self.clock, self.clock_count, self.clock_step = time.perf_counter(), self.extra_count, global_step
            self.data_time = 0.0
        else:
            self.data_time += self.window_wait

    def stop_clock(self):
        """Stop the clock (a validation or checkpoint starts): images/s counts training time only."""
        self.clock = None

    def restart_clock(self, now, global_step):
        """A new logging window from ``now`` (``time.perf_counter()`` seconds) at ``global_step``."""
        self.clock, self.clock_count, self.clock_step, self.data_time = now, 0, global_step, 0.0

    def take_extras(self):
        """``(sorted keys, their sums, samples, samples timed by the clock)`` of the window, then a new window.

        The sums stay as they are (floats or tensors); the caller reduces them over processes.
        """
        keys = sorted(self.extra_sums)
        window = (keys, [self.extra_sums[k] for k in keys], self.extra_count, self.extra_count - self.clock_count)
        self.extra_sums, self.extra_count = {}, 0
        return window

    def reset_loss(self):
        """A validation read ``train_loss``: the next one averages the steps after it."""
        self.loss_sum, self.loss_count = 0.0, 0

    def sums(self):
        """``((loss_sum, loss_count), ({key: sum}, samples))`` as Python floats and ints, for a checkpoint."""
        return (float(self.loss_sum), self.loss_count), (
            {k: float(v) for k, v in self.extra_sums.items()},
            self.extra_count,
        )

    def load_sums(self, loss=(0.0, 0), window=({}, 0)):
        """Take a checkpoint's sums (see :meth:`sums`); the defaults start from zero."""
        self.loss_sum, self.loss_count = loss
        self.extra_sums, self.extra_count = dict(window[0]), window[1]

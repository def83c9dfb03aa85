"""The loop's measuring events: the validation round, the test, the logging window's scalars.

Bodies of events whose order :meth:`base.trainer.TrainerBase.train` sets; they keep no state of their own
(it lives in the trainer's parts: ``progress``, ``stats``, ``tracking``, ``checkpointer``).
"""

import json
import os
import time

import torch

from base.checkpoint.files import load_checkpoint
from base.config.trainer_flags import resolve_workers
from base.errors import DataError
from base.loop.state import seed_position
from base.runtime import distributed
from base.runtime.atomic_files import atomic_write
from base.runtime.signals import signals_held


class ValidationEvents:
    """When and how the trainer measures itself: ``metrics.csv``, the trackers, the log, ``best``."""

    def _check_bad_samples(self):
        """Log newly listed unreadable images; stop past ``--max_bad_images`` (under DDP, every process together).

        Raises:
            DataError: too many unreadable images (see :class:`base.loop.bad_data.BadSampleLog`).
        """
        if self.args.bad_images != "skip":  # nothing is listed: spare the per-step stat()
            return
        try:
            new, error = self.bad_samples.check(), None
        except DataError as exc:
            new, error = [], exc
        # The list is one file that every process's workers append to: each may read it a step apart.
        if distributed.any_rank(error is not None) and error is None:
            error = DataError(
                f"another process found more than --max_bad_images={self.args.max_bad_images} "
                f"unreadable images; they are listed in {self.bad_samples.path}"
            )
        if error is not None:
            raise error
        for path in new if self.rank == 0 else ():
            self.logger.warning("skipped unreadable image %s", path)

    def train_loss(self):
        """Mean training loss per sample since the last validation (float), or NaN.

        Under DDP, over the samples of all processes: a collective, called by every process.
        """
        loss_sum, count = distributed.all_reduce_sum([float(self.stats.loss_sum), self.stats.loss_count])
        return loss_sum / count if count else float("nan")

    def _log_window(self, bar):
        """Log the logging window's training scalars (``train/*``) and the progress bar's postfix."""
        self.guard.check(self.global_step)
        loss = self.train_loss()
        lr = self.step.lr
        stats = self.stats
        # one sync per window; under DDP the same keys on every process; timed: samples since the clock started
        keys, values, count, timed = stats.take_extras()
        sums = distributed.all_reduce_sum([*(float(v) for v in values), count, timed])
        extras = {k: v / sums[-2] for k, v in zip(keys, sums)}
        postfix = {"loss": f"{loss:.4f}", "lr": f"{lr:.2e}"}
        scalars = {"loss": loss, "lr": lr, **extras}
        if stats.grad_norm is not None:  # this step's, before clipping (see OptimizerStep.clip)
            scalars["grad_norm"] = stats.grad_norm
        now = time.perf_counter()
        if stats.clock is not None and now > stats.clock:  # samples of all processes per second
            elapsed = now - stats.clock
            scalars["images_per_sec"] = sums[-1] / elapsed
            steps = max(1, self.global_step - stats.clock_step)
            scalars["step_time"] = elapsed / steps  # seconds per optimizer step, this process
            scalars["data_time"] = stats.data_time / steps  # of which waiting for the next batches
            share = stats.data_time / elapsed
            postfix["data"] = f"{share:.0%}"
            # (a few milliseconds of timer noise in a window of tiny steps is no finding: 50 ms at least)
            if share > 0.1 and stats.data_time >= DATA_WAIT_FLOOR and not stats.data_warned:
                stats.data_warned = True
                self.logger.warning("%s", data_wait_note(share, self.args, self.device))
        stats.restart_clock(now, self.global_step)
        bar.set_postfix(**postfix, **{k: f"{v:.4f}" for k, v in extras.items()})
        if self.device.type == "cuda":
            scalars["peak_gpu_memory_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.log_scalars({f"train/{k}": v for k, v in scalars.items()})

    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Score :meth:`eval_model` on ``split`` with the task's ``validate``; returns ``{metric: float}``.

        The model to score is passed to ``validate`` (the EMA copy with ``--ema_decay`` and ``--eval_ema``);
        never the DDP wrapper: each process scores its share of the split with its replica, and the results
        are combined (:func:`base.runtime.distributed.combine_metrics`).
        """
        model = self.eval_model()
        model.eval()
        seed_position(self.args.seed, self.rank, self.global_step)  # its random draws, if any, from here alone
        try:
            # validate() forks its loader's workers where we cannot see: hold signals until it ends
            with torch.no_grad(), signals_held():
                metrics = {k: float(v) for k, v in self.validate(model, self.loaders[split]).items()}
        finally:
            self.raw_model.train()
        if self.world_size > 1:
            metrics = distributed.combine_metrics(metrics, len(self.loaders[split].sampler))
        return metrics

    def _validation_round(self):
        """Score the ``val`` split, log a row to metrics.csv/the trackers/the log, save ``best`` on improvement,
        then hand the row to the ``after_validation`` hooks."""
        a, start = self.args, time.perf_counter()
        self.guard.check(self.global_step)
        # An exception from here on saves the state as of now, marked so that a resume
        # does this validation again, exactly once (its row, best/last, early stopping).
        self._validation_snapshot = {**self.state_dict(), "validating": True}
        metrics = self.evaluate("val")
        self._check_bad_samples()
        if self.monitor not in metrics:
            raise KeyError(
                f"validate() returned {sorted(metrics)}, without the monitored "
                f"metric {self.monitor!r} of {type(self).__name__}"
            )
        is_best = self.early_stopper.update(metrics[self.monitor])
        row = {
            "epoch": self.epoch,
            "step": self.global_step,
            "train_loss": self.train_loss(),
            "lr": self.step.lr,
            **{f"val_{k}": v for k, v in metrics.items()},
            "val_seconds": time.perf_counter() - start,
        }
        self.last_metrics, self.progress.validated_at = row, self.global_step
        self.stats.reset_loss()
        self.tracking.write_row(row)  # (rank 0's)
        # The mean training loss since the previous validation is not the window mean of train/loss.
        scalars = {
            "train/loss_since_val": row["train_loss"],
            **{k.replace("_", "/", 1): v for k, v in row.items() if k.startswith("val_")},
        }
        if self.global_step % a.log_every_steps:  # (else this step's window logged it)
            scalars["train/lr"] = row["lr"]
        self.log_scalars(scalars)
        self.logger.info(
            "epoch %d step %d | train_loss %.4f | %s%s",
            self.epoch,
            self.global_step,
            row["train_loss"],
            " ".join(f"val_{k} {v:.4f}" for k, v in metrics.items()),
            " | new best" if is_best else "",
        )
        if is_best:  # the same decision on every process: the metrics are
            self.save("best")
            self.export_best()
        if self.early_stopper.should_stop:
            self.logger.info(
                "early stop: %s has not improved for %d validations (best %.4f)",
                self.monitor,
                a.early_stop_patience,
                self.early_stopper.best,
            )
        self.tracking.progress(self._position())
        self._call("after_validation", dict(row))  # inside the validation: an error here redoes it on resume
        self._validation_snapshot = None
        self.stats.stop_clock()  # images/s counts training time only: restart the clock at the next window

    def test(self):
        """Load the best checkpoint's weights and evaluate on the test split (if any: an empty one, e.g. of
        ``--test_fraction 0``, is none).

        The metrics go to ``<run>/test_metrics.json`` (with the step) and as
        ``test/<metric>`` to the loggers, unless a launch that trained nothing
        finds them logged at this step already (a finished run resumed: the test
        runs again, e.g. over another number of processes, but is logged once).
        """
        if "test" not in self.loaders or len(self.datasets["test"]) == 0:
            return {}
        best = self.checkpointer.path("best")
        if distributed.any_rank(os.path.isfile(best)):  # the same weights on every process
            # Name what the user gave: a resumed run's folder came from --resume (never from --model_path).
            named = (
                f"--resume {self.args.resume}: its best checkpoint" if self.resume_from else "the run's best checkpoint"
            )
            state = load_checkpoint(best, map_location=self.device, flag=named)
            self.raw_model.load_state_dict(state["model"])
            if self.step.ema is not None:
                self.step.ema.load_state_dict(state["ema"])
        metrics = self.evaluate("test")
        self._check_bad_samples()
        path = os.path.join(self.run_dir, "test_metrics.json")
        logged = self.rank == 0 and self._test_logged(path)
        self.logger.info(
            "test (best checkpoint, %d samples): %s%s",
            len(self.datasets["test"]),
            " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
            f" (already logged at step {self.global_step}: not logged again)" if logged else "",
        )
        if not logged:
            self.log_scalars({f"test/{k}": v for k, v in metrics.items()})
        if self.rank != 0:
            return metrics
        self.tracking.flush()
        # Written once the loggers have the test: its step then says that they do.
        doc = {"checkpoint": os.path.basename(best), "step": self.global_step, **metrics}
        atomic_write(path, lambda f: f.write(json.dumps(doc, indent=2).encode("utf-8")))
        return metrics

    def _test_logged(self, path):
        """Whether the loggers hold this test already: an earlier launch finished the run at this step
        (this one trained nothing more), and ``path`` (test_metrics.json) was written at it."""
        if self.tracking.finished_at != self.global_step:
            return False
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f).get("step") == self.global_step
        except (OSError, ValueError, AttributeError):  # none yet, or not a JSON object: log the test
            return False


#: Seconds a logging window must have waited for data, beyond 10% of it, before the log warns.
DATA_WAIT_FLOOR = 0.05


def data_wait_note(share, args, device):
    """One line for a run whose loop waited for data ``share`` (0..1) of a logging window, naming the flag to try.

    The hint depends on the workers ``--num_workers`` resolved to on ``device`` (``auto``: 0 on the CPU, more on
    CUDA; see :func:`base.config.trainer_flags.resolve_workers`).
    """
    workers = resolve_workers(args.num_workers, device, distributed.local_world_size())
    if args.data_on_device:
        hint = "the device augmentation is part of the step: try a larger --batch_size"
    elif workers == 0:
        hint = (
            "try --num_workers N (auto chose 0 on the CPU)"
            if args.num_workers == "auto"
            else "try --num_workers auto (or N > 0)"
        )
        hint += ", or --data_on_device for data that fit in GPU memory"
    else:
        chosen = f" (auto chose {workers})" if args.num_workers == "auto" else ""
        hint = f"try more than --num_workers {workers}{chosen}, or --data_on_device for data that fit in GPU memory"
    return (
        f"the loop waited for data {share:.0%} of the last logging window (train/data_time): the input "
        f"pipeline holds training back; {hint}"
    )

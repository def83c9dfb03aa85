"""``TrainerBase``: the training loop every task shares, in one place, read top to bottom.

The trainer owns a few parts, each with one concern, its own state and its own ``state_dict``:

==================  ================================================  ===============================
``progress``        epoch, step, sample position                      :mod:`base.loop.progress`
``step``            optimizer, schedule, AMP scaler, EMA, clipping    :mod:`base.loop.step`
``guard``           ``--nonfinite``: skipped steps, LR scale          :mod:`base.loop.nonfinite`
``stats``           loss sums, grad norm, data time, images/s         :mod:`base.loop.train_stats`
``checkpointer``    checkpoint names, save, verify, rotate, export    :mod:`base.checkpoint.checkpointer`
``folder``          run folder, lock, log, config file                :mod:`base.run.run_folder`
``tracking``        status.json, metrics.csv, the ``--loggers``       :mod:`base.run.tracking`
==================  ================================================  ===============================

The checkpoint is the merge of their states (:meth:`TrainerBase.state_dict`); older checkpoints are read
in one place (:mod:`base.checkpoint.older`). What a task implements and may override is in :mod:`base.task`.
"""

from __future__ import annotations

import argparse
import math

import torch

from base.checkpoint.checkpointer import Checkpointer
from base.checkpoint.trainer_state import CheckpointEvents
from base.config.trainer_flags import add_trainer_arguments
from base.loop import optim
from base.loop.bad_data import BadSampleLog
from base.loop.loaders import epoch_bar
from base.loop.nonfinite import NonFiniteGuard
from base.loop.plan import RunPlan, plan_run
from base.loop.progress import LoopProgress
from base.loop.side_modes import run_side_mode, side_mode
from base.loop.state import EarlyStopper, global_switches, restore_global_switches
from base.loop.step import OptimizerStep, prepare_model, read_windows
from base.loop.step_events import StepEvents
from base.loop.train_batches import open_epoch
from base.loop.train_stats import TrainingStats
from base.loop.validation import ValidationEvents
from base.run.run_folder import RunFolder, describe_run
from base.run.sweep_trial import TrialReporter
from base.run.tracking import RunTracking
from base.run.tracking_events import TrackingEvents
from base.runtime import distributed
from base.runtime.device import select_device
from base.runtime.signals import Preempted, PreemptionFlag
from base.task import TaskSteps


class TrainerBase(StepEvents, ValidationEvents, CheckpointEvents, TrackingEvents, TaskSteps):
    """Owns the loop; a task subclass implements the steps of :class:`base.task.TaskSteps`.

    One optimizer step per window of ``--accum_steps`` batches. Hooks are called in the order given in
    :mod:`base.hooks`. Use: ``TrainerSubclass.from_argv(argv).fit()``.
    """

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The loop's flags (the first layer of every task's; see :mod:`base.config.trainer_flags`)."""
        add_trainer_arguments(parser)

    def __init__(self, args, provenance=None, resume_from=None):
        self.args = args
        self.provenance = provenance or {}
        self.resume_from = resume_from  # (run folder, checkpoint) or None
        self.resume_changes = {}  # flag -> (run's value, new value), on --resume
        self.resume_reason = ""  # which checkpoint --resume picked, and why
        self.device = select_device(args.gpu_devices)
        self.rank, self.world_size = 0, 1  # this process among the data-parallel ones (set by fit under torchrun)
        self._started_group = False
        # The parts (see the module docstring); those that need the run folder or the model come in setup.
        self.progress = LoopProgress()
        self.stats = TrainingStats()
        self.guard = NonFiniteGuard(args.nonfinite, args.max_skipped_steps, args.rollback_lr_factor)
        self.monitor, self.monitor_mode = self.monitored(args)  # fixed for the run: what it validates
        self.early_stopper = EarlyStopper(self.monitor_mode, args.early_stop_patience)
        self.tracking = RunTracking()
        self.folder = self.checkpointer = self.step = None
        self.run_dir = self.timestamp = self.logger = None  # the folder's, from setup on
        self.hooks, self.last_metrics, self.bad_samples = [], {}, None
        # Made by build (shared with evaluators) and setup; None or empty until then, set by their owner only.
        self.datasets, self.loaders, self.inputs = {}, {}, None
        self.model = self.raw_model = self.loss_fn = None  # model: what train_step calls (the DDP wrapper under DDP)
        self.optimizer = self.scheduler = None
        self.steps_per_epoch = self.total_steps = None
        self._preemption = None  # the PreemptionFlag while training
        self._restart_epoch = False  # rolled back: the checkpoint set the data position
        self._redo_validation = False  # resumed from inside a validation: do it again first
        self._validation_snapshot = None  # the state as of a validation's start, while it runs
        self._resumed_world_size = None  # the processes of the run a resumed checkpoint came from

    # ----------------------------------------------------------------- setup
    def setup(self):
        """Create (or, resuming, reopen) the run folder, write the config, build everything, load a resume.

        A new run's ``status.json`` starts as soon as its folder exists, so an error while it is built
        (bad data, a ``--pretrained_path`` that fits nothing) leaves ``crashed`` and the error line there
        and in the log. A resumed run's config file and status are updated only once its checkpoint has
        loaded, so a failed resume leaves the run as it was.

        Raises:
            CheckpointError: ``--resume`` names a checkpoint that does not fit.
            OSError: the run folder cannot be written.
        """
        a, main, resumed = self.args, self.rank == 0, self.resume_from
        self.folder = RunFolder(a.output_dir, a.proj_name, self.rank, resumed[0] if resumed else None, a.debug)
        self.run_dir, self.timestamp, self.logger = self.folder.path, self.folder.timestamp, self.folder.logger
        if main and not resumed:  # from here on a failure leaves `crashed` in the new run's folder
            self.tracking.begin_status(self.run_dir, self._run_facts(), self._position())
        self.folder.write_config(a, self.provenance, {"trainer": type(self).__name__, "world_size": self.world_size})
        self.bad_samples = BadSampleLog(self.folder.file("bad_images.txt"), a.max_bad_images)
        self.build()
        self.raw_model, ema = prepare_model(self.raw_model, a.channels_last, a.ema_decay, a.compile)
        self.steps_per_epoch = math.ceil(len(self.loaders["train"]) / a.accum_steps)  # optimizer steps
        self.total_steps = self._planned_total_steps()
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler()
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_fp16_scaler)
        self.step = OptimizerStep(self.optimizer, self.scheduler, scaler, ema, a.grad_clip, a.grad_clip_mode)
        # After the optimizer: it and build_optimizer overrides see the model's own parameter names.
        self.model = distributed.wrap_model(self.raw_model, self.device, a.sync_bn, self.find_unused_parameters)
        self.hooks = list(self.build_hooks())
        if a.sweep_trial:  # the base's own hook, after the task's: they see each validation first
            self.hooks.append(TrialReporter(a.sweep_trial))
        for hook in self.hooks:
            hook.trainer = self
        if main:  # other processes than rank 0 write nothing
            self.tracking.open_rows(self.folder.file("metrics.csv"))
        self.checkpointer = Checkpointer(
            self.run_dir, self.checkpoint_prefix(), self.rank, a.keep_last_k, self.logger,
            resumed[1] if resumed else None, self._flush_before_save,
        )  # fmt: skip
        describe_run(self.logger, self.folder, a, self.raw_model, self.datasets, self.steps_per_epoch, self.total_steps,
                     self.device, self.world_size)  # fmt: skip
        if resumed:
            self._resume_launch(resumed[1])
        note = optim.warmup_note(self.scheduler, a.warmup_steps)  # after a resume: the warmup it continues
        if note:
            self.logger.warning("%s", note)
        if main:
            self._start_tracking()
        self.guard.arm(self.optimizer, self.world_size, self.use_fp16_scaler)

    def plan(self) -> RunPlan:
        """The run's steps and learning rates for a side mode, with no run folder (:func:`base.loop.plan.plan_run`)."""
        return plan_run(self)

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, float]:
        """Set up (or resume), train, then evaluate the best checkpoint on the test split.

        ``--plot_lr``, ``--lr_find`` and ``--preview_augment`` are side modes (:mod:`base.loop.side_modes`): they
        run on :meth:`plan`, write their PNG and return what they found, training nothing.

        Returns:
            the test metrics (``{}`` when there is no test split).
        """
        switches = global_switches()  # --deterministic changes them for the process: put them back after
        try:
            if side_mode(self.args):  # --plot_lr, --lr_find, --preview_augment: no run folder, nothing trained
                return run_side_mode(self)
            self._started_group = distributed.init_from_env(self.device)
            self.rank, self.world_size = distributed.rank(), distributed.world_size()
            self.setup()
            self.train()
            stop = self.progress.stop_request  # request_stop ended the run early (a pruned trial): no test
            metrics = self.test() if stop is None else None
            self._end_tracking(stop["status"] if stop else "finished", test=metrics)
            return metrics or {}
        except BaseException as exc:
            self._end_tracking("preempted" if isinstance(exc, Preempted) else "crashed", error=exc)
            raise
        finally:
            self.release()
            restore_global_switches(switches)

    def run(self):
        """Entry-script action: :meth:`fit`."""
        return self.fit()

    def _call(self, name, *args):
        for hook in self.hooks:
            getattr(hook, name)(*args)

    def request_stop(self, status: str, reason: str) -> None:
        """End training at the loop's next check (after this step, or this validation and its ``last`` save); ``fit``
        then ends with ``status`` (:data:`base.loop.progress.STOP_STATES`; ``"pruned"`` is not tested) and ``reason``
        (one line) in the log and status.json. Checkpoints keep it: a resume trains no further. Under DDP every
        process calls it at the same point (rank 0 decides, then broadcasts). ``ValueError``: another status."""
        self.progress.request_stop(status, reason)
        self.logger.info("stop requested, the run ends %s: %s", status, reason)

    def _done(self):
        return self.progress.done(self.args.epochs, self.args.max_steps, self.early_stopper.should_stop)

    def train(self):
        """Run epochs of optimizer steps until ``--epochs``, ``--max_steps``, early stop or :meth:`request_stop`.

        SIGTERM/SIGINT stop it at the next step boundary with a checkpoint (raising
        :class:`base.runtime.signals.Preempted`); any other exception writes the exception checkpoint, then
        propagates.
        """
        a, progress, failing = self.args, self.progress, False
        self._call("before_train")
        try:
            with PreemptionFlag() as self._preemption:
                if self._redo_validation:  # the checkpoint was taken inside this validation
                    self._redo_validation = False
                    self._validation_round()
                    self.save("last")
                if self.resume_from and self._done():
                    self.logger.info("%s", self.progress.end_note(self.run_dir))
                while not self._done():
                    self._call("before_epoch")
                    consumed = self._train_epoch()
                    # (an epoch whose order had nothing left ends too, rather than loop forever)
                    if progress.samples_in_epoch >= len(self.loaders["train"].dataset) or not consumed:
                        progress.next_epoch()
                        if self.epoch % a.val_every_epochs == 0 and not progress.validated_now:
                            self._validation_round()  # unless --val_every_steps just did at this step
                    self._call("after_epoch")
                    if progress.validated_now:
                        self.save("last")
                if not progress.validated_now:
                    self._validation_round()
                    self.save("last")
        except BaseException as exc:
            failing = True
            self._on_exception(exc)
            raise
        finally:
            self._call("after_train")
            try:
                self.tracking.flush()
            except OSError as exc:  # e.g. the run folder was deleted
                if not failing:
                    raise  # the error that stops the run
                self.logger.warning("%s", exc)  # the run is failing already: do not hide the real error

    def _train_epoch(self):
        a, loader = self.args, self.loaders["train"]
        self.model.train()
        reader, batches = open_epoch(loader, self.inputs, a.seed, self.progress)  # order, worker seeds, copy-ahead
        bar = epoch_bar(
            batches, loader, self.epoch, a.epochs, self.progress.samples_in_epoch, self.world_size, self.rank
        )
        try:
            return self._train_batches(bar)
        except BaseException:
            # An exception's traceback keeps the iterator alive; stop its workers now, not at exit.
            batches.close()
            getattr(reader, "_shutdown_workers", lambda: None)()
            raise
        finally:
            bar.close()

    def _train_batches(self, bar):
        """Train on the batches of ``bar``, ``--accum_steps`` per optimizer step; returns how many it took
        (0: the epoch had none left)."""
        a, consumed = self.args, 0
        for window in read_windows(bar, a.accum_steps, self._window_read):
            consumed += len(window)
            self.stats.start_window(self.global_step)
            self._call("before_step")
            stepped = self._step(window)
            if self._restart_epoch:  # rolled back: the checkpoint set the data position
                self._restart_epoch = False
                self._call("after_step")
                break
            if not stepped:  # no update (skipped window), but the data position moves on
                with self._preemption.critical():
                    self._advance(len(window))
            # Logged before after_step: an exception there still saves this step (the exception
            # checkpoint), and a resume starts after it, so its row must be written already.
            if self.global_step % a.log_every_steps == 0:
                self._log_window(bar)
            self._call("after_step")
            self._check_bad_samples()
            if a.val_every_steps and self.global_step % a.val_every_steps == 0:
                self._validation_round()
                self.save("last")
            if a.save_every_steps and self.global_step % a.save_every_steps == 0:
                self.save_step_checkpoint()
            if self.world_size > 1:  # a signal to any process stops them all, at the same step
                self._preemption.signum = self._agreed_signal()
            if self._preemption.signum is not None:
                self._preempt()
            if self._done():
                break
        return consumed

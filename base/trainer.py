"""``TrainerBase``: the training loop every task shares.

A task subclass implements a few small steps (see :class:`TrainerBase`); the
loop, device, seeding, AMP, clipping, validation cadence, checkpoints, early
stopping, logging and the checkpoint on exception live here, once.
"""

from __future__ import annotations

import abc
import argparse
import functools
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from base.checkpoint import resume
from base.checkpoint.checkpointer import CheckpointingMixin
from base.checkpoint.resume_changes import ResumeMixin
from base.config.parse import check, parse_config
from base.config.trainer_flags import add_trainer_arguments, resolve_workers, validate_trainer_config
from base.hooks import HookBase
from base.loop import optim
from base.loop.bad_data import BadSampleFilter, BadSampleLog, collate_good_samples
from base.loop.device_data import DeviceBatches
from base.loop.input_stage import InputStage
from base.loop.lr_plot import plot_lr_schedule
from base.loop.state import (
    EarlyStopper,
    ResumableSampler,
    SeededSamples,
    global_switches,
    restore_global_switches,
    seed_everything,
)
from base.loop.step import StepMixin
from base.loop.train_stats import TrainingStats
from base.loop.validation import ValidationMixin
from base.run import folder as run_dir, row_files
from base.run.file_names import file_name_part
from base.run.opening import DistributedMixin
from base.run.trackers import LoggerSet
from base.run.tracking import TrackingMixin
from base.runtime import distributed
from base.runtime.device import select_device
from base.runtime.params import count_parameters, format_count
from base.runtime.signals import Preempted, PreemptionFlag, ignore_signals_in_worker, signals_held


class TrainerBase(
    StepMixin, CheckpointingMixin, ResumeMixin, ValidationMixin, TrackingMixin, DistributedMixin, abc.ABC
):
    """Owns the loop; subclasses override small named steps.

    Must override: :meth:`build_datasets`, :meth:`build_model`, :meth:`build_loss`,
    :meth:`train_step`, :meth:`validate`. May override: :meth:`build_optimizer`,
    :meth:`build_scheduler`, :meth:`build_dataloader`, :meth:`build_hooks`,
    ``add_arguments`` / ``DEFAULTS`` / ``validate_config`` for flags, and
    :attr:`monitor` / :attr:`monitor_mode` (the metric of :meth:`validate`
    that picks the best checkpoint and drives early stopping).

    One optimizer step per batch. Hooks are called in the order given in
    :mod:`base.hooks`. Use: ``TrainerSubclass.from_argv(argv).fit()``.
    """

    monitor = "loss"
    monitor_mode = "min"
    #: Passed to ``DistributedDataParallel``: True when some parameters get no gradient in a step.
    find_unused_parameters = False
    #: How a list of samples becomes a batch. A module-level function (not a method),
    #: so DataLoader workers started with ``spawn`` can pickle it.
    collate_fn = staticmethod(default_collate)
    #: What a run saved before a flag existed ran with, for the flags its config lacks (see
    #: :func:`base.config.parse.with_older_run_values`): inputs were ``(x - 0.5) / 0.5`` before ``--mean``/``--std``.
    OLDER_RUN_VALUES = {"mean": [0.5], "std": [0.5]}
    #: The script that evaluates this task's checkpoints (e.g. ``"eval_vit.py"``), saved in each checkpoint and
    #: named when another task's evaluator refuses it; ``None``: no hint.
    EVAL_SCRIPT = None
    #: Flags that only choose the initial weights (e.g. ``--pretrained_path``): an evaluator, which loads the
    #: checkpoint's weights, clears them.
    INIT_ONLY_FLAGS = ()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_trainer_arguments(parser)

    @classmethod
    def validate_config(cls, args: argparse.Namespace) -> None:
        """Check cross-field rules; raise ``ConfigError`` naming the flag. Extend with super().

        Also resolves ``--mean``/``--std`` left unset to :meth:`default_statistics`, so the
        saved config holds the values the run used.
        """
        validate_trainer_config(args)
        if args.mean is None or args.std is None:
            mean, std = cls.default_statistics(args)
            args.mean = list(mean) if args.mean is None else args.mean
            args.std = list(std) if args.std is None else args.std
        check(len(args.mean) == len(args.std), "std", args.std, f"must give as many values as --mean {args.mean}")

    @classmethod
    def default_statistics(cls, args: argparse.Namespace) -> tuple[list[float], list[float]]:
        """``(mean, std)``: the per-channel statistics of [0, 1] pixels that ``--mean``/``--std`` default to.

        0.5 / 0.5 (pixels mapped to [-1, 1]); a task whose data has its own (ImageNet's for
        photos, or those of pretrained weights) overrides this. Called in :meth:`validate_config`.
        """
        return [0.5], [0.5]

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> TrainerBase:
        """Parse ``argv`` with the layered parser and return a trainer (nothing built yet).

        With ``--resume`` the resumed run's saved config is the starting point
        and flags on the command line override it, if they are in
        :attr:`RESUME_CHANGEABLE`; the changes are kept in :attr:`resume_changes`.

        Raises:
            UserError: ``--resume`` names nothing resumable, or changes a flag
                that cannot change on resume (the message names it and both values).
        """
        # Validate only once the resumed run's values are in: its defaults alone may not
        # be valid (e.g. a --data_dir default that this machine lacks).
        args, _ = parse_config(cls, argv, validate=False)
        if not args.resume:
            return cls(*parse_config(cls, argv))
        folder, ckpt, why = resume.locate(args.resume, args.output_dir, args.proj_name)
        saved = resume.saved_config(ckpt)
        args, provenance = parse_config(cls, argv, base_values=saved, base_label=f"resumed run ({ckpt})")
        changes = resume.changed_flags(saved, args, provenance, cls.RESUME_CHANGEABLE, ckpt)
        trainer = cls(args, provenance, resume_from=(folder, ckpt))
        trainer.resume_changes, trainer.resume_reason = changes, why
        return trainer

    def __init__(self, args, provenance=None, resume_from=None):
        self.args = args
        self.provenance = provenance or {}
        self.resume_from = resume_from  # (run folder, checkpoint) or None
        self.device = select_device(args.gpu_devices)
        self.rank, self.world_size = 0, 1  # this process among the data-parallel ones (set by fit under torchrun)
        self._started_group = False
        self.epoch = 0  # completed epochs
        self.global_step = 0  # completed optimizer steps
        self.batch_in_epoch = 0  # batches of the current epoch already consumed
        self.samples_in_epoch = 0  # its samples (positions in the epoch's order): the resume point
        self.skipped_steps = 0  # batches dropped or rolled back for a non-finite loss
        self.hooks, self.last_metrics, self.run_dir, self.logger, self.lock = [], {}, None, None, None
        self.early_stopper = EarlyStopper(self.monitor_mode, args.early_stop_patience)
        self._validated_at = -1
        self.stats = TrainingStats()  # loss sums, extra terms, grad norm, the logging window's clock
        self._restart_epoch, self.bad_samples = False, None
        self.lr_scale = 1.0  # product of the --nonfinite rollback factors applied so far
        self.resume_changes = {}  # flag -> (run's value, new value), on --resume
        self.resume_reason = ""  # which checkpoint --resume picked, and why
        self._validation_snapshot = None  # the state as of a validation's start, while it runs
        self._redo_validation = False  # resumed from inside a validation: do it again first
        self._mid_update = False  # between the first parameter write and the step counter
        self.ema = None  # ModelEMA with --ema_decay, made in setup
        self._nonfinite_on_device, self._first_nonfinite = False, None  # see StepMixin._mark_nonfinite
        self.loggers = LoggerSet()  # rank 0's, from setup on (see base.run.trackers); empty elsewhere
        self.status = None  # rank 0's RunStatus (status.json), from setup on
        # Made by build (shared with evaluators) and setup; None or empty until then, set by their owner only.
        self.datasets, self.loaders, self.inputs = {}, {}, None
        self.model = self.module = self.loss_fn = None
        self.optimizer = self.scheduler = self.scaler = None
        self.steps_per_epoch = self.total_steps = None
        self._best_saved_at = None  # the position `best` was last saved at (then `last` is a byte copy of it)
        self._resumed_world_size = None  # the processes of the run a resumed checkpoint came from
        # The step at which an earlier launch finished the run, when this one resumed from that very end
        # state (its loggers hold the test and final metrics already); None otherwise. See _start_tracking.
        self._finished_at = None
        self.metrics_csv = None  # rank 0's MetricsCSV, from setup on
        # What the checkpoint loaded last covers of each logger (its state), for loggers started after it.
        self._resumed_logger_states = {}

    # ----------------------------------------------------------------- to override
    @abc.abstractmethod
    def build_datasets(self) -> dict[str, Dataset]:
        """Return ``{"train": Dataset, "val": Dataset, "test": Dataset}`` (test may be absent)."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """Return the ``nn.Module`` to train (called after :meth:`build_datasets`)."""

    @abc.abstractmethod
    def build_loss(self) -> Callable[..., torch.Tensor]:
        """Return the loss callable used by :meth:`train_step` and :meth:`validate`."""

    @abc.abstractmethod
    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """Forward one batch (already on :attr:`device`); return a dict with the scalar ``"loss"``.

        Runs under autocast when ``--amp`` is on. Do not call ``backward``: the loop does.
        Use ``self.model`` here: under DDP it is the ``DistributedDataParallel``
        wrapper, whose forward makes ``backward`` average the gradients over
        the processes (``self.module`` is the model itself).
        Other scalar entries (e.g. the terms of a two-part loss, as 0-dim tensors)
        are averaged per sample over each ``--log_every_steps`` window and logged
        as ``train/<key>``, without a host sync per step.
        """

    @abc.abstractmethod
    def validate(self, loader: Iterable) -> dict[str, float]:
        """Return ``{metric: float}`` over every sample of ``loader``, averaged per sample.

        Called with the model in eval mode under ``torch.no_grad``. Under DDP
        each process's ``loader`` holds its share of the split (each sample in
        exactly one); return per-sample means over it and the base averages
        the processes weighted by their sample counts, or compute the metrics
        from sums reduced over the processes (``utils.metrics.ClassificationMeter``
        and ``utils.seg_metrics.SegmentationMeter`` do) so they are equal
        everywhere (see :func:`base.runtime.distributed.combine_metrics`).
        """

    def build_optimizer(self) -> torch.optim.Optimizer:
        """``--optimizer`` over the model's trainable parameters (see :func:`base.loop.optim.build_optimizer`)."""
        return optim.build_optimizer(self.model.parameters(), self.args)

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler | None:
        """Warmup then cosine over :attr:`total_steps` (see :func:`base.loop.optim.build_scheduler`)."""
        return optim.build_scheduler(self.optimizer, self.args, self.total_steps)

    def build_dataloader(self, dataset: Dataset, split: str) -> Iterable:
        """A ``DataLoader`` whose order and worker seeds depend only on ``(--seed, epoch)``.

        Training order comes from a :class:`ResumableSampler` (so a resumed
        run continues from the exact next batch); workers ignore SIGTERM/SIGINT
        (the main process checkpoints); with ``--bad_images skip`` unreadable
        samples are dropped from their batch (a batch of only bad samples is ``None``).
        Under DDP each process reads its share of every split (see :class:`ResumableSampler`).
        An override for ``"train"`` must keep a :class:`ResumableSampler` for resume to work.

        With ``--data_on_device`` the training split is a :class:`base.loop.device_data.DeviceBatches`
        instead: its tensors uploaded once, batches gathered on the device in the same
        sampler's order, no workers (its random ops run on the device: :meth:`build_device_augment`).
        The evaluation splits stay on the ``DataLoader``: each is read once per validation
        without random ops, and its deterministic pipeline (e.g. the centre crop of ``--train_crop
        rrc``) is the one evaluators and predictors share.
        """
        a = self.args
        train = split == "train"
        if train and a.data_on_device:
            sampler = ResumableSampler(
                len(dataset),
                shuffle=True,
                seed=a.seed,
                batch_size=a.batch_size,
                rank=self.rank,
                world_size=self.world_size,
            )
            return DeviceBatches(dataset, sampler, a.batch_size, self.device)
        workers = resolve_workers(a.num_workers, self.device, distributed.local_world_size())
        if workers == 0 and self.device.type == "cuda" and reads_files(dataset) and self.logger is not None:
            self.logger.warning(
                "the %s split decodes image files in the main process (--num_workers 0): the GPU "
                "waits for each batch; pass --num_workers auto (or N > 0)",
                split,
            )
        if a.bad_images == "skip" and self.bad_samples is not None:
            dataset = BadSampleFilter(dataset, self.bad_samples.path)
        if train:
            dataset = SeededSamples(dataset, a.seed)
        sampler = ResumableSampler(
            len(dataset),
            shuffle=train,
            seed=a.seed,
            with_epoch=train,
            batch_size=a.batch_size if train else None,
            rank=self.rank,
            world_size=self.world_size,
        )
        return DataLoader(
            dataset,
            batch_size=a.batch_size if train else a.eval_batch_size or a.batch_size,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # the test split is read once: its workers need not stay
            persistent_workers=a.persistent_workers and workers > 0 and split != "test",
            worker_init_fn=ignore_signals_in_worker,
            generator=torch.Generator(),
            collate_fn=(
                functools.partial(collate_good_samples, collate=self.collate_fn)
                if a.bad_images == "skip"
                else self.collate_fn
            ),
        )

    def build_hooks(self) -> list[HookBase]:
        """Return a list of :class:`base.hooks.HookBase`; called once, in ``setup``."""
        return []

    def build_device_augment(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``None``, or a callable on float ``(N, C, H, W)`` training images in [0, 1] on the device (e.g. a kornia
        ``AugmentationSequential``); called in :meth:`build`, after :meth:`build_datasets`
        (see :mod:`base.loop.input_stage`)."""
        return None

    def build_mix(self) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
        """``None``, or a callable ``(images, targets) -> (images, targets)`` that mixes training batches on the device
        (Mixup / CutMix); called in :meth:`build`, after :meth:`build_datasets` (see :mod:`base.loop.input_stage`)."""
        return None

    def model_card(self) -> dict[str, Any]:
        """JSON-able facts a predictor needs without the data (default ``{}``); saved in checkpoints and exports."""
        return {}

    # ----------------------------------------------------------------- setup
    def build(self):
        """Build data, loaders, model and loss (no run folder): shared with evaluators."""
        a = self.args
        seed_everything(a.seed, a.deterministic)
        # cuDNN picks the fastest kernels for each input shape (fixed here) unless results must repeat.
        torch.backends.cudnn.benchmark = not a.deterministic
        self.datasets = self.build_datasets()
        self.loaders = {k: self.build_dataloader(v, k) for k, v in self.datasets.items()}
        self.model = self.build_model().to(self.device)
        self.module = self.model  # the model itself; under DDP self.model becomes its wrapper (see setup)
        self.loss_fn = self.build_loss()
        self.inputs = InputStage(
            self.device, a.mean, a.std, a.channels_last, augment=self.build_device_augment(), mix=self.build_mix()
        )
        if self.rank > 0:  # each process its own dropout/augmentation stream; the same initial weights
            seed_everything(self.args.seed + 1_000_003 * self.rank)

    def setup(self):
        """Create (or, resuming, reopen) the run folder, write the config, build everything.

        A new run's ``status.json`` starts as soon as its folder exists, so an
        error while it is built (bad data, a ``--pretrained_path`` that fits
        nothing) leaves ``crashed`` and the error line there and in the log (see
        :meth:`fit`). A resumed run's config file and status are updated only
        once its checkpoint has loaded, so a failed resume leaves the run as it was.

        Raises:
            CheckpointError: ``--resume`` names a checkpoint that does not fit.
            OSError: the run folder cannot be written.
        """
        a, main = self.args, self.rank == 0
        self._open_run_dir()
        if main and not self.resume_from:  # from here on a failure leaves `crashed` in the new run's folder
            self._begin_status()
        config_path = os.path.join(self.run_dir, f"config_{file_name_part(a.proj_name)}_{self.timestamp}.json")
        if not self.resume_from and main:
            run_dir.write_config(
                config_path,
                a,
                self.provenance,
                {"timestamp": self.timestamp, "trainer": type(self).__name__, "world_size": self.world_size},
            )
        self.bad_samples = BadSampleLog(os.path.join(self.run_dir, "bad_images.txt"), a.max_bad_images)
        self.build()
        self.prepare_model()
        self.steps_per_epoch = math.ceil(len(self.loaders["train"]) / a.accum_steps)  # optimizer steps
        self.total_steps = self.planned_total_steps()
        self.optimizer = self.build_optimizer()
        self.scheduler = self.build_scheduler()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_fp16_scaler)
        # After the optimizer: it and build_optimizer overrides see the model's own parameter names.
        self.model = distributed.wrap_model(self.module, self.device, a.sync_bn, self.find_unused_parameters)
        self.hooks = list(self.build_hooks())
        for hook in self.hooks:
            hook.trainer = self
        if main:  # other processes than rank 0 write nothing
            self.metrics_csv = row_files.MetricsCSV(os.path.join(self.run_dir, "metrics.csv"))
        self.logger.info("run folder: %s", self.run_dir)
        if self.world_size > 1:
            self.logger.info(
                "DDP over %d processes (%s): global batch %d = %d per process x %d processes x %d accumulation steps",
                self.world_size,
                torch.distributed.get_backend(),
                a.batch_size * self.world_size * a.accum_steps,
                a.batch_size,
                self.world_size,
                a.accum_steps,
            )
        self.logger.info(
            "model %s: %s parameters (%s trainable)",
            type(self.module).__name__,
            format_count(count_parameters(self.model)),
            format_count(count_parameters(self.model, trainable_only=True)),
        )
        self.logger.info(
            "data: %s; %d steps per epoch, %d steps in all, device %s",
            {k: len(v) for k, v in self.datasets.items()},
            self.steps_per_epoch,
            self.total_steps,
            self.device,
        )
        for path in run_dir.remove_stale_temp_files(self.run_dir) if main else ():
            self.logger.info("removed %s, left by a save that was killed", path)
        if self.resume_from:
            if self.resume_reason:
                self.logger.info("%s", self.resume_reason)
            built = [group.get("weight_decay") for group in self.optimizer.param_groups]  # before the load
            self.resume(self.resume_from[1])
            self._apply_resume_changes(built)
            if main:  # (loading it cut metrics.csv back to the rows it covers: see _keep_rows_of_checkpoint)
                run_dir.record_resume(config_path, a, self.provenance, self.resume_from[1], self.resume_changes)
        note = optim.warmup_note(self.scheduler, a.warmup_steps)  # after a resume: the warmup it continues
        if note:
            self.logger.warning("%s", note)
        if main:
            self._start_tracking(config_path)
        # --nonfinite raise with a fused optimizer (the default): NaN/inf losses are caught without a host
        # sync per step. skip/rollback decide per batch on the host, and so does DDP (all ranks agree first).
        self._nonfinite_on_device = (
            a.nonfinite == "raise"
            and self.world_size == 1
            and not self.use_fp16_scaler
            and all(g.get("fused") for g in self.optimizer.param_groups)
        )

    # ----------------------------------------------------------------- the loop
    def fit(self) -> dict[str, float]:
        """Set up (or resume), train, then evaluate the best checkpoint on the test split.

        Returns:
            the test metrics (``{}`` when there is no test split).
        """
        switches = global_switches()  # --deterministic changes them for the process: put them back after
        try:
            if self.args.plot_lr:
                return plot_lr_schedule(self, self.args.plot_lr)
            self._started_group = distributed.init_from_env(self.device)
            self.rank, self.world_size = distributed.rank(), distributed.world_size()
            self.setup()
            self.train()
            metrics = self.test()
            self._end_tracking("finished", test=metrics)
            return metrics
        except BaseException as exc:
            self._end_tracking("preempted" if isinstance(exc, Preempted) else "crashed", error=exc)
            raise
        finally:
            self.release()
            restore_global_switches(switches)

    def release(self):
        """Free what a fit opened, whatever state it stopped in: workers, TensorBoard, log, run lock.

        Called at the end of :meth:`fit`; a notebook or sweep may fit many
        trainers in one process without open files, threads or loggers piling up.
        """
        for loader in self.loaders.values():  # persistent workers: stop them now
            getattr(getattr(loader, "_iterator", None), "_shutdown_workers", lambda: None)()
        self.loggers.close()
        if self.logger is not None:
            run_dir.close_logger(self.logger)
        if self.lock is not None:
            self.lock.release()
        if self._started_group:
            distributed.shutdown()
            self._started_group = False

    def run(self):
        """Entry-script action: :meth:`fit`."""
        return self.fit()

    def _call(self, name, *args):
        for hook in self.hooks:
            getattr(hook, name)(*args)

    def _done(self):
        a = self.args
        # --max_steps, when set, alone decides the length (--epochs is then ignored).
        length_reached = self.global_step >= a.max_steps if a.max_steps > 0 else self.epoch >= a.epochs
        return length_reached or self.early_stopper.should_stop

    def train(self):
        """Run epochs of optimizer steps until ``--epochs``, ``--max_steps`` or early stop.

        SIGTERM/SIGINT stop it at the next step boundary with a checkpoint
        (raising :class:`base.runtime.signals.Preempted`); any other exception writes
        the exception checkpoint, then propagates.
        """
        a, failing = self.args, False
        self._call("before_train")
        try:
            with PreemptionFlag() as self._preemption:
                if self._redo_validation:  # the checkpoint was taken inside this validation
                    self._redo_validation = False
                    self._validate()
                    self.save("last")
                if self.resume_from and self._done():
                    self.logger.info(
                        "the run %s is complete (epoch %d, step %d): nothing left to train; to "
                        "train longer, resume with a larger --epochs or --max_steps",
                        self.run_dir,
                        self.epoch,
                        self.global_step,
                    )
                while not self._done():
                    self._call("before_epoch")
                    consumed = self._train_epoch()
                    # (an epoch whose order had nothing left ends too, rather than loop forever)
                    if self.samples_in_epoch >= len(self.loaders["train"].dataset) or not consumed:
                        self.epoch, self.batch_in_epoch, self.samples_in_epoch = self.epoch + 1, 0, 0
                        if self.epoch % a.val_every_epochs == 0 and self._validated_at != self.global_step:
                            self._validate()  # unless --val_every_steps just did at this step
                    self._call("after_epoch")
                    if self._validated_at == self.global_step:
                        self.save("last")
                if self._validated_at != self.global_step:
                    self._validate()
                    self.save("last")
        except BaseException as exc:
            failing = True
            self._on_exception(exc)
            raise
        finally:
            self._call("after_train")
            try:
                self.loggers.flush()
            except OSError as exc:  # e.g. the run folder was deleted
                if not failing:
                    raise  # the error that stops the run
                self.logger.warning("%s", exc)  # the run is failing already: do not hide the real error

    def _train_epoch(self):
        a, loader = self.args, self.loaders["train"]
        self.model.train()
        # The sampler hands (epoch, index) to SeededSamples, so workers kept alive across
        # epochs (persistent) still seed each sample's augmentation from this epoch.
        loader.sampler.set_epoch(self.epoch, self.samples_in_epoch)
        if loader.generator is not None:  # worker seeds: from (seed, epoch), not the global RNG
            loader.generator.manual_seed(a.seed + self.epoch)
        with signals_held():
            # forks the workers, if any (once, with persistent workers); on CUDA, copies a batch ahead
            reader = iter(loader)
        # Batches gathered on the device are made on the compute stream: nothing to copy ahead.
        batches = reader if isinstance(loader, DeviceBatches) else self.inputs.prefetch(reader)
        per_step = loader.batch_size * self.world_size  # samples of all processes
        bar = tqdm(
            batches,
            desc=f"epoch {self.epoch + 1}/{a.epochs}",
            unit="batch",
            initial=math.ceil(self.samples_in_epoch / per_step),
            total=math.ceil(len(loader.dataset) / per_step),
            dynamic_ncols=True,
            disable=None if self.rank == 0 else True,
            leave=False,
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
        for window in self._windows(bar):
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
                    self._advance_position(len(window))
            # Logged before after_step: an exception there still saves this step (the exception
            # checkpoint), and a resume starts after it, so its row must be written already.
            if self.global_step % a.log_every_steps == 0:
                self._log_train(bar)
            self._call("after_step")
            self._check_bad_samples()
            if a.val_every_steps and self.global_step % a.val_every_steps == 0:
                self._validate()
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


def reads_files(dataset):
    """True when ``dataset``, or one it wraps (``.dataset``), decodes a file per item (``reads_files = True``)."""
    while dataset is not None:
        if getattr(dataset, "reads_files", False):
            return True
        dataset = getattr(dataset, "dataset", None)
    return False

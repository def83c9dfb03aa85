"""``TaskSteps``: what a task declares and overrides; the loop that calls it is :mod:`base.trainer`.

A task subclass of :class:`base.trainer.TrainerBase` implements the abstract steps here
(:meth:`build_datasets`, :meth:`build_model`, :meth:`build_loss`, :meth:`train_step`, :meth:`validate`),
may override the other ``build_*`` methods, and declares its flags (``add_arguments``, ``DEFAULTS``,
:meth:`check_config`). The table of what a task may read and override is in docs/WRITING_A_TASK.md.
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from base.checkpoint import resume
from base.checkpoint.resume_changes import RESUME_CHANGEABLE
from base.config.checks import check
from base.config.parse import parse_config
from base.config.trainer_flags import check_trainer_config
from base.hooks import HookBase
from base.loop import optim
from base.loop.input_stage import InputStage
from base.loop.loaders import make_loader
from base.loop.state import seed_everything
from base.loop.step import amp_context
from base.run.file_names import file_name_part


class TaskSteps(abc.ABC):
    """The steps a task implements and the defaults it may override (see the module docstring)."""

    monitor = "loss"  #: the metric of :meth:`validate` that picks ``best`` and drives early stopping
    monitor_mode = "min"  #: ``"min"`` or ``"max"``
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
    #: Flags an earlier version of the task had, ``{flag: the one value it accepted, or None: any}``: a config holding
    #: that value loads without them, any other value is refused naming the flag (see ``base.config.parse``).
    RETIRED_FLAGS = {}
    #: Flags a ``--resume`` may change (see :mod:`base.checkpoint.resume_changes`); extend with ``|``.
    RESUME_CHANGEABLE = RESUME_CHANGEABLE

    # Set by the trainer (see base.trainer.TrainerBase.__init__); listed for a task author's editor.
    args: argparse.Namespace
    device: torch.device
    model: nn.Module | None
    raw_model: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    total_steps: int | None

    @classmethod
    def check_config(cls, args: argparse.Namespace) -> None:
        """Check cross-field rules; raise ``ConfigError`` naming the flag. Extend with super().

        Also resolves ``--mean``/``--std`` left unset to :meth:`default_statistics`, so the
        saved config holds the values the run used.
        """
        check_trainer_config(args)
        if args.mean is None or args.std is None:
            mean, std = cls.default_statistics(args)
            args.mean = list(mean) if args.mean is None else args.mean
            args.std = list(std) if args.std is None else args.std
        check(len(args.mean) == len(args.std), "std", args.std, f"must give as many values as --mean {args.mean}")
        weighted = cls.sample_weights is not TaskSteps.sample_weights or args.sampler == "random"
        check(weighted, "sampler", args.sampler, f"{cls.__name__} gives no per-sample weights: use --sampler random")

    @classmethod
    def monitored(cls, args: argparse.Namespace) -> tuple[str, str]:
        """``(monitor, monitor_mode)`` of a run with ``args``; :class:`base.trainer.TrainerBase` sets them on the
        instance when it is made, so the early stopper, checkpoints, status and sweeps see one answer. Default: the
        class attributes; a task whose metric follows its flags (e.g. the data type) overrides this."""
        return cls.monitor, cls.monitor_mode

    @classmethod
    def default_statistics(cls, args: argparse.Namespace) -> tuple[list[float], list[float]]:
        """``(mean, std)``: the per-channel statistics of [0, 1] pixels that ``--mean``/``--std`` default to.

        0.5 / 0.5 (pixels mapped to [-1, 1]); a task whose data has its own (ImageNet's for
        photos, or those of pretrained weights) overrides this. Called in :meth:`check_config`.
        """
        return [0.5], [0.5]

    @classmethod
    def derived_defaults(cls, args: argparse.Namespace) -> dict[str, tuple[Any, str]]:
        """``{flag: (value, reason)}``: defaults that follow other flags (e.g. the input statistics of
        pretrained weights). :func:`base.config.parse.parse_config` sets each flag still at its class
        default, before :meth:`check_config`, and saves ``reason`` as its provenance; a value from the
        command line, a ``--config`` file or a resumed run wins. Extend with super(). Default: none.
        """
        return {}

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> TaskSteps:
        """Parse ``argv`` with the layered parser and return a trainer (nothing built yet).

        With ``--resume`` the resumed run's saved config is the starting point and flags on the command
        line override it, if they are in :attr:`RESUME_CHANGEABLE`; the changes are kept in
        :attr:`resume_changes`.

        Raises:
            UserError: ``--resume`` names nothing resumable, or changes a flag
                that cannot change on resume (the message names it and both values).
        """
        # Check only once the resumed run's values are in: its defaults alone may not
        # be valid (e.g. a --data_dir default that this machine lacks).
        args, _ = parse_config(cls, argv, check=False)
        if not args.resume:
            return cls(*parse_config(cls, argv))
        folder, ckpt, why = resume.locate(args.resume, args.output_dir, args.proj_name)
        saved = resume.saved_config(ckpt)
        args, provenance = parse_config(cls, argv, base_values=saved, base_label=f"resumed run ({ckpt})")
        changes = resume.changed_flags(saved, args, provenance, cls.RESUME_CHANGEABLE, ckpt)
        trainer = cls(args, provenance, resume_from=(folder, ckpt))
        trainer.resume_changes, trainer.resume_reason = changes, why
        return trainer

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

        Runs under autocast when ``--amp`` is on. Do not call ``backward``: the loop does. Use ``self.model``:
        under DDP it is the ``DistributedDataParallel`` wrapper, whose forward makes ``backward`` average the
        gradients over the processes (``self.raw_model`` is the model itself). Other scalar entries (e.g. the
        terms of a two-part loss, as 0-dim tensors) are averaged per sample over each ``--log_every_steps``
        window and logged as ``train/<key>``, without a host sync per step.
        """

    @abc.abstractmethod
    def validate(self, model: nn.Module, loader: Iterable) -> dict[str, float]:
        """Score ``model`` on every sample of ``loader``; return ``{metric: float}``, averaged per sample.

        ``model``: the trained model, or its EMA copy with ``--eval_ema`` (never the DDP wrapper); eval mode,
        ``torch.no_grad``. Under DDP each process's ``loader`` holds its share of the split: return per-sample
        means (the base weights the processes by their counts: :func:`base.runtime.distributed.combine_metrics`),
        or metrics from sums reduced over the processes, equal everywhere (as ``utils.metrics``' meters do).
        """

    def build_optimizer(self) -> torch.optim.Optimizer:
        """``--optimizer`` over the model's trainable parameters (see :func:`base.loop.optim.build_optimizer`)."""
        return optim.build_optimizer(self.raw_model.parameters(), self.args)

    def build_scheduler(self) -> torch.optim.lr_scheduler.LRScheduler | None:
        """Warmup then cosine over :attr:`total_steps` optimizer steps for :attr:`optimizer` (see
        :func:`base.loop.optim.build_scheduler`); ``None`` for a constant learning rate."""
        return optim.build_scheduler(self.optimizer, self.args, self.total_steps)

    def build_dataloader(self, dataset: Dataset, split: str) -> Iterable:
        """The loader of ``split``: :func:`base.loop.loaders.make_loader` (order and seeds from ``(--seed,
        epoch)``, resumable). An override for ``"train"`` must keep a ``ResumableSampler`` for resume to work."""
        return make_loader(
            dataset,
            split,
            self.args,
            self.device,
            self.rank,
            self.world_size,
            self.collate_fn,
            self.bad_samples.path if self.bad_samples is not None else None,
            self.logger,
            self.sample_weights() if split == "train" and self.args.sampler == "weighted" else None,
        )

    def sample_weights(self) -> torch.Tensor:
        """float64 ``(len(train),)``: a weight >= 0 per training sample in the split's order, not all 0, that
        ``--sampler weighted`` draws each epoch in proportion to; read once, by :meth:`build_dataloader` of
        ``"train"``. The default raises ``ConfigError`` (``check_config`` refuses the flag before)."""
        check(False, "sampler", self.args.sampler, f"{type(self).__name__} gives no per-sample weights")

    def build_hooks(self) -> list[HookBase]:
        """Return a list of :class:`base.hooks.HookBase`; called once, in ``setup``."""
        return []

    def build_device_augment(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``None``, or a callable on float ``(N, C, H, W)`` training images in [0, 1] on the device (e.g. a kornia
        ``AugmentationSequential``); called in ``build``, after :meth:`build_datasets`
        (see :mod:`base.loop.input_stage`)."""
        return None

    def build_mix(self) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None:
        """``None``, or a callable ``(images, targets) -> (images, targets)`` that mixes training batches on the device
        (Mixup / CutMix); called in ``build``, after :meth:`build_datasets` (see :mod:`base.loop.input_stage`)."""
        return None

    def model_card(self) -> dict[str, Any]:
        """JSON-able facts a predictor needs without the data (default ``{}``); saved in checkpoints and exports."""
        return {}

    def checkpoint_prefix(self) -> str:
        """``<prefix>`` of this run's checkpoint names: ``--model_type`` where the task declares that flag, else the
        class name of the model it built (a task needs no such flag to save). Override to name the files
        otherwise; it must not change when a run resumes."""
        return file_name_part(vars(self.args).get("model_type") or type(self.raw_model).__name__)

    # ----------------------------------------------------------------- for task code
    @property
    def epoch(self) -> int:
        """Completed epochs (read-only; see :attr:`progress`)."""
        return self.progress.epoch

    @property
    def global_step(self) -> int:
        """Completed optimizer steps (read-only; see :attr:`progress`)."""
        return self.progress.global_step

    def build(self):
        """Build data, loaders, model and loss (no run folder): shared with evaluators."""
        a = self.args
        seed_everything(a.seed, a.deterministic)
        # cuDNN picks the fastest kernels for each input shape (fixed here) unless results must repeat.
        torch.backends.cudnn.benchmark = not a.deterministic
        self.datasets = self.build_datasets()
        self.loaders = {k: self.build_dataloader(v, k) for k, v in self.datasets.items()}
        self.raw_model = self.model = self.build_model().to(self.device)
        self.loss_fn = self.build_loss()
        if isinstance(self.loss_fn, nn.Module):  # its buffers (class weights) on the logits' device
            self.loss_fn.to(self.device)
        self.inputs = InputStage(
            self.device, a.mean, a.std, a.channels_last, augment=self.build_device_augment(), mix=self.build_mix()
        )
        if self.rank > 0:  # each process its own dropout/augmentation stream; the same initial weights
            seed_everything(self.args.seed + 1_000_003 * self.rank)

    @property
    def amp_dtype(self) -> torch.dtype:
        """``--amp_dtype`` as a ``torch.dtype``."""
        return torch.float16 if self.args.amp_dtype == "float16" else torch.bfloat16

    @property
    def use_fp16_scaler(self) -> bool:
        """Whether gradients are scaled (fp16 AMP on CUDA)."""
        return self.args.amp and self.amp_dtype == torch.float16 and self.device.type == "cuda"

    def autocast(self):
        """Autocast context for ``--amp`` (see :func:`base.loop.step.amp_context`)."""
        return amp_context(self.args.amp, self.device, self.amp_dtype)

    def to_device(self, batch: Any) -> Any:
        """``batch`` (tensors in nested tuples, lists and dicts) on :attr:`device`, its uint8 images made the
        model's normalised float input (``--mean``/``--std``, ``--channels_last``): see :mod:`base.loop.input_stage`.

        For validation, tests and evaluators; training batches go through ``inputs.train_input`` in the loop.
        """
        return self.inputs.to_device(batch)

    def eval_model(self) -> nn.Module:
        """The weights that validation scores and ``best`` keeps: the EMA's with ``--eval_ema``, else the model."""
        ema = self.step.ema if self.step is not None else None
        return ema.module if ema is not None and self.args.eval_ema else self.raw_model

    def log_scalar(self, name: str, value, step: int | None = None) -> None:
        """Log one scalar (a float or 0-dim tensor) at ``step`` (default: the global step) to every tracker.

        The trackers are those of ``--loggers`` (see :mod:`base.run.trackers`). Tasks and hooks call it for
        their own curves, e.g. ``self.log_scalar("train/kl", kl)``; a tensor costs a host sync, so call it at
        a logging cadence, not every step. Under DDP only rank 0 writes (the others have no trackers): log
        values that are already the same on every process, or rank 0's own.

        Raises:
            RunDirError: a tracker writing into the run folder cannot write (names the file).
        """
        self.log_scalars({name: value}, step)

    def log_scalars(self, scalars: dict, step: int | None = None) -> None:
        """Log ``{name: float or 0-dim tensor}`` at ``step`` (default: the global step); see :meth:`log_scalar`."""
        if self.tracking.trackers:
            step = self.progress.global_step if step is None else step
            self.tracking.log_scalars({k: float(v) for k, v in scalars.items()}, step)

    def log_image(self, name: str, image: torch.Tensor, step: int | None = None) -> None:
        """Log ``image``, a float tensor ``(3, H, W)`` in [0, 1], at ``step`` to the trackers that take images."""
        self.tracking.log_image(name, image, self.progress.global_step if step is None else step)

"""Flags every trainer has, and the checks on them."""

import argparse
import os

from base.config.checks import check, check_folder_name, check_writable_dir
from base.config.parse import path_arg, str2bool
from base.config.sampler_flags import add_sampler_arguments
from base.config.side_mode_flags import add_side_mode_arguments, check_side_mode_config
from base.config.study_flags import add_study_arguments, check_study_config
from base.run.trackers import parse_tracker_names
from base.runtime.device import select_device


def add_trainer_arguments(parser):
    """Add the loop's flags to ``parser`` (grouped for ``--help``)."""
    run = parser.add_argument_group("run")
    run.add_argument(
        "--config",
        type=path_arg,
        default=None,
        help="start from a config file (a saved config_*.json, or YAML); flags override it",
    )
    run.add_argument(
        "--proj_name",
        default="Experiment",
        help="runs go to <output_dir>/<proj_name>/<timestamp>; one folder name (no path separator, not '.' or '..')",
    )
    run.add_argument("--output_dir", type=path_arg, default="Results", help="parent folder of all runs")
    run.add_argument(
        "--resume",
        type=path_arg,
        default="",
        help="'auto' (newest run of --proj_name), a run folder or a checkpoint: continue it",
    )
    run.add_argument(
        "--debug", type=str2bool, nargs="?", const=True, default=False, help="show tracebacks for input errors"
    )

    loop = parser.add_argument_group("loop")
    loop.add_argument("--epochs", type=int, default=10, help="epochs to train")
    loop.add_argument(
        "--max_steps",
        type=int,
        default=0,
        help="train exactly this many optimizer steps, whatever --epochs says (0: off)",
    )
    loop.add_argument("--batch_size", type=int, default=64, help="training samples per batch")
    loop.add_argument(
        "--accum_steps",
        type=int,
        default=1,
        help="batches per optimizer step (gradient accumulation: --batch_size x this per step)",
    )
    loop.add_argument("--eval_batch_size", type=int, default=0, help="validation/test batch (0: --batch_size)")
    loop.add_argument(
        "--num_workers",
        type=workers_type,
        default="auto",
        help="DataLoader worker processes; auto: 0 on CPU, on CUDA the CPUs of this process's share "
        "of the node less one, at most 12 (see base.config.trainer_flags.resolve_workers)",
    )
    loop.add_argument("--optimizer", choices=["adamw", "adam", "sgd"], default="adamw", help="update rule")
    loop.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    loop.add_argument("--weight_decay", type=float, default=0.0, help="decoupled for AdamW, L2 otherwise")
    loop.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    loop.add_argument(
        "--lr_scheduler", choices=["cosine", "none"], default="cosine", help="per-step schedule after warmup"
    )
    loop.add_argument(
        "--warmup_steps",
        type=int,
        default=0,
        help="linear warmup steps; at most half the run's optimizer steps (a longer one is cut "
        "to half, with a warning in the run log)",
    )
    loop.add_argument("--grad_clip", type=float, default=0.0, help="clip gradients at this value (0: off)")
    loop.add_argument(
        "--grad_clip_mode", choices=["norm", "value"], default="norm", help="clip the global L2 norm or each element"
    )
    loop.add_argument("--amp", type=str2bool, nargs="?", const=True, default=False, help="automatic mixed precision")
    loop.add_argument(
        "--amp_dtype",
        choices=["bfloat16", "float16"],
        default="bfloat16",
        help="autocast dtype; float16 adds a gradient scaler on CUDA",
    )

    loop.add_argument(
        "--ema_decay",
        type=float,
        default=0.0,
        help="keep an exponential moving average of the weights with this decay, e.g. 0.999 (0: off)",
    )
    loop.add_argument(
        "--eval_ema",
        type=str2bool,
        nargs="?",
        const=True,
        default=True,
        help="with --ema_decay: validate, pick 'best' and test with the EMA weights",
    )

    add_sampler_arguments(loop)  # --sampler random|weighted

    speed = parser.add_argument_group("speed")
    speed.add_argument(
        "--channels_last",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="channels-last memory format for the model and image batches (faster convs on GPU)",
    )
    speed.add_argument(
        "--compile",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="torch.compile the model (first steps are slow while it compiles)",
    )
    speed.add_argument(
        "--data_on_device",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="upload the training images (uint8) to the device once and augment batches there "
        "with kornia; for data sets that fit in GPU memory (Digits, MNIST, CIFAR10, ELPV)",
    )
    speed.add_argument(
        "--persistent_workers",
        type=str2bool,
        nargs="?",
        const=True,
        default=True,
        help="with --num_workers > 0: keep DataLoader workers between epochs",
    )
    add_side_mode_arguments(parser)  # --plot_lr, --lr_find, --preview_augment

    val = parser.add_argument_group("validation and logging")
    val.add_argument("--val_every_epochs", type=int, default=1, help="validate every N epochs")
    val.add_argument("--val_every_steps", type=int, default=0, help="also validate every N steps (0: off)")
    val.add_argument(
        "--early_stop_patience", type=int, default=0, help="stop after N validations without improvement (0: off)"
    )
    val.add_argument(
        "--log_every_steps",
        type=int,
        default=10,
        help="cadence of the progress bar and of train/* scalars (loss, lr, grad_norm, images/s)",
    )
    val.add_argument(
        "--loggers",
        default="tensorboard,csv",
        help="comma list of tensorboard, csv (scalars.csv), wandb, mlflow: where scalars go",
    )

    faults = parser.add_argument_group("checkpoints and faults")
    faults.add_argument(
        "--save_every_steps", type=int, default=0, help="also checkpoint every N steps (0: only at validations)"
    )
    faults.add_argument("--keep_last_k", type=int, default=3, help="step checkpoints kept")
    faults.add_argument(
        "--nonfinite",
        choices=["raise", "skip", "rollback"],
        default="raise",
        help="on a NaN/inf loss: stop, drop the batch, or reload the last checkpoint",
    )
    faults.add_argument(
        "--max_skipped_steps", type=int, default=20, help="stop after this many skipped or rolled-back steps"
    )
    faults.add_argument(
        "--rollback_lr_factor", type=float, default=0.5, help="learning-rate factor applied at each rollback"
    )
    faults.add_argument(
        "--bad_images",
        choices=["raise", "skip"],
        default="raise",
        help="an unreadable image stops the run, or is dropped and listed in bad_images.txt",
    )
    faults.add_argument(
        "--max_bad_images", type=int, default=100, help="with --bad_images skip: stop past this many unreadable files"
    )

    inputs = parser.add_argument_group("input statistics")
    inputs.add_argument(
        "--mean",
        type=float,
        nargs="+",
        default=None,
        help="per-channel mean of [0, 1] pixels subtracted on the device (1 or C values); "
        "default: the data's (ImageNet's for RGB image files, else 0.5)",
    )
    inputs.add_argument(
        "--std",
        type=float,
        nargs="+",
        default=None,
        help="per-channel std the pixels are divided by (1 or C values); default: the data's "
        "(ImageNet's for RGB image files, else 0.5)",
    )

    system = parser.add_argument_group("system")
    system.add_argument(
        "--gpu_devices",
        default=None,
        help="'cpu' or a CUDA id such as 0; unset: first GPU if any, else CPU (under torchrun: "
        "GPU LOCAL_RANK); a list such as 0,1,2,3 (or cpu,cpu) starts one DDP process each",
    )
    system.add_argument(
        "--sync_bn",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="under DDP on GPUs: BatchNorm statistics over the whole global batch (SyncBatchNorm)",
    )
    system.add_argument("--seed", type=int, default=42, help="seed for data splits, shuffling and init")
    system.add_argument(
        "--deterministic",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="use deterministic algorithms (slower, reproducible)",
    )
    add_study_arguments(parser)


def check_trainer_config(args):
    """Raise ``ConfigError`` naming the first flag that breaks a rule."""
    for flag in ("batch_size", "val_every_epochs", "log_every_steps"):
        check(getattr(args, flag) > 0, flag, getattr(args, flag), "must be > 0")
    check(args.epochs > 0 or args.max_steps > 0, "epochs", args.epochs, "must be > 0 unless --max_steps is set")
    for flag in (
        "epochs",
        "max_steps",
        "eval_batch_size",
        "warmup_steps",
        "val_every_steps",
        "early_stop_patience",
        "weight_decay",
        "grad_clip",
        "save_every_steps",
        "max_skipped_steps",
        "max_bad_images",
    ):
        check(getattr(args, flag) >= 0, flag, getattr(args, flag), "must be >= 0")
    check(args.lr > 0, "lr", args.lr, "must be > 0")
    for flag in ("mean", "std"):
        values = getattr(args, flag)
        check(values is None or 1 <= len(values), flag, values, "must give 1 value, or one per channel")
    check(args.std is None or min(args.std) > 0, "std", args.std, "must be > 0")
    check(args.accum_steps >= 1, "accum_steps", args.accum_steps, "must be >= 1")
    check(0 <= args.ema_decay < 1, "ema_decay", args.ema_decay, "must be in [0, 1) (0: off)")
    check(args.keep_last_k > 0, "keep_last_k", args.keep_last_k, "must be > 0")
    check(0 < args.rollback_lr_factor <= 1, "rollback_lr_factor", args.rollback_lr_factor, "must be in (0, 1]")
    check(args.seed >= 0, "seed", args.seed, "must be >= 0")
    check_study_config(args)
    check_folder_name("proj_name", args.proj_name)
    parse_tracker_names(args.loggers)  # an unknown logger, or a tracker whose package is missing
    select_device(args.gpu_devices)  # raises ConfigError for a GPU that is not there
    check_writable_dir("output_dir", args.output_dir)
    check_side_mode_config(args)


def workers_type(text):
    """``--num_workers``: ``"auto"`` or an int >= 0."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 0, got {text!r}")
    return value


def resolve_workers(value, device, local_processes=1):
    """The DataLoader workers of one process for ``--num_workers`` ``value`` (``"auto"`` or an int).

    ``auto``: 0 on CPU (the model and the workers would share the same cores); on CUDA the CPUs
    this process may use (``os.sched_getaffinity``) divided among the ``local_processes``
    processes of this node, less one for the main process, at least 1 and at most 12 (beyond a
    dozen decoding workers a GPU's input rarely gains, and each worker holds a copy of the dataset).
    """
    if value != "auto":
        return int(value)
    if device.type != "cuda":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(12, cpus // max(1, local_processes) - 1))

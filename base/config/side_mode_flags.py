"""Flags of the side modes: run one of them instead of training, write its files, exit 0.

``--plot_lr PNG`` draws the learning-rate schedule the run would follow (:mod:`base.loop.lr_plot`),
``--lr_find PNG`` sweeps the learning rate on a copy of the model and suggests a ``--lr``
(:mod:`base.loop.lr_find`), ``--preview_augment PNG`` draws training samples as the model receives them
(:mod:`base.loop.preview`). None of them makes a run folder. At most one is given at a time.
"""

import os

from base.config.checks import check, check_writable_dir
from base.config.parse import path_arg
from base.runtime.distributed import env_world_size, parse_devices

#: The side-mode flags that name the PNG they write.
SIDE_MODES = ("plot_lr", "lr_find", "preview_augment")


def add_side_mode_arguments(parser):
    """Add ``--plot_lr``, ``--lr_find`` (with ``--lr_find_range``, ``--lr_find_steps``) and ``--preview_augment``
    (with ``--preview_samples``) to ``parser`` (group ``side modes``)."""
    side = parser.add_argument_group("side modes (instead of training: write the PNG and a .csv where said, exit 0)")
    side.add_argument(
        "--plot_lr",
        type=path_arg,
        default="",
        metavar="PNG",
        help="write the learning-rate schedule this run would follow to PNG (and a .csv) and exit",
    )
    side.add_argument(
        "--lr_find",
        type=path_arg,
        default="",
        metavar="PNG",
        help="LR range test (Smith 2017): train a copy of the model for --lr_find_steps steps at learning rates "
        "rising exponentially over --lr_find_range, plot loss vs. lr to PNG (and a .csv), print a suggested --lr "
        "(the steepest descent of the smoothed loss) and exit; one process, not with --resume",
    )
    side.add_argument(
        "--lr_find_range",
        type=float,
        nargs=2,
        default=[1e-7, 1.0],
        metavar=("MIN", "MAX"),
        help="with --lr_find: the first and the last learning rate of the sweep",
    )
    side.add_argument(
        "--lr_find_steps",
        type=int,
        default=100,
        help="with --lr_find: optimizer steps of the sweep (it stops early once the smoothed loss "
        "exceeds 4x its minimum or is not finite)",
    )
    side.add_argument(
        "--preview_augment",
        type=path_arg,
        default="",
        metavar="PNG",
        help="write a grid of --preview_samples training samples as the model receives them (augmented, "
        "mixed; un-normalised with --mean/--std for display) to PNG and exit; one process, not with --resume",
    )
    side.add_argument("--preview_samples", type=int, default=16, help="with --preview_augment: samples shown")


def check_side_mode_config(args):
    """Raise ``ConfigError`` naming the side-mode flag whose value cannot work.

    Refused: a PNG path not ending in ``.png`` or in a folder that cannot be written, two side modes
    at once, ``--lr_find_range`` with ``MIN <= 0`` or ``MIN >= MAX``, ``--lr_find_steps`` < 2,
    ``--preview_samples`` < 1, and ``--lr_find`` / ``--preview_augment`` with ``--resume`` (the finder
    chooses a starting lr; the preview shows a run's first batches: run it with the run's ``--config``)
    or in several processes (a ``--gpu_devices`` list, or under torchrun): they run in one process.
    """
    given = [flag for flag in SIDE_MODES if getattr(args, flag)]
    for flag in given:
        path = getattr(args, flag)
        check(path.lower().endswith(".png"), flag, path, "must name a .png file")
        check_writable_dir(flag, os.path.dirname(os.path.abspath(path)))
    if len(given) > 1:
        check(False, given[1], getattr(args, given[1]), f"one side mode at a time: not with --{given[0]}")
    low, high = args.lr_find_range
    check(0 < low < high, "lr_find_range", args.lr_find_range, "must be MIN MAX with 0 < MIN < MAX")
    check(args.lr_find_steps >= 2, "lr_find_steps", args.lr_find_steps, "must be >= 2")
    check(args.preview_samples >= 1, "preview_samples", args.preview_samples, "must be >= 1")
    for flag in ("lr_find", "preview_augment"):
        value = getattr(args, flag)
        if not value:
            continue
        why = "the finder picks a starting --lr" if flag == "lr_find" else "it shows a run's first batches"
        check(not args.resume, flag, value, f"not with --resume ({why}; give the run's --config instead)")
        several = parse_devices(args.gpu_devices) is not None or env_world_size() > 1
        check(not several, flag, value, "runs in one process: give --gpu_devices one device, not a list or torchrun")

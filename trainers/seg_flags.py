"""The flags of the segmentation trainer (:class:`trainers.seg_trainer.SegTrainer`) and their checks."""

import argparse
import re

from base.config.checks import check
from base.config.parse import str2bool
from data.carvana import add_carvana_arguments, check_layout
from data.seg_data import check_split_flags
from data.seg_folder import check_segfolder_layout
from loss.imbalance import add_imbalance_arguments
from loss.segmentation import BINARY_LOSSES, LOSSES, MULTICLASS_LOSSES
from model.segmentation import SEG_MODELS

DATA_TYPES = ("SegFolder", "Carvana")
MAX_CLASSES = 255  # label maps are read as 8-bit labels (data.images.to_8bit)


def class_names_arg(text):
    """argparse type of ``--class_names``: ``"a,b,c"`` -> ``["a", "b", "c"]`` (names become metric keys)."""
    names = [n.strip() for n in text.split(",")]
    if not all(re.fullmatch(r"[A-Za-z0-9_.-]+", n) for n in names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct names of letters, digits, _ . - between commas")
    return names


def add_seg_arguments(parser):
    """Add the groups ``segmentation``, ``classes`` (with ``--class_weights``/``--focal_gamma``) and ``data``."""
    group = parser.add_argument_group("segmentation")
    group.add_argument(
        "--model_type",
        choices=sorted(SEG_MODELS),
        default="UNet",
        help="UNet, UNetPlusPlus, or a torchvision baseline (random init)",
    )
    group.add_argument("--base_channels", type=int, default=16, help="width of the first U-Net level")
    group.add_argument(
        "--upsample", choices=["bilinear", "transpose"], default="bilinear", help="U-Net decoder upsampling"
    )
    group.add_argument(
        "--deep_supervision",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="UNetPlusPlus: a loss on each nested decoder's head",
    )
    group.add_argument(
        "--loss",
        choices=LOSSES,
        default="bce_dice",
        help=f"training loss: {', '.join(BINARY_LOSSES)} for --num_classes 1; "
        f"{', '.join(MULTICLASS_LOSSES)} for more (default ce_dice)",
    )
    group.add_argument("--bce_weight", type=float, default=1.0, help="weight of the BCE/CE/focal term in *_dice")
    group.add_argument("--dice_weight", type=float, default=1.0, help="soft Dice weight in *_dice")
    group.add_argument("--dice_smooth", type=float, default=1.0, help="soft Dice smooth term")
    group.add_argument(
        "--num_viz",
        type=int,
        default=4,
        help="validation images in TensorBoard's image | truth | prediction | errors grid",
    )
    classes = parser.add_argument_group("classes")
    classes.add_argument(
        "--num_classes", type=int, default=1, help="K: 1 = a binary mask (one logit), >= 2 = K class maps"
    )
    classes.add_argument(
        "--ignore_index", type=int, default=255, help="label of pixels left out of the loss and metrics (K >= 2)"
    )
    classes.add_argument("--class_names", type=class_names_arg, default=None, help="a,b,c: K names (default 0, 1, ...)")
    add_imbalance_arguments(classes)
    add_carvana_arguments(parser)
    parser.add_argument(
        "--data_type",
        choices=DATA_TYPES,
        default="SegFolder",
        help="SegFolder: images/ + masks/ label maps; Carvana: Kaggle's binary car masks",
    )


def check_seg_config(args):
    """Check the segmentation flags together (the data layout, K against the loss, the names, the weights).

    Raises:
        ConfigError: naming the flag; DataError: ``--data_dir`` lacks its layout.
    """
    (check_segfolder_layout if args.data_type == "SegFolder" else check_layout)(args.data_dir)
    check_split_flags(args)
    check(args.base_channels > 0, "base_channels", args.base_channels, "must be > 0")
    for flag in ("bce_weight", "dice_weight", "num_viz"):
        check(getattr(args, flag) >= 0, flag, getattr(args, flag), "must be >= 0")
    check(args.dice_smooth > 0, "dice_smooth", args.dice_smooth, "must be > 0")
    k = args.num_classes
    check(1 <= k <= MAX_CLASSES, "num_classes", k, f"must be 1..{MAX_CLASSES} (8-bit label maps)")
    check(args.data_type != "Carvana" or k == 1, "num_classes", k, "--data_type Carvana has one class (use 1)")
    check(
        k <= args.ignore_index <= 255,
        "ignore_index",
        args.ignore_index,
        f"must be {k}..255: not a class of --num_classes {k}, and an 8-bit label",
    )
    kinds = BINARY_LOSSES if k == 1 else MULTICLASS_LOSSES
    check(args.loss in kinds, "loss", args.loss, f"with --num_classes {k} choose one of {', '.join(kinds)}")
    if args.class_names is not None:
        check(len(args.class_names) == k, "class_names", args.class_names, f"needs {k} names (--num_classes)")
    check(args.focal_gamma >= 0, "focal_gamma", args.focal_gamma, "must be >= 0")
    if k == 1:
        check(args.class_weights == "none", "class_weights", args.class_weights, "needs --num_classes >= 2")
    elif isinstance(args.class_weights, list):
        check(len(args.class_weights) == k, "class_weights", args.class_weights, f"needs {k} weights")

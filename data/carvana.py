"""Binary segmentation data in the layout of Kaggle's Carvana Image Masking Challenge.

::

    <data_dir>/train/<id>_<view>.jpg                 RGB photos (the competition's are 1918x1280)
    <data_dir>/train_masks/<id>_<view>_mask.gif      palette GIFs, 0 = background, 1 = car

Each car ``<id>`` has several ``<view>`` photos (``01``..``16``). The
competition's ``test/`` folder has no masks, so train, validation and test
are all carved out of ``train/``, **by car**: every view of a car lands in
one split, so no car is seen in training and scored in validation.

Masks are decoded with :func:`data.images.read_image` in mode ``"L"`` as labels
(16-bit values kept, not scaled; an unreadable mask follows ``--bad_images``);
values must be {0, 1} or {0, 255}.
Images and masks share one joint transform (torchvision transforms v2, the
mask a ``tv_tensors.Mask``): geometry is applied to both, nearest-neighbour
for the mask, colour jitter to the image only. Images stay uint8 ``(3, H, W)``;
the device makes floats of them with ``--mean``/``--std`` (:mod:`base.loop.input_stage`).
"""

import os

from base.config.parse import path_arg, str2bool
from base.errors import DataError
from data.seg_data import (  # noqa: F401 - re-exported: the Carvana names of the shared parts
    MIN_SIZE,
    SegmentationData,
    SegmentationDataset,
    binary_mask,
    check_folders,
    check_split_flags,
    collate_segmentation,
    eval_description,
    input_size,
    joint_transform,
    split_groups,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = ("_mask.gif", "_mask.png")
LAYOUT = "train/<id>_<view>.jpg and train_masks/<id>_<view>_mask.gif (Kaggle's Carvana layout)"
MAKE_SYNTHETIC = "python -m data.make_synthetic_carvana --out Dataset/SyntheticCarvana --cars 20"


def add_carvana_arguments(parser):
    """Add the ``data`` flag group of the Carvana task to ``parser``."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data_dir",
        type=path_arg,
        default="Dataset/Carvana",
        help="folder holding train/ and train_masks/ (the Kaggle layout)",
    )
    data.add_argument(
        "--img_scale",
        type=float,
        default=0.5,
        help="resize factor applied to the first image's size (all images get that size)",
    )
    data.add_argument(
        "--image_size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="resize every image to H W (wins over --img_scale)",
    )
    data.add_argument(
        "--augment",
        type=str2bool,
        nargs="?",
        const=True,
        default=True,
        help="random joint flip, scale/crop and colour jitter on train",
    )
    data.add_argument("--val_fraction", type=float, default=0.15, help="share of the cars held out for validation")
    data.add_argument("--test_fraction", type=float, default=0.15, help="share of the cars held out for test")
    data.add_argument(
        "--train_val_sample_rate", type=float, default=1.0, help="keep this share of the train+val cars (fast runs)"
    )
    data.add_argument("--test_sample_rate", type=float, default=1.0, help="keep this share of the test cars")


def check_carvana_config(args):
    """Raise ``ConfigError`` naming the first data flag that breaks a rule.

    Raises:
        DataError: ``--data_dir`` lacks the layout (see :func:`check_layout`): a missing data
            folder is bad input found at run time (exit status 1), as for every task.
    """
    check_layout(args.data_dir)
    check_split_flags(args)


def check_layout(data_dir):
    """Raise ``DataError`` unless ``data_dir`` holds the folders ``train/`` and ``train_masks/``
    (:func:`data.seg_data.check_folders`)."""
    check_folders(data_dir, ("train", "train_masks"), LAYOUT, MAKE_SYNTHETIC, "cars")


def car_id(image_path):
    """``"<id>"`` of ``.../<id>_<view>.jpg`` (the whole stem when it has no ``_``)."""
    return os.path.splitext(os.path.basename(image_path))[0].rsplit("_", 1)[0]


def find_samples(data_dir):
    """Pair every image of ``<data_dir>/train`` with its mask in ``<data_dir>/train_masks``.

    Returns:
        sorted list of ``(image_path, mask_path)``; hidden files are ignored.

    Raises:
        DataError: a folder is missing or holds no images, or an image has no
            mask; the message names the folder or both files.
    """
    image_dir, mask_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "train_masks")
    for folder in (image_dir, mask_dir):
        if not os.path.isdir(folder):
            raise DataError(f"--data_dir {data_dir}: expected the folder {folder} ({LAYOUT})")
    names = sorted(n for n in os.listdir(image_dir) if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise DataError(f"no images (<id>_<view>.jpg) in {image_dir}; expected {LAYOUT}")
    samples = []
    for name in names:
        stem = os.path.splitext(name)[0]
        candidates = [os.path.join(mask_dir, stem + suffix) for suffix in MASK_SUFFIXES]
        mask = next((c for c in candidates if os.path.isfile(c)), None)
        if mask is None:
            raise DataError(f"image {os.path.join(image_dir, name)} has no mask: expected {candidates[0]}")
        samples.append((os.path.join(image_dir, name), mask))
    return samples


def split_by_car(samples, args):
    """Assign whole cars to train/val/test (:func:`data.seg_data.split_groups` by :func:`car_id`): every view
    of a car lands in one split, and in one fold with ``--folds``.

    Returns:
        ``{"train" | "val" | "test": sorted car ids}``.

    Raises:
        DataError: too few cars to give every split at least one.
    """
    return split_groups(samples, args, car_id, "cars")


def build_carvana_datasets(args):
    """Find, pair and split the data chosen by ``args``; returns :class:`SegmentationData`.

    Raises:
        DataError: see :func:`find_samples`, :func:`split_by_car` and :func:`input_size`.
    """
    samples = find_samples(args.data_dir)
    cars = split_by_car(samples, args)
    size = input_size(samples, args)

    def subset(split, train):
        keep = set(cars[split])
        return CarvanaDataset(
            [s for s in samples if car_id(s[0]) in keep], size, train=train, augment=train and args.augment
        )

    return SegmentationData(
        train=subset("train", True), val=subset("val", False), test=subset("test", False), input_size=size, groups=cars
    )


class CarvanaDataset(SegmentationDataset):
    """Carvana's image/mask pairs: a :class:`data.seg_data.SegmentationDataset` of binary masks.

    Args:
        samples: list of ``(image_path, mask_path)``.
        size: ``(H, W)`` of the model's input.
        train: training items (``image``, ``mask``) or evaluation items, which
            add ``full_mask`` and ``path``.
        augment: apply the random joint transform (see :func:`joint_transform`).

    Items:
        ``image``: uint8 ``(3, H, W)``, values 0..255 (normalised on the device);
        ``mask``: float32 ``(1, H, W)`` in {0, 1};
        ``full_mask`` (evaluation): uint8 ``(H0, W0)`` in {0, 1} at the file's own size;
        ``path`` (evaluation): the image file.

    Raises:
        BadImageError: the image or mask cannot be decoded (names the file).
        DataError: the image and mask sizes differ, or the mask holds values
            other than {0, 1} or {0, 255}; the message names both files.
    """

    def __init__(self, samples, size, train=False, augment=False):
        super().__init__(samples, size, binary_mask, binary=True, train=train, augment=augment)

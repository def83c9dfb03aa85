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

import dataclasses
import os

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from base.config.checks import check
from base.config.parse import path_arg, str2bool
from base.errors import DataError
from data import transforms
from data.images import read_image
from data.splits import kfold_groups

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_SUFFIXES = ("_mask.gif", "_mask.png")
MIN_SIZE = 16  # 4 poolings of a U-Net; the smallest side any model here takes
LAYOUT = "train/<id>_<view>.jpg and train_masks/<id>_<view>_mask.gif (Kaggle's Carvana layout)"
MAKE_SYNTHETIC = "python -m data.make_synthetic_carvana --out Dataset/SyntheticCarvana --cars 20"


@dataclasses.dataclass
class SegmentationData:
    """The three splits (each a :class:`CarvanaDataset`), the model's input size and the cars per split."""

    train: Dataset
    val: Dataset
    test: Dataset
    input_size: tuple  # (H, W) every image is resized to
    cars: dict  # split -> sorted car ids


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
    check(args.img_scale > 0, "img_scale", args.img_scale, "must be > 0")
    if args.image_size is not None:
        check(
            min(args.image_size) >= MIN_SIZE,
            "image_size",
            args.image_size,
            f"both sides must be >= {MIN_SIZE} (four 2x poolings)",
        )
    for flag in ("val_fraction", "test_fraction"):
        check(
            0 < getattr(args, flag) < 1,
            flag,
            getattr(args, flag),
            "must be in (0, 1): splits are by car, each needs at least one",
        )
    check(
        args.val_fraction + args.test_fraction < 1,
        "val_fraction",
        args.val_fraction,
        f"--val_fraction + --test_fraction ({args.test_fraction}) must be < 1 to leave training cars",
    )
    for flag in ("train_val_sample_rate", "test_sample_rate"):
        check(0 < getattr(args, flag) <= 1, flag, getattr(args, flag), "must be in (0, 1]")


def check_layout(data_dir):
    """Raise ``DataError`` unless ``data_dir`` holds the folders ``train/`` and ``train_masks/``.

    Cheap (two ``isdir`` calls), so a trainer refuses before it creates a run folder. The one-line
    message names the folder, the layout and how to make synthetic data in it.
    """
    if not data_dir:
        problem = "a folder is required here"
    elif not os.path.isdir(data_dir):
        problem = "no such folder"
    else:
        missing = [f"{name}/" for name in ("train", "train_masks") if not os.path.isdir(os.path.join(data_dir, name))]
        if not missing:
            return
        problem = f"it has no {' and no '.join(missing)}"
    raise DataError(
        f"--data_dir {data_dir}: {problem}; expected {LAYOUT} (no data yet? `{MAKE_SYNTHETIC}` "
        f"writes synthetic cars in that layout)"
    )


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
    """Assign whole cars to train/val/test from a permutation seeded by ``--seed``.

    A prefix of a permutation is a random subset, so a smaller sample rate
    keeps a subset of the cars a larger one keeps, and the test cars do not
    depend on ``--train_val_sample_rate``. With ``--folds K``, the kept pool's
    cars are dealt out to K folds in that order and fold ``--fold`` validates
    (:func:`data.splits.kfold_groups`): all views of a car stay in one fold.

    Returns:
        ``{"train" | "val" | "test": sorted car ids}``.

    Raises:
        DataError: too few cars to give every split at least one.
    """
    cars = sorted({car_id(image) for image, _ in samples})
    order = [cars[i] for i in torch.randperm(len(cars), generator=torch.Generator().manual_seed(args.seed))]
    n_test = max(1, round(args.test_fraction * len(cars)))
    test, pool = order[:n_test], order[n_test:]
    test = test[: _keep(args.test_sample_rate, len(test))]
    pool = pool[: _keep(args.train_val_sample_rate, len(pool))]
    if args.folds:  # whole cars per fold, dealt out in the seeded order: --val_fraction plays no part
        if len(pool) < args.folds:
            raise DataError(
                f"--data_dir {args.data_dir}: --folds {args.folds}: the train+val pool holds {len(pool)} cars "
                f"after --train_val_sample_rate; need at least one car per fold"
            )
        train, val = kfold_groups(pool, args.folds, args.fold)
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    n_val = max(1, round(args.val_fraction * len(pool)))
    if len(pool) - n_val < 1:
        raise DataError(
            f"--data_dir {args.data_dir}: {len(cars)} cars are too few to hold out "
            f"validation and test cars and still train (need at least 3 after --*_sample_rate)"
        )
    return {"train": sorted(pool[n_val:]), "val": sorted(pool[:n_val]), "test": sorted(test)}


def _keep(rate, n):
    return min(n, max(1, round(rate * n)))


def input_size(samples, args):
    """``(H, W)`` for the model: ``--image_size``, else the first readable image's size x ``--img_scale``.

    Raises:
        DataError: the scaled size is below :data:`MIN_SIZE`, or no image header is readable.
    """
    if args.image_size is not None:
        return tuple(args.image_size)
    for image, _ in samples:
        try:
            with Image.open(image) as im:  # reads the header only
                width, height = im.size
        except (OSError, ValueError, SyntaxError):
            continue  # a broken file is reported (or skipped) when the loader reads it
        size = (round(height * args.img_scale), round(width * args.img_scale))
        if min(size) < MIN_SIZE:
            raise DataError(
                f"--img_scale {args.img_scale}: {image} ({height}x{width}) becomes "
                f"{size[0]}x{size[1]}, below the minimum side {MIN_SIZE}"
            )
        return size
    raise DataError(f"--data_dir {args.data_dir}: no image in train/ could be opened")


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
        train=subset("train", True), val=subset("val", False), test=subset("test", False), input_size=size, cars=cars
    )


def joint_transform(size, augment):
    """The v2 pipeline for ``(tv_tensors.Image uint8, tv_tensors.Mask uint8)`` pairs.

    With ``augment``: a random crop of 50-100% of the area at the output's
    aspect ratio (+-15%) resized to ``size``, a horizontal flip, then colour
    jitter (ignored by masks). Without it: a plain resize, the pipeline of
    :func:`eval_description` (which the model card records). v2 resizes masks
    with nearest-neighbour, so they stay binary.
    """
    from torchvision.transforms import v2  # here, not at import: scripts start faster without torchvision

    if not augment:
        return transforms.described_transform(eval_description(size))
    aspect = size[1] / size[0]
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.5, 1.0), ratio=(aspect / 1.15, aspect * 1.15), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
        ]
    )


def eval_description(size):
    """The evaluation resize as facts (:func:`data.transforms.describe_resize`): every image to exactly
    ``size = (H, W)``, bilinear and antialiased, by torchvision's kernels on the uint8 tensor."""
    return {**transforms.describe_resize(size), "backend": "torch"}


class CarvanaDataset(Dataset):
    """Image/mask pairs resized to one size, as dicts of tensors.

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
        self.samples, self.size, self.train = list(samples), tuple(size), train
        self.transform = joint_transform(self.size, augment)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        image_path, mask_path = self.samples[index]
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        image, mask = read_image(image_path, "RGB"), read_image(mask_path, "L", labels=True)
        if image.size != mask.size:
            raise DataError(
                f"image {image_path} is {image.size[0]}x{image.size[1]} (WxH) but its mask "
                f"{mask_path} is {mask.size[0]}x{mask.size[1]}"
            )
        mask = binary_mask(v2.functional.pil_to_tensor(mask)[0], image_path, mask_path)
        image_t, mask_t = self.transform(
            tv_tensors.Image(v2.functional.pil_to_tensor(image)), tv_tensors.Mask(mask[None])
        )
        item = {"image": image_t.as_subclass(torch.Tensor), "mask": mask_t.as_subclass(torch.Tensor).float()}
        if not self.train:
            item.update(full_mask=mask, path=image_path)
        return item


def binary_mask(mask, image_path, mask_path):
    """uint8 ``(H, W)`` with values {0, 1} or {0, 255} -> uint8 {0, 1}.

    Raises:
        DataError: any other value (a JPEG-compressed or soft mask, a colour
            palette), naming both files and the value found.
    """
    peak = int(mask.max())
    stray = (mask != 0) & (mask != peak)
    if peak not in (0, 1, 255) or bool(stray.any()):
        value = int(mask[stray][0]) if bool(stray.any()) else peak
        raise DataError(f"mask {mask_path} (of image {image_path}) holds the value {value}; expected only 0/1 or 0/255")
    return (mask > 0).to(torch.uint8)


def collate_segmentation(samples):
    """Batch dict samples; ``full_mask`` stays a list (images may differ in size), ``path`` a list of str."""
    full = [s["full_mask"] for s in samples] if "full_mask" in samples[0] else None
    batch = default_collate([{k: v for k, v in s.items() if k != "full_mask"} for s in samples])
    if full is not None:
        batch["full_mask"] = full
    return batch

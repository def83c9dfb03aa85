"""What every segmentation layout shares: the split by group, the input size, the joint transform and the dataset.

A layout (:mod:`data.carvana`, :mod:`data.seg_folder`) finds ``(image_path, mask_path)`` pairs and says
how a mask file's values become labels (a *decoder*); the rest is here, so both read, split, augment,
resize and batch their pairs the same way:

* :func:`split_groups`: whole groups (Carvana's cars, a folder's images) to train/val/test from a
  permutation seeded by ``--seed`` (``--val_fraction``, ``--test_fraction``, the sample rates, ``--folds``);
* :func:`input_size`: ``--image_size``, else the first image's size times ``--img_scale``;
* :class:`SegmentationDataset`: the joint transform of :func:`joint_transform` (geometry on both,
  nearest-neighbour for the mask, colour on the image only), the resize to the training size, and
  ``full_mask`` at the file's own size for scoring;
* the two decoders: :func:`binary_mask` ({0, 1} or {0, 255} -> {0, 1}) and :func:`label_map` (class
  indices as they are, refusing values the run has no class for).
"""

import dataclasses
import os

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from base.config.checks import check
from base.errors import BadImageError, DataError
from data import transforms
from data.images import read_image
from data.splits import kfold_groups

MIN_SIZE = 16  # 4 poolings of a U-Net; the smallest side any model here takes


@dataclasses.dataclass
class SegmentationData:
    """The three splits (each a :class:`SegmentationDataset`), the model's input size and the groups per split
    (car ids for Carvana, image stems for a segmentation folder)."""

    train: Dataset
    val: Dataset
    test: Dataset
    input_size: tuple  # (H, W) every image is resized to
    groups: dict  # split -> sorted group ids


def check_split_flags(args):
    """Raise ``ConfigError`` naming the first of the size, split and sample-rate flags that breaks a rule."""
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
            "must be in (0, 1): every split needs at least one car (Carvana) or image",
        )
    check(
        args.val_fraction + args.test_fraction < 1,
        "val_fraction",
        args.val_fraction,
        f"--val_fraction + --test_fraction ({args.test_fraction}) must be < 1 to leave training data",
    )
    for flag in ("train_val_sample_rate", "test_sample_rate"):
        check(0 < getattr(args, flag) <= 1, flag, getattr(args, flag), "must be in (0, 1]")


def split_groups(samples, args, group_of, noun="cars"):
    """Assign whole groups to train/val/test from a permutation seeded by ``--seed``.

    A prefix of a permutation is a random subset, so a smaller sample rate keeps a subset of the
    groups a larger one keeps, and the test groups do not depend on ``--train_val_sample_rate``. With
    ``--folds K``, the kept pool's groups are dealt out to K folds in that order and fold ``--fold``
    validates (:func:`data.splits.kfold_groups`): every sample of a group stays in one fold.

    Args:
        samples: ``(image_path, mask_path)`` pairs.
        args: the flags above, ``--seed`` and ``--data_dir`` (for messages).
        group_of: ``image_path -> group id`` (a car, or the image's own stem).
        noun: what a group is, plural, for messages.

    Returns:
        ``{"train" | "val" | "test": sorted group ids}``.

    Raises:
        DataError: too few groups to give every split at least one.
    """
    groups = sorted({group_of(image) for image, _ in samples})
    order = [groups[i] for i in torch.randperm(len(groups), generator=torch.Generator().manual_seed(args.seed))]
    n_test = max(1, round(args.test_fraction * len(groups)))
    test, pool = order[:n_test], order[n_test:]
    test = test[: _keep(args.test_sample_rate, len(test))]
    pool = pool[: _keep(args.train_val_sample_rate, len(pool))]
    if args.folds:  # whole groups per fold, dealt out in the seeded order: --val_fraction plays no part
        if len(pool) < args.folds:
            raise DataError(
                f"--data_dir {args.data_dir}: --folds {args.folds}: the train+val pool holds {len(pool)} {noun} "
                f"after --train_val_sample_rate; need at least one per fold"
            )
        train, val = kfold_groups(pool, args.folds, args.fold)
        return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    n_val = max(1, round(args.val_fraction * len(pool)))
    if len(pool) - n_val < 1:
        raise DataError(
            f"--data_dir {args.data_dir}: {len(groups)} {noun} are too few to hold out "
            f"validation and test {noun} and still train (need at least 3 after --*_sample_rate)"
        )
    return {"train": sorted(pool[n_val:]), "val": sorted(pool[:n_val]), "test": sorted(test)}


def _keep(rate, n):
    return min(n, max(1, round(rate * n)))


def input_size(samples, args, folder="train/"):
    """``(H, W)`` for the model: ``--image_size``, else the first readable image's size x ``--img_scale``.

    Raises:
        DataError: the scaled size is below :data:`MIN_SIZE`, or no image header is readable (the message
            names ``folder``).
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
    raise DataError(f"--data_dir {args.data_dir}: no image in {folder} could be opened")


def check_folders(data_dir, folders, layout, make_synthetic, what):
    """Raise ``DataError`` unless ``data_dir`` holds each of ``folders`` (e.g. ``("images", "masks")``).

    Cheap (a few ``isdir`` calls), so a trainer refuses before it creates a run folder. The one-line
    message names the folder, the ``layout`` expected and the ``make_synthetic`` command that writes
    synthetic ``what`` ("cars", "shapes") in it.
    """
    if not data_dir:
        problem = "a folder is required here"
    elif not os.path.isdir(data_dir):
        problem = "no such folder"
    else:
        missing = [f"{name}/" for name in folders if not os.path.isdir(os.path.join(data_dir, name))]
        if not missing:
            return
        problem = f"it has no {' and no '.join(missing)}"
    raise DataError(
        f"--data_dir {data_dir}: {problem}; expected {layout} (no data yet? `{make_synthetic}` "
        f"writes synthetic {what} in that layout)"
    )


def native_scale(args):
    """The factor by which a run's training resize scaled an image's own size: ``--img_scale``, or 1 when
    ``--image_size`` fixed the size (its images may differ in size; their own pixels are the scale then).

    Tiled inference (``--tile``) predicts each image at its own size times this factor.
    """
    return 1.0 if args.image_size is not None else float(args.img_scale)


def native_input(image, args):
    """uint8 ``(3, h, w)``: the decoded RGB PIL ``image`` at its own size times :func:`native_scale` of the run's
    ``args`` (a torch antialiased resize, none at scale 1), what tiled inference covers with its windows."""
    from data.images import image_to_input
    from data.transforms import describe_resize

    scale = native_scale(args)
    size = (max(1, round(image.height * scale)), max(1, round(image.width * scale)))
    return image_to_input(image, {**describe_resize(size), "backend": "torch"})


def joint_transform(size, augment):
    """The v2 pipeline for ``(tv_tensors.Image uint8, tv_tensors.Mask uint8)`` pairs.

    With ``augment``: a random crop of 50-100% of the area at the output's
    aspect ratio (+-15%) resized to ``size``, a horizontal flip, then colour
    jitter (ignored by masks). Without it: a plain resize, the pipeline of
    :func:`eval_description` (which the model card records). v2 resizes masks
    with nearest-neighbour, so their values stay labels.
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


def label_map(mask, image_path, mask_path, num_classes, ignore_index):
    """uint8 ``(H, W)`` class indices, returned as they are after a check.

    Args:
        mask: uint8 ``(H, W)``, one class index per pixel.
        num_classes: ``K``; valid labels are ``0..K-1``.
        ignore_index: the one other value allowed (pixels left out of the loss and the metrics).

    Raises:
        DataError: a value ``>= K`` other than ``ignore_index``; one line naming the mask, the value and
            ``--num_classes``.
    """
    stray = (mask >= num_classes) & (mask != ignore_index)
    if bool(stray.any()):
        raise DataError(
            f"mask {mask_path} (of image {image_path}) holds the label {int(mask[stray].max())}; "
            f"--num_classes {num_classes} allows 0..{num_classes - 1} and --ignore_index {ignore_index}"
        )
    return mask


class SegmentationDataset(Dataset):
    """Image/mask pairs resized to one size, as dicts of tensors.

    Args:
        samples: list of ``(image_path, mask_path)``.
        size: ``(H, W)`` of the model's input.
        decode: ``(uint8 (H0, W0) mask pixels, image_path, mask_path) -> uint8 (H0, W0) labels``
            (:func:`binary_mask`, or a :func:`functools.partial` of :func:`label_map`); module-level, so
            ``spawn`` DataLoader workers can pickle it.
        binary: the masks are one class against the background (``mask`` float ``(1, H, W)``), or class
            maps (``mask`` int64 ``(H, W)``).
        train: training items (``image``, ``mask``) or evaluation items, which
            add ``full_mask`` and ``path``.
        augment: apply the random joint transform (see :func:`joint_transform`).

    Items:
        ``image``: uint8 ``(3, H, W)``, values 0..255 (normalised on the device);
        ``mask``: binary: float32 ``(1, H, W)`` in {0, 1}; else int64 ``(H, W)`` class indices
        (ignored pixels keep ``--ignore_index``);
        ``full_mask`` (evaluation): uint8 ``(H0, W0)`` labels at the file's own size;
        ``path`` (evaluation): the image file.

    Raises:
        BadImageError: the image or mask cannot be decoded (names the file).
        DataError: the image and mask sizes differ, or the decoder refuses the mask's values;
            the message names the files.
    """

    def __init__(self, samples, size, decode, binary, train=False, augment=False):
        self.samples, self.size, self.train = list(samples), tuple(size), train
        self.decode, self.binary = decode, binary
        self.transform = joint_transform(self.size, augment)

    def __len__(self):
        return len(self.samples)

    def read(self, index):
        """``(PIL RGB image, uint8 (H0, W0) decoded labels)`` of sample ``index``, at the files' own size."""
        from torchvision.transforms import v2

        image_path, mask_path = self.samples[index]
        image, mask = read_image(image_path, "RGB"), read_image(mask_path, "L", labels=True)
        if image.size != mask.size:
            raise DataError(
                f"image {image_path} is {image.size[0]}x{image.size[1]} (WxH) but its mask "
                f"{mask_path} is {mask.size[0]}x{mask.size[1]}"
            )
        return image, self.decode(v2.functional.pil_to_tensor(mask)[0], image_path, mask_path)

    def __getitem__(self, index):
        from torchvision import tv_tensors
        from torchvision.transforms import v2

        image, mask = self.read(index)
        image_t, mask_t = self.transform(
            tv_tensors.Image(v2.functional.pil_to_tensor(image)), tv_tensors.Mask(mask[None])
        )
        mask_t = mask_t.as_subclass(torch.Tensor)
        item = {"image": image_t.as_subclass(torch.Tensor), "mask": mask_t.float() if self.binary else mask_t[0].long()}
        if not self.train:
            item.update(full_mask=mask, path=self.samples[index][0])
        return item

    def pixel_counts(self, bins, skip_bad=False):
        """Pixels of each label per sample at the training size: int64 ``(len(self), bins)``.

        Each mask is decoded and resized to :attr:`size` with nearest-neighbour (the evaluation resize,
        without augmentation); labels ``>= bins`` (the ignore index) are not counted. Cost: one read
        and decode of every mask, in this process.

        Args:
            bins: labels counted, ``0..bins-1`` (``K``, or 2 for a binary mask).
            skip_bad: a mask that cannot be read counts nothing (``--bad_images skip``), else it raises.

        Raises:
            BadImageError: an unreadable file, unless ``skip_bad``. DataError: see the class.
        """
        from torchvision.transforms import v2

        counts = torch.zeros(len(self), bins, dtype=torch.int64)
        for index in range(len(self)):
            try:
                _, mask = self.read(index)
            except BadImageError:
                if not skip_bad:
                    raise
                continue
            small = v2.functional.resize(mask[None], list(self.size), v2.InterpolationMode.NEAREST)[0].long()
            small = small[small < bins]
            counts[index] = torch.bincount(small, minlength=bins)
        return counts


def collate_segmentation(samples):
    """Batch dict samples; ``full_mask`` stays a list (images may differ in size), ``path`` a list of str."""
    full = [s["full_mask"] for s in samples] if "full_mask" in samples[0] else None
    batch = default_collate([{k: v for k, v in s.items() if k != "full_mask"} for s in samples])
    if full is not None:
        batch["full_mask"] = full
    return batch

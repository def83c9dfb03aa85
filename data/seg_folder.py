"""Segmentation data of any number of classes in a plain folder (``--data_type SegFolder``).

::

    <data_dir>/images/<stem>.<ext>    RGB images (any format Pillow reads: .jpg, .png, .tif, ...)
    <data_dir>/masks/<stem>.png       label maps: the class index of each pixel (8- or 16-bit PNG)

A label map is read with :func:`data.images.read_image` in mode ``"L"`` as labels (16-bit values kept,
not scaled), as Carvana's masks are. Values must be ``0..K-1`` (``--num_classes``) or ``--ignore_index``
(left out of the loss and the metrics). With ``--num_classes 1`` a mask is a binary mask instead,
{0, 1} or {0, 255} as Carvana's (no ignored pixels). Train, validation and test are carved out of the
images by a permutation of the stems seeded by ``--seed`` (``--val_fraction``, ``--test_fraction``, the
sample rates, ``--folds``/``--fold``: :func:`data.seg_data.split_groups`, each image its own group).
"""

import functools
import os

from PIL import Image

from base.errors import DataError
from data.seg_data import (
    SegmentationData,
    SegmentationDataset,
    binary_mask,
    check_folders,
    input_size,
    label_map,
    split_groups,
)

LAYOUT = "images/<stem>.<ext> and masks/<stem>.png label maps (class index per pixel)"
MAKE_SYNTHETIC = "python -m data.make_synthetic_shapes --out Dataset/Shapes"


def image_extensions():
    """Lower-case file extensions Pillow can open (``.jpg``, ``.png``, ``.tif``, ...), as a tuple."""
    Image.init()  # registers every plugin, not only the common ones
    return tuple(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def check_segfolder_layout(data_dir):
    """Raise ``DataError`` unless ``data_dir`` holds the folders ``images/`` and ``masks/``
    (:func:`data.seg_data.check_folders`)."""
    check_folders(data_dir, ("images", "masks"), LAYOUT, MAKE_SYNTHETIC, "shapes")


def stem(image_path):
    """The group of an image: its file name without the extension."""
    return os.path.splitext(os.path.basename(image_path))[0]


def find_segfolder_samples(data_dir):
    """Pair every image of ``<data_dir>/images`` with ``<data_dir>/masks/<stem>.png``.

    Returns:
        sorted list of ``(image_path, mask_path)``; hidden files and files Pillow has no extension for are
        ignored.

    Raises:
        DataError: a folder is missing or holds no images, two images share a stem, or an image has no
            mask; one line naming the files.
    """
    image_dir, mask_dir = os.path.join(data_dir, "images"), os.path.join(data_dir, "masks")
    check_segfolder_layout(data_dir)
    extensions = image_extensions()
    names = sorted(n for n in os.listdir(image_dir) if not n.startswith(".") and n.lower().endswith(extensions))
    if not names:
        raise DataError(f"no images in {image_dir}; expected {LAYOUT}")
    samples, seen = [], {}
    for name in names:
        key = stem(name)
        if key in seen:
            raise DataError(
                f"images {os.path.join(image_dir, seen[key])} and {os.path.join(image_dir, name)} share the stem "
                f"{key!r}, and so the mask {os.path.join(mask_dir, key + '.png')}; rename one"
            )
        seen[key] = name
        mask = os.path.join(mask_dir, key + ".png")
        if not os.path.isfile(mask):
            raise DataError(f"image {os.path.join(image_dir, name)} has no mask: expected {mask}")
        samples.append((os.path.join(image_dir, name), mask))
    return samples


def mask_decoder(num_classes, ignore_index):
    """The decoder of :class:`data.seg_data.SegmentationDataset` for ``K`` classes: binary masks for
    ``K = 1``, else :func:`data.seg_data.label_map` checking ``0..K-1`` and ``ignore_index``."""
    if num_classes == 1:
        return binary_mask
    return functools.partial(label_map, num_classes=num_classes, ignore_index=ignore_index)


def build_segfolder_datasets(args):
    """Find, pair and split the folder ``--data_dir``; returns :class:`data.seg_data.SegmentationData`.

    Raises:
        DataError: see :func:`find_segfolder_samples`, :func:`data.seg_data.split_groups` and
            :func:`data.seg_data.input_size`.
    """
    samples = find_segfolder_samples(args.data_dir)
    stems = split_groups(samples, args, stem, "images")
    size = input_size(samples, args, "images/")
    decode = mask_decoder(args.num_classes, args.ignore_index)

    def subset(split, train):
        keep = set(stems[split])
        return SegmentationDataset(
            [s for s in samples if stem(s[0]) in keep],
            size,
            decode,
            binary=args.num_classes == 1,
            train=train,
            augment=train and args.augment,
        )

    return SegmentationData(
        train=subset("train", True), val=subset("val", False), test=subset("test", False), input_size=size, groups=stems
    )

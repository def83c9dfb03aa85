"""Image-classification datasets: flags, config checks and train/val/test splits.

Every item is ``(image, label)``: ``image`` uint8 ``(C, H, W)``, values 0..255
(the device makes floats of it with ``--mean``/``--std``: :mod:`base.loop.input_stage`);
``label`` a Python ``int`` in ``[0, num_classes)`` (the default collate makes it int64).
The recipe of the training and evaluation crops is :mod:`data.transforms`.

* ``Digits``: scikit-learn's ``load_digits`` (1,797 real 8x8 scans, values
  0..16, shipped with scikit-learn: works offline). Shape (1, 8, 8).
* ``FashionMNIST`` / ``MNIST``: torchvision's IDX readers, files in
  ``<data_dir>/<Name>/raw/`` or directly in ``<data_dir>``. Shape (1, 28, 28).
* ``CIFAR10``: the official Python-pickle batches in ``<data_dir>/cifar-10-batches-py/``,
  read by torchvision (see :mod:`data.cifar`). Shape (3, 32, 32).
* ``ImageFolder``: ``<data_dir>/<class>/*.png``, or ``<data_dir>/train/<class>/``
  plus an optional ``<data_dir>/test/<class>/``; at least two classes; hidden files and
  folders (``.*``) are skipped; links are followed, loops refused, each real file read once
  (see :mod:`data.image_folder`). Shape (3, image_size, image_size).
* ``ImageCSV``: multi-label images listed in ``<data_dir>/labels.csv`` (``filename,<label_1>,...``, 0/1
  values; see :mod:`data.image_csv`), decoded, cropped and normalised as ImageFolder's; items are
  ``(image, float32 (K,) 0/1 target)`` and :attr:`ClassificationData.multilabel` is true. Shape
  (3, image_size, image_size).
* ``ELPV``: real electroluminescence images of solar cells, shipped by the
  ``elpv-dataset`` package (see :mod:`data.elpv`); a stratified 75/25
  train/test split as in the paper. Shape (1, image_size, image_size).
  :attr:`ClassificationData.groups` gives each cell's type, ``"mono"`` or ``"poly"``.

Splits are seeded permutations (``torch.Generator().manual_seed(seed)``).
"""

import dataclasses
import functools
import itertools
import os

import torch
from torch.utils.data import Dataset, Subset

from base.config.checks import check
from base.config.parse import path_arg, str2bool
from base.errors import DataError
from data import transforms
from data.augment import Augmented
from data.elpv import load_elpv
from data.image_csv import MultiLabelImageFiles, csv_path, load_image_csv
from data.image_folder import load_image_folder
from data.images import ImageFiles
from data.splits import kfold_indices, multilabel_strata

DATA_TYPES = ["Digits", "FashionMNIST", "MNIST", "CIFAR10", "ImageFolder", "ELPV", "ImageCSV"]
#: The --data_type values read from image files under --data_dir (RGB, decoded per item, random-resized crops).
FILE_TYPES = ("ImageFolder", "ImageCSV")
#: C of the images of each --data_type (ImageFolder: made RGB whatever the files hold), known without reading them.
CHANNELS = {"Digits": 1, "FashionMNIST": 1, "MNIST": 1, "CIFAR10": 3, "ImageFolder": 3, "ELPV": 1, "ImageCSV": 3}
FIXED_SIDES = {
    "Digits": 8,
    "FashionMNIST": 28,
    "MNIST": 28,
    "CIFAR10": 32,
}  # H = W of the datasets that ignore --image_size
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclasses.dataclass
class ClassificationData:
    """The splits and what a model needs to know; ``test`` is empty if ``--test_fraction 0``.

    ``groups`` maps a split name to one group name per sample of that split, in
    the split's order (e.g. ELPV's ``"mono"``/``"poly"`` cell types), for
    accuracy per group; empty for data without groups.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple  # (C, H, W) of one image
    class_names: list
    groups: dict = dataclasses.field(default_factory=dict)
    #: The training images read as evaluation reads them (no random op): a k-NN bank.
    plain_train: Dataset = None
    #: The evaluation pipeline as facts (:func:`data.transforms.describe_eval`) plus ``"backend"``, the library
    #: that resized (see :mod:`data.input_recipe`), for the model card.
    eval_transform: dict = dataclasses.field(default_factory=dict)
    #: The training images as stored, no transform (a ``Subset`` of :class:`InMemoryImages`), for
    #: --data_on_device, whose ops run on the device; None where images are decoded from files.
    stored_train: Dataset = None
    #: Multi-label data (``--data_type ImageCSV``): targets are float ``(K,)`` 0/1 vectors, not class indices.
    multilabel: bool = False
    #: The training split's targets in its order: int64 ``(n,)`` class indices, or float ``(n, K)`` 0/1 for
    #: multi-label data; what ``--class_weights auto`` and ``--sampler weighted`` count. None: not known.
    train_labels: torch.Tensor = None


def add_data_arguments(parser):
    """Add the ``data`` flag group to ``parser``."""
    data = parser.add_argument_group("data")
    data.add_argument("--data_type", choices=DATA_TYPES, default="Digits", help="which dataset")
    data.add_argument("--data_dir", type=path_arg, default=None, help="folder of the data (not needed for Digits)")
    data.add_argument(
        "--download",
        type=str2bool,
        nargs="?",
        const=True,
        default=False,
        help="let torchvision download FashionMNIST/MNIST/CIFAR10 into --data_dir if missing",
    )
    data.add_argument(
        "--val_fraction",
        type=float,
        default=0.1,
        help="share of the train pool held out for validation (> 0: it picks the best checkpoint)",
    )
    data.add_argument(
        "--test_fraction", type=float, default=0.2, help="share held out for test when there is no official test split"
    )
    data.add_argument(
        "--train_val_sample_rate", type=float, default=1.0, help="keep this share of the train+val pool (fast runs)"
    )
    data.add_argument(
        "--test_sample_rate", type=float, default=1.0, help="keep this share of the test split (fast runs)"
    )
    data.add_argument(
        "--image_size", type=int, default=32, help="ImageFolder, ImageCSV and ELPV images are resized to this"
    )
    recipe = parser.add_argument_group("input recipe")
    recipe.add_argument(
        "--train_crop",
        choices=list(transforms.CROPS),
        default=None,
        help="rrc: random-resized crop to train, resize the shorter side to image_size / crop_pct "
        "and centre-crop to evaluate (timm, torchvision references); squash: resize to a "
        "square, aspect ratio not kept; default: rrc for ImageFolder and ImageCSV, squash otherwise",
    )
    recipe.add_argument(
        "--scale",
        type=float,
        nargs=2,
        default=[0.08, 1.0],
        metavar=("LOW", "HIGH"),
        help="rrc: share of the image's area a crop covers (timm's default)",
    )
    recipe.add_argument(
        "--ratio",
        type=float,
        nargs=2,
        default=[3 / 4, 4 / 3],
        metavar=("LOW", "HIGH"),
        help="rrc: range of a crop's aspect ratio, width / height (timm's default)",
    )
    recipe.add_argument(
        "--crop_pct",
        type=float,
        default=0.875,
        help="rrc: centre crop's share of the resized side at evaluation (224 of 256)",
    )
    data.add_argument(
        "--elpv_task",
        choices=["4class", "binary"],
        default="4class",
        help="ELPV labels: the 4 defect probabilities, or defective (p >= 0.5) vs functional",
    )


def check_data_config(args):
    """Raise ``ConfigError`` naming the first data flag that breaks a rule.

    ``--val_fraction`` must be > 0; the model's own minimum image size is checked by the
    trainer (see :func:`image_side`).

    Raises:
        ConfigError: a flag value breaks a rule (exit status 2).
        DataError: ``--data_dir`` is missing (see :func:`check_data_dir`).
    """
    check(args.data_type in DATA_TYPES, "data_type", args.data_type, f"must be one of {DATA_TYPES}")
    for flag in ("train_val_sample_rate", "test_sample_rate"):
        value = getattr(args, flag)
        check(0 < value <= 1, flag, value, "must be in (0, 1]")
    # Without validation no checkpoint is "best" and early stopping has nothing to watch.
    check(
        args.val_fraction > 0,
        "val_fraction",
        args.val_fraction,
        "must be > 0: validation picks the best checkpoint and drives early stopping",
    )
    check(args.val_fraction < 1, "val_fraction", args.val_fraction, "must be < 1")
    check(0 <= args.test_fraction < 1, "test_fraction", args.test_fraction, "must be in [0, 1)")
    check(
        args.val_fraction + args.test_fraction < 1,
        "val_fraction",
        args.val_fraction,
        f"--val_fraction + --test_fraction ({args.test_fraction}) must be < 1 to leave training data",
    )
    check(args.image_size > 0, "image_size", args.image_size, "must be > 0")
    args.train_crop = train_crop(args)
    check(0 < args.scale[0] <= args.scale[1] <= 1, "scale", args.scale, "must be LOW HIGH with 0 < LOW <= HIGH <= 1")
    check(0 < args.ratio[0] <= args.ratio[1], "ratio", args.ratio, "must be LOW HIGH with 0 < LOW <= HIGH")
    check(0 < args.crop_pct <= 1, "crop_pct", args.crop_pct, "must be in (0, 1]")
    channels = data_channels(args.data_type)
    for flag in ("mean", "std"):  # (resolved by TrainerBase.check_config when unset)
        values = getattr(args, flag)
        check(
            values is None or len(values) in (1, channels),
            flag,
            values,
            f"--data_type {args.data_type} has {channels} channel(s): give 1 value or {channels}",
        )
    check_data_dir(args)


def train_crop(args):
    """``--train_crop``, or when unset the data's recipe: ``rrc`` for file images (``ImageFolder``, ``ImageCSV``),
    ``squash`` for the sets of one fixed size, where a crop would only lose pixels."""
    if args.train_crop is not None:
        return args.train_crop
    return "rrc" if args.data_type in FILE_TYPES else "squash"


def default_statistics(args):
    """``(mean, std)`` for ``--data_type``: ImageNet's for RGB file images (``ImageFolder``, ``ImageCSV``, where
    pretrained weights expect them), 0.5 / 0.5 for the others (x / 255 mapped to [-1, 1], as before the flags
    existed)."""
    if args.data_type in FILE_TYPES:
        return list(transforms.IMAGENET_MEAN), list(transforms.IMAGENET_STD)
    return [0.5], [0.5]


def check_data_dir(args):
    """Raise ``DataError`` unless ``--data_dir`` is there for a ``--data_type`` read from a folder.

    A missing data folder (not given, no such folder, an empty ImageFolder) is bad input found
    at run time, exit status 1, as for every task (see :func:`data.carvana.check_layout`); cheap
    (no file is read), so a trainer refuses before it creates a run folder. With ``--download
    true`` (MNIST, FashionMNIST, CIFAR10) the folder may not exist yet: it is made.
    """
    if args.data_type in ("Digits", "ELPV"):  # shipped with a package: no folder
        return
    downloadable = args.data_type not in FILE_TYPES
    if not args.data_dir:
        will = " (or, with --download true, will hold)" if downloadable else ""
        raise DataError(f"--data_type {args.data_type} needs --data_dir, a folder that holds{will} its files")
    if args.download and downloadable:
        return
    if not os.path.isdir(args.data_dir):
        hint = " (pass --download true to create it and fetch the files)" if downloadable else ""
        problem = "not a folder" if os.path.exists(args.data_dir) else f"no such folder{hint}"
        raise DataError(f"--data_dir {args.data_dir}: {problem}")
    if args.data_type == "ImageCSV" and not os.path.isfile(csv_path(args.data_dir)):
        raise DataError(
            f"{csv_path(args.data_dir)}: no such file; --data_type ImageCSV reads its labels from labels.csv "
            f"in --data_dir (see data.image_csv)"
        )
    if not downloadable and not os.listdir(args.data_dir):
        raise DataError(f"--data_dir {args.data_dir}: the folder is empty; expected <class>/ folders of images")


def image_side(args):
    """``(flag, value, side)``: the flag that fixes the side of the square images the model gets,
    that flag's value, and the side in pixels.

    Digits (8) and (Fashion)MNIST (28) have a fixed size, named by ``--data_type``;
    ImageFolder, ImageCSV and ELPV images are resized to ``--image_size``.
    """
    if args.data_type in FIXED_SIDES:
        return "data_type", args.data_type, FIXED_SIDES[args.data_type]
    return "image_size", args.image_size, args.image_size


def data_channels(data_type):
    """``C`` of the images that ``--data_type`` gives (:attr:`ClassificationData.input_shape`'s first entry).

    Known without reading the data, so a model's channel count is checked before a run starts.
    """
    return CHANNELS[data_type]


def build_classification_datasets(args, ops=()):
    """Build the splits chosen by ``args`` (see the module docstring).

    The training split goes through :func:`data.transforms.train_transform` (the crop of
    ``--train_crop``, then ``ops``, e.g. :func:`data.transforms.augment_ops`); validation and test
    through :func:`data.transforms.eval_transform`. Items are uint8 ``(C, H, W)``.

    Returns:
        :class:`ClassificationData`.

    Raises:
        DataError: files are missing or unreadable, or a folder holds no images;
            the message names the folder or file; an ImageFolder has fewer than two
            classes; the train+val pool is too small to hold out a validation sample.
            Images in an ImageFolder are
            decoded lazily, so a broken image raises ``DataError`` when read.
    """
    pool_groups = test_groups = None  # one group name per sample of pool / test, where the data has groups
    flag, value, side = image_side(args)
    crop = train_crop(args)
    eval_tf = transforms.eval_transform(crop, side, args.crop_pct)
    train_tf = transforms.train_transform(crop, side, args.scale, args.ratio, ops)
    if args.data_type == "Digits":
        pool, test, names = _load_digits(), None, [str(d) for d in range(10)]
    elif args.data_type == "ELPV":
        pool_x, pool_y, pool_groups, test_x, test_y, test_groups, names = load_elpv(
            args.elpv_task, args.image_size, args.seed
        )
        pool, test = InMemoryImages(pool_x, pool_y), InMemoryImages(test_x, test_y)
    elif args.data_type == "ImageFolder":
        pool, test, names = load_image_folder(args.data_dir, eval_tf)
    elif args.data_type == "ImageCSV":
        (pool, names), test = load_image_csv(args.data_dir, eval_tf), None
    elif args.data_type == "CIFAR10":
        from data.cifar import load_cifar10

        *pool, names = load_cifar10(args.data_dir, True, args.download)
        pool, test = InMemoryImages(*pool), InMemoryImages(*load_cifar10(args.data_dir, False, False)[:2])
    else:
        pool, names = _load_mnist(args.data_type, args.data_dir, True, args.download)
        test, _ = _load_mnist(args.data_type, args.data_dir, False, args.download)
    # Not pool[0].shape: a broken first image should fail in the loader, not here.
    channels = pool.images.shape[1] if isinstance(pool, InMemoryImages) else 3
    train, val, test = _split(pool, test, args)
    train_labels = split_labels(train)  # before train is rewrapped below: a Subset of the pool
    groups = {}
    if pool_groups is not None:
        # The splits are Subsets with subsampled, sorted indices: map each through its own.
        groups = {
            name: [(pool_groups if split.dataset is pool else test_groups)[i] for i in split.indices]
            for name, split in (("train", train), ("val", val), ("test", test))
        }
    plain_train = stored_train = train
    if isinstance(pool, ImageFiles):  # decoded per item: the training pipeline runs on each decoded file
        train, stored_train = Subset(type(pool)(pool.samples, train_tf, pool.mode), train.indices), None
    else:  # in memory, already uint8 at their size: transforms only where they change something
        if crop != "squash" or ops or pool.images.shape[-1] != side:
            train = Augmented(train, train_tf)
        if crop == "squash" and pool.images.shape[-1] != side:  # only the transform makes the model's size
            stored_train = None
        if crop != "squash" or pool.images.shape[-1] != side:
            plain_train, val, test = (Augmented(split, eval_tf) for split in (plain_train, val, test))
    return ClassificationData(
        train=train,
        val=val,
        test=test,
        num_classes=len(names),
        input_shape=(channels, side, side),
        class_names=list(names),
        groups=groups,
        plain_train=plain_train,
        stored_train=stored_train,
        eval_transform={
            **transforms.describe_eval(crop, side, args.crop_pct),
            # every pipeline resizes uint8 tensors (data.transforms)
            "backend": "torch",
        },
        multilabel=isinstance(pool, MultiLabelImageFiles),
        train_labels=train_labels,
    )


def split_labels(split):
    """The targets of ``split`` (a ``Subset`` of a pool), in its order: see :func:`pool_labels`."""
    return pool_labels(split.dataset, split.indices)


def pool_labels(pool, indices):
    """The targets of ``pool``'s samples ``indices``, in that order, read from the stored labels (no image
    decoded): float32 ``(n, K)`` 0/1 for multi-label data, else int64 ``(n,)`` class indices.

    ``pool``: :class:`InMemoryImages`, :class:`data.images.ImageFiles` or
    :class:`data.image_csv.MultiLabelImageFiles`.
    """
    indices = list(indices)
    if isinstance(pool, MultiLabelImageFiles):
        return pool.targets(indices)
    if isinstance(pool, InMemoryImages):
        return pool.labels[torch.as_tensor(indices, dtype=torch.long)].clone()
    return torch.tensor([int(pool.samples[i][1]) for i in indices], dtype=torch.long)


def _split(pool, test, args):
    """Split ``pool`` into train/val (and test when ``test`` is None); subsample.

    The draws always happen in the same order, so one seed fixes every split.
    A prefix of a random permutation is a random subset, so a smaller sample
    rate keeps a subset of what a larger one keeps.
    """
    g = torch.Generator().manual_seed(args.seed)
    pool_idx = torch.randperm(len(pool), generator=g).tolist()
    source = f"--data_dir {args.data_dir}" if args.data_type in FILE_TYPES else f"--data_type {args.data_type}"
    if test is None:
        n_test = _test_count(args.test_fraction, len(pool))
        if args.test_fraction > 0 and n_test < 1:  # else the run trains, then fails on an empty test split
            need = next(
                n
                for n in itertools.count(max(3, int(0.5 / args.test_fraction)))
                if _test_count(args.test_fraction, n) >= 1
            )
            raise DataError(
                f"{source}: --test_fraction {args.test_fraction} of its {len(pool)} images holds no "
                f"test image; the test split needs at least {need} images in all "
                f"(or pass --test_fraction 0 to train without a test)"
            )
        test, test_idx, pool_idx = pool, pool_idx[:n_test], pool_idx[n_test:]
    else:
        test_idx = torch.randperm(len(test), generator=g).tolist()
    pool_idx = pool_idx[: _keep(args.train_val_sample_rate, len(pool_idx))]
    test_idx = test_idx[: _keep(args.test_sample_rate, len(test_idx))]
    if args.folds:  # fold --fold of the kept pool validates: --val_fraction plays no part
        train_idx, val_idx = _fold(pool, pool_idx, args, source)
        return Subset(pool, train_idx), Subset(pool, val_idx), Subset(test, sorted(test_idx))
    # At least one validation sample (a tiny pool must not round it away: validation picks
    # the best checkpoint) and at least one training sample, whatever the fraction.
    n_val = min(max(1, round(args.val_fraction * len(pool_idx))), len(pool_idx) - 1)
    if n_val < 1:
        raise DataError(
            f"{source}: --val_fraction {args.val_fraction}: the train+val pool holds {len(pool_idx)} sample "
            f"after --train_val_sample_rate {args.train_val_sample_rate}; "
            f"need 2 (1 to train, 1 to validate)"
        )
    # Sorted indices read files in folder order, which is kinder to disks.
    return (
        Subset(pool, sorted(pool_idx[n_val:])),
        Subset(pool, sorted(pool_idx[:n_val])),
        Subset(test, sorted(test_idx)),
    )


def _fold(pool, pool_idx, args, source):
    """``(train, val)`` sorted pool indices: fold ``--fold`` of the stratified ``--folds`` split of ``pool_idx``.

    Multi-label data is stratified by each sample's rarest positive label (:func:`data.splits.multilabel_strata`).

    The split is of the sorted indices, so it depends on which samples the pool keeps and ``--seed``,
    not on the order they were drawn in.

    Raises:
        DataError: the pool is too small for ``--folds`` (names the flag and the count).
    """
    kept = sorted(pool_idx)
    labels = pool_labels(pool, kept)
    labels = multilabel_strata(labels) if labels.dim() == 2 else labels.tolist()
    if len(kept) < args.folds:
        raise DataError(
            f"{source}: --folds {args.folds}: the train+val pool holds {len(kept)} samples after "
            f"--train_val_sample_rate {args.train_val_sample_rate}; need at least one per fold"
        )
    try:
        rest, held = kfold_indices(labels, args.folds, args.fold, args.seed)
    except ValueError as exc:
        raise DataError(f"{source}: --folds {args.folds}: {exc}") from None
    return [kept[j] for j in rest], [kept[j] for j in held]


def _test_count(fraction, n):
    """Test images held out of a pool of ``n`` by ``--test_fraction``: ``round(fraction * n)``, leaving 2 to train
    and validate on (0 when ``n`` is too small)."""
    return max(0, min(round(fraction * n), n - 2))


def _keep(rate, n):
    """How many of ``n`` items a sample rate keeps: ``round(rate * n)``, at least 1."""
    return min(n, max(1, round(rate * n)))


class InMemoryImages(Dataset):
    """Images held as one uint8 tensor; items are views of it, normalised on the device.

    Args:
        images: uint8 tensor (N, C, H, W), values 0..255.
        labels: integer tensor (N,).

    Items are ``(uint8 (C, H, W), int label)``. :meth:`__getitems__` fetches a
    whole batch with one indexing op (the DataLoader calls it when present).
    """

    #: A batch is fetched with one indexing op and draws no random numbers (see base.loop.state.SeededSamples).
    fetches_batches = True

    def __init__(self, images, labels):
        self.images, self.labels = images, labels.long()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return self.images[index], int(self.labels[index])

    def __getitems__(self, indices):
        """``[(uint8 (C, H, W), int label)]`` for ``indices``, gathered with one indexing op per tensor."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self.images[index].unbind(0), self.labels[index].tolist()))

    def tensors(self, indices=None):
        """``(uint8 (n, C, H, W), int64 (n,))`` of ``indices`` (all when None), for upload to a device."""
        if indices is None:
            return self.images, self.labels
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.images[index], self.labels[index]


def digits_arrays():
    """scikit-learn's 1,797 8x8 digits: ``(images uint8 (1797, 8, 8) in 0..16, labels int64 (1797,))``.

    Read straight from the ``digits.csv.gz`` that scikit-learn ships (rows of 64
    pixels then the label, the file ``sklearn.datasets.load_digits`` parses):
    importing scikit-learn itself costs about a second. Falls back to
    ``load_digits`` if the file is not where scikit-learn keeps it.

    Raises:
        DataError: scikit-learn is not installed.
    """
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None:
        raise DataError("--data_type Digits needs scikit-learn (its bundled digits): pip install scikit-learn")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    if os.path.isfile(path):
        table = np.loadtxt(path, delimiter=",")
        images, labels = table[:, :-1].reshape(-1, 8, 8), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, labels = digits.images, digits.target
    return images.astype(np.uint8), labels.astype(np.int64)


def _load_digits():
    """scikit-learn's 8x8 digits as :class:`InMemoryImages` (values 0..16)."""
    images, labels = digits_arrays()
    # 0..16 scaled to 0..255 and rounded (16 -> 255, 8 -> 128): within half a grey level of x / 16,
    # so every source is uint8 0..255 and one rule (x / 255) makes floats of it.
    pixels = torch.round(torch.from_numpy(images).unsqueeze(1).float() * (255 / 16)).to(torch.uint8)
    return InMemoryImages(pixels, torch.from_numpy(labels))


class _FlatRoot:
    """Mixin: the four raw IDX files lie directly in ``root``, not ``root/<Name>/raw``."""

    @property
    def raw_folder(self):
        return self.root

    @property
    def processed_folder(self):
        # torchvision derives this from the class name; keep it inside root.
        return os.path.join(self.root, "processed")


@functools.cache
def _flat_class(name):
    """torchvision's ``MNIST`` / ``FashionMNIST`` reading its files from ``root`` itself (built on first use)."""
    import torchvision

    return type(f"Flat{name}", (_FlatRoot, getattr(torchvision.datasets, name)), {})


def _load_mnist(name, data_dir, train, download):
    """Read one split of MNIST or FashionMNIST into :class:`InMemoryImages`.

    Returns:
        ``(dataset, class_names)``; images are uint8 (N, 1, 28, 28) scaled by 255.

    Raises:
        DataError: files missing (names both folders looked in and the four
            files), the download failed, or a file is not a valid IDX file.
    """
    import torchvision  # here, not at import: scripts start ~1 s faster without it

    standard_raw = os.path.join(data_dir, name, "raw")
    flat = all(os.path.isfile(os.path.join(data_dir, f)) for f in IDX_FILES)
    cls = _flat_class(name) if flat else getattr(torchvision.datasets, name)
    raw = data_dir if flat else standard_raw
    try:
        ds = cls(root=data_dir, train=train, download=download and not flat)
    # torchvision checks IDX headers with assert and reports missing files,
    # failed downloads and short files as RuntimeError.
    except (AssertionError, KeyError, OSError, RuntimeError, TypeError, ValueError) as exc:
        missing = [f for f in IDX_FILES if not os.path.isfile(os.path.join(raw, f))]
        if missing and download:
            raise DataError(f"could not download {name} into {raw}: {exc}") from exc
        if missing:
            gz = [
                f
                for f in missing
                if os.path.isfile(os.path.join(data_dir, f + ".gz"))
                or os.path.isfile(os.path.join(standard_raw, f + ".gz"))
            ]
            hint = f" (found {gz[0]}.gz: decompress it with gunzip)" if gz else ""
            raise DataError(
                f"{name} files not found in {standard_raw} nor in {data_dir}: expected the "
                f"uncompressed files {', '.join(IDX_FILES)}{hint}; pass --download true "
                f"to fetch them"
            ) from exc
        raise DataError(f"cannot read {name} IDX files in {raw}: {exc!r}") from exc
    if len(ds.data) != len(ds.targets) or len(ds.data) == 0:
        raise DataError(
            f"{name} in {raw}: {len(ds.data)} images but {len(ds.targets)} labels "
            f"in the {'train' if train else 't10k'} files; expected equal, non-zero counts"
        )
    if int(ds.targets.max()) >= len(ds.classes):
        raise DataError(
            f"{name} in {raw}: label {int(ds.targets.max())} found, expected labels 0..{len(ds.classes) - 1}"
        )
    return InMemoryImages(ds.data.unsqueeze(1), ds.targets), list(ds.classes)

"""The standard image-classification recipe on uint8 pixels, built from torchvision transforms v2.

Training (``--train_crop rrc``): Inception-style random-resized crop (Szegedy et al.
2015, "Going deeper with convolutions"; ``--scale`` and ``--ratio`` default to timm's
0.08-1 and 3/4-4/3), then flips and RandAugment where a task asks for them.
Evaluation: the shorter side resized to ``floor(image_size / --crop_pct)`` (timm's
``scale_size``; ``--crop_pct`` 0.875 as in timm and torchvision's references), then a
centre crop of ``image_size``. ``--train_crop squash`` is the recipe of sets with one
fixed size: every image resized to ``image_size`` x ``image_size`` in both, aspect
ratio not kept (images already that size are left alone).

Each pipeline takes a PIL image or a uint8 ``(C, H, W)`` tensor and starts with
:func:`to_uint8`, so every op runs on uint8 tensors: a decoded file and the same pixels
held in memory give the same result, and :func:`apply_described` (what a predictor runs
on a tensor) repeats :func:`eval_transform` exactly (Pillow's resize rounds differently
from torch's, by up to one grey level). Datasets hand out uint8 tensors and the device
does the float conversion and ``--mean``/``--std`` (:mod:`base.loop.input_stage`).
"""

import math

import torch

#: ImageNet's per-channel statistics of [0, 1] pixels (timm.data.constants.IMAGENET_DEFAULT_MEAN / _STD).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROPS = ("rrc", "squash")


def eval_resize_side(image_size, crop_pct):
    """Side the shorter image side is resized to before the centre crop: ``floor(image_size / crop_pct)``
    (timm's ``transforms_factory``: 224 / 0.875 = 256)."""
    return math.floor(image_size / crop_pct)


def to_uint8():
    """The first op of every pipeline: a PIL image to uint8 ``(C, H, W)``; a tensor passes as it is."""
    from torchvision.transforms import v2  # here, not at import: scripts start faster without torchvision

    return v2.PILToTensor()


def augment_ops(hflip=0.0, vflip=0.0, randaugment=None):
    """Random flips with probabilities ``hflip`` / ``vflip`` (timm's ``--hflip`` / ``--vflip``), then
    RandAugment with ``randaugment = (N, M)`` (Cubuk et al. 2020, "RandAugment: Practical automated data
    augmentation with a reduced search space"); a list of v2 ops, empty when all are off."""
    from torchvision.transforms import v2

    ops = [v2.RandomHorizontalFlip(hflip)] if hflip else []
    ops += [v2.RandomVerticalFlip(vflip)] if vflip else []
    ops += [v2.RandAugment(num_ops=randaugment[0], magnitude=randaugment[1])] if randaugment else []
    return ops


def train_transform(crop, image_size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), ops=()):
    """The training pipeline: the crop of ``crop`` (module docstring), then ``ops`` (see :func:`augment_ops`).

    Returns:
        a v2 ``Compose`` from a PIL image or uint8 ``(C, h, w)`` to uint8 ``(C, image_size, image_size)``.
    """
    from torchvision.transforms import v2

    first = (
        v2.RandomResizedCrop(image_size, scale=tuple(scale), ratio=tuple(ratio), antialias=True)
        if crop == "rrc"
        else _Squash(image_size)
    )
    return v2.Compose([to_uint8(), first, *ops])


def eval_transform(crop, image_size, crop_pct=0.875):
    """The evaluation pipeline (module docstring), deterministic: :func:`described_transform` of
    :func:`describe_eval`, so a model card's description rebuilds the very same ops.

    Returns:
        a v2 ``Compose`` from a PIL image or uint8 ``(C, h, w)`` to uint8 ``(C, image_size, image_size)``.
    """
    return described_transform(describe_eval(crop, image_size, crop_pct))


def describe_eval(crop, image_size, crop_pct=0.875):
    """The evaluation pipeline as JSON-able facts (for a model card): enough to rebuild it without this code.

    Returns:
        ``{"resize": "shorter_side", "resize_to": int, "center_crop": int, "interpolation": "bilinear",
        "antialias": True}`` for ``rrc``, or ``{"resize": "square", "resize_to": image_size, ...}`` for ``squash``.
    """
    if crop == "rrc":
        return {
            "resize": "shorter_side",
            "resize_to": eval_resize_side(image_size, crop_pct),
            "center_crop": image_size,
            "interpolation": "bilinear",
            "antialias": True,
        }
    return {
        "resize": "square",
        "resize_to": image_size,
        "center_crop": None,
        "interpolation": "bilinear",
        "antialias": True,
    }


def describe_resize(size):
    """Resizing every image to exactly ``size = (H, W)`` (aspect ratio not kept), as :func:`describe_eval`
    describes its recipes: Carvana's evaluation (:func:`data.carvana.joint_transform`)."""
    return {
        "resize": "exact",
        "resize_to": [int(n) for n in size],
        "center_crop": None,
        "interpolation": "bilinear",
        "antialias": True,
    }


def described_transform(described):
    """The v2 pipeline a :func:`describe_eval` / :func:`describe_resize` description stands for.

    ``"shorter_side"``: resize the shorter side to ``resize_to``; ``"square"``: resize to
    ``resize_to`` x ``resize_to`` unless already that size; ``"exact"``: resize to ``resize_to = [H, W]``;
    then the centre crop ``center_crop`` if not None. Bilinear, antialiased. Other keys (e.g.
    ``"backend"``) are facts for readers and change nothing here.

    Returns:
        a v2 ``Compose`` from a PIL image or uint8 ``(C, h, w)`` (or a v2 ``(Image, Mask)`` pair) to uint8
        ``(C, H, W)``; a PIL image is made a tensor first, so files and in-memory images are resized by the
        same (torchvision's tensor) kernels.

    Raises:
        ValueError: ``described["resize"]`` is none of ``"shorter_side"``, ``"square"``, ``"exact"``.
    """
    from torchvision.transforms import v2

    kind, side = described.get("resize"), described.get("resize_to")
    if kind == "shorter_side":
        ops = [v2.Resize(int(side), antialias=True)]
    elif kind == "square":
        ops = [_Squash(int(side))]
    elif kind == "exact":
        ops = [v2.Resize([int(n) for n in side], antialias=True)]
    else:
        raise ValueError(
            f"unknown resize {kind!r} in the model card's transform (expected 'shorter_side', 'square' or 'exact')"
        )
    if described.get("center_crop"):
        ops.append(v2.CenterCrop(int(described["center_crop"])))
    return v2.Compose([to_uint8(), *ops])


def apply_described(pixels, described):
    """Apply a :func:`describe_eval` description to uint8 ``(C, h, w)`` ``pixels`` (or a PIL image); returns
    uint8 ``(C, H, W)``. See :func:`described_transform`, which raises ``ValueError`` for an unknown resize."""
    return described_transform(described)(pixels)


class _Squash(torch.nn.Module):
    """Resize to ``side`` x ``side`` (antialiased, aspect ratio not kept); an image already that size is left alone."""

    def __init__(self, side):
        super().__init__()
        self.side = side

    def forward(self, image):
        from torchvision.transforms import v2

        size = image.size[::-1] if hasattr(image, "size") and not torch.is_tensor(image) else tuple(image.shape[-2:])
        if tuple(size) == (self.side, self.side):
            return image
        return v2.functional.resize(image, [self.side, self.side], antialias=True)

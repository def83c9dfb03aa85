"""Decoding image files with errors that name the file, into one 8-bit picture whatever the file's format."""

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from base.errors import BadImageError

# Integer modes wider than 8 bits: 16-bit PNG/TIFF open as "I;16*" (or "I" in some Pillow versions).
_WIDE_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
_MAX_16BIT = 65535


def to_8bit(image, mode="RGB", path="", labels=False):
    """``image`` as the 8-bit ``mode`` (``"RGB"`` or ``"L"``) picture a viewer would show.

    The one conversion every reader here uses (:func:`read_image`, so :class:`ImageFiles`,
    :func:`image_file_to_input` and the segmentation data), so training and prediction see the
    same pixels. Rules, applied in order:

    * EXIF orientation is applied (``PIL.ImageOps.exif_transpose``): a phone photo stored
      sideways with an orientation tag comes out upright, as viewers show it.
    * 16-bit integers (modes ``I;16``, ``I;16B``, ...) are scaled by ``255 / 65535`` and
      rounded: the format's full range maps to 0..255 (``v * 257`` becomes ``v``), whatever bit
      depth the sensor used (a 12-bit image stored in 16 bits comes out dark: 4095 -> 16); the
      model sees 256 levels, as for 8-bit files.
    * 32-bit integers (mode ``I``, which is how some Pillow versions open 16-bit PNGs) are taken
      as 16-bit values and scaled the same way; values outside 0..65535 are an error.
    * 32-bit floats (mode ``F``) are taken as [0, 1] and scaled by 255; values outside [0, 1]
      or not finite are an error (their scale cannot be guessed).
    * Alpha is dropped, keeping the colour stored under transparent pixels, as torchvision's
      ``ImageFolder`` loader does (modes ``LA``, ``RGBA``, ``P`` with transparency, ...).
    * Everything else (``1``, ``P``, ``CMYK``, ``YCbCr``, ...) goes through Pillow's ``convert``;
      ``"L"`` is made from RGB with ITU-R 601-2 luma (``L = 0.299 R + 0.587 G + 0.114 B``).
    * ``labels=True`` (masks, label maps): 16-bit, 32-bit and float values are labels, kept as
      they are, not scaled (a 0/1 mask stays 0/1); they must be whole numbers in 0..255.

    Args:
        image: a PIL image of any mode; read fully (``load``) here.
        mode: ``"RGB"`` or ``"L"`` (any mode Pillow converts 8-bit RGB/L into also works).
        path: the file, for error messages.
        labels: pixel values are labels, not intensities (see above).

    Returns:
        a new PIL image of ``mode`` (uint8 pixels), the same size as ``image`` after orientation.

    Raises:
        BadImageError: 32-bit pixels, or labels, outside the ranges above; the message names ``path``
            and the range found.
        OSError, ValueError: Pillow cannot decode or convert the image (:func:`read_image` reports them).
    """
    image = ImageOps.exif_transpose(image)  # loads the pixels; a copy when there is nothing to turn
    if image.mode in _WIDE_INT_MODES or image.mode == "F":
        pixels = np.asarray(image).astype(np.float64)  # (H, W): uint16, int32 or float32 values
        low, high = (float(pixels.min()), float(pixels.max())) if pixels.size else (0.0, 0.0)
        if labels:
            if not (np.isfinite(pixels).all() and 0 <= low and high <= 255 and (pixels == np.rint(pixels)).all()):
                raise BadImageError(path, f"label pixels span {low:g}..{high:g}; expected whole numbers 0..255")
            scale = 1.0
        elif image.mode == "F":
            if not (np.isfinite(pixels).all() and 0 <= low and high <= 1):
                raise BadImageError(
                    path,
                    f"32-bit float pixels span {low:g}..{high:g}; expected [0, 1] "
                    f"(save them scaled to [0, 1], or as 8- or 16-bit integers)",
                )
            scale = 255.0
        else:
            if low < 0 or high > _MAX_16BIT:
                raise BadImageError(
                    path,
                    f"32-bit integer pixels span {low:g}..{high:g}; expected 16-bit "
                    f"values 0..{_MAX_16BIT} (save the image as 8- or 16-bit)",
                )
            scale = 255.0 / _MAX_16BIT
        image = Image.fromarray(np.rint(pixels * scale).astype(np.uint8))  # 2-D uint8: mode "L"
    elif image.mode not in ("1", "L", "RGB") and mode != image.mode:
        # Through RGB: drops alpha and palette transparency, and Pillow has no direct CMYK -> L.
        image = image.convert("RGB")
    return image if image.mode == mode else image.convert(mode)


def read_image(path, mode="RGB", labels=False):
    """Decode ``path`` fully into an 8-bit PIL image of ``mode`` (``"RGB"``, ``"L"`` for masks).

    Any mode Pillow reads is converted by :func:`to_8bit` (EXIF orientation applied,
    16-bit and float images scaled, alpha dropped; with ``labels=True``, as masks should be
    read, wide values are kept instead of scaled). Pillow's global
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone, so a truncated file is an error,
    not a silently grey image.

    Raises:
        BadImageError: the file is missing, empty, not an image or truncated, or holds
            pixels of unknown scale or labels above 255 (see :func:`to_8bit`); the message names ``path``.
    """
    try:
        with Image.open(path) as image:
            return to_8bit(image, mode, str(path), labels)  # loads every pixel: truncation shows here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(path, str(exc) or type(exc).__name__) from None


def image_file_to_input(path, recipe):
    """One image file as the uint8 pixels the model's evaluation split holds, made from a model card's recipe.

    Decoded by :func:`read_image` as ``recipe["color"]`` (``"L"`` or ``"RGB"``), then resized and
    cropped by :func:`data.transforms.described_transform` of ``recipe["transform"]`` on the uint8
    tensor, as every evaluation split does. The float conversion and ``mean``/``std`` are the
    device's: pass the result to :class:`base.loop.input_stage.InputStage` built with the recipe's statistics,
    as evaluation does, so a prediction and an evaluation of the same file get the same input.

    Args:
        path: an image file PIL can read (any size, any mode: see :func:`to_8bit`).
        recipe: a card's input recipe (:func:`data.input_recipe.card_input`).

    Returns:
        uint8 ``(C, H, W)``, ``C`` 1 for ``"L"``, 3 for ``"RGB"``.

    Raises:
        BadImageError: ``path`` is missing, empty, not an image or truncated, or its 32-bit pixels
            have no known scale; the message names it.
        ValueError: the recipe's resize is unknown (see :func:`data.transforms.described_transform`).
    """
    return image_to_input(read_image(path, recipe["color"]), recipe["transform"])


def image_to_input(image, transform):
    """A decoded 8-bit PIL ``image`` resized and cropped by a card's ``transform`` (see :func:`image_file_to_input`).

    Returns:
        uint8 ``(C, H, W)``.

    Raises:
        ValueError: unknown resize (see :func:`data.transforms.described_transform`).
    """
    from data.transforms import described_transform

    return described_transform(transform)(image)  # (a tensor first: torchvision's kernels resize it)


class ImageFiles(Dataset):
    """Images decoded from files on each access, any mode made 8-bit RGB (or ``"L"``) by :func:`to_8bit`.

    Args:
        samples: list of ``(path, label)``.
        transform: a v2 pipeline from a PIL image to uint8 ``(C, H, W)`` (see :mod:`data.transforms`);
            it runs in the DataLoader worker, on uint8 pixels.
        mode: ``"RGB"`` (C = 3) or ``"L"`` (C = 1).

    Items are ``(uint8 (C, H, W), int label)``; the device normalises them (:mod:`base.loop.input_stage`).

    Raises:
        BadImageError: ``"cannot read image <path>: <reason>"`` for a file PIL cannot
            decode (empty, not an image, truncated). The message survives a
            DataLoader worker, which re-raises it with the worker's traceback.
    """

    #: Decodes a file per item: a CUDA run with --num_workers 0 is warned (see base.trainer).
    reads_files = True

    def __init__(self, samples, transform, mode="RGB"):
        self.samples, self.transform, self.mode = list(samples), transform, mode

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return self.transform(read_image(path, self.mode)), int(label)

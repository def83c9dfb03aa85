"""Decoding image files with errors that name the file."""
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from base.errors import BadImageError


def read_image(path, mode="RGB"):
    """Decode ``path`` fully into a PIL image of ``mode`` (``"RGB"``, ``"L"`` for masks).

    Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone, so a
    truncated file is an error, not a silently grey image.

    Raises:
        BadImageError: the file is missing, empty, not an image or truncated;
            the message names ``path``.
    """
    try:
        with Image.open(path) as image:
            return image.convert(mode)  # convert() forces the full decode: truncation shows here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise BadImageError(path, str(exc) or type(exc).__name__) from None


def image_file_to_input(path, input_shape):
    """One image file as model input, made the way the classification datasets make theirs.

    Decoded as ``"L"`` (``C`` = 1) or ``"RGB"`` (``C`` = 3); resized to ``(H, W)``
    with antialiasing on the uint8 pixels, as :class:`ImageFiles` and the ELPV
    loader resize; scaled to [0, 1] (255 -> 1, as Digits' 16 -> 1) and mapped by
    ``(x - 0.5) / 0.5``.

    Args:
        path: an image file PIL can read (any size, any mode).
        input_shape: ``(C, H, W)`` the model takes, ``C`` 1 or 3.

    Returns:
        float32 ``(C, H, W)`` in [-1, 1].

    Raises:
        BadImageError: ``path`` is missing, empty, not an image or truncated; the message names it.
        ValueError: ``C`` is neither 1 nor 3.
    """
    channels, height, width = input_shape
    if channels not in (1, 3):
        raise ValueError(f"input_shape {tuple(input_shape)}: images need 1 or 3 channels")
    pixels = v2.functional.pil_to_tensor(read_image(path, "L" if channels == 1 else "RGB"))  # uint8 (C, h, w)
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = v2.functional.resize(pixels, [height, width], antialias=True)
    return (pixels.float() / 255 - 0.5) / 0.5


class ImageFiles(Dataset):
    """Images decoded from files on each access.

    Args:
        samples: list of ``(path, label)``.
        image_size: side of the square output.

    Items are ``(float32 (3, image_size, image_size) in [-1, 1], int label)``.

    Raises:
        BadImageError: ``"cannot read image <path>: <reason>"`` for a file PIL cannot
            decode (empty, not an image, truncated). The message survives a
            DataLoader worker, which re-raises it with the worker's traceback.
    """

    def __init__(self, samples, image_size):
        self.samples = list(samples)
        self.transform = v2.Compose([
            v2.PILToTensor(),  # uint8 (3, H, W)
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        return self.transform(read_image(path, "RGB")), int(label)

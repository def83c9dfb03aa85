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

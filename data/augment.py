"""Training-time augmentation wrappers shared by the classification trainers."""
import torch
from torch.utils.data import Dataset


def train_transform(hflip=0.0, vflip=0.0, randaugment=None):
    """The training augmentation of the classification trainers, or ``None`` when every part is off.

    Random flips with probabilities ``hflip`` / ``vflip`` (timm's ``--hflip`` /
    ``--vflip``), then RandAugment with ``randaugment = (N, M)``: Cubuk et al.,
    "RandAugment: Practical automated data augmentation with a reduced search
    space" (2020). All are torchvision transforms v2.
    """
    from torchvision.transforms import v2  # here, not at import: scripts start faster without torchvision

    ops = [v2.RandomHorizontalFlip(hflip)] if hflip else []
    ops += [v2.RandomVerticalFlip(vflip)] if vflip else []
    ops += [v2.RandAugment(num_ops=randaugment[0], magnitude=randaugment[1])] if randaugment else []
    return v2.Compose(ops) if ops else None


class Augmented(Dataset):
    """Apply a torchvision v2 ``transform`` to the images of a classification dataset.

    The wrapped dataset's images are float ``(C, H, W)`` in [-1, 1] (the
    project's ``(x - 0.5) / 0.5``); they are mapped to [0, 1] for the ops, then
    back. Randomness comes from the global torch RNG (reseeded per sample in
    DataLoader workers), so a resumed run draws the same augmentations.

    Args:
        dataset: items ``(image, label)``.
        transform: a v2 transform of a float image in [0, 1] (see :func:`train_transform`).
    """

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        image = self.transform(torch.clamp(image * 0.5 + 0.5, 0, 1))
        return (image - 0.5) / 0.5, label

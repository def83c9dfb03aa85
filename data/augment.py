"""Training-time augmentation wrappers shared by the classification trainers."""
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2


class RandAugmented(Dataset):
    """Apply torchvision's ``v2.RandAugment`` to the images of a classification dataset.

    Cubuk et al., "RandAugment: Practical automated data augmentation with a
    reduced search space" (2020), as implemented by torchvision transforms v2.
    The wrapped dataset's images are float ``(C, H, W)`` in [-1, 1] (the
    project's ``(x - 0.5) / 0.5``); they are mapped to [0, 1] for the ops, then
    back. Randomness comes from the global torch RNG (reseeded per sample in
    DataLoader workers), so a resumed run draws the same augmentations.

    Args:
        dataset: items ``(image, label)``.
        num_ops: ops per image (N).
        magnitude: strength of each op, 0..30 (M).
    """

    def __init__(self, dataset, num_ops, magnitude):
        self.dataset, self.transform = dataset, v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        image = self.transform(torch.clamp(image * 0.5 + 0.5, 0, 1))
        return (image - 0.5) / 0.5, label

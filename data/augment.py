"""A dataset wrapper that applies a training pipeline to the uint8 images of an in-memory dataset."""

from torch.utils.data import Dataset


class Augmented(Dataset):
    """Apply a torchvision v2 ``transform`` to the uint8 images of a classification dataset.

    Randomness comes from the global torch RNG, which
    :class:`base.loop.state.SeededSamples` seeds per sample from ``(seed, epoch, index)``,
    so a resumed run draws the same augmentations whatever the number of workers.

    Args:
        dataset: items ``(uint8 (C, H, W), label)``.
        transform: a v2 pipeline from uint8 ``(C, H, W)`` to uint8 ``(C, H', W')``
            (see :func:`data.transforms.train_transform`).
    """

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset[index]
        return self.transform(image), label

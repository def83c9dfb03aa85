"""``--data_on_device``: the training split held on the device, its batches gathered there.

For data sets whose stored tensors fit in GPU memory (Digits, MNIST, CIFAR10,
ELPV: 236 MB of uint8 at 300x300) the training images are uploaded once, and
each batch is one indexing op on the device: no worker processes, no pinned
memory, no copy per batch. Random augmentation then runs on the device too,
per sample, after the loop seeded the step (``TrainerBase.build_device_augment``
and :mod:`base.loop.input_stage`).

What a resume and DDP rely on is unchanged: the order is that of the same
:class:`base.loop.state.ResumableSampler` the ``DataLoader`` path uses (the epoch's
permutation from ``(seed, epoch)``, the start position of a resumed epoch, each
process's share, the left-out tail), in batches of the same size.

Which datasets can: a dataset, under any torch ``Subset``s, that is a torch
``TensorDataset`` or has a method ``tensors(indices)`` returning a tuple of
tensors whose first dimension indexes samples (``indices`` a list of ints, or
``None`` for all), e.g. ``data.classification.InMemoryImages``:
``(uint8 (n, C, H, W), int64 (n,))``. The tuple's tensors are the batch's entries.
"""

import math

import torch
from torch.utils.data import Subset, TensorDataset

from base.errors import UserError


def stored_tensors(dataset):
    """The tensors of every sample of ``dataset``, in its order: a tuple of tensors of first dimension ``len(dataset)``.

    Raises:
        UserError: ``dataset`` holds no tensors (it decodes files, or builds items in
            ``__getitem__``); the message names ``--data_on_device``.
    """
    indices, inner = None, dataset
    while isinstance(inner, Subset):  # Subset of Subset: map the outer indices through the inner ones
        indices = list(inner.indices) if indices is None else [inner.indices[i] for i in indices]
        inner = inner.dataset
    if isinstance(inner, TensorDataset):
        index = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
        return tuple(t if index is None else t[index] for t in inner.tensors)
    if not callable(getattr(inner, "tensors", None)):
        raise UserError(
            f"--data_on_device: the training split ({type(inner).__name__}) is not held in memory as "
            f"tensors; leave --data_on_device off and read it with --num_workers"
        )
    return tuple(inner.tensors(indices))


class DeviceBatches:
    """What the loop reads from a training ``DataLoader``, served from tensors on ``device``.

    Args:
        dataset: the training split (see the module docstring for what it must provide);
            kept as :attr:`dataset` (the loop reads its length).
        sampler: a :class:`base.loop.state.ResumableSampler` yielding plain indices
            (``with_epoch=False``) with ``batch_size`` set; the loop calls its
            ``set_epoch(epoch, start)`` before each epoch.
        batch_size: samples per batch (the last one of an epoch may be smaller, as with
            ``DataLoader(drop_last=False)``).
        device: ``torch.device`` to hold the tensors on.

    Iterating gives one list per batch, ``[t[index] for t in tensors]`` (a classification
    split: ``[uint8 (B, C, H, W), int64 (B,)]``, as ``default_collate`` makes them), all on
    ``device``.

    Raises:
        UserError: see :func:`stored_tensors`; or its tensors do not hold ``len(dataset)`` samples.
    """

    #: No worker seeds: reading draws no random numbers (the loop checks ``loader.generator``).
    generator = None

    def __init__(self, dataset, sampler, batch_size, device):
        self.dataset, self.sampler, self.batch_size, self.device = dataset, sampler, batch_size, device
        tensors = stored_tensors(dataset)
        if any(len(t) != len(dataset) for t in tensors):
            raise UserError(
                f"--data_on_device: the training split has {len(dataset)} samples but its tensors hold "
                f"{[len(t) for t in tensors]}"
            )
        self.tensors = tuple(t.contiguous().to(device) for t in tensors)  # uploaded once

    def __len__(self):
        """Batches left in the epoch from the sampler's start (``len(DataLoader)``'s meaning)."""
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        # The epoch's order goes to the device once; each batch is one gather per tensor there.
        order = torch.as_tensor(list(self.sampler), dtype=torch.long).to(self.device)
        for first in range(0, len(order), self.batch_size):  # (an epoch with nothing left yields no batch)
            index = order[first : first + self.batch_size]
            yield [t[index] for t in self.tensors]

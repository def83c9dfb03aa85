"""The loaders of a run's splits: an order and worker seeds that depend only on ``(--seed, epoch)``.

:func:`make_loader` is what :meth:`base.trainer.TrainerBase.build_dataloader` returns by default.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from base.config.trainer_flags import resolve_workers
from base.loop.bad_data import BadSampleFilter, collate_good_samples
from base.loop.device_data import DeviceBatches
from base.loop.state import ResumableSampler, SeededSamples
from base.runtime import distributed
from base.runtime.signals import ignore_signals_in_worker


def make_loader(
    dataset: Dataset,
    split: str,
    args,
    device: torch.device,
    rank: int,
    world_size: int,
    collate_fn: Callable,
    bad_list: str | None = None,
    logger: logging.Logger | None = None,
    weights: torch.Tensor | None = None,
) -> Iterable:
    """A loader of ``dataset`` for ``split`` (``"train"``, ``"val"``, ``"test"``, ...) under the run's ``args``.

    Training order comes from a :class:`ResumableSampler` (so a resumed run continues from the exact next
    batch) and each sample's augmentation is seeded from ``(--seed, epoch, index)``
    (:class:`SeededSamples`); workers ignore SIGTERM/SIGINT (the main process checkpoints); with
    ``--bad_images skip`` unreadable samples are dropped from their batch (a batch of only bad samples is
    ``None``) and listed in the file ``bad_list``. Under DDP each process reads its share of every split.

    With ``--data_on_device`` the training split is a :class:`DeviceBatches` instead: its tensors uploaded
    once, batches gathered on the device in the same sampler's order, no workers. The evaluation splits
    stay on the ``DataLoader``: each is read once per validation without random ops.
    ``logger`` (may be ``None``) warns when a CUDA run decodes files in the main process. ``weights``
    (``--sampler weighted``, training split only): one per sample, each epoch's order is drawn with replacement
    in proportion to them (see :class:`ResumableSampler`).

    Raises:
        ConfigError: ``weights`` that cannot be drawn from (see :func:`base.loop.state.check_sample_weights`).
    """
    train = split == "train"
    if train and args.data_on_device:
        sampler = ResumableSampler(
            len(dataset),
            shuffle=True,
            seed=args.seed,
            batch_size=args.batch_size,
            rank=rank,
            world_size=world_size,
            weights=weights,
        )
        return DeviceBatches(dataset, sampler, args.batch_size, device)
    workers = resolve_workers(args.num_workers, device, distributed.local_world_size())
    if workers == 0 and device.type == "cuda" and reads_files(dataset) and logger is not None:
        logger.warning(
            "the %s split decodes image files in the main process (--num_workers 0): the GPU "
            "waits for each batch; pass --num_workers auto (or N > 0)",
            split,
        )
    if args.bad_images == "skip" and bad_list is not None:
        dataset = BadSampleFilter(dataset, bad_list)
    if train:
        dataset = SeededSamples(dataset, args.seed)
    sampler = ResumableSampler(
        len(dataset),
        shuffle=train,
        seed=args.seed,
        with_epoch=train,
        batch_size=args.batch_size if train else None,
        rank=rank,
        world_size=world_size,
        weights=weights if train else None,
    )
    return DataLoader(
        dataset,
        batch_size=args.batch_size if train else args.eval_batch_size or args.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        # the test split is read once: its workers need not stay
        persistent_workers=args.persistent_workers and workers > 0 and split != "test",
        worker_init_fn=ignore_signals_in_worker,
        generator=torch.Generator(),
        collate_fn=(
            functools.partial(collate_good_samples, collate=collate_fn) if args.bad_images == "skip" else collate_fn
        ),
    )


def reads_files(dataset) -> bool:
    """True when ``dataset``, or one it wraps (``.dataset``), decodes a file per item (``reads_files = True``)."""
    while dataset is not None:
        if getattr(dataset, "reads_files", False):
            return True
        dataset = getattr(dataset, "dataset", None)
    return False


def epoch_bar(batches: Iterable, loader, epoch: int, epochs: int, samples_done: int, world_size: int, rank: int):
    """The progress bar (tqdm) over one epoch's ``batches`` of ``loader``, counting the batches of all processes.

    ``epoch``: completed epochs; ``samples_done``: samples of the epoch consumed already (a resumed epoch starts
    there). Shown by rank 0 only, and only on a terminal.
    """
    per_step = loader.batch_size * world_size  # samples of all processes
    return tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="batch",
        initial=math.ceil(samples_done / per_step),
        total=math.ceil(len(loader.dataset) / per_step),
        dynamic_ncols=True,
        disable=None if rank == 0 else True,
        leave=False,
    )

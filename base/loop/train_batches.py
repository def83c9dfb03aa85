"""Training batches in the loop's order and seeding, shared by the loop and the side modes.

What reaches ``train_step`` depends on three things done in this order, and nowhere else:

1. :func:`open_epoch`: the epoch's order starts at the sample position (``sampler.set_epoch``), the
   workers' seeds follow ``(--seed, epoch)``, and (on CUDA, without device augmentation) batches are
   moved and normalised one ahead (:meth:`base.loop.input_stage.InputStage.prefetch`);
2. :func:`seed_window`: once a window of ``--accum_steps`` batches is read, the global generators are
   seeded from its place in the run (:func:`base.loop.state.seed_position`);
3. ``inputs.train_input(batch)`` for each batch of the window: device move, ``/ 255``, device
   augmentation, ``(x - mean) / std``, channels-last, Mixup/CutMix (:mod:`base.loop.input_stage`).

The loop (:meth:`base.trainer.TrainerBase._train_epoch`) calls 1 and 2 and step 3 in ``_forward``; the
side modes (``--lr_find``, ``--preview_augment``) read :func:`run_start_windows`, which calls 1 and 2 the
same way from the run's first sample, and call 3 themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

from base.loop.device_data import DeviceBatches
from base.loop.progress import LoopProgress
from base.loop.state import seed_position
from base.loop.step import read_windows, window_batches
from base.runtime.signals import signals_held


def open_epoch(loader, inputs, seed: int, progress: LoopProgress):
    """Start ``loader``'s epoch ``progress.epoch`` at ``progress.samples_in_epoch``; returns ``(reader, batches)``.

    ``reader`` is the loader's iterator (its workers forked, if any; stop them with ``_shutdown_workers``
    when leaving early), ``batches`` what to read: ``reader`` itself for :class:`DeviceBatches` (made on
    the compute stream), else ``inputs.prefetch(reader)`` (close it when leaving early).
    """
    # The sampler hands (epoch, index) to SeededSamples, so workers kept alive across
    # epochs (persistent) still seed each sample's augmentation from this epoch.
    loader.sampler.set_epoch(progress.epoch, progress.samples_in_epoch)
    if loader.generator is not None:  # worker seeds: from (seed, epoch), not the global RNG
        loader.generator.manual_seed(seed + progress.epoch)
    with signals_held():
        reader = iter(loader)  # forks the workers, if any (once, with persistent workers)
    # Batches gathered on the device are made on the compute stream: nothing to copy ahead.
    return reader, (reader if isinstance(loader, DeviceBatches) else inputs.prefetch(reader))


def seed_window(seed: int, rank: int, progress: LoopProgress) -> None:
    """Seed the random draws of the optimizer step at ``progress``'s position (device augmentation, Mixup,
    dropout): from ``(seed, rank, epoch, samples_in_epoch)``, so reading ahead changes nothing."""
    seed_position(seed, rank, progress.epoch, progress.samples_in_epoch)


def run_start_windows(loader, inputs, seed: int, accum_steps: int, skip_bad: bool) -> Iterator[list]:
    """The windows of a one-process run from its first sample, as the loop reads them; epochs follow each other.

    Each window is ``[(batch, samples)]`` (:func:`base.loop.step.window_batches`; batches of only
    bad images left out) of host batches, or device ones already normalised (see :func:`open_epoch`),
    yielded right after :func:`seed_window` seeded the generators for it: the caller passes each batch
    to ``inputs.train_input`` to get what ``train_step`` gets. The position is a
    :class:`base.loop.progress.LoopProgress` of its own, counted as the loop counts it. Give it a loader
    of its own (``build_dataloader``): its epoch is set here. Closing the generator stops the workers.
    """
    progress, reader, batches = LoopProgress(), None, None
    try:
        while True:
            reader, batches = open_epoch(loader, inputs, seed, progress)
            consumed = 0
            for window in read_windows(batches, accum_steps, lambda _: seed_window(seed, 0, progress)):
                consumed += len(window)
                yield window_batches(window, 1, skip_bad)
                progress.advance(len(window), loader.batch_size, 1, len(loader.dataset), loader.sampler.end)
            if not consumed:  # an epoch with nothing in it: no batch would ever come
                return
            progress.next_epoch()
    finally:  # (persistent workers stay between epochs: stopped once, here)
        if batches is not None and batches is not reader:
            batches.close()
        getattr(reader, "_shutdown_workers", lambda: None)()

"""Small stateful parts of the loop: RNG capture, early stopping, resumable sampling.

Each exposes ``state_dict`` / ``load_state_dict`` holding tensors and plain
Python types only, so the whole training state loads with ``weights_only=True``.
"""

import contextlib
import math
import random

import numpy as np
import torch
from torch.utils.data import Sampler

from base.errors import ConfigError


def seed_everything(seed, deterministic=False):
    """Seed Python, NumPy and torch (CPU and CUDA); optionally force deterministic kernels.

    ``deterministic`` calls ``torch.use_deterministic_algorithms(True)``, turns off
    cuDNN autotuning and sets ``CUBLAS_WORKSPACE_CONFIG`` as PyTorch's
    reproducibility notes require for CUDA >= 10.2.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def global_switches():
    """The process-wide settings :func:`seed_everything` may change: ``{name: value}``."""
    return {
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
    }


def restore_global_switches(saved):
    """Put back what :func:`global_switches` returned."""
    torch.use_deterministic_algorithms(saved["deterministic"], warn_only=saved["warn_only"])
    torch.backends.cudnn.benchmark = saved["cudnn_benchmark"]


def seed_position(seed, *position):
    """Seed Python's, NumPy's and torch's global generators (CPU, and CUDA once started) from ``(seed, *position)``.

    The loop calls it before each optimizer step's batches are read, with
    ``(rank, epoch, sample position in the epoch)``, and before each
    validation: the random numbers a step draws (augmentation in the main
    process, dropout, Mixup) then depend only on where it is in the run, so a
    checkpoint needs no RNG state, a resume from any checkpoint (one written
    in the middle of a step included) continues bit-identically, validating
    more or less often does not change training, and DDP processes draw
    independent streams. ~12 us on CPU, where capturing the states after every
    step took ~100 us (NumPy's ``get_state`` alone 60 us).

    Args:
        seed: ``--seed``; position: non-negative ints.
    """
    mixed = seed
    for part in position:
        mixed = (mixed * 1_000_003 + part + 1) % 2**63
    random.seed(mixed)
    np.random.seed(mixed % 2**32)
    torch.default_generator.manual_seed(mixed)  # not torch.manual_seed: it queues CUDA work, ~200 us
    if torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            torch.cuda.default_generators[i].manual_seed(mixed)


@contextlib.contextmanager
def rng_kept(cuda=False):
    """Put every global generator back as it was on leaving: Python's ``random``, NumPy's global, torch's CPU
    generator and each CUDA device's (for side modes, which build and draw).

    The CUDA generators are kept when CUDA is initialized already, or with ``cuda`` (the block will use
    it: reading their states initializes it first); a CPU block on a GPU machine does not start CUDA.
    """
    saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() or cuda else None
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class EarlyStopper:
    """Track the best value of a monitored metric and count validations without improvement.

    Args:
        mode: ``"max"`` (accuracy-like) or ``"min"`` (loss-like).
        patience: validations without improvement before :attr:`should_stop`;
            0 never stops.
        min_delta: the smallest change that counts as an improvement.
    """

    def __init__(self, mode="min", patience=0, min_delta=0.0):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_count = 0

    def update(self, value):
        """Record one validation's value; returns True when it is a new best."""
        value = float(value)
        improved = value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        if improved:
            self.best, self.bad_count = value, 0
        else:
            self.bad_count += 1
        return improved

    @property
    def should_stop(self):
        return self.patience > 0 and self.bad_count >= self.patience

    def state_dict(self):
        return {"best": self.best, "bad_count": self.bad_count}

    def load_state_dict(self, state):
        self.best, self.bad_count = float(state["best"]), int(state["bad_count"])


class ResumableSampler(Sampler):
    """Index sampler whose order depends only on ``(seed, epoch)``, that can start mid-epoch and shard over ranks.

    The permutation of epoch ``e`` comes from a generator seeded with
    ``seed + e`` (the approach of ``torch.utils.data.DistributedSampler``), so
    it does not touch the global RNG and a resumed run sees the same order,
    whatever the number of processes. ``start`` skips the first positions of
    the epoch's order (for resuming mid-epoch, counted over all ranks).

    With ``world_size`` processes, rank ``r`` takes every ``world_size``-th
    position of the rest, from ``start + r``: its k-th batch and the other
    ranks' k-th batches are together the global positions
    ``[start + k*B*W, start + (k+1)*B*W)``, the batch a single process with
    ``B*W`` samples a batch would take. Nothing is padded or repeated.

    With ``weights`` (``--sampler weighted``) an epoch's order is ``length`` indices drawn with
    replacement, index ``i`` with probability ``weights[i] / weights.sum()``: the draw of
    ``torch.utils.data.WeightedRandomSampler`` (``torch.multinomial``), from the same generator seeded
    with ``seed + epoch``, so the start position, the ranks' strides and the left-out tail apply to it
    as to the permutation.

    Args:
        length: number of samples in the dataset.
        shuffle: shuffle each epoch (else ``0..length-1``).
        seed: base seed (int).
        with_epoch: yield ``(epoch, index)`` pairs instead of indices, for a
            :class:`SeededSamples` dataset; with ``weights`` ``(epoch, index, position)``, the position
            in the epoch's draw telling apart two draws of one sample.
        batch_size: the per-process training batch; when given, an epoch's
            tail that would give a process a batch of one sample, or none, is
            left out of that epoch (see :func:`trained_samples`).
        rank, world_size: this process's place among the data-parallel ones.
        weights: ``None``, or one non-negative weight per sample (see :func:`check_sample_weights`);
            needs ``shuffle``.
    """

    def __init__(
        self, length, shuffle=True, seed=0, with_epoch=False, batch_size=None, rank=0, world_size=1, weights=None
    ):
        self.length, self.shuffle, self.seed, self.with_epoch = length, shuffle, seed, with_epoch
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.weights = None if weights is None else check_sample_weights(weights, length)
        if self.weights is not None and not shuffle:
            raise ValueError("ResumableSampler: weights need shuffle=True")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch, start=0):
        self.epoch, self.start = epoch, start

    @property
    def end(self):
        """The position after the last one this epoch trains on (``length`` unless a tail is left out)."""
        if self.batch_size is None:
            return self.length
        return self.start + trained_samples(self.length - self.start, self.batch_size, self.world_size)

    def _order(self):
        if not self.shuffle:
            return list(range(self.length))
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:  # the whole epoch's draw, on every process: each takes its share of it
            return torch.multinomial(self.weights, self.length, replacement=True, generator=gen).tolist()
        return torch.randperm(self.length, generator=gen).tolist()

    def __iter__(self):
        order, positions = self._order(), range(self.start + self.rank, self.end, self.world_size)
        if not self.with_epoch:
            return iter([order[p] for p in positions])
        if self.weights is not None:
            return iter([(self.epoch, order[p], p) for p in positions])
        return iter([(self.epoch, order[p]) for p in positions])

    def __len__(self):
        return len(range(self.start + self.rank, self.end, self.world_size))


def check_sample_weights(weights, length):
    """``weights`` as a float64 ``(length,)`` CPU tensor, after checking that ``--sampler weighted`` can draw from it.

    (``torch.multinomial`` draws from at most 2**24 categories: a larger training split is refused by it.)

    Raises:
        ConfigError: not ``length`` values (one per training sample), or a value negative or not finite,
            or all of them 0 (one line naming ``--sampler``).
    """
    weights = torch.as_tensor(weights, dtype=torch.float64).cpu()
    for bad, problem in (
        (weights.shape != (length,), f"gives sample weights of shape {tuple(weights.shape)}, not ({length},)"),
        (not bool(torch.isfinite(weights).all()), "gives a sample weight that is not finite"),
        (bool((weights < 0).any()), "gives a negative sample weight"),
        (not bool((weights > 0).any()), "gives only zero sample weights"),
    ):
        if bad:
            raise ConfigError(f"--sampler weighted: the task {problem}")
    return weights


def trained_samples(samples_left, batch_size, world_size=1):
    """How many of an epoch's rest of ``samples_left`` samples are trained on; the others wait for the next epoch.

    A last global batch (``batch_size * world_size`` samples) that would give
    some process a batch of one sample is left out: BatchNorm cannot train on
    one sample whose feature maps are 1x1 (a ResNet's last stage on 32x32
    images). With several processes, so is one that would leave a process
    without a batch, which would stall the others at the gradient all-reduce.
    Shuffling puts different samples last each epoch, so none is left out for
    good. One process keeps a rest of exactly one sample (all there is).
    """
    tail = samples_left % (batch_size * world_size)
    if world_size == 1:
        drop = samples_left > 1 and tail == 1
    else:
        drop = 0 < tail < 2 * world_size
    return samples_left - tail if drop else samples_left


def training_batches(samples_left, batch_size, world_size=1):
    """Batches per process in an epoch's rest of ``samples_left`` samples (see :func:`trained_samples`)."""
    return math.ceil(trained_samples(samples_left, batch_size, world_size) / (batch_size * world_size))


class SeededSamples(torch.utils.data.Dataset):
    """Make random augmentation depend only on ``(seed, epoch, index)``.

    Items are asked for as ``(epoch, index)`` (see ``ResumableSampler(with_epoch=True)``), or
    ``(epoch, index, position)`` from a weighted draw, where one sample may come twice in an epoch: the
    position joins the seed, so each draw of it is augmented anew.
    The epoch travels with every index, rather than as an attribute set
    before the epoch, because persistent workers keep the copy of the dataset
    they started with. Each item first reseeds Python, NumPy and torch's CPU
    generator from ``(seed, epoch, index)``, in a worker process or in the main
    one (``--num_workers 0``) alike: a sample's augmentation is the same whichever
    process loads it, however many workers there are, however far ahead the
    loader reads, and wherever in the epoch a resumed run starts. The loop seeds
    the step's own draws after its batches are read (:func:`seed_position`).

    A dataset that fetches whole batches and draws no random numbers
    (``fetches_batches = True``, also behind ``Subset``) is read a batch at a time
    (``__getitems__``), without reseeding.
    """

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed
        inner = dataset
        while isinstance(inner, torch.utils.data.Subset):
            inner = inner.dataset
        self._batched = getattr(inner, "fetches_batches", False)

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        epoch, index, *position = item
        sample_seed = ((self.seed * 1_000_003 + epoch) * 1_000_033 + index) % 2**63
        if position:  # a weighted draw: the same sample twice in an epoch gets two augmentations
            sample_seed = (sample_seed * 1_000_037 + position[0] + 1) % 2**63
        random.seed(sample_seed)
        np.random.seed(sample_seed % 2**32)
        torch.default_generator.manual_seed(sample_seed)  # not torch.manual_seed: it queues CUDA work
        return self.dataset[index]

    def __getitems__(self, items):
        if self._batched:
            return self.dataset.__getitems__([item[1] for item in items])
        return [self[item] for item in items]

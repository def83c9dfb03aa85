"""The device side of the input pipeline: uint8 batches in, the model's float input out.

Image datasets hand out uint8 ``(C, H, W)`` pixels, so a batch crosses worker
processes, pinned memory and PCIe at a quarter of float32's bytes. On the
device one object, :class:`InputStage`, owned by the trainer (and used as is by
every evaluator and predictor through the trainer), does the rest in this order:

1. move the batch (``non_blocking``; on CUDA one batch ahead on a side stream, see
   :meth:`InputStage.prefetch`);
2. images to float in [0, 1] (``x / 255``);
3. ``augment`` (training only): per-sample random ops on the device, e.g. kornia's,
   for ``--data_on_device``;
4. ``(x - mean) / std`` with ``--mean`` / ``--std``;
5. channels-last with ``--channels_last``;
6. ``mix`` (training only): batched Mixup / CutMix.

Which tensor is the image batch: a bare tensor, the first entry of a tuple or
list, or the ``"image"`` entry of a dict; it is converted only when it is a
4-D uint8 tensor. A floating-point image batch is taken as model input
already (a task whose dataset makes its own floats keeps working), and every
other entry (labels, masks) is only moved.

Steps 3 and 6 draw random numbers; the loop calls :meth:`InputStage.train_input`
after seeding the step's generators by its position in the run
(:func:`base.loop.state.seed_position`), so a resumed run draws the same ones.
"""

import torch


class InputStage:
    """Move batches to ``device`` and make uint8 images the model's normalised float input.

    Args:
        device: ``torch.device`` the model is on.
        mean, std: per-channel sequences (length 1 or ``C``) in units of [0, 1]
            pixels, e.g. ImageNet's ``(0.485, 0.456, 0.406)`` / ``(0.229, 0.224, 0.225)``.
        channels_last: store 4-D float image batches channels-last.
        augment: ``None`` or a callable on float ``(N, C, H, W)`` in [0, 1] on the
            device, returning the same shape (training batches only).
        mix: ``None`` or a callable ``(images, targets) -> (images, targets)``
            on normalised float images (training batches of ``(images, targets)`` only).

    Raises:
        ValueError: ``std`` holds a value <= 0, or ``mean`` and ``std`` differ in length.
    """

    def __init__(self, device, mean=(0.5,), std=(0.5,), channels_last=False, augment=None, mix=None):
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean {mean} and std {std}: expected equal lengths and std > 0")
        self.device, self.channels_last = device, channels_last
        self.augment, self.mix = augment, mix
        self.mean, self.std = mean, std
        # (1, C, 1, 1) for broadcasting; x / 255 then (x - mean) / std as one multiply and one add
        self._scale = torch.tensor([1 / (255 * s) for s in std], device=device).view(1, -1, 1, 1)
        self._shift = torch.tensor([-m / s for m, s in zip(mean, std)], device=device).view(1, -1, 1, 1)
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    # ----------------------------------------------------------------- what the loop calls
    def to_device(self, batch, augment=False):
        """``batch`` on the device, its uint8 image batch normalised (see the module docstring).

        Args:
            batch: a tensor, or a (nested) tuple, list or dict of tensors and other values.
            augment: apply :attr:`augment` (training batches).

        Returns:
            the same structure; the image batch float32 ``(N, C, H, W)``.
        """
        return _map_images(batch, lambda images: self.normalise(self._move(images), augment), self._move)

    def train_input(self, batch):
        """A training batch as ``train_step`` gets it: :meth:`to_device` with augmentation, then :attr:`mix`.

        Call it after the step's generators are seeded (both draw random numbers).
        A batch that :meth:`prefetch` already normalised passes through
        :meth:`to_device` unchanged (its images are float).
        """
        batch = self.to_device(batch, augment=True)
        if self.mix is not None and isinstance(batch, (tuple, list)) and len(batch) == 2:
            batch = type(batch)(self.mix(*batch))
        return batch

    def prefetch(self, batches):
        """Iterate ``batches``, each already on the device, copied while the previous one computes.

        On CUDA: batch N+1 is copied (``non_blocking`` from pinned memory),
        converted and normalised on a side stream while the caller computes on
        batch N (the pattern of timm's ``PrefetchLoader``); the compute stream
        waits for the copy before it uses the batch, and ``record_stream`` keeps
        the caching allocator from reusing the memory early. Order and values are
        those of ``batches``. Without CUDA, or with :attr:`augment` (its random
        ops must run after the step's seeding), batches pass through unchanged
        and :meth:`train_input` moves them.

        ``None`` entries (batches of only unreadable images) pass through.
        """
        if self._stream is None or self.augment is not None:
            yield from batches
            return
        pending = None
        for batch in batches:
            # The side stream starts after what the compute stream has queued so far: a batch made on
            # the device (or the statistics) is complete before it is read there.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                ready = None if batch is None else self.to_device(batch)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
            _record(ready, torch.cuda.current_stream(self.device))
            pending = (ready,)
        if pending is not None:
            yield pending[0]

    # ----------------------------------------------------------------- the parts
    def normalise(self, images, augment=False):
        """uint8 ``(N, C, H, W)`` on the device -> float32 ``(images / 255 [augmented] - mean) / std``.

        A float batch is taken as model input already: returned as it is (made
        channels-last with ``channels_last``), as is anything not 4-D.

        Raises:
            ValueError: the statistics' length is neither 1 nor ``C``.
        """
        if images.dim() != 4:
            return images
        if images.dtype != torch.uint8:
            channels_last = self.channels_last and images.is_floating_point()
            return images.contiguous(memory_format=torch.channels_last) if channels_last else images
        channels = images.shape[1]
        if self._scale.shape[1] not in (1, channels):
            raise ValueError(f"--mean/--std give {self._scale.shape[1]} values for images of {channels} channels")
        if augment and self.augment is not None:
            x = (self.augment(images.float() / 255) * 255).mul_(self._scale).add_(self._shift)
        else:
            x = images.float().mul_(self._scale).add_(self._shift)  # in place: no third batch-sized buffer
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _move(self, tensor):
        if not torch.is_tensor(tensor) or tensor.device == self.device:
            return tensor
        return tensor.to(self.device, non_blocking=True)

    def describe(self):
        """``{"mean": [...], "std": [...], "scale": 255}``: the arithmetic of step 2 and 4, JSON-able."""
        return {"scale": 255, "mean": list(self.mean), "std": list(self.std)}


def image_batch(batch):
    """The image batch of ``batch`` (a bare tensor, the first entry of a tuple or list, or a dict's ``"image"``:
    the module docstring's rule) when it is a 4-D tensor ``(N, C, H, W)``, else ``None``."""
    found = []
    _map_images(batch, lambda images: found.append(images) or images, lambda value: value)
    return found[0] if found and found[0].dim() == 4 else None


def _map_images(batch, on_images, on_other):
    """Apply ``on_images`` to the image batch of ``batch`` (module docstring) and ``on_other`` to every other tensor."""

    def other(value):
        if torch.is_tensor(value):
            return on_other(value)
        if isinstance(value, (tuple, list)):
            return type(value)(other(v) for v in value)
        if isinstance(value, dict):
            return {k: other(v) for k, v in value.items()}
        return value

    if torch.is_tensor(batch):
        return on_images(batch)
    if isinstance(batch, (tuple, list)) and batch and torch.is_tensor(batch[0]):
        return type(batch)([on_images(batch[0]), *(other(v) for v in batch[1:])])
    if isinstance(batch, dict) and torch.is_tensor(batch.get("image")):
        return {k: on_images(v) if k == "image" else other(v) for k, v in batch.items()}
    return other(batch)


def _record(batch, stream):
    """``record_stream`` every CUDA tensor of ``batch`` on ``stream`` (it was allocated on the side stream)."""
    if torch.is_tensor(batch):
        if batch.is_cuda:
            batch.record_stream(stream)
    elif isinstance(batch, (tuple, list)):
        for value in batch:
            _record(value, stream)
    elif isinstance(batch, dict):
        for value in batch.values():
            _record(value, stream)

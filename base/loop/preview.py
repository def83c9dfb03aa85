"""``--preview_augment PNG``: a grid of the training samples exactly as the model receives them.

The samples are the first ``--preview_samples`` of the run at its start (epoch 0, sample 0, ``--seed``),
read and seeded as the loop reads and seeds them (:func:`base.loop.train_batches.run_start_windows`) and
made model input by the loop's own ``inputs.train_input``: the dataset's transforms, the device move,
``/ 255``, the device augmentation, ``(x - mean) / std`` and Mixup/CutMix. For display they are
un-normalised with the run's ``--mean``/``--std`` (``x * std + mean``) and clipped to [0, 1]; the grid
is ``torchvision.utils.make_grid`` (:data:`COLUMNS` a row, :data:`PADDING` pixels between, black) at
one image pixel per PNG pixel. One-channel images are grey; of images with 2 or more than 3
channels the first channel is shown, grey.

With ``--accum_steps`` > 1 every batch of a window is made after the window's seeding without the model's
forward passes in between: a model that draws random numbers in its forward (dropout) would change the
draws of the window's later batches in the loop; the first batch of each window is always exact.
"""

from __future__ import annotations

import torch

from base.errors import ConfigError
from base.loop.input_stage import image_batch
from base.loop.train_batches import run_start_windows

COLUMNS = 8  #: images per row of the grid (make_grid's ``nrow``)
PADDING = 2  #: pixels between images and around the grid (make_grid's ``padding``)


def training_images(trainer, count: int) -> torch.Tensor:
    """The first ``count`` training images of the run as ``train_step`` gets them: float ``(count, C, H, W)``
    on the CPU, normalised (several batches, and epochs, when one holds fewer).

    Raises:
        ConfigError: the training batches hold no 4-D image batch (names ``--preview_augment``).
    """
    a = trainer.args
    loader = trainer.build_dataloader(trainer.datasets["train"], "train")  # its own: the run's stays unread
    windows = run_start_windows(loader, trainer.inputs, a.seed, a.accum_steps, a.bad_images == "skip")
    images, have = [], 0
    try:
        for window in windows:
            for batch, _ in window:
                with trainer.autocast():  # as in the loop's forward
                    model_input = trainer.inputs.train_input(batch)
                found = image_batch(model_input)
                if found is None:
                    raise ConfigError(
                        "--preview_augment: the training batches hold no image batch (N, C, H, W) to draw"
                    )
                images.append(found.detach().float().cpu())
                have += len(found)
                if have >= count:
                    return torch.cat(images)[:count]
    finally:
        windows.close()
    return torch.cat(images)[:count] if images else torch.zeros(0)


def preview_augment(trainer, path: str) -> torch.Tensor:
    """Write the grid of ``--preview_samples`` images of :func:`training_images` to ``path`` and print one line.

    Returns:
        the drawn images, float ``(N, C, H, W)`` in [0, 1] (un-normalised, clipped), before the grid.
    """
    from torchvision.utils import make_grid  # (slow import: only here)

    a, inputs = trainer.args, trainer.inputs
    x = training_images(trainer, a.preview_samples)
    if len(x) == 0:
        raise ConfigError("--preview_augment: the training split gave no batch to draw")
    channels = x.shape[1]
    mean = torch.tensor(inputs.mean).view(1, -1, 1, 1)
    std = torch.tensor(inputs.std).view(1, -1, 1, 1)
    shown = (x * std + mean).clamp_(0, 1)
    grid = make_grid(shown if channels in (1, 3) else shown[:, :1], nrow=COLUMNS, padding=PADDING)
    _save_png(grid, path)
    steps = ["the dataset's transforms", "device move", "/ 255"]
    steps += ["device augment"] if inputs.augment is not None else []
    steps += ["(x - mean) / std"] + (["Mixup/CutMix"] if inputs.mix is not None else [])
    print(
        f"--preview_augment: wrote {path}: {len(x)} training samples {tuple(x.shape[1:])} at the run's start "
        f"(--seed {a.seed}) after {', '.join(steps)}; shown un-normalised with --mean {inputs.mean} "
        f"--std {inputs.std}, clipped to [0, 1]{'' if channels in (1, 3) else ', first channel'}"
    )
    return shown


def _save_png(grid, path):
    """``grid`` (float ``(3, H, W)`` in [0, 1]) as an 8-bit RGB PNG, rounded as ``torchvision.utils.save_image``."""
    import os

    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # checked writable at parse time
    pixels = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)

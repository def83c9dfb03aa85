"""Test metrics recomputed outside the trainer from the best checkpoint's file, to pin what ``fit()`` reports.

Each helper builds a fresh model from the run's flags, loads the weights saved as ``best``, predicts
the split in the trainer's own batches, normalised by the run's input stage (so the logits are the same
floats) and counts by hand.
"""

import numpy as np
import torch

from base.checkpoint.files import load_checkpoint


def best_model(trainer, model):
    """``model`` with the weights of ``trainer``'s best checkpoint, in eval mode."""
    model.load_state_dict(load_checkpoint(trainer.checkpointer.path("best"))["model"])
    return model.eval()


def model_input(images, args):
    """A batch as the model takes it, computed here rather than by the trainer's input stage: uint8
    ``(N, C, H, W)`` -> ``(x / 255 - mean) / std`` per channel (``--mean``/``--std``), in float64 then float32."""
    if images.dtype != torch.uint8:
        return images
    mean = torch.tensor(args.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(args.std, dtype=torch.float64).view(1, -1, 1, 1)
    return ((images.double() / 255 - mean) / std).float()


def top1_by_hand(trainer, split="test"):
    """Share (%) of ``split`` whose largest logit, by the best checkpoint, is its label."""
    model = best_model(
        trainer, type(trainer).model_for(trainer.args, trainer.data.input_shape, trainer.data.num_classes)
    )
    loader = trainer.loaders[split]
    hits = count = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(loader.dataset, batch_size=loader.batch_size):
            hits += int((model(model_input(images, trainer.args)).argmax(dim=1) == labels).sum())
            count += len(labels)
    return 100.0 * hits / count


def dice_iou_by_hand(trainer, split="test"):
    """``{"dice", "iou", "dice_per_image", "iou_per_image"}`` of the best checkpoint on ``split``.

    The prediction is ``logit > 0`` at the training size, enlarged to the mask file's size by
    repeating the nearest pixel; Dice ``2|P & T| / (|P| + |T|)`` and IoU ``|P & T| / |P | T|`` over the
    whole split's pixels, and per image averaged (an empty prediction of an empty mask scores 1).
    """
    model = best_model(trainer, trainer.build_model())
    loader = trainer.loaders[split]
    inter = union = areas = 0
    per_image = []
    with torch.no_grad():
        for batch in torch.utils.data.DataLoader(
            loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn
        ):
            for logits, full in zip(model(model_input(batch["image"], trainer.args)), batch["full_mask"]):
                small = (logits[0] > 0).numpy()
                height, width = full.shape
                # nearest: output pixel (i, j) takes input pixel (floor(i * h / H), floor(j * w / W))
                rows = np.arange(height) * small.shape[0] // height
                cols = np.arange(width) * small.shape[1] // width
                p, t = small[rows][:, cols], full.numpy() == 1
                i, u, a = int((p & t).sum()), int((p | t).sum()), int(p.sum() + t.sum())
                inter, union, areas = inter + i, union + u, areas + a
                per_image.append((2 * i / a if a else 1.0, i / u if u else 1.0))
    return {
        "dice": 2 * inter / areas,
        "iou": inter / union,
        "dice_per_image": float(np.mean(per_image, 0)[0]),
        "iou_per_image": float(np.mean(per_image, 0)[1]),
    }

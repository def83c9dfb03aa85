"""Figures written to files with matplotlib's non-interactive Agg backend."""

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
import matplotlib.pyplot as plt  # noqa: E402


def save_confusion_matrix(confusion, class_names, path, title=""):
    """Save a confusion matrix as a PNG heat map with counts in the cells.

    Args:
        confusion: int ``(K, K)`` tensor or array; rows are true labels, columns predictions.
        class_names: ``K`` labels for the axes.
        path: output ``.png`` path.
        title: figure title.
    """
    matrix = confusion.tolist() if hasattr(confusion, "tolist") else confusion
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * k + 2), max(4, 0.5 * k + 1.5)))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(xticks=range(k), yticks=range(k), xlabel="prediction", ylabel="label", title=title)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    peak = max(max(row) for row in matrix) or 1
    if k <= 20:
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if value > peak / 2 else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def denormalize(image, mean=(0.5,), std=(0.5,)):
    """Model input ``(C, H, W)`` back to uint8 pixels: ``round(clamp(x * std + mean, 0, 1) * 255)``.

    Args:
        image: float ``(x / 255 - mean) / std`` (:mod:`base.loop.input_stage`), on any device; a uint8
            image is pixels already and is returned as it is.
        mean, std: the run's ``--mean`` / ``--std`` (length 1 or ``C``).
    """
    import torch

    if image.dtype == torch.uint8:
        return image
    shape = (-1,) + (1,) * (image.dim() - 1)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=image.device).view(shape)
    std = torch.as_tensor(std, dtype=torch.float32, device=image.device).view(shape)
    return ((image.float() * std + mean).clamp(0, 1) * 255).round().to(torch.uint8)


def segmentation_grid(images, masks, preds, mean=(0.5,), std=(0.5,)):
    """One row per sample: image | ground truth | prediction | errors, for TensorBoard's ``add_image``.

    The errors tile is :func:`utils.seg_colors.error_panel`: false positives magenta, false negatives
    cyan, over a dimmed grey copy of the image.

    Args:
        images: uint8 ``(N, 3, H, W)`` pixels, or float model inputs normalised with ``mean`` / ``std``
            (see :func:`denormalize`).
        masks, preds: ``(N, 1, H, W)`` in {0, 1} (float or bool).

    Returns:
        uint8 ``(3, H', W')`` grid.
    """
    import torch

    from utils.seg_colors import error_panel

    def tiles(pixels, mask, pred):
        white = [m.to(torch.uint8).mul(255).expand(3, -1, -1).cpu() for m in (mask, pred)]
        return [*white, error_panel(pixels, mask[0] > 0.5, pred[0] > 0.5)]

    return _rows_grid(images, masks, preds, mean, std, tiles)


def label_grid(images, masks, preds, palette, ignore_index=None, mean=(0.5,), std=(0.5,)):
    """:func:`segmentation_grid` for class maps: image | truth | prediction in the palette's colours | errors.

    Args:
        images: as :func:`segmentation_grid`.
        masks, preds: integer ``(N, H, W)`` class maps (truth may hold ``ignore_index``).
        palette: ``[[r, g, b], ...]`` per class (:func:`utils.seg_colors.voc_palette`).

    Returns:
        uint8 ``(3, H', W')`` grid.
    """
    from utils.seg_colors import colorize, error_panel

    def tiles(pixels, mask, pred):
        return [
            colorize(mask, palette, ignore_index),
            colorize(pred, palette),
            error_panel(pixels, mask, pred, ignore_index),
        ]

    return _rows_grid(images, masks, preds, mean, std, tiles)


def _rows_grid(images, masks, preds, mean, std, tiles):
    """One row per sample: its pixels (:func:`denormalize`), then ``tiles(pixels, mask, pred)``'s three uint8
    ``(3, H, W)`` tiles (truth, prediction, errors); uint8 ``(3, H', W')``."""
    import torch
    from torchvision.utils import make_grid

    rows = []
    for image, mask, pred in zip(images, masks, preds):
        pixels = denormalize(image, mean, std).cpu()
        rows += [pixels, *tiles(pixels, mask, pred)]
    return make_grid(torch.stack(rows), nrow=4, padding=2, pad_value=128)


def save_segmentation_figure(image, target, pred, path, title=""):
    """Save image | ground truth overlaid | prediction overlaid | errors side by side as a PNG.

    The errors panel is :func:`utils.seg_colors.error_panel` (false positives magenta, false negatives
    cyan over a dimmed grey copy of the image).

    Args:
        image: uint8 ``(H, W, 3)`` array.
        target, pred: bool ``(H, W)`` arrays at the image's size.
        path: output ``.png`` path.
        title: figure title (e.g. the image's Dice).
    """
    import numpy as np

    def overlay(mask, colour):
        out = image.astype(np.float32)
        out[mask] = 0.55 * out[mask] + 0.45 * np.asarray(colour, np.float32)
        return out.astype(np.uint8)

    import torch

    from utils.seg_colors import error_panel

    errors = error_panel(torch.tensor(image).permute(2, 0, 1), torch.tensor(target), torch.tensor(pred))
    panels = [
        (image, "image"),
        (overlay(target, (0, 110, 255)), "ground truth (blue)"),
        (overlay(pred, (255, 0, 0)), "prediction (red)"),
        (errors.permute(1, 2, 0).numpy(), "errors: FP magenta, FN cyan"),
    ]
    height, width = image.shape[:2]
    fig, axes = plt.subplots(1, 4, figsize=(16, 16 * height / width / 4 + 0.6))
    for ax, (picture, label) in zip(axes, panels):
        ax.imshow(picture)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_label_figure(image, target, pred, path, palette, class_names, ignore_index=None, title=""):
    """Save image | truth | prediction (palette colours) | errors side by side as a PNG, with a colour key.

    Args:
        image: uint8 ``(H, W, 3)`` array.
        target, pred: integer ``(H, W)`` arrays at the image's size (truth may hold ``ignore_index``).
        path: output ``.png`` path.
        palette: ``[[r, g, b], ...]`` per class; class_names: one name per class.
        title: figure title.
    """
    import torch
    from matplotlib.patches import Patch

    from utils.seg_colors import IGNORE_COLOUR, colorize, error_panel

    target, pred = torch.as_tensor(target), torch.as_tensor(pred)
    pixels = torch.tensor(image).permute(2, 0, 1)
    panels = [
        (image, "image"),
        (colorize(target, palette, ignore_index).permute(1, 2, 0).numpy(), "ground truth"),
        (colorize(pred, palette).permute(1, 2, 0).numpy(), "prediction"),
        (error_panel(pixels, target, pred, ignore_index).permute(1, 2, 0).numpy(), "errors"),
    ]
    height, width = image.shape[:2]
    fig, axes = plt.subplots(1, 4, figsize=(16, 16 * height / width / 4 + 1.2))
    for ax, (picture, label) in zip(axes, panels):
        ax.imshow(picture)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    key = [Patch(color=[c / 255 for c in colour], label=name) for name, colour in zip(class_names, palette)]
    if ignore_index is not None:
        key.append(Patch(color=[c / 255 for c in IGNORE_COLOUR], label=f"ignored ({ignore_index})"))
    key += [
        Patch(color=(1, 0, 1), label="error: predicted a class on background"),
        Patch(color=(0, 1, 1), label="error: missed (predicted background)"),
        Patch(color=(1, 1, 0), label="error: another class"),
    ]
    fig.legend(handles=key, loc="lower center", ncol=min(len(key), 5), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def save_reconstruction_figure(rows, path, titles=("image", "masked", "reconstruction")):
    """Save a grid of ``len(rows)`` rows x 3 pictures (an MAE's input, its visible patches, its output).

    Args:
        rows: list of triples of float ``(C, H, W)`` tensors in [0, 1] (C = 1 or 3).
        path: output ``.png`` path.
    """
    fig, axes = plt.subplots(len(rows), 3, figsize=(6, 2 * len(rows)), squeeze=False)
    for r, triple in enumerate(rows):
        for c, picture in enumerate(triple):
            ax = axes[r][c]
            array = picture.permute(1, 2, 0).numpy()
            ax.imshow(array[..., 0] if array.shape[-1] == 1 else array, cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

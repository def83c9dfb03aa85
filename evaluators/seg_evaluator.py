"""Evaluate a segmentation checkpoint at full resolution: Dice/IoU (K = 1), or per-class IoU/Dice, mIoU,
pixel accuracy and the confusion matrix (K >= 2); optional pictures with the class palette and an error panel."""

import os

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from base.config.parse import path_arg
from base.evaluator import EvaluatorBase, add_viz_argument
from data.images import read_image
from data.seg_data import native_input, native_scale
from trainers.seg_trainer import SegTrainer
from utils.plots import save_confusion_matrix, save_label_figure, save_segmentation_figure
from utils.tiling import Tiled, add_tile_arguments, check_tile_arguments, describe_tiling
from utils.tta import TTA, add_tta_argument, describe_tta


class SegEvaluator(EvaluatorBase):
    """Report a split's metrics; with ``--viz`` save image, truth, prediction and an overlay figure per picture.

    :meth:`inference_model` is the one model every prediction here goes through: the checkpoint's, with
    ``--tta`` the mean of flipped views' probabilities (:class:`utils.tta.TTA`), with ``--tile H W`` a
    sliding window over each image read at its own size times the run's scale
    (:func:`data.seg_data.native_scale`; :class:`utils.tiling.Tiled`) instead of the run's resize.
    """

    PROG = "eval_seg.py"
    trainer_class = SegTrainer

    @classmethod
    def add_arguments(cls, parser):
        super().add_arguments(parser)
        group = add_viz_argument(parser, "save pictures of every --viz_every-th sample")
        group.add_argument("--viz_every", type=int, default=5, help="picture every N-th sample of the split")
        group.add_argument(
            "--save_path",
            type=path_arg,
            default=None,
            help="folder for the pictures (default: <checkpoint stem>_viz_<split>/ beside it)",
        )
        add_tta_argument(next(g for g in parser._action_groups if g.title == "evaluation"))
        add_tile_arguments(parser)

    def run(self):
        if self.args.viz_every < 1:  # before anything is loaded
            self.parser.error(f"--viz_every={self.args.viz_every!r}: must be >= 1")
        check_tile_arguments(self.args)
        return super().run()

    def inference_model(self):
        """The model that predicts every image here: the checkpoint's (in eval mode) in ``--tta``'s wrapper
        (sigmoid for ``K = 1``, softmax else), and with ``--tile`` in a sliding window; every score and
        picture follows it."""
        a = self.args
        model = TTA(self.task.raw_model, a.tta, self.activation, spatial=True)
        return Tiled(model, a.tile, a.overlap, a.tile_blend) if a.tile else model

    @property
    def activation(self):
        """What turns the logits into probabilities: ``"sigmoid"`` for ``K = 1``, ``"softmax"`` over the classes."""
        return "sigmoid" if self.task.num_classes == 1 else "softmax"

    def tiled_batch(self, batch):
        """``--tile``: the one-image batches (on the device) of a loader's ``batch``, each image read again from
        its file at its own size times :func:`data.seg_data.native_scale` (not the run's resize), its training
        mask the full-size mask resized with nearest-neighbour to that size (for the loss)."""
        task = self.task
        for path, full in zip(batch["path"], batch["full_mask"]):
            pixels = native_input(read_image(path, "RGB"), task.args)
            size = tuple(pixels.shape[-2:])
            mask = F.interpolate(full[None, None].float(), size=size, mode="nearest")
            mask = (mask > 0).float() if task.num_classes == 1 else mask[:, 0].long()
            yield {
                "image": task.to_device(pixels[None]),
                "mask": mask.to(task.device),
                "full_mask": [full.to(task.device)],
            }

    def evaluate(self):
        task, a = self.task, self.args
        folder = a.save_path or self.output_path("", kind="viz")
        meter, index, pictures = task.make_meter(), 0, []
        model = self.inference_model()
        if a.tta != "none":
            print(describe_tta(a.tta, self.activation))
        for batch in task.loaders[a.split]:
            if a.tile:
                preds = [task.score_batch(model, one, meter)[1][0] for one in self.tiled_batch(batch)]
            else:
                preds = task.score_batch(model, task.to_device(batch), meter)[1]
            for path, full, pred in zip(batch["path"], batch["full_mask"], preds):
                if a.viz and index % a.viz_every == 0:
                    pictures.append(self.save_pictures(folder, path, full.numpy(), pred.cpu().numpy()))
                index += 1
        metrics = meter.compute()
        height, width = task.data.input_size
        predicted = (
            describe_tiling(a.tile, a.overlap, a.tile_blend)
            + f" over each image at {native_scale(task.args):g}x its size"
            if a.tile
            else f"predicted at {height}x{width}"
        )
        print(
            f"{a.split} split, {meter.count} images, {predicted} and resized with "
            f"nearest-neighbour to each image's original size before scoring against its full-size mask:"
        )
        extra = {}
        if task.num_classes == 1:
            print("  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        else:
            extra = self.report_classes(metrics, meter.confusion)
        if pictures:
            print(f"wrote {len(pictures)} picture sets (image, truth, prediction, overlay) to {folder}")
        print(f"wrote {self.output_path('.json')}")
        return {
            **metrics,
            **extra,
            "num_samples": meter.count,
            "input_size": [height, width],
            "scored_at": "original size (nearest-neighbour resize of the prediction)",
            "tta": a.tta,
            "tta_description": describe_tta(a.tta, self.activation),
            "tile": {"size": a.tile, "overlap": a.overlap, "blend": a.tile_blend, "scale": native_scale(task.args)}
            if a.tile
            else None,
            "pictures": pictures,
        }

    def report_classes(self, metrics, confusion):
        """Print the per-class table, mIoU and pixel accuracy; write the confusion matrix PNG.

        Returns:
            ``{"classes", "confusion" (rows truth, columns prediction), "confusion_png"}`` for the JSON.
        """
        names = self.task.class_names
        width = max(8, *map(len, names))
        print(f"  {'class':<{width}}  {'IoU':>7}  {'Dice':>7}  {'pixels':>10}")
        for k, name in enumerate(names):
            iou, dice = metrics[f"iou_{name}"], metrics[f"dice_{name}"]
            pixels = int(confusion[k].sum())
            cells = "    n/a      n/a" if np.isnan(iou) else f"{iou:7.4f}  {dice:7.4f}"
            print(f"  {name:<{width}}  {cells}  {pixels:>10}")
        print(
            f"  mIoU {metrics['miou']:.4f}  mDice {metrics['mdice']:.4f}  pixel accuracy {metrics['pixel_acc']:.4f}  "
            f"loss {metrics['loss']:.4f}  (n/a: a class in neither truth nor prediction, left out of the means)"
        )
        png = self.output_path("_confusion.png")
        save_confusion_matrix(confusion, names, png, title=f"{self.args.split} split: pixels (rows truth)")
        print(f"wrote {png}")
        return {"classes": names, "confusion": confusion.tolist(), "confusion_png": png}

    def save_pictures(self, folder, image_path, target, pred):
        """Write ``<stem>_image.png``, ``_truth.png``, ``_pred.png`` and ``_overlay.png``; returns the overlay's path.

        ``target`` and ``pred`` are ``(H0, W0)`` arrays at the image's original size: bool for ``K = 1``
        (truth and prediction written 0/255, the overlay with an errors panel), class maps for ``K >= 2``
        (truth and prediction written in the palette's colours; the overlay shows image, truth,
        prediction and the errors panel with a colour key).
        """
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, os.path.splitext(os.path.basename(image_path))[0])
        image = np.asarray(read_image(image_path, "RGB"))
        Image.fromarray(image).save(stem + "_image.png")
        name = os.path.basename(image_path)
        if self.task.num_classes == 1:
            target, pred = target > 0, pred > 0
            Image.fromarray(target.astype(np.uint8) * 255).save(stem + "_truth.png")
            Image.fromarray(pred.astype(np.uint8) * 255).save(stem + "_pred.png")
            inter, areas = (target & pred).sum(), target.sum() + pred.sum()
            dice = 2 * inter / areas if areas else 1.0
            save_segmentation_figure(image, target, pred, stem + "_overlay.png", title=f"{name}: Dice {dice:.4f}")
            return stem + "_overlay.png"

        from utils.seg_colors import colorize

        task, ignore = self.task, self.task.args.ignore_index
        palette = task.palette
        for suffix, labels, ig in (("_truth.png", target, ignore), ("_pred.png", pred, None)):
            Image.fromarray(colorize(torch.as_tensor(labels), palette, ig).permute(1, 2, 0).numpy()).save(stem + suffix)
        valid = target != ignore
        accuracy = float((pred[valid] == target[valid]).mean()) if valid.any() else float("nan")
        save_label_figure(
            image,
            target,
            pred,
            stem + "_overlay.png",
            palette,
            task.class_names,
            ignore,
            title=f"{name}: pixel accuracy {accuracy:.4f}",
        )
        return stem + "_overlay.png"

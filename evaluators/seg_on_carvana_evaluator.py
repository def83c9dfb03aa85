"""Evaluate a segmentation checkpoint: Dice/IoU at full resolution, optional picture triplets."""

import os

import numpy as np
import torch
from PIL import Image

from base.config.parse import path_arg
from base.evaluator import EvaluatorBase, add_viz_argument
from data.images import read_image
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer
from utils.plots import save_segmentation_figure
from utils.seg_metrics import SegmentationMeter


class SegOnCarvanaEvaluator(EvaluatorBase):
    """Report Dice and IoU of a split; with ``--viz`` save image, truth, prediction and an overlay figure."""

    PROG = "eval_seg_on_carvana.py"
    trainer_class = SegOnCarvanaTrainer

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

    def run(self):
        if self.args.viz_every < 1:  # before anything is loaded
            self.parser.error(f"--viz_every={self.args.viz_every!r}: must be >= 1")
        return super().run()

    def evaluate(self):
        task, a = self.task, self.args
        folder = a.save_path or self.output_path("", kind="viz")
        meter, index, pictures = SegmentationMeter(), 0, []
        with torch.no_grad():
            for batch in task.loaders[a.split]:
                _, preds = task.score_batch(task.raw_model, task.to_device(batch), meter)
                for path, full, pred in zip(batch["path"], batch["full_mask"], preds):
                    if a.viz and index % a.viz_every == 0:
                        pictures.append(self.save_pictures(folder, path, full.numpy() > 0, pred.cpu().numpy()))
                    index += 1
        metrics = meter.compute()
        height, width = task.data.input_size
        print(
            f"{a.split} split, {meter.count} images, predicted at {height}x{width} and resized with "
            f"nearest-neighbour to each image's original size before scoring against its full-size mask:"
        )
        print("  " + "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        if pictures:
            print(f"wrote {len(pictures)} picture sets (image, truth, prediction, overlay) to {folder}")
        print(f"wrote {self.output_path('.json')}")
        return {
            **metrics,
            "num_samples": meter.count,
            "input_size": [height, width],
            "scored_at": "original size (nearest-neighbour resize of the prediction)",
            "pictures": pictures,
        }

    @staticmethod
    def save_pictures(folder, image_path, target, pred):
        """Write ``<stem>_image.png``, ``_truth.png``, ``_pred.png`` and ``_overlay.png``; returns the overlay's path.

        ``target`` and ``pred`` are bool ``(H0, W0)`` arrays at the image's original size.
        """
        os.makedirs(folder, exist_ok=True)
        stem = os.path.join(folder, os.path.splitext(os.path.basename(image_path))[0])
        image = np.asarray(read_image(image_path, "RGB"))
        Image.fromarray(image).save(stem + "_image.png")
        Image.fromarray(target.astype(np.uint8) * 255).save(stem + "_truth.png")
        Image.fromarray(pred.astype(np.uint8) * 255).save(stem + "_pred.png")
        inter, areas = (target & pred).sum(), target.sum() + pred.sum()
        dice = 2 * inter / areas if areas else 1.0
        save_segmentation_figure(
            image, target, pred, stem + "_overlay.png", title=f"{os.path.basename(image_path)}: Dice {dice:.4f}"
        )
        return stem + "_overlay.png"

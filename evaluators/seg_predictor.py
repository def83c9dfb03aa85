"""Apply a trained segmenter to new images: one PNG mask per image, at the image's own size."""
import argparse
import os

import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms import v2

from base.checkpoint import load_model_state
from base.config import build_parser, predictor_parser
from base.evaluator_base import EvaluatorBase
from data.images import read_image
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer


class SegPredictor(EvaluatorBase):
    """Write ``<out>/<image stem>_mask.png`` (0 = background, 255 = object) for each image.

    Only the checkpoint is needed (not the training data): each image is
    resized as in training (``--image_size``, else its own size times
    ``--img_scale``), predicted (probability > 0.5), and the mask resized back
    with nearest-neighbour.
    """

    PROG = "predict_seg.py"
    trainer_class = SegOnCarvanaTrainer

    @classmethod
    def from_argv(cls, argv=None):
        parser = predictor_parser(cls, "segment")
        parser.add_argument("--out", required=True, help="folder for the masks (created if missing)")
        return cls(parser.parse_args(argv), parser)

    def run(self):
        """Predict every image; returns the list of mask paths written.

        Raises:
            CheckpointError: unreadable or foreign checkpoint. BadImageError: an unreadable image.
        """
        weights, saved = self.load_weights_and_config()
        defaults = vars(build_parser(self.trainer_class)[0].parse_args([]))
        config = argparse.Namespace(**{**defaults, **{k: v for k, v in saved.items() if k in defaults}})
        config.gpu_devices = self.args.gpu_devices
        task = self.trainer_class(config)  # no data: only the model is built
        model = task.build_model().to(task.device)
        load_model_state(model, weights, f"--model_path {self.args.model_path} (model_type {config.model_type!r})")
        model.eval()
        os.makedirs(self.args.out, exist_ok=True)
        written = []
        with torch.no_grad():
            for path in self.args.images:
                image = v2.functional.pil_to_tensor(read_image(path, "RGB"))
                height, width = image.shape[-2:]
                size = config.image_size or (round(height * config.img_scale), round(width * config.img_scale))
                x = v2.functional.resize(image, list(size), antialias=True).float().div(255).sub(0.5).div(0.5)
                with task.autocast():
                    logits = model(x[None].to(task.device)).float()
                mask = F.interpolate((logits > 0).float(), size=(height, width), mode="nearest")[0, 0]
                out = os.path.join(self.args.out, os.path.splitext(os.path.basename(path))[0] + "_mask.png")
                Image.fromarray(mask.mul(255).to(torch.uint8).cpu().numpy()).save(out)
                written.append(out)
                print(f"{path} -> {out} ({100 * float(mask.mean()):.1f}% foreground)")
        return written

    def evaluate(self):  # pragma: no cover - run() is the whole job here
        raise NotImplementedError

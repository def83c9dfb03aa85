"""Apply a trained segmenter to new images: one PNG mask per image, at the image's own size."""

import os

import torch
from PIL import Image
from torch.nn import functional as F

from base.evaluator import refuse_other_trainer
from data.images import image_to_input
from data.transforms import describe_resize
from evaluators.predictor import PredictorBase
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer


class SegPredictor(PredictorBase):
    """Write ``<out>/<image stem>_mask.png`` (0 = background, 255 = object) for each image.

    Only the checkpoint is needed (not the training data). Its model card's input recipe
    (:mod:`data.input_recipe`) makes each image the input the evaluator gives the model:
    resized to the run's input size, normalised with its ``--mean``/``--std`` by
    :class:`base.loop.input_stage.InputStage`. The model predicts (probability > 0.5) and the
    mask is resized back with nearest-neighbour. A checkpoint whose card is empty (written
    before cards held a recipe) is read as it was then: each image resized to ``--image_size``,
    else its own size times ``--img_scale``, and mapped by ``(x / 255 - 0.5) / 0.5``.
    """

    PROG = "predict_seg.py"
    VERB = "segment"
    trainer_class = SegOnCarvanaTrainer

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--out", required=True, help="folder for the masks (created if missing)")

    def trainer_for(self, extras):
        """:attr:`trainer_class` or the subclass of it the checkpoint records, after saying which weights are used.

        Raises:
            CheckpointError: another trainer's checkpoint (:func:`base.evaluator.refuse_other_trainer`).
        """
        trust = bool(getattr(self.args, "trust_module", False))  # a namespace made by hand may lack the flag
        found = refuse_other_trainer(extras, self.args.model_path, self.trainer_class, self.PROG, trust=trust)
        print(f"--model_path {self.args.model_path}: evaluating its {extras['weights']} weights")
        return found

    def build_model(self, trainer_class, config, card):
        """The model of a ``trainer_class`` task built from ``config`` (no data), and the run's ``--amp`` autocast."""
        config.gpu_devices = self.args.gpu_devices
        task = trainer_class(config)  # no data: only the model is built
        return task.build_model(), task.autocast

    @staticmethod
    def input_for(image, recipe, config):
        """uint8 ``(3, H, W)`` model pixels of the decoded RGB PIL ``image``: the card's transform, or for an
        older checkpoint (``recipe`` None) the resize of that time (``config``'s image_size / img_scale)."""
        if recipe is not None:
            return image_to_input(image, recipe["transform"])
        size = config.image_size or (round(image.height * config.img_scale), round(image.width * config.img_scale))
        return image_to_input(image, {**describe_resize(size), "backend": "torch"})

    def predict(self, loaded):
        """Create ``--out``, then write each image's mask; returns the list of mask paths written."""
        os.makedirs(self.args.out, exist_ok=True)
        return super().predict(loaded)

    def image_result(self, loaded, path, image, output):
        """Write the mask of the logits ``output`` ``(1, 1, h, w)`` at ``image``'s size; returns its path."""
        mask = F.interpolate((output > 0).float(), size=(image.height, image.width), mode="nearest")[0, 0]
        out = os.path.join(self.args.out, os.path.splitext(os.path.basename(path))[0] + "_mask.png")
        Image.fromarray(mask.mul(255).to(torch.uint8).cpu().numpy()).save(out)
        print(f"{path} -> {out} ({100 * float(mask.mean()):.1f}% foreground)")
        return out

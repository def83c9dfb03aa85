"""Apply a trained segmenter to new images: one PNG mask per image, at the image's own size."""

import argparse
import os

import torch
from PIL import Image
from torch.nn import functional as F

from base.checkpoint.files import load_model_state
from base.config.parse import build_parser
from base.config.predictor_flags import predictor_parser
from base.errors import CheckpointError
from base.evaluator import EvaluatorBase, load_saved_model
from base.loop.input_stage import InputStage
from data.images import image_to_input, read_image
from data.input_recipe import card_input
from data.transforms import describe_resize
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer


class SegPredictor(EvaluatorBase):
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
    trainer_class = SegOnCarvanaTrainer

    @classmethod
    def from_argv(cls, argv=None):
        parser = predictor_parser(cls, "segment")
        parser.add_argument("--out", required=True, help="folder for the masks (created if missing)")
        return cls(parser.parse_args(argv), parser)

    def load(self):
        """``(task, model in eval mode on task.device, input recipe or None)`` from ``--model_path``.

        Raises:
            CheckpointError: unreadable or foreign checkpoint, a card whose recipe cannot be rebuilt,
                weights that do not fit; the message names the file.
        """
        path = self.args.model_path
        weights, saved, extras = load_saved_model(path, use_ema=getattr(self.args, "eval_ema", None))
        self.check_trainer(extras)
        print(f"--model_path {path}: evaluating its {extras['weights']} weights")
        try:
            recipe = card_input(extras.get("model_card") or {})
        except ValueError as exc:
            raise CheckpointError(f"--model_path {path}: its model card cannot be rebuilt here: {exc}") from None
        defaults = vars(build_parser(self.trainer_class)[0].parse_args([]))
        config = argparse.Namespace(**{**defaults, **{k: v for k, v in saved.items() if k in defaults}})
        config.gpu_devices = self.args.gpu_devices
        task = self.trainer_class(config)  # no data: only the model is built
        model = task.build_model().to(task.device)
        load_model_state(model, weights, f"--model_path {path} (model_type {config.model_type!r})")
        return task, model.eval(), recipe

    @staticmethod
    def input_for(image, recipe, config):
        """uint8 ``(3, H, W)`` model pixels of the decoded RGB PIL ``image``: the card's transform, or for an
        older checkpoint (``recipe`` None) the resize of that time (``config``'s image_size / img_scale)."""
        if recipe is not None:
            return image_to_input(image, recipe["transform"])
        size = config.image_size or (round(image.height * config.img_scale), round(image.width * config.img_scale))
        return image_to_input(image, {**describe_resize(size), "backend": "torch"})

    def run(self):
        """Predict every image; returns the list of mask paths written.

        Raises:
            CheckpointError: see :meth:`load`. BadImageError: an unreadable image.
        """
        task, model, recipe = self.load()
        # Older checkpoints: (x / 255 - 0.5) / 0.5, what their datasets computed.
        stage = InputStage(task.device, *((recipe["mean"], recipe["std"]) if recipe else ([0.5], [0.5])))
        os.makedirs(self.args.out, exist_ok=True)
        written = []
        with torch.no_grad():
            for path in self.args.images:
                image = read_image(path, recipe["color"] if recipe else "RGB")
                height, width = image.height, image.width
                x = stage.to_device(self.input_for(image, recipe, task.args)[None])  # float32 (1, 3, H, W)
                with task.autocast():
                    logits = model(x).float()
                mask = F.interpolate((logits > 0).float(), size=(height, width), mode="nearest")[0, 0]
                out = os.path.join(self.args.out, os.path.splitext(os.path.basename(path))[0] + "_mask.png")
                Image.fromarray(mask.mul(255).to(torch.uint8).cpu().numpy()).save(out)
                written.append(out)
                print(f"{path} -> {out} ({100 * float(mask.mean()):.1f}% foreground)")
        return written

    def evaluate(self):  # pragma: no cover - run() is the whole job here
        raise NotImplementedError

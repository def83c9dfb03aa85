"""Apply a trained segmenter to new images: a mask (K = 1) or a label map and its colour picture (K >= 2) per
image, at the image's own size."""

import os

import torch
from PIL import Image
from torch.nn import functional as F

from base.checkpoint.trainer_class import checkpoint_trainer, recorded_ref
from base.errors import CheckpointError
from data.images import image_to_input
from data.seg_data import native_input, native_scale
from data.transforms import describe_resize
from evaluators.predictor import PredictorBase
from trainers.seg_on_carvana_trainer import SegOnCarvanaTrainer
from trainers.seg_trainer import SegTrainer
from utils.seg_colors import colorize, voc_palette
from utils.tiling import Tiled, add_tile_arguments, check_tile_arguments, describe_tiling
from utils.tta import TTA, add_tta_argument, describe_tta

#: Trainers whose checkpoints predict_seg.py reads, by the class name a checkpoint records.
SEG_TRAINERS = {cls.__name__: cls for cls in (SegOnCarvanaTrainer, SegTrainer)}


class SegPredictor(PredictorBase):
    """Write one result per image into ``--out``, from the checkpoint alone (not the training data).

    * ``K = 1``: ``<image stem>_mask.png`` (0 = background, 255 = object): probability > 0.5.
    * ``K >= 2``: ``<image stem>_labels.png``, the class index of each pixel (8-bit; the argmax over the
      ``K`` logits), and ``<image stem>_color.png``, the same in the card's palette colours.

    The model card's input recipe (:mod:`data.input_recipe`) makes each image the input the evaluator
    gives the model: resized to the run's input size, normalised with its ``--mean``/``--std`` by
    :class:`base.loop.input_stage.InputStage`. The prediction is resized back with nearest-neighbour. A
    checkpoint whose card is empty (written before cards held a recipe) is read as it was then: each
    image resized to ``--image_size``, else its own size times ``--img_scale``, and mapped by
    ``(x / 255 - 0.5) / 0.5``.
    """

    PROG = "predict_seg.py"
    VERB = "segment"
    trainer_class = SegOnCarvanaTrainer

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--out", required=True, help="folder for the masks (created if missing)")
        add_tta_argument(parser)
        add_tile_arguments(parser)

    @classmethod
    def check_arguments(cls, args):
        """Raises ConfigError: a bad ``--tile``, ``--overlap`` or ``--tile_blend`` (see
        :func:`utils.tiling.check_tile_arguments`)."""
        check_tile_arguments(args)

    def inference_model(self, loaded):
        """The checkpoint's model in ``--tta``'s wrapper (sigmoid for one channel, softmax else; outputs flipped
        back), and with ``--tile`` in a sliding window (:class:`utils.tiling.Tiled`); says which it is."""
        a = self.args
        activation = "sigmoid" if loaded.card.get("output", {}).get("channels", 1) == 1 else "softmax"
        model = TTA(loaded.model, a.tta, activation, spatial=True)
        if a.tta != "none":
            print(describe_tta(a.tta, activation))
        if a.tile:
            scale = native_scale(loaded.config)
            print(describe_tiling(a.tile, a.overlap, a.tile_blend) + f" over each image at {scale:g}x its size")
            return Tiled(model, a.tile, a.overlap, a.tile_blend)
        return model

    def trainer_for(self, extras):
        """The trainer class that wrote ``--model_path``, after saying which weights are used.

        A checkpoint recording ``"module:Class"`` gives that class when it is :class:`SegTrainer` or a subclass
        (Carvana's, or a task of your own: :func:`base.checkpoint.trainer_class.checkpoint_trainer`,
        ``--trust_module`` for one from outside this project); an older one records a name of
        :data:`SEG_TRAINERS` (a checkpoint naming none is Carvana's, as older ones are).

        Raises:
            CheckpointError: another trainer's checkpoint.
        """
        if recorded_ref(extras) is not None:
            trust = bool(getattr(self.args, "trust_module", False))  # a namespace made by hand may lack the flag
            found = checkpoint_trainer(extras, self.args.model_path, SegTrainer, self.PROG, trust=trust)
        else:
            card = extras.get("model_card")
            name = extras.get("trainer") or (card.get("trainer") if isinstance(card, dict) else None)
            if name is not None and name not in SEG_TRAINERS:
                script = extras.get("eval_script")
                hint = f" (use {script})" if isinstance(script, str) and script else ""
                raise CheckpointError(
                    f"--model_path {self.args.model_path}: a {name} checkpoint; {self.PROG} segments with "
                    f"{' or '.join(SEG_TRAINERS)} checkpoints{hint}"
                )
            found = SEG_TRAINERS.get(name, self.trainer_class)
        print(f"--model_path {self.args.model_path}: evaluating its {extras['weights']} weights")
        return found

    def build_model(self, trainer_class, config, card):
        """The model of a ``trainer_class`` task built from ``config`` (no data), and the run's ``--amp`` autocast."""
        config.gpu_devices = self.args.gpu_devices
        task = trainer_class(config)  # no data: only the model is built
        return task.build_model(), task.autocast

    def model_input(self, image, loaded):
        """With ``--tile``: uint8 ``(3, h, w)``, ``image`` at its own size times the run's scale
        (:func:`data.seg_data.native_scale`), for the sliding window; else :meth:`input_for`."""
        return native_input(image, loaded.config) if self.args.tile else super().model_input(image, loaded)

    @staticmethod
    def input_for(image, recipe, config):
        """uint8 ``(3, H, W)`` model pixels of the decoded RGB PIL ``image``: the card's transform, or for an
        older checkpoint (``recipe`` None) the resize of that time (``config``'s image_size / img_scale)."""
        if recipe is not None:
            return image_to_input(image, recipe["transform"])
        size = config.image_size or (round(image.height * config.img_scale), round(image.width * config.img_scale))
        return image_to_input(image, {**describe_resize(size), "backend": "torch"})

    def predict(self, loaded):
        """Create ``--out``, then write each image's result; returns the list of paths written (the mask or
        label map per image)."""
        os.makedirs(self.args.out, exist_ok=True)
        return super().predict(loaded)

    def image_result(self, loaded, path, image, output):
        """Write the prediction of the logits ``output`` ``(1, K, h, w)`` at ``image``'s size; returns its path."""
        stem = os.path.join(self.args.out, os.path.splitext(os.path.basename(path))[0])
        size = (image.height, image.width)
        if output.shape[1] == 1:
            mask = F.interpolate((output > 0).float(), size=size, mode="nearest")[0, 0]
            out = stem + "_mask.png"
            Image.fromarray(mask.mul(255).to(torch.uint8).cpu().numpy()).save(out)
            print(f"{path} -> {out} ({100 * float(mask.mean()):.1f}% foreground)")
            return out
        labels = F.interpolate(output.argmax(1, keepdim=True).float(), size=size, mode="nearest")[0, 0]
        labels = labels.to(torch.uint8).cpu()
        palette = loaded.card.get("palette") or voc_palette(output.shape[1])
        out = stem + "_labels.png"
        Image.fromarray(labels.numpy()).save(out)
        Image.fromarray(colorize(labels, palette).permute(1, 2, 0).numpy()).save(stem + "_color.png")
        names = loaded.card.get("classes") or [str(k) for k in range(output.shape[1])]
        shares = torch.bincount(labels.flatten().long(), minlength=len(names)).double() / labels.numel()
        found = ", ".join(f"{n} {100 * float(s):.1f}%" for n, s in zip(names, shares) if s > 0)
        print(f"{path} -> {out} and {stem}_color.png ({found})")
        return out

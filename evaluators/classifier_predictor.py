"""Classify new image files with a trained checkpoint: the top-k classes of each, from the checkpoint alone."""

import argparse
import json

import torch

from base.checkpoint.files import load_model_state
from base.config.checks import check
from base.config.parse import build_parser, coerce_saved_values, path_arg
from base.config.predictor_flags import predictor_parser
from base.errors import CheckpointError
from base.evaluator import load_saved_model
from base.loop.input_stage import InputStage
from base.runtime.atomic_files import write_or_fail
from base.runtime.device import select_device
from data.images import image_file_to_input
from data.input_recipe import card_input
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer

#: The trainers whose checkpoints this predictor reads, by the name a checkpoint stores.
TRAINERS = {cls.__name__: cls for cls in (VanillaTrainer, ViTTrainer)}


class ClassifierPredictor:
    """Print the ``--topk`` classes and probabilities of each image; write nothing else but ``--output_json``.

    Reads a ``*_ckpt.pth`` or a ``*_best.safetensors`` export (with its JSON
    sidecar) of any trainer in :data:`TRAINERS`. The class names, input shape
    and input recipe (evaluation resize and crop, mean and std) come from the
    checkpoint's model card, so the training data is not needed: each file becomes
    the input the run's evaluation split gives the model (:func:`data.images.image_file_to_input`,
    then :class:`base.loop.input_stage.InputStage` with the card's statistics). Runs in float32
    (no autocast), on a GPU if any (``--gpu_devices``).
    """

    PROG = "predict.py"

    @classmethod
    def from_argv(cls, argv=None):
        parser = predictor_parser(cls, "classify")
        parser.add_argument("--topk", type=int, default=5, help="classes to show per image (at most all of them)")
        parser.add_argument(
            "--output_json", type=path_arg, default=None, help="also write the predictions to this JSON file"
        )
        args = parser.parse_args(argv)
        check(args.topk > 0, "topk", args.topk, "must be > 0")
        return cls(args)

    def __init__(self, args):
        self.args = args

    def load_model(self):
        """``(model in eval mode on the device, model card)`` rebuilt from ``--model_path``.

        The card gains ``"input"``, its input recipe (:func:`data.input_recipe.card_input`: an
        older card's ``"normalize"`` scheme is read as the recipe it stood for).

        Raises:
            CheckpointError: unreadable file; a trainer other than a classifier;
                no model card (written before model cards existed); an input recipe
                this code cannot rebuild; weights that do not fit the rebuilt model.
                The message names the file.
        """
        path = self.args.model_path
        weights, saved, extras = load_saved_model(path, use_ema=self.args.eval_ema)
        card = extras.get("model_card") or {}
        trainer = extras.get("trainer") or card.get("trainer")
        # A segmentation checkpoint has a trainer name but no card: say which, not "too old".
        if (card or trainer is not None) and trainer not in TRAINERS:
            raise CheckpointError(
                f"--model_path {path}: a {trainer or 'unnamed trainer'} checkpoint; predict.py "
                f"reads {', '.join(TRAINERS)} checkpoints (segmentation: predict_seg.py)"
            )
        if not card:
            raise CheckpointError(
                f"--model_path {path}: it predates model cards (no class names or input shape "
                f"saved); evaluate it with eval_vanilla.py/eval_vit.py, or resume the run "
                f"with --resume to write a checkpoint that has one"
            )
        shape = card.get("input_shape")
        try:
            recipe = card_input(card)
            if recipe is None:
                raise ValueError("no input recipe")
        except ValueError as exc:
            raise CheckpointError(
                f"--model_path {path}: its model card (input {shape}) cannot be rebuilt here: {exc}"
            ) from None
        if len(shape or ()) != 3 or shape[0] != (1 if recipe["color"] == "L" else 3):
            raise CheckpointError(
                f"--model_path {path}: its model card gives input_shape {shape} for "
                f"{recipe['color']} images; expected [1 or 3, H, W] to match"
            )
        card = {**card, "input": recipe}
        trainer_class = TRAINERS[trainer]
        # The trainer's defaults fill flags added since the run; only model-building flags matter here.
        defaults = vars(build_parser(trainer_class)[0].parse_args([]))
        # Saved values never went through a parser here: type-check them first (ConfigError names file and key).
        values = coerce_saved_values(trainer_class, saved, f"--model_path {path} (its saved config)")
        config = argparse.Namespace(**{**defaults, **{k: v for k, v in values.items() if k in defaults}})
        try:
            model = trainer_class.model_for(config, tuple(card["input_shape"]), len(card["class_names"]))
        except (KeyError, ValueError) as exc:  # e.g. a model_type this version does not know
            raise CheckpointError(
                f"--model_path {path}: cannot rebuild its model ({str(exc).strip(chr(39))})"
            ) from None
        load_model_state(model, weights, f"--model_path {path} (model_type {config.model_type!r})")
        return model.to(select_device(self.args.gpu_devices)).eval(), card

    @torch.no_grad()
    def predict(self, model, card):
        """``[{"image": path, "top": [{"class", "index", "probability"}, ...]}]``, one per image, in order.

        ``top`` holds ``min(--topk, number of classes)`` entries by decreasing
        probability (softmax of the logits, float in [0, 1]).

        Raises:
            BadImageError: an image file cannot be decoded; the message names it.
        """
        recipe = card["input"]
        # The arithmetic of evaluation itself (x / 255, then mean and std), with the run's statistics.
        stage = InputStage(next(model.parameters()).device, recipe["mean"], recipe["std"])
        k = min(self.args.topk, len(card["class_names"]))
        results = []
        for path in self.args.images:
            x = stage.to_device(image_file_to_input(path, recipe)[None])  # float32 (1, C, H, W)
            probs = torch.softmax(model(x).float(), dim=1)[0].cpu()
            top = probs.topk(k)
            results.append(
                {
                    "image": path,
                    "top": [
                        {"class": card["class_names"][i], "index": i, "probability": float(p)}
                        for p, i in zip(top.values.tolist(), top.indices.tolist())
                    ],
                }
            )
        return results

    def run(self):
        """Load, predict, print one line per image, write ``--output_json`` if given; returns the predictions.

        Raises:
            CheckpointError: see :meth:`load_model`; ``--output_json`` cannot be written.
            BadImageError: see :meth:`predict`.
        """
        model, card = self.load_model()
        results = self.predict(model, card)
        for r in results:
            print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.4f}" for t in r["top"]))
        if self.args.output_json:
            doc = {"model_path": self.args.model_path, "class_names": card["class_names"], "predictions": results}
            write_or_fail(
                self.args.output_json, lambda f: f.write(json.dumps(doc, indent=2).encode()), what="--output_json"
            )
        return results

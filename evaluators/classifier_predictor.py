"""Classify new image files with a trained checkpoint: the top-k classes of each (multi-label models: every label
at or above the threshold), from the checkpoint alone."""

import contextlib
import json

import torch

from base.checkpoint.trainer_class import recorded_ref, resolve_trainer, trainer_ref
from base.config.checks import check
from base.config.parse import coerce_saved_values, path_arg
from base.errors import CheckpointError
from base.runtime.atomic_files import write_or_fail
from data.input_recipe import card_input
from evaluators.predictor import PredictorBase
from trainers.vanilla_trainer import VanillaTrainer
from trainers.vit_trainer import ViTTrainer
from utils.tta import TTA, add_tta_argument, describe_tta

#: The trainers whose checkpoints this predictor reads, by the name a checkpoint stores.
TRAINERS = {cls.__name__: cls for cls in (VanillaTrainer, ViTTrainer)}


class ClassifierPredictor(PredictorBase):
    """Print the ``--topk`` classes and probabilities of each image; write nothing else but ``--output_json``.

    Reads a ``*_ckpt.pth`` or a ``*_best.safetensors`` export (with its JSON
    sidecar) of any trainer in :data:`TRAINERS`. The class names, input shape
    and input recipe (evaluation resize and crop, mean and std) come from the
    checkpoint's model card, so the training data is not needed: each file becomes
    the input the run's evaluation split gives the model (:func:`data.images.image_file_to_input`,
    then :class:`base.loop.input_stage.InputStage` with the card's statistics). Runs in float32
    (no autocast), on a GPU if any (``--gpu_devices``).

    A multi-label model (its card says ``"multilabel": true``) gives each image every label whose sigmoid
    probability is ``>= --threshold`` (default: the run's own ``--threshold``, from its card), or none.
    """

    PROG = "predict.py"
    VERB = "classify"

    @classmethod
    def add_arguments(cls, parser):
        parser.add_argument("--topk", type=int, default=5, help="classes to show per image (at most all of them)")
        parser.add_argument(
            "--output_json", type=path_arg, default=None, help="also write the predictions to this JSON file"
        )
        add_tta_argument(parser)
        parser.add_argument(
            "--threshold",
            type=float,
            default=None,
            help="multi-label models: show the labels of probability >= this (default: the run's --threshold)",
        )

    def inference_model(self, loaded):
        """The checkpoint's model in ``--tta``'s :class:`utils.tta.TTA` (softmax; sigmoid for a multi-label model)."""
        return TTA(loaded.model, self.args.tta, self.activation(loaded.card))

    @staticmethod
    def activation(card):
        """What turns the model's logits into probabilities: ``"sigmoid"`` per label for a multi-label card."""
        return "sigmoid" if card.get("multilabel") else "softmax"

    @classmethod
    def check_arguments(cls, args):
        """Raises ConfigError: ``--topk`` < 1, ``--threshold`` outside (0, 1)."""
        check(args.topk > 0, "topk", args.topk, "must be > 0")
        if args.threshold is not None:
            check(0 < args.threshold < 1, "threshold", args.threshold, "must be in (0, 1)")

    def trainer_for(self, extras):
        """The classification trainer of :data:`TRAINERS` that wrote ``--model_path``, or the subclass of one
        that it records as ``"module:Class"`` (:mod:`base.checkpoint.trainer_class`; ``--trust_module`` to
        import one from outside this project).

        Raises:
            CheckpointError: another trainer's checkpoint (e.g. a segmentation one); no model card
                (written before model cards existed); a recorded class that cannot be imported. The
                message names the file.
        """
        path = self.args.model_path
        card = extras.get("model_card") or {}
        trainer = extras.get("trainer") or card.get("trainer")
        found, ref = None, recorded_ref(extras)
        if ref is not None and ref not in {trainer_ref(c) for c in TRAINERS.values()}:
            found = resolve_trainer(ref, f"--model_path {path}", bool(getattr(self.args, "trust_module", False)))
            if not issubclass(found, tuple(TRAINERS.values())):
                # refused below, by its name (its module:Class where the name is one of TRAINERS')
                trainer, found = (ref if found.__name__ in TRAINERS else found.__name__), None
        # A segmentation checkpoint has a trainer name but no card: say which, not "too old".
        if found is None and (card or trainer is not None) and trainer not in TRAINERS:
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
        return found or TRAINERS[trainer]

    def recipe_for(self, card):
        """The card's input recipe (:func:`data.input_recipe.card_input`: an older card's ``"normalize"``
        scheme is read as the recipe it stood for); a classifier's card must have one.

        Raises:
            CheckpointError: no recipe, one this code cannot rebuild, or an ``input_shape`` that is not
                ``[1 or 3, H, W]`` matching its colour; the message names the file.
        """
        path = self.args.model_path
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
        return recipe

    def saved_config(self, trainer_class, saved):
        """As :meth:`PredictorBase.saved_config`, the saved values type-checked first.

        Raises:
            ConfigError: a saved value of the wrong type or outside its choices; names the file and key.
        """
        path = self.args.model_path
        # Saved values never went through a parser here: type-check them first (ConfigError names file and key).
        return super().saved_config(
            trainer_class, coerce_saved_values(trainer_class, saved, f"--model_path {path} (its saved config)")
        )

    def build_model(self, trainer_class, config, card):
        """``trainer_class.model_for`` the card's input shape and class count (no data, no trainer); float32.

        Raises:
            CheckpointError: the model cannot be built (e.g. a ``model_type`` this version does not know); a
                task that overrides ``build_model`` but not ``model_for`` (this would build another model).
        """
        definer = {
            name: next(k for k in trainer_class.__mro__ if name in vars(k)) for name in ("build_model", "model_for")
        }
        if definer["build_model"] is not definer["model_for"] and issubclass(
            definer["build_model"], definer["model_for"]
        ):
            raise CheckpointError(
                f"--model_path {self.args.model_path}: its trainer {trainer_class.__name__} overrides build_model but "
                f"not model_for, which {self.PROG} builds the model with (no data): override model_for too"
            )
        try:
            model = trainer_class.model_for(config, tuple(card["input_shape"]), len(card["class_names"]))
        except (KeyError, ValueError) as exc:  # e.g. a model_type this version does not know
            raise CheckpointError(
                f"--model_path {self.args.model_path}: cannot rebuild its model ({str(exc).strip(chr(39))})"
            ) from None
        return model, contextlib.nullcontext

    def threshold(self, loaded):
        """The multi-label threshold: ``--threshold``, else the card's (the run's ``--threshold``), else 0.5."""
        if self.args.threshold is not None:
            return self.args.threshold
        return float(loaded.card.get("threshold", getattr(loaded.config, "threshold", 0.5)))

    def image_result(self, loaded, path, image, output):
        """``{"image": path, "top": [{"class", "index", "probability"}, ...]}``.

        ``top`` holds ``min(--topk, number of classes)`` entries by decreasing probability
        (softmax of the logits ``output`` (1, classes), float in [0, 1]). A multi-label model's ``top`` holds every
        label whose sigmoid probability is ``>= threshold`` (:meth:`threshold`, also in the result), by
        decreasing probability; it may be empty.
        """
        class_names = loaded.card["class_names"]
        if loaded.card.get("multilabel"):
            threshold, probs = self.threshold(loaded), torch.sigmoid(output)[0].cpu()
            order = [i for i in probs.argsort(descending=True).tolist() if float(probs[i]) >= threshold]
            top = [{"class": class_names[i], "index": i, "probability": float(probs[i])} for i in order]
            return {"image": path, "threshold": threshold, "top": top}
        probs = torch.softmax(output, dim=1)[0].cpu()
        top = probs.topk(min(self.args.topk, len(class_names)))
        return {
            "image": path,
            "top": [
                {"class": class_names[i], "index": i, "probability": float(p)}
                for p, i in zip(top.values.tolist(), top.indices.tolist())
            ],
        }

    def report(self, loaded, results):
        """Print one line per image; write ``--output_json`` if given.

        Raises:
            CheckpointError: ``--output_json`` cannot be written.
        """
        tta = describe_tta(self.args.tta, self.activation(loaded.card))
        if self.args.tta != "none":
            print(tta)
        for r in results:
            found = ", ".join(f"{t['class']} {t['probability']:.4f}" for t in r["top"])
            print(f"{r['image']}: {found or 'no label above the threshold'}")
        if self.args.output_json:
            doc = {
                "model_path": self.args.model_path,
                "class_names": loaded.card["class_names"],
                "tta": self.args.tta,
                "tta_description": tta,
                **({"multilabel": True} if loaded.card.get("multilabel") else {}),
                "predictions": results,
            }
            write_or_fail(
                self.args.output_json, lambda f: f.write(json.dumps(doc, indent=2).encode()), what="--output_json"
            )

"""``PredictorBase``: apply a trained model to image files, from its checkpoint (or weights export) alone.

What every ``predict*.py`` does, in this order (:meth:`PredictorBase.run`):

1. :meth:`~PredictorBase.from_argv`: :func:`base.config.parse.predictor_parser`'s flags (``--model_path``,
   the image files, ``--gpu_devices``, ``--eval_ema``, ``--debug``), then the predictor's own
   (:meth:`~PredictorBase.add_arguments`, checked by :meth:`~PredictorBase.check_arguments`);
2. :meth:`~PredictorBase.load`: read ``--model_path`` (:func:`base.evaluator.load_saved_model`), refuse
   another task's checkpoint (:meth:`~PredictorBase.trainer_for`), rebuild the card's input recipe
   (:meth:`~PredictorBase.recipe_for`) and the model from the saved config
   (:meth:`~PredictorBase.build_model`), load the weights, and put the model in eval mode on
   ``--gpu_devices`` (:func:`base.runtime.device.select_device`);
3. for each image file, in the order given: decode it (:func:`data.images.read_image`), resize and
   crop it as the evaluation split did (:meth:`~PredictorBase.input_for`), make it the model's
   float input on the device (:class:`base.loop.input_stage.InputStage` with the recipe's ``mean``
   and ``std``), run the model, and turn its output into one result
   (:meth:`~PredictorBase.image_result`, where each predictor differs);
4. :meth:`~PredictorBase.report` the results (nothing by default).

Nothing runs with autograd. Errors are :class:`base.errors.UserError` subclasses naming the file, which
:func:`base.cli.main` prints as one line (exit status 1; 2 for a bad flag).
"""

from __future__ import annotations

import abc
import argparse
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, NamedTuple

import torch

from base.checkpoint.files import load_model_state
from base.config.parse import build_parser
from base.config.predictor_flags import predictor_parser
from base.errors import CheckpointError
from base.evaluator import load_saved_model
from base.loop.input_stage import InputStage
from base.runtime.device import select_device
from data.images import image_to_input, read_image
from data.input_recipe import card_input


class LoadedModel(NamedTuple):
    """What :meth:`PredictorBase.load` rebuilt from ``--model_path``."""

    #: the trained model in eval mode on :attr:`device`
    model: torch.nn.Module
    #: the ``torch.device`` chosen by ``--gpu_devices``
    device: torch.device
    #: the card's input recipe (:mod:`data.input_recipe`), or ``None`` for a card that records none
    recipe: dict | None
    #: the checkpoint's model card (``{}`` when it has none)
    card: dict
    #: the trainer config the model was built from (trainer defaults, then the saved values)
    config: argparse.Namespace
    #: called around each forward pass: ``contextlib.nullcontext`` (float32) or the run's ``--amp`` autocast
    autocast: Callable[[], AbstractContextManager]


class PredictorBase(abc.ABC):
    """Predict on the image files given on the command line with the model of ``--model_path`` (module docstring).

    A subclass sets :attr:`PROG` and :attr:`VERB` and implements :meth:`trainer_for`,
    :meth:`build_model` and :meth:`image_result`; the other steps have defaults it may override.
    """

    #: the entry script, as ``--help`` and error lines name it
    PROG: str | None = None
    #: what is done to the images, for their ``--help`` line ("image files to <VERB>")
    VERB: str | None = None

    @classmethod  # noqa: B027 - optional: no own flags
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the predictor's own flags to ``parser`` (none by default)."""

    @classmethod  # noqa: B027 - optional: nothing to check
    def check_arguments(cls, args: argparse.Namespace) -> None:
        """Check the parsed flags together (nothing by default).

        Raises:
            ConfigError: a bad value, naming the flag (exit status 2).
        """

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> PredictorBase:
        """Parse ``argv`` (``sys.argv[1:]`` when ``None``; argparse exits 2 on a bad flag); nothing is loaded yet.

        Raises:
            ConfigError: see :meth:`check_arguments`.
        """
        parser = predictor_parser(cls, cls.VERB)
        cls.add_arguments(parser)
        args = parser.parse_args(argv)
        cls.check_arguments(args)
        return cls(args, parser)

    def __init__(self, args: argparse.Namespace, parser: argparse.ArgumentParser | None = None):
        self.args, self.parser = args, parser

    # ----------------------------------------------------------------- loading
    @abc.abstractmethod
    def trainer_for(self, extras: dict[str, Any]) -> type:
        """The trainer class whose model ``--model_path`` holds, from :func:`load_saved_model`'s ``extras``.

        Raises:
            CheckpointError: a checkpoint this predictor does not read; the message names the file.
        """

    def recipe_for(self, card: dict) -> dict | None:
        """The input recipe of the checkpoint's model ``card`` (:func:`data.input_recipe.card_input`), or ``None``.

        Raises:
            CheckpointError: a recipe this code cannot rebuild; the message names the file.
        """
        try:
            return card_input(card)
        except ValueError as exc:
            raise CheckpointError(
                f"--model_path {self.args.model_path}: its model card cannot be rebuilt here: {exc}"
            ) from None

    def saved_config(self, trainer_class: type, saved: dict[str, Any]) -> argparse.Namespace:
        """``trainer_class``'s defaults, then the ``saved`` values of the flags it still has.

        The defaults fill flags added since the run; saved keys the trainer no longer has are dropped.
        """
        defaults = vars(build_parser(trainer_class)[0].parse_args([]))
        return argparse.Namespace(**{**defaults, **{k: v for k, v in saved.items() if k in defaults}})

    @abc.abstractmethod
    def build_model(
        self, trainer_class: type, config: argparse.Namespace, card: dict
    ) -> tuple[torch.nn.Module, Callable[[], AbstractContextManager]]:
        """``(untrained model, autocast)``: the model ``config`` describes, and what each forward runs in.

        Raises:
            CheckpointError: the model cannot be rebuilt; the message names the file.
        """

    def load(self) -> LoadedModel:
        """The model of ``--model_path`` with its weights, in eval mode on ``--gpu_devices``; see :class:`LoadedModel`.

        Raises:
            CheckpointError: unreadable or foreign file, a card or model that cannot be rebuilt, weights
                that do not fit the model; the message names the file.
            ConfigError: ``--gpu_devices`` names no device here; a saved value of the wrong type (a
                predictor that checks them).
        """
        path = self.args.model_path
        # getattr: a namespace made by hand (not by from_argv) may lack --eval_ema; None follows the run.
        weights, saved, extras = load_saved_model(path, use_ema=getattr(self.args, "eval_ema", None))
        trainer_class = self.trainer_for(extras)
        card = extras.get("model_card") or {}
        recipe = self.recipe_for(card)
        config = self.saved_config(trainer_class, saved)
        model, autocast = self.build_model(trainer_class, config, card)
        load_model_state(model, weights, f"--model_path {path} (model_type {config.model_type!r})")
        device = select_device(self.args.gpu_devices)
        return LoadedModel(model.to(device).eval(), device, recipe, card, config, autocast)

    # ----------------------------------------------------------------- predicting
    @staticmethod
    def input_for(image, recipe: dict | None, config: argparse.Namespace) -> torch.Tensor:
        """uint8 ``(C, H, W)`` model pixels of the decoded PIL ``image``: the ``recipe``'s resize and crop.

        ``config`` (the rebuilt trainer config) is for a subclass that reads checkpoints without a recipe.

        Raises:
            ValueError: the recipe's resize is unknown (see :func:`data.transforms.described_transform`).
        """
        return image_to_input(image, recipe["transform"])

    @abc.abstractmethod
    def image_result(self, loaded: LoadedModel, path: str, image, output: torch.Tensor) -> Any:
        """The result for the image file ``path`` (decoded as the PIL ``image``, at its own size).

        ``output`` is the model's float32 output for it, a batch of one (e.g. logits ``(1, classes)``).
        """

    def model_input(self, image, loaded: LoadedModel) -> torch.Tensor:
        """uint8 ``(C, H, W)`` pixels the model gets for the decoded ``image``: :meth:`input_for` with the
        checkpoint's recipe (a subclass may predict at another size, e.g. tiled at the image's own)."""
        return self.input_for(image, loaded.recipe, loaded.config)

    def inference_model(self, loaded: LoadedModel) -> torch.nn.Module:
        """The model :meth:`predict` calls on each input: ``loaded.model`` (a wrapper, e.g. test-time
        augmentation or tiling, would be returned here)."""
        return loaded.model

    @torch.no_grad()
    def predict(self, loaded: LoadedModel) -> list[Any]:
        """:meth:`image_result` of each image file, in order (module docstring, step 3).

        Raises:
            BadImageError: an image file cannot be decoded; the message names it.
        """
        recipe = loaded.recipe
        # No recipe (segmentation cards of before): RGB and (x / 255 - 0.5) / 0.5, what their datasets computed.
        stage = InputStage(loaded.device, *((recipe["mean"], recipe["std"]) if recipe else ([0.5], [0.5])))
        results, model = [], self.inference_model(loaded)
        for path in self.args.images:
            image = read_image(path, recipe["color"] if recipe else "RGB")
            x = stage.to_device(self.model_input(image, loaded)[None])  # float32 (1, C, H, W)
            with loaded.autocast():
                output = model(x).float()
            results.append(self.image_result(loaded, path, image, output))
        return results

    def report(self, loaded: LoadedModel, results: list[Any]) -> None:  # noqa: B027 - optional: nothing to say
        """Say what :meth:`predict` found, after all the images (nothing by default)."""

    def run(self) -> list[Any]:
        """Load, predict each image, report; returns the results (one per image, in order).

        Raises:
            CheckpointError, ConfigError: see :meth:`load`. BadImageError: see :meth:`predict`.
        """
        loaded = self.load()
        results = self.predict(loaded)
        self.report(loaded, results)
        return results

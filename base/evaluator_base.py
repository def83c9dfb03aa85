"""``EvaluatorBase``: rebuild a trained model and its data from a checkpoint alone.

The checkpoint carries the run's resolved config as a JSON string; the
evaluator re-creates the task's trainer from it (no run folder, no optimizer),
so ``eval_x.py --model_path RUN/Model_best_ckpt.pth`` needs no other flag.
Any trainer flag given on the command line overrides the saved value.
"""
import abc
import argparse
import json
import os

from base.checkpoint import load_checkpoint, load_model_state
from base.config import build_parser
from base.errors import CheckpointError


class EvaluatorBase(abc.ABC):
    """Evaluate a checkpoint of :attr:`trainer_class`.

    Subclasses set :attr:`trainer_class` and implement :meth:`evaluate`, which
    runs on ``self.task`` (a built trainer: ``task.model`` with the checkpoint's
    weights, ``task.loaders``, ``task.device``) and returns a JSON-able dict.
    Results go beside the checkpoint as ``<checkpoint stem>_eval_<split>.json``.
    """

    trainer_class = None

    @classmethod
    def add_arguments(cls, parser):
        group = parser.add_argument_group("evaluation")
        group.add_argument("--model_path", required=True, help="checkpoint (*.pth) to evaluate")
        group.add_argument("--split", choices=["test", "val"], default="test", help="split to evaluate")

    @classmethod
    def from_argv(cls, argv=None):
        """Parse evaluator flags plus the trainer's (unset unless given); nothing is loaded yet."""
        parser, _ = build_parser(cls.trainer_class, suppress_defaults=True)
        parser.prog = getattr(cls, "PROG", None)
        parser.description = (cls.__doc__ or "").strip().split("\n")[0]
        cls.add_arguments(parser)
        args = parser.parse_args(argv)
        return cls(args, parser)

    def __init__(self, args, parser=None):
        self.args, self.parser = args, parser

    def resolve_task_config(self, saved):
        """Trainer defaults, then the checkpoint's saved config, then command-line flags.

        Raises:
            ConfigError: the merged config fails the trainer's validation.
        """
        defaults, _ = build_parser(self.trainer_class)
        known = vars(defaults.parse_args([]))
        merged = {**known, **{k: v for k, v in saved.items() if k in known}}
        # Evaluation writes beside the checkpoint; the training machine's output folder
        # may not exist here and must not fail validation.
        merged["output_dir"] = os.path.dirname(os.path.abspath(self.args.model_path))
        merged.update({k: v for k, v in vars(self.args).items() if k in known})
        task_args = argparse.Namespace(**merged)
        self.trainer_class.validate_config(task_args)
        return task_args

    def load_weights_and_config(self):
        """``(state_dict, saved_config)`` of ``--model_path`` (see :func:`load_saved_model`)."""
        weights, config, _ = load_saved_model(self.args.model_path)
        return weights, config

    def run(self):
        """Load the checkpoint, rebuild the task, evaluate, write the results JSON."""
        weights, saved = self.load_weights_and_config()
        self.task = self.trainer_class(self.resolve_task_config(saved))
        self.task.build()
        load_model_state(self.task.model, weights,
                         f"--model_path {self.args.model_path} (model_type {saved.get('model_type')!r}, "
                         f"evaluating {self.task.args.model_type!r})")
        self.task.model.eval()
        results = self.evaluate()
        results = {"checkpoint": os.path.abspath(self.args.model_path), "split": self.args.split, **results}
        with open(self.output_path(".json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        return results

    def output_path(self, suffix, kind="eval"):
        """``<checkpoint folder>/<checkpoint stem>_<kind>_<split><suffix>``."""
        stem = os.path.splitext(self.args.model_path)[0]
        return f"{stem}_{kind}_{self.args.split}{suffix}"

    @abc.abstractmethod
    def evaluate(self):
        """Evaluate ``self.task.model`` on ``self.task.loaders[self.args.split]``; return a dict."""


def load_saved_model(path, flag="--model_path"):
    """``(state_dict, saved_config, extras)`` from a ``.pth`` checkpoint or a ``.safetensors`` export.

    A ``.safetensors`` file needs its JSON sidecar (same stem) for the config.

    Returns:
        ``state_dict``: name -> tensor (CPU); ``saved_config``: the run's config
        dict; ``extras``: the checkpoint's (or sidecar's) other JSON-able
        entries, e.g. ``"trainer"``, ``"model_card"``, ``"metrics"`` (optimizer
        and other tensor states of a ``.pth`` are left out).

    Raises:
        CheckpointError: missing, truncated, foreign or unsafe file; the message names it (after ``flag``).
    """
    if not path.endswith(".safetensors"):
        ckpt = load_checkpoint(path, flag=flag)
        extras = {k: ckpt[k] for k in ("trainer", "model_card", "metrics", "global_step") if k in ckpt}
        try:
            return ckpt["model"], json.loads(ckpt.get("config") or "{}"), extras
        except (TypeError, json.JSONDecodeError):
            raise CheckpointError(f"{flag} {path}: its saved config is not JSON") from None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sidecar = os.path.splitext(path)[0] + ".json"
    try:
        weights = load_file(path)
        with open(sidecar, encoding="utf-8") as f:
            saved = json.load(f)
        return weights, saved["config"], {k: v for k, v in saved.items() if k != "config"}
    except FileNotFoundError as exc:
        raise CheckpointError(f"{flag} {path}: {exc.filename} not found") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{flag} {path} (or {sidecar}): unreadable ({exc})") from None

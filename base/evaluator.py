"""``EvaluatorBase``: rebuild a trained model and its data from a checkpoint alone.

The checkpoint carries the run's resolved config as a JSON string; the
evaluator re-creates the task's trainer from it (no run folder, no optimizer),
so ``eval_x.py --model_path RUN/Model_best_ckpt.pth`` needs no other flag.
Any trainer flag given on the command line overrides the saved value.
A checkpoint written by another trainer is refused with one line naming both; one of a subclass of
the evaluator's trainer (a user's task, recorded as ``"module:Class"``) is rebuilt with that subclass
(:mod:`base.checkpoint.trainer_class`: imported without asking only from inside the project).
"""

from __future__ import annotations

import abc
import argparse
import json
import os
import sys
from typing import Any

import torch

from base.checkpoint.files import load_checkpoint, load_model_state
from base.checkpoint.trainer_class import KEY as TRAINER_CLASS_KEY, checkpoint_trainer
from base.config.parse import build_parser, coerce_saved_values, path_arg
from base.errors import CheckpointError, UserError

#: ``--help``'s title for the trainer's flags, which an evaluator accepts to override the saved values.
TRAINER_FLAGS_TITLE = "trainer flags (override the checkpoint's)"


class EvaluatorBase(abc.ABC):
    """Evaluate a checkpoint of :attr:`trainer_class`.

    Subclasses set :attr:`trainer_class` and implement :meth:`evaluate`, which
    runs on ``self.task`` (a built trainer: ``task.model`` with the checkpoint's
    weights, ``task.loaders``, ``task.device``) and returns a JSON-able dict.
    Results go beside the checkpoint as ``<checkpoint stem>_eval_<split>.json``.
    """

    trainer_class = None
    #: Names of other trainer classes whose checkpoints this evaluator reads as its own (a checkpoint
    #: records its trainer's name; another trainer's is refused unless it subclasses :attr:`trainer_class`).
    compatible_trainers = ()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("evaluation")
        group.add_argument(
            "--model_path",
            type=path_arg,
            required=True,
            help="checkpoint (*_ckpt.pth) or weights export (*_best.safetensors beside its .json)",
        )
        group.add_argument("--split", choices=["test", "val"], default="test", help="split to evaluate")
        group.add_argument(
            "--trust_module",
            action="store_true",
            help="import the checkpoint's trainer module even from outside this project (importing runs its code)",
        )

    @classmethod
    def from_argv(cls, argv: list[str] | None = None) -> EvaluatorBase:
        """Parse evaluator flags plus the trainer's (unset unless given); nothing is loaded yet."""
        parser, _ = build_parser(cls.trainer_class, suppress_defaults=True)
        parser.prog = getattr(cls, "PROG", None)
        parser.description = (cls.__doc__ or "").strip().split("\n")[0]
        trainer_groups = list(parser._action_groups)
        cls.add_arguments(parser)
        _evaluator_flags_first(parser, trainer_groups)
        args = parser.parse_args(argv)
        return cls(args, parser)

    def __init__(self, args, parser=None):
        self.args, self.parser = args, parser

    def resolve_task_config(self, saved):
        """Trainer defaults, then the checkpoint's saved config, then command-line flags.

        Saved keys the trainer no longer has are dropped; the others are typed
        and checked like a ``--config`` file's.

        Raises:
            ConfigError: a saved value of the wrong type or outside its choices
                (e.g. an unknown ``model_type``), naming ``--model_path`` and the
                key; the merged config fails the trainer's checks (``check_config``).
        """
        defaults, _ = build_parser(self.trainer_class)
        known = vars(defaults.parse_args([]))
        saved = coerce_saved_values(self.trainer_class, saved, f"--model_path {self.args.model_path}: its saved config")
        merged = {**known, **saved}
        # Evaluation writes beside the checkpoint; the training machine's output folder
        # may not exist here and must not fail its check.
        merged["output_dir"] = os.path.dirname(os.path.abspath(self.args.model_path))
        merged["loggers"] = ""  # evaluation reports to no tracker (whose package may not be installed here)
        for flag in self.trainer_class.INIT_ONLY_FLAGS:  # the checkpoint's weights replace what they chose
            merged[flag] = None  # (their files need not exist where it is evaluated)
        merged["data_on_device"] = False  # evaluation trains on nothing: no training split to upload
        merged.update({k: v for k, v in vars(self.args).items() if k in known})
        task_args = argparse.Namespace(**merged)
        self.trainer_class.check_config(task_args)
        return task_args

    def load_weights_and_config(self):
        """``(state_dict, saved_config)`` of ``--model_path`` (see :func:`load_saved_model`)."""
        weights, config, extras = load_saved_model(self.args.model_path, use_ema=getattr(self.args, "eval_ema", None))
        self.trainer_class = self.check_trainer(extras)  # this evaluator's trainer, or the checkpoint's subclass
        print(f"--model_path {self.args.model_path}: evaluating its {extras['weights']} weights")
        return weights, config

    def check_trainer(self, extras):
        """The trainer class that rebuilds the checkpoint's task: :attr:`trainer_class`, or the subclass of it
        the checkpoint records (``--trust_module`` to import one from outside the project); refuse another
        trainer's checkpoint (:func:`base.checkpoint.trainer_class.checkpoint_trainer`).

        Raises:
            CheckpointError: ``"--model_path X: a ViTTrainer checkpoint; eval_vanilla.py
                evaluates VanillaTrainer checkpoints (use eval_vit.py)"``; a recorded class that cannot be imported.
        """
        prog = getattr(self, "PROG", None) or type(self).__name__
        trust = bool(getattr(self.args, "trust_module", False))  # a namespace made by hand may lack the flag
        return checkpoint_trainer(
            extras, self.args.model_path, self.trainer_class, prog, self.compatible_trainers, trust
        )

    def run(self) -> dict[str, Any]:
        """Load the checkpoint, rebuild the task, evaluate, write the results JSON."""
        weights, saved = self.load_weights_and_config()
        self.task = self.trainer_class(self.resolve_task_config(saved))
        self.task.build()
        self.check_split()
        load_model_state(
            self.task.model,
            weights,
            f"--model_path {self.args.model_path} (model_type {saved.get('model_type')!r}, "
            f"evaluating {vars(self.task.args).get('model_type')!r})",
        )
        self.task.model.eval()
        bad = nonfinite_count(weights)
        if bad:  # the metrics below would be numbers computed from NaN: say so before them
            print(
                f"warning: --model_path {self.args.model_path} holds {bad} non-finite weight values (NaN/inf); "
                f"its results are meaningless (was the run stopped by a NaN loss?)",
                file=sys.stderr,
            )
        with torch.inference_mode():  # no autograd records: less memory, faster; evaluate() never trains
            results = self.evaluate()
        results = {
            "checkpoint": os.path.abspath(self.args.model_path),
            "split": self.args.split,
            "nonfinite_weights": bad,
            **results,
        }
        with open(self.output_path(".json"), "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
        return results

    def check_split(self):
        """Refuse a ``--split`` of which the rebuilt task has no sample (``test`` of a run trained with
        ``--test_fraction 0``), before any evaluation.

        Raises:
            UserError: one line naming ``--split``, ``--model_path`` and what to evaluate instead.
        """
        split = self.args.split
        if len(self.task.datasets.get(split, ())):
            return
        why = (
            " (it was trained with --test_fraction 0)"
            if split == "test" and getattr(self.task.args, "test_fraction", None) == 0
            else ""
        )
        instead = "; evaluate --split val" if split == "test" else ""
        raise UserError(
            f"--split {split}: the run of --model_path {self.args.model_path} has no {split} split{why}{instead}"
        )

    def output_path(self, suffix, kind="eval"):
        """``<checkpoint folder>/<checkpoint stem>_<kind>_<split><suffix>``."""
        stem = os.path.splitext(self.args.model_path)[0]
        return f"{stem}_{kind}_{self.args.split}{suffix}"

    @abc.abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """Evaluate ``self.task.model`` on ``self.task.loaders[self.args.split]``; return a dict."""


def add_viz_argument(parser, help):
    """Add the ``pictures`` group with ``--viz`` (a boolean, off by default) to ``parser``; returns the group."""
    from base.config.parse import str2bool

    group = parser.add_argument_group("pictures")
    group.add_argument("--viz", type=str2bool, nargs="?", const=True, default=False, help=help)
    return group


#: The refusal of another trainer's checkpoint (returns the class to rebuild it with); its older name here.
refuse_other_trainer = checkpoint_trainer


def nonfinite_count(state):
    """How many values of the floating-point tensors in ``state`` (a state dict) are NaN or inf (int)."""
    return sum(int((~torch.isfinite(t)).sum()) for t in state.values() if torch.is_tensor(t) and t.is_floating_point())


def load_saved_model(path, flag="--model_path", use_ema=None):
    """``(state_dict, saved_config, extras)`` from a ``.pth`` checkpoint or a ``.safetensors`` export.

    A ``.safetensors`` file needs its JSON sidecar (same stem) for the config;
    it holds the weights the run validated (the EMA's with ``--eval_ema``).
    A ``.pth`` of a run with ``--ema_decay`` holds both: ``use_ema`` picks the
    EMA weights (True) or the raw ones (False); ``None`` follows the run's ``--eval_ema``.

    Returns:
        ``state_dict``: name -> tensor (CPU); ``saved_config``: the run's config
        dict; ``extras``: the checkpoint's (or sidecar's) other JSON-able
        entries, e.g. ``"trainer"``, ``"trainer_class"``, ``"model_card"``, ``"metrics"`` (optimizer
        and other tensor states of a ``.pth`` are left out).

    Raises:
        CheckpointError: missing, truncated, foreign or unsafe file; the message names it (after ``flag``).
    """
    if not path.endswith(".safetensors"):
        ckpt = load_checkpoint(path, flag=flag)
        keys = ("trainer", TRAINER_CLASS_KEY, "eval_script", "model_card", "metrics", "global_step")
        extras = {k: ckpt[k] for k in keys if k in ckpt}
        try:
            config = json.loads(ckpt.get("config") or "{}")
        except (TypeError, json.JSONDecodeError):
            raise CheckpointError(f"{flag} {path}: its saved config is not JSON") from None
        if not isinstance(config, dict):
            raise CheckpointError(
                f"{flag} {path}: its saved 'config' is a JSON {type(config).__name__}, "
                f"expected an object of flag values"
            )
        if use_ema is None:
            use_ema = bool(config.get("eval_ema", True))
        if use_ema and ckpt.get("ema") is not None:
            return ckpt["ema"]["model"], config, {**extras, "weights": "EMA"}
        return ckpt["model"], config, {**extras, "weights": "raw (not EMA)" if ckpt.get("ema") else "model"}
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    sidecar = os.path.splitext(path)[0] + ".json"
    try:
        weights = load_file(path)
        with open(sidecar, encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            raise CheckpointError(f"{flag} {path}: its sidecar {sidecar} holds no 'config' object of flag values")
        kind = "EMA" if saved["config"].get("ema_decay") and saved["config"].get("eval_ema", True) else "model"
        return weights, saved["config"], {**{k: v for k, v in saved.items() if k != "config"}, "weights": kind}
    except FileNotFoundError as exc:
        raise CheckpointError(f"{flag} {path}: {exc.filename} not found") from None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{flag} {path} (or {sidecar}): unreadable ({exc})") from None


def _evaluator_flags_first(parser, trainer_groups):
    """Lay out ``--help``: the evaluator's own flag groups first, then the trainer's, titled as overrides.

    ``trainer_groups`` are ``parser``'s argument groups before the evaluator
    added its own. Only what ``--help`` prints changes: argparse parses from
    the parser's action list, whose order matters for positionals only (none here).
    """
    optionals = parser._optionals  # "options": -h, and trainer flags added outside any group
    own = [g for g in parser._action_groups if g not in trainer_groups]
    loose = parser.add_argument_group(TRAINER_FLAGS_TITLE)
    loose._group_actions.extend(a for a in optionals._group_actions if a.dest != "help")
    optionals._group_actions[:] = [a for a in optionals._group_actions if a.dest == "help"]
    titled = []
    for group in trainer_groups:
        if group not in (parser._positionals, optionals):
            group.title = f"{TRAINER_FLAGS_TITLE}: {group.title}"
            titled.append(group)
    parser._action_groups[:] = [parser._positionals, optionals, *own, loose, *titled]
    # The usage line lists the evaluator's flags first too (argparse parses optionals in any order).
    first = optionals._group_actions + [a for group in own for a in group._group_actions]  # -h, then own
    parser._actions[:] = first + [a for a in parser._actions if a not in first]

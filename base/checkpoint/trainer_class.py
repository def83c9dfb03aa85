"""Which trainer class wrote a checkpoint: recorded as ``"module:Class"``, imported back only from this project.

Every checkpoint and ``.safetensors`` sidecar records its trainer twice: ``"trainer"`` (the class name,
as older readers expect) and ``"trainer_class"`` (:func:`trainer_ref`, e.g.
``"trainers.vanilla_trainer:VanillaTrainer"``), so an evaluator, a predictor or ``utils.export`` can
rebuild a task subclass written in the user's own module (:func:`resolve_trainer`).

The module part is the name that imports the class:

- a class of an imported module: that module's name (``my_project.tasks``);
- a class defined in a script run as ``__main__``: ``python -m pkg.train`` records ``pkg.train``;
  ``python path/train.py`` records the file's path relative to the project root (the folder holding
  ``base/``) as a dotted name (``my_project/train.py`` -> ``my_project.train``), or, for a file outside
  the project, its bare stem (``train``: importable when its folder is on ``PYTHONPATH``). Such a
  script must start training under ``if __name__ == "__main__":``, since importing it runs the file.

Importing runs a module's code, so :func:`resolve_trainer` imports without asking only a module whose
file lies inside the project root (where this code lives; not an installed package or a virtual
environment kept there, :func:`in_project`). The current directory does not count: it
is wherever the shell stands (often beside a downloaded checkpoint), which says nothing about whose code
is there. Any other module needs ``--trust_module``. This module uses importlib only (no task code).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys

from base.errors import CheckpointError

#: The project root: the folder that holds ``base/``; modules whose files lie under it are imported without asking.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
#: The checkpoint (and sidecar) key holding :func:`trainer_ref`.
KEY = "trainer_class"


def trainer_ref(cls: type) -> str:
    """``"module:Class"`` naming ``cls`` so that :func:`resolve_trainer` can import it (module docstring's rule)."""
    module = cls.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        path = getattr(main, "__file__", None)
        if spec is not None and spec.name and spec.name != "__main__":  # python -m pkg.train
            module = spec.name
        elif path:
            path = os.path.realpath(path)
            stem = os.path.splitext(path)[0]
            if _inside(path, PROJECT_ROOT):
                module = os.path.relpath(stem, PROJECT_ROOT).replace(os.sep, ".")
            else:
                module = os.path.basename(stem)
    return f"{module}:{cls.__qualname__}"


def recorded_ref(extras: dict) -> str | None:
    """The ``"module:Class"`` that a checkpoint's (or sidecar's) entries ``extras`` record; ``None`` in older files."""
    ref = extras.get(KEY)
    return ref if isinstance(ref, str) and ref else None


def module_file(module: str) -> str | None:
    """The file ``module`` (dotted name) would be imported from, found on ``sys.path`` the way the import
    system looks (a package's ``__init__``, else a module file, else a namespace folder, in path order)
    without running any of its code (nor its packages' ``__init__``); ``None`` when there is none.

    A module already imported gives its own ``__file__``; a package already imported, its ``__path__``.
    """
    loaded = sys.modules.get(module)
    if loaded is not None:
        return getattr(loaded, "__file__", None)
    suffixes = importlib.machinery.all_suffixes()
    dirs = [d or os.getcwd() for d in sys.path if isinstance(d, str)]
    parts = module.split(".")
    for i, part in enumerate(parts):
        parent = sys.modules.get(".".join(parts[:i])) if i else None
        if parent is not None:
            dirs = list(getattr(parent, "__path__", ()))
        found, portions = None, []
        for folder in dirs:
            package = os.path.join(folder, part)
            files = [os.path.join(package, "__init__" + s) for s in suffixes]
            files += [os.path.join(folder, part + s) for s in suffixes]
            found = next((f for f in files if os.path.isfile(f)), None)
            if found:
                break
            if os.path.isdir(package):
                portions.append(package)
        last = i == len(parts) - 1
        if found:
            if last:
                return found
            if os.path.basename(os.path.splitext(found)[0]) != "__init__":
                return None  # a plain module: nothing can lie under it
            dirs = [os.path.dirname(found)]
        elif portions:
            if last:
                return portions[0]
            dirs = portions
        else:
            return None
    return None


def resolve_trainer(ref: str, where: str, trust: bool = False) -> type:
    """The trainer class ``ref`` (``"module:Class"``) names, imported if the module lies inside the project root
    or ``trust`` is true.

    Args:
        ref: as :func:`trainer_ref` writes it.
        where: what the messages start with, e.g. ``"--model_path X"``.
        trust: ``--trust_module``: import a module outside the project too (importing runs its code).

    Returns:
        the class, a subclass of :class:`base.trainer.TrainerBase`.

    Raises:
        CheckpointError: one line naming ``ref``: not ``module:Class``; no such module importable here;
            its file outside the project without ``trust`` (names the file and ``--trust_module``); an
            import that fails; no such class in the module; not a ``TrainerBase`` subclass.
    """
    from base.trainer import TrainerBase  # here: base.trainer imports the checkpoint modules

    module, _, name = ref.partition(":")
    if not module or not name:
        raise CheckpointError(f"{where}: its trainer {ref!r} is not 'module:Class'")
    path = module_file(module)
    if path is None:
        raise CheckpointError(
            f"{where}: its trainer {ref} comes from module {module}, which is not importable here "
            f"(put its folder on PYTHONPATH)"
        )
    if not trust and not in_project(path):
        raise CheckpointError(
            f"{where}: its trainer {ref} comes from {path}, outside this project; "
            f"pass --trust_module to import it (importing runs its code)"
        )
    try:
        found = importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - any failure of the module's own code: say which, in one line
        line = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(
            f"{where}: its trainer {ref}: importing {module} ({path}) failed: {type(exc).__name__}: {line}"
        ) from None
    for part in name.split("."):
        found = getattr(found, part, None)
    if found is None:
        raise CheckpointError(f"{where}: its trainer {ref}: module {module} ({path}) has no class {name}")
    if not (isinstance(found, type) and issubclass(found, TrainerBase)):
        raise CheckpointError(f"{where}: its trainer {ref} is not a TrainerBase subclass ({found!r})")
    return found


def in_project(path: str) -> bool:
    """Whether the file ``path`` is one of the project's own: under :data:`PROJECT_ROOT`, but not in an
    installed package (``site-packages``/``dist-packages``) nor in the running Python's environment (a
    virtual environment kept inside the project holds other people's code)."""
    real = os.path.realpath(path)
    parts = set(real.split(os.sep))
    if parts & {"site-packages", "dist-packages"}:
        return False
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix)}
    return _inside(real, PROJECT_ROOT) and not any(_inside(real, p) for p in prefixes if p != PROJECT_ROOT)


def _inside(path: str, folder: str) -> bool:
    """Whether ``path`` (symbolic links resolved) lies under ``folder``."""
    path = os.path.realpath(path)
    try:
        return os.path.commonpath([path, folder]) == folder
    except ValueError:  # another drive (Windows)
        return False


def checkpoint_trainer(extras, path, trainer_class, prog, compatible=(), trust=False):
    """The trainer class to rebuild ``path``'s task with, for ``prog``, which reads ``trainer_class``'s checkpoints.

    A checkpoint recording ``"module:Class"`` (:data:`KEY`) gives that class when it is ``trainer_class`` or
    a subclass of it (a user's task overriding ``build_model``, say): imported by :func:`resolve_trainer`.
    An older one records the class name only (``"trainer"``, or its sidecar's ``model_card.trainer``):
    ``trainer_class``'s name and ``compatible`` are accepted as ``trainer_class``, and one that names
    no trainer is accepted and checked by its weights' keys and shapes.

    Args:
        extras: :func:`base.evaluator.load_saved_model`'s third result for ``path``.
        path: the ``--model_path`` value, for the messages.
        trainer_class: the trainer whose checkpoints ``prog`` reads.
        prog: the script named in the message, e.g. ``"eval_vanilla.py"``.
        compatible: names of other trainer classes accepted as ``trainer_class``.
        trust: ``--trust_module`` (see :func:`resolve_trainer`).

    Raises:
        CheckpointError: ``"--model_path X: a ViTTrainer checkpoint; eval_vanilla.py
            evaluates VanillaTrainer checkpoints (use eval_vit.py)"``; and :func:`resolve_trainer`'s refusals.
    """
    card = extras.get("model_card")
    name = extras.get("trainer") or (card.get("trainer") if isinstance(card, dict) else None)
    expected, ref = trainer_class.__name__, recorded_ref(extras)
    if ref is not None and ref != trainer_ref(trainer_class) and name not in compatible:
        found = resolve_trainer(ref, f"--model_path {path}", trust)
        if issubclass(found, trainer_class):
            return found
        name = found.__name__
    elif name is None or name == expected or name in compatible:
        return trainer_class
    script = extras.get("eval_script")  # the trainer's EVAL_SCRIPT, saved with it (not in older files)
    hint = f" (use {script})" if isinstance(script, str) and script and script != prog else ""
    raise CheckpointError(f"--model_path {path}: a {name} checkpoint; {prog} evaluates {expected} checkpoints{hint}")

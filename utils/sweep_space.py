"""A sweep's search space: a YAML (or JSON) file of trainer flags, read into Optuna distributions.

    lr: {low: 1e-4, high: 1e-2, log: true}     # float in [low, high], log-uniform
    drop_path: {low: 0, high: 0.3}             # float, uniform (a float flag)
    epochs: {low: 2, high: 8, step: 2}         # int flag: integers low, low + step, ... high
    batch_size: [32, 64]                       # a choice
    model_type: [Vanilla, SmallCNN]

A key is a trainer flag's name (``lr`` or ``--lr``). A range gives ``FloatDistribution`` for a float flag
and ``IntDistribution`` for an int flag (``log``: sampled uniformly in log space, as Optuna's
``suggest_float(..., log=True)``; ``step``: a grid); a list gives ``CategoricalDistribution``, each value
typed by the flag's own argparse type (``1e-3`` is 0.001 for a float flag) and checked against its choices.
"""

import math
import os

from base.config.parse import ConfigError, build_parser

#: Flags a sweep may not search: where runs go, and what the sweep sets itself (--seeds picks seeds).
NOT_SEARCHABLE = frozenset({"output_dir", "proj_name", "resume", "config", "sweep_trial", "seed", "fold", "folds"})


def _number(value, where):
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _typed_choice(action, value, where):
    if value is None or isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: a choice must be a single value, got {value!r}")
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        typed = action.type(text) if action.type else text
    except (TypeError, ValueError, Exception) as exc:  # noqa: BLE001 - argparse types raise what they like
        raise ConfigError(f"{where}: {value!r} is not a value of --{action.dest} ({exc})") from None
    if action.choices is not None and typed not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of --{action.dest}'s choices {list(action.choices)}")
    return typed


def _range(action, spec, where):
    from optuna.distributions import FloatDistribution, IntDistribution

    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(spec):
        raise ConfigError(f"{where}: a range is {{low: L, high: H}} with optional log: true or step: S, got {spec}")
    low, high = _number(spec["low"], f"{where}: low"), _number(spec["high"], f"{where}: high")
    log = spec.get("log", False)
    if not isinstance(log, bool) and str(log).lower() not in ("true", "false"):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    log = log if isinstance(log, bool) else str(log).lower() == "true"
    step = _number(spec["step"], f"{where}: step") if "step" in spec else None
    if not low < high:
        raise ConfigError(f"{where}: low {spec['low']} must be below high {spec['high']}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got {spec['low']}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step must be > 0 and cannot go with log: true")
    if action.type is int:
        if low != int(low) or high != int(high) or (step is not None and step != int(step)):
            raise ConfigError(f"{where}: --{action.dest} takes integers; low, high and step must be integers")
        return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    if action.type is not float:
        raise ConfigError(f"{where}: --{action.dest} is not a number flag; give a list of choices")
    return FloatDistribution(low, high, log=log, step=step)


def read_space(path, trainer_cls, trainer_args=()):
    """``{flag dest: optuna distribution}`` from the space file at ``path`` for ``trainer_cls``'s flags.

    Raises:
        ConfigError: one line naming ``--space <path>`` and the key: the file is missing or not YAML/JSON or
            not a mapping; a key is no flag of the trainer, or one a sweep sets itself
            (:data:`NOT_SEARCHABLE`), or also given in ``trainer_args``; a range is not ``low < high``
            (``log`` needing ``low > 0``, integers for an int flag); a list is empty or holds a value the
            flag refuses.
    """
    import yaml
    from optuna.distributions import CategoricalDistribution

    where = f"--space {path}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: no such file")
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(doc, dict) or not doc:
        raise ConfigError(f"{where}: expected a mapping of trainer flags to ranges or lists, got {doc!r}")
    parser, _ = build_parser(trainer_cls)
    actions = {a.dest: a for a in parser._actions}
    given = {a.split("=", 1)[0] for a in trainer_args if a.startswith("--")}
    space = {}
    for key, spec in doc.items():
        flag = str(key).removeprefix("--")
        at = f"{where}: {flag}"
        if flag not in actions or flag == "help":
            raise ConfigError(f"{at}: no such flag of {trainer_cls.__name__} (see its --help)")
        if flag in NOT_SEARCHABLE:
            raise ConfigError(f"{at}: a sweep sets it itself (for seeds use --seeds)")
        if f"--{flag}" in given:
            raise ConfigError(f"{at}: it is searched; leave --{flag} out of the trainer flags")
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{at}: an empty list of choices")
            choices = [_typed_choice(actions[flag], v, at) for v in spec]
            space[flag] = CategoricalDistribution(choices)
        elif isinstance(spec, dict):
            space[flag] = _range(actions[flag], spec, at)
        else:
            raise ConfigError(f"{at}: expected a list of choices or {{low, high[, log][, step]}}, got {spec!r}")
    return space


def describe(space):
    """``{flag: JSON-able description}`` of a space (what the study folder records)."""
    from optuna.distributions import distribution_to_json

    return {flag: distribution_to_json(d) for flag, d in space.items()}

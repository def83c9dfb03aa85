"""The trial file of ``--sweep_trial FILE``: what a sweep (``utils.sweep``) hands one trial's run.

The sweep asks its Optuna study for a trial, writes this JSON object and launches the trainer with
``--sweep_trial FILE``::

    {"trial": 3,                 # Optuna's trial number, shown to users (provenance "sweep trial 3")
     "trial_id": 3,              # Optuna's internal id of the trial (optuna.trial.Trial(study, trial_id))
     "params": {"lr": 0.003},    # the trial's flag values, by dest
     "storage": "/abs/study.journal",  # the study's JournalFileBackend file
     "study_name": "sweep",
     "pruner": {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0},  # or {"name": "none"}
     "report": true}             # false: this run reports nothing (e.g. a trial's second seed)

:func:`base.config.parse.parse_config` applies ``params`` above the ``--config`` file and below the
command line; :class:`base.run.sweep_trial.TrialReporter` reports the run's validations to the study.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from base.errors import ConfigError

#: The pruners a trial file may name, with the Optuna keyword arguments each takes (and their defaults).
PRUNERS = {"median": {"n_startup_trials": 5, "n_warmup_steps": 0}, "none": {}}


@dataclass(frozen=True)
class TrialFile:
    """One trial file, checked. ``pruner``: its name (a key of :data:`PRUNERS`) and integer arguments."""

    path: str
    number: int
    trial_id: int
    params: dict
    storage: str
    study_name: str
    pruner: dict
    report: bool


def read_trial_file(path: str, refused=frozenset()) -> TrialFile:
    """Read and check the trial file at ``path``.

    ``refused``: flags a trial may not set (launch-only ones such as ``resume``); whether each other key of
    ``params`` is a flag of the trainer, and its value one of that flag's, the parser checks.

    Raises:
        ConfigError: one line starting ``--sweep_trial PATH:``: the file is missing or not a JSON object; a
            key is missing or of the wrong type (``trial``/``trial_id`` integers, ``params`` an object,
            ``storage``/``study_name`` text, ``pruner`` an object naming a known pruner, ``report`` a
            boolean); ``params`` names a refused flag.
    """
    where = f"--sweep_trial {path}"
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: not a JSON trial file ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a JSON object, got a {type(doc).__name__}")
    kinds = {"trial": int, "trial_id": int, "params": dict, "storage": str, "study_name": str, "pruner": dict}
    for key, kind in {**kinds, "report": bool}.items():
        value = doc.get(key)
        # (a bool is an int to Python, not a trial number)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: {key!r} must be {_KIND_NAMES[kind]}, got {value!r}")
    pruner = dict(doc["pruner"])
    name = pruner.pop("name", None)
    if name not in PRUNERS:
        raise ConfigError(f"{where}: pruner name {name!r} is not one of {sorted(PRUNERS)}")
    unknown = sorted(set(pruner) - set(PRUNERS[name]))
    if unknown:
        raise ConfigError(f"{where}: the {name} pruner takes no {', '.join(unknown)}")
    pruner = {**PRUNERS[name], **pruner}
    for key, value in pruner.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{where}: pruner {key} must be an integer >= 0, got {value!r}")
    bad = sorted(set(doc["params"]) & set(refused))
    if bad:
        raise ConfigError(f"{where}: a trial cannot set {', '.join('--' + k for k in bad)}")
    return TrialFile(
        path, doc["trial"], doc["trial_id"], doc["params"], doc["storage"], doc["study_name"],
        {"name": name, **pruner}, doc["report"],
    )  # fmt: skip


_KIND_NAMES = {int: "an integer", dict: "an object", str: "text", bool: "true or false"}

"""Layered argparse configuration that remembers where every value came from.

Each class in a trainer's (or evaluator's) MRO may define

* ``add_arguments(parser)`` (a classmethod, looked up in the class's own
  ``__dict__``): the flags that class introduces, and
* ``DEFAULTS`` (a dict in the class body): new defaults for inherited flags.

:func:`parse_config` builds the parser from the base class down to the leaf,
applies a ``--config`` file (JSON, or YAML for ``.yaml``/``.yml``: see
:mod:`base.config.files`) on top of the defaults, a sweep trial's flag values
(``--sweep_trial``: :mod:`base.config.trial_file`) on top of it, then the command
line on top of that. The resolved namespace comes back with a provenance map
``{flag: "base default (TrainerBase)" | "subclass default (X)" | a derived default's reason |
"config file (path)" | "sweep trial N" | "command line"}`` that is written next to the values.
``--print_config`` (beside ``--config``) prints the result as YAML and exits.
"""

import argparse
import os

from base.errors import ConfigError  # (also imported from here by tasks and tests)

# Flags that describe one launch, not an experiment: never taken from a file.
LAUNCH_ONLY = frozenset({"config", "resume", "model_path", "debug", "print_config"})


def path_arg(text):
    """The ``type`` of a flag that holds a path: a leading ``~`` expanded to the home folder (shells leave a
    ``~`` inside ``--flag=~/x`` or quotes alone); a task declares its own path flags with it."""
    return os.path.expanduser(text) if isinstance(text, str) else text


def str2bool(value):
    """Parse a command-line boolean: ``true/false, yes/no, 1/0, on/off``.

    Raises:
        argparse.ArgumentTypeError: for any other string.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on", "y", "t"):
        return True
    if text in ("false", "no", "0", "off", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line: the error and a pointer to ``--help``.

    (argparse's own prints the whole usage block first, which buries the one line that matters.)
    """

    def error(self, message):
        """Print ``<prog>: error: <message> (see <prog> --help)`` to stderr and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _config_classes(cls):
    """Classes of ``cls``'s MRO that contribute flags or defaults, root first."""
    return [k for k in reversed(cls.__mro__) if "add_arguments" in k.__dict__ or "DEFAULTS" in k.__dict__]


def build_parser(cls, suppress_defaults=False):
    """Build ``cls``'s strict parser and the origin of each default.

    Args:
        cls: a class whose MRO defines ``add_arguments`` / ``DEFAULTS``.
        suppress_defaults: leave every flag unset unless given (used to find
            which flags the command line named).

    Returns:
        ``(parser, origins)`` where ``origins`` maps each flag's dest to a label.

    Raises:
        KeyError: a ``DEFAULTS`` entry names a flag no class defines (a bug in
            the subclass, reported at import-free parse time).
    """
    parser = Parser(
        prog=getattr(cls, "PROG", None),
        description=(cls.__doc__ or "").strip().split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    origins = {}
    classes = _config_classes(cls)
    for depth, klass in enumerate(classes):
        label = ("base default" if depth == 0 else "subclass default") + f" ({klass.__name__})"
        known = {a.dest for a in parser._actions}
        if "add_arguments" in klass.__dict__:
            klass.add_arguments(parser)
        for action in parser._actions:
            if action.dest not in known and action.dest != "help":
                origins[action.dest] = label
        overrides = klass.__dict__.get("DEFAULTS", {})
        unknown = set(overrides) - set(origins)
        if unknown:
            raise KeyError(f"{klass.__name__}.DEFAULTS names unknown flags: {sorted(unknown)}")
        parser.set_defaults(**overrides)
        origins.update({k: label for k in overrides})
    if suppress_defaults:
        # Not set_defaults(): argparse would copy the SUPPRESS marker into the namespace.
        parser._defaults.clear()
        for action in parser._actions:
            if action.dest != "help":
                action.default = argparse.SUPPRESS
    return parser, origins


def _typed(action, key, value, source):
    """``value`` converted with ``action.type`` (each item for an ``nargs`` flag's list).

    A ``store_true``-like flag (no type) reads its value as a boolean too.

    Raises:
        ConfigError: a string the type rejects, or a number flag holding a
            non-number (a list, a bool, a dict; a fraction for an int flag);
            ``None`` (JSON null, an empty YAML value) for a typed flag whose
            default is not ``None``.
    """
    if isinstance(value, list) and action.nargs not in (None, "?"):
        return [_typed(action, key, item, source) for item in value]
    boolean = action.type is str2bool or (action.nargs == 0 and isinstance(action.const, bool))
    if value is None and (action.type is not None or boolean) and action.default is not None:
        # It would pass here and fail far from the file (``None > 0`` in a check).
        raise ConfigError(f"{source}: bad value for {key!r}: expected a value, got None (null or empty)")
    try:
        if isinstance(value, str) and action.type is not None:
            return action.type(value)
        if boolean and value is not None:
            return str2bool(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
        raise ConfigError(f"{source}: bad value for {key!r}: {exc}") from None
    if action.type in (int, float) and value is not None:
        # JSON gives numbers as numbers; anything else would fail later, far from the file.
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (action.type is int and not integral):
            kind = "an integer" if action.type is int else "a number"
            raise ConfigError(f"{source}: bad value for {key!r}: expected {kind}, got {value!r}")
        return action.type(value)
    return value


def _coerce(parser, values, source):
    """Convert file values with each flag's ``type`` and check ``choices``.

    Raises:
        ConfigError: an unknown key, a value its flag's type rejects, or one
            outside its ``choices``; the message starts with ``source``.
    """
    actions = {a.dest: a for a in parser._actions}
    out = {}
    for key, value in values.items():
        if key in LAUNCH_ONLY:
            continue
        if key not in actions:
            raise ConfigError(f"{source}: unknown key {key!r}")
        action = actions[key]
        value = _typed(action, key, value, source)
        if action.choices is not None and value is not None and value not in action.choices:
            raise ConfigError(f"{source}: {key}={value!r} is not one of {list(action.choices)}")
        out[key] = value
    return out


def coerce_saved_values(cls, values, source):
    """A saved run's flag values typed and checked as ``cls``'s parser would (keys it lacks are dropped).

    For configs saved in checkpoints and export sidecars, which never went
    through a parser on this machine. Launch-only flags (``--resume`` ...) are dropped too.

    Raises:
        ConfigError: a value its flag's type or ``choices`` rejects; the message starts with ``source``.
    """
    parser, _ = build_parser(cls)
    known = {a.dest for a in parser._actions}
    values = with_older_run_values(cls, values)
    return _coerce(parser, {k: v for k, v in values.items() if k in known}, source)


def with_older_run_values(cls, saved):
    """``saved`` (a run's flag values) with the values ``cls.OLDER_RUN_VALUES`` gives for the flags it lacks.

    A run saved before a flag existed ran with that flag's old behaviour, which is
    not always the new default (e.g. ``--mean``: 0.5 then, the data's statistics
    now); this is the one place where such configs are read as they were meant.
    """
    return {**getattr(cls, "OLDER_RUN_VALUES", {}), **saved}


def _without_retired(cls, values, source):
    """``values`` (a saved run's or a ``--config`` file's) without the flags ``cls.RETIRED_FLAGS`` names.

    ``RETIRED_FLAGS`` maps each flag that an earlier version of the task had, and configs saved then
    hold, to the one value it could hold there (``None``: any, it had no effect): such a config is
    read as it was meant, without the flag. A string (YAML's scalars) is read as that value's type.

    Raises:
        ConfigError: a retired flag holding another value; the message starts with ``source``.
    """
    retired = getattr(cls, "RETIRED_FLAGS", {})
    for key in [k for k in retired if k in values]:
        only, value = retired[key], values[key]
        try:
            same = only is None or (str2bool(value) if isinstance(only, bool) else type(only)(value)) == only
        except (ValueError, TypeError, argparse.ArgumentTypeError):
            same = False
        if not same:
            prog = getattr(cls, "PROG", None) or cls.__name__
            raise ConfigError(f"{source}: {key}={value!r}: {prog} has no --{key} (a config may hold it as {only!r})")
    return {k: v for k, v in values.items() if k not in retired}


def parse_config(cls, argv=None, base_values=None, base_label="saved run", check=True):
    """Resolve ``cls``'s configuration from defaults, ``--config`` and ``argv``.

    Precedence, lowest first: the base class's defaults, each subclass's
    ``DEFAULTS``, with ``check`` ``cls.derived_defaults(args)`` (defaults that follow other flags,
    labelled with their reason), ``base_values`` (a resumed run's saved flags, labelled
    ``base_label``), the ``--config`` file (never its ``sweep_trial``), the ``params`` of a
    ``--sweep_trial`` file (labelled ``sweep trial N``: :mod:`base.config.trial_file`), the command
    line; the flags that ``cls.RETIRED_FLAGS`` names are taken out of ``base_values`` and the file
    (:func:`_without_retired`). After parsing,
    with ``check``, ``cls.check_config(args)`` checks cross-field rules.

    A class with ``--config`` also gets ``--print_config``: with ``check``,
    the resolved config is printed as YAML (:func:`base.config.files.format_config`)
    and the process exits 0. ``print_config`` itself is never in ``args``.

    Returns:
        ``(args, provenance)``: an ``argparse.Namespace`` and ``{flag: label}``.

    Exits:
        status 2 with one ``error:`` line for an unknown flag, a bad value,
        a bad ``--config`` or ``--sweep_trial`` file or a failed check; status 0 after ``--print_config``.
    """
    from base.config.files import add_print_config, format_config, read_config_file  # PyYAML only when used
    from base.config.trial_file import read_trial_file

    parser, origins = build_parser(cls)
    class_defaults = dict(origins)
    add_print_config(parser)
    args = parser.parse_args(argv)
    show = vars(args).pop("print_config", False)
    try:
        if base_values:
            values = _coerce(
                parser, _without_retired(cls, with_older_run_values(cls, base_values), base_label), base_label
            )
            parser.set_defaults(**values)
            origins.update({k: base_label for k in values})
            args = parser.parse_args(argv)
        if getattr(args, "config", None):
            values, meta = read_config_file(args.config, with_meta=True)
            source = f"--config {args.config}"
            writer = meta.get("trainer")
            if writer and writer != cls.__name__:  # its keys may be another task's flags: say whose
                prog = getattr(cls, "PROG", None) or cls.__name__
                source += f" (written by {writer}; {prog} trains {cls.__name__})"
            values.pop("sweep_trial", None)  # a trial's own: a run from a trial's config is no trial
            values = _coerce(parser, _without_retired(cls, values, source), source)
            parser.set_defaults(**values)
            origins.update({k: f"config file ({args.config})" for k in values})
            args = parser.parse_args(argv)
        if getattr(args, "sweep_trial", ""):  # (on the command line, or a resumed trial's)
            trial = read_trial_file(args.sweep_trial, refused=LAUNCH_ONLY | {"sweep_trial"})
            values = _coerce(parser, trial.params, f"--sweep_trial {args.sweep_trial}")
            parser.set_defaults(**values)
            origins.update({k: f"sweep trial {trial.number}" for k in values})
            args = parser.parse_args(argv)
        vars(args).pop("print_config", None)
        given, _ = build_parser(cls, suppress_defaults=True)
        add_print_config(given)
        origins.update({k: "command line" for k in vars(given.parse_args(argv))})
        if check:
            for flag, (value, why) in getattr(cls, "derived_defaults", lambda _: {})(args).items():
                if origins.get(flag) == class_defaults.get(flag):  # nothing above the class defaults set it
                    setattr(args, flag, value)
                    origins[flag] = why
            cls.check_config(args)
        provenance = {k: origins.get(k, "command line") for k in vars(args)}
        if show and check:  # only the final parse prints (from_argv first parses unchecked)
            print(format_config(args, provenance, parser.prog), end="")
            parser.exit(0)
    except ConfigError as exc:
        parser.error(str(exc))
    return args, provenance
